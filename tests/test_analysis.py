"""Expected calibration error on hand-made cases, and against a plain-loop reference."""
import math

import pytest
import torch

from helpers.analysis import expected_calibration_error


def _two_class(conf: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions of class 0 with the given confidences (all ≥ 0.5), and their labels."""
    c = torch.tensor(conf, dtype=torch.float64)
    probs = torch.stack([c, 1 - c], dim=1)
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


def test_perfectly_calibrated_is_zero():
    # 10 predictions at confidence 0.7, 7 of them right
    probs, labels = _two_class([0.7] * 10, [True] * 7 + [False] * 3)
    ece, bins = expected_calibration_error(probs, labels, n_bins=10)
    assert ece == pytest.approx(0.0, abs=1e-12)
    assert sum(bins["count"]) == 10 and bins["count"][6] == 10  # 0.7 is in (0.6, 0.7]


def test_overconfident_and_underconfident_hand_computed():
    # 4 at 0.9 all wrong and 6 at 0.6 all right. With 2 bins both land in (0.5, 1]:
    # mean confidence 0.72, accuracy 0.6, so ECE = 0.12 (coarse bins let errors cancel).
    probs, labels = _two_class([0.9] * 4 + [0.6] * 6, [False] * 4 + [True] * 6)
    ece, bins = expected_calibration_error(probs, labels, n_bins=2)
    assert ece == pytest.approx(0.12)
    assert bins["count"] == [0, 10]
    # with 10 bins they separate: 0.4·|0 − 0.9| + 0.6·|1 − 0.6| = 0.6
    ece10, bins10 = expected_calibration_error(probs, labels, n_bins=10)
    assert ece10 == pytest.approx(0.6)
    assert bins10["count"][8] == 4 and bins10["count"][5] == 6
    assert bins10["accuracy"][8] == 0.0 and bins10["confidence"][5] == pytest.approx(0.6)


def test_bin_edges_and_empty_bins():
    probs, labels = _two_class([1.0, 0.5], [True, True])
    ece, bins = expected_calibration_error(probs, labels, n_bins=4)
    assert bins["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins["count"] == [0, 1, 0, 1]  # 0.5 is in (0.25, 0.5], 1.0 in (0.75, 1]
    assert math.isnan(bins["accuracy"][0]) and math.isnan(bins["confidence"][2])
    assert ece == pytest.approx(0.5 * 0.5)  # the 0.5 bin is right every time: gap 0.5


def test_matches_a_plain_loop_reference():
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(500, 10, generator=g) * 2).softmax(dim=1)
    labels = torch.randint(0, 10, (500,), generator=g)
    ece, bins = expected_calibration_error(probs, labels, n_bins=15)
    conf, pred = probs.double().max(dim=1)
    ref = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.sum().item() / 500 * abs((pred[m] == labels[m]).double().mean().item()
                                              - conf[m].mean().item())
    assert ece == pytest.approx(ref, abs=1e-12)
    assert sum(bins["count"]) == 500 and len(bins["edges"]) == 16


def test_bad_input():
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.randn(4, 3) * 5, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        expected_calibration_error(torch.full((4, 2), 0.5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(torch.full((4, 2), 0.5), torch.zeros(4, dtype=torch.long), n_bins=0)


def test_mcnemar_counts_only_the_disagreements():
    from helpers.analysis import mcnemar
    # 249 images only B gets right, 159 only A, 600 both, 92 neither (a TTA-or-not comparison)
    a = torch.tensor([False] * 249 + [True] * 159 + [True] * 600 + [False] * 92)
    b = torch.tensor([True] * 249 + [False] * 159 + [True] * 600 + [False] * 92)
    only_a, only_b, chi2, p = mcnemar(a, b)
    assert (only_a, only_b) == (159, 249)
    assert chi2 == pytest.approx(90 ** 2 / 408) and chi2 == pytest.approx(19.85, abs=0.01)
    assert p == pytest.approx(8.4e-6, rel=0.05)            # P(χ²₁ ≥ 19.85)
    assert mcnemar(a, a)[2:] == (0.0, 1.0)                 # identical answers: no evidence at all
    _, _, chi2_even, p_even = mcnemar(torch.tensor([True, False] * 50), torch.tensor([False, True] * 50))
    assert chi2_even == 0.0 and p_even == 1.0              # 50 vs 50: an even split
    assert mcnemar(torch.tensor([True] * 3 + [False] * 1), torch.tensor([False] * 4))[3] == pytest.approx(0.0833, abs=1e-3)


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_fit_temperature_recovers_the_scale_of_mis_calibrated_logits(scale):
    from helpers.analysis import fit_temperature
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=g) * 2               # a calibrated model's logits
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)  # labels drawn from its own probabilities
    t = fit_temperature(z * scale, y)                          # over- (3×) or under-confident (0.5×)
    assert t == pytest.approx(scale, rel=0.05)
    ece_before, _ = expected_calibration_error((z * scale).softmax(1), y)
    ece_after, _ = expected_calibration_error((z * scale / t).softmax(1), y)
    assert ece_after < 0.02 < ece_before


def test_mcnemar_refuses_answers_of_different_lengths():
    from helpers.analysis import mcnemar
    with pytest.raises(ValueError, match="one answer per image"):
        mcnemar(torch.ones(5, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
