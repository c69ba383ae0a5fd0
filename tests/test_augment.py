"""helpers.augment: per-image ops equal torchvision's kernels; BatchAugment's randomness and mixing."""
import dataclasses

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from helpers.augment import (BatchAugment, adjust_brightness, adjust_contrast, adjust_hue,
                             adjust_saturation, denormalize, hflip, normalize, rotate, to_float)
from helpers.config import DataConfig

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
NO_AUG = dict(flip_p=0.0, rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def _images(b=8, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _cfg(**kw):
    return dataclasses.replace(DataConfig(), **kw)


# ---------------------------------------------------------------------------- per-image ops vs torchvision


@pytest.mark.parametrize("ours, theirs, params", [
    (adjust_brightness, TF.adjust_brightness, [0.0, 0.5, 0.85, 1.0, 1.15, 1.7]),
    (adjust_contrast, TF.adjust_contrast, [0.0, 0.5, 0.85, 1.0, 1.15, 1.7]),
    (adjust_saturation, TF.adjust_saturation, [0.0, 0.5, 0.85, 1.0, 1.15, 1.7]),
    (adjust_hue, TF.adjust_hue, [-0.5, -0.075, -0.01, 0.0, 0.075, 0.3]),
])
def test_colour_ops_equal_torchvision_per_image(ours, theirs, params):
    x = to_float(_images(len(params)))
    x[0, :, :4] = 0.5   # grey pixels: hue undefined, saturation 0
    x[1, :, :2] = 0.0   # black pixels: V = 0
    p = torch.tensor(params)
    out = ours(x.clone(), p)
    for i, v in enumerate(params):
        ref = theirs(x[i], v)
        assert torch.allclose(out[i], ref, atol=2e-6), (ours.__name__, v, (out[i] - ref).abs().max())


def test_rotate_equals_torchvision_per_image():
    angles = [-10.0, -3.3, 0.0, 7.5, 10.0, 90.0, 180.0]
    x = to_float(_images(len(angles)))
    out = rotate(x, torch.tensor(angles))
    for i, a in enumerate(angles):
        ref = TF.rotate(x[i], a, interpolation=InterpolationMode.BILINEAR)  # counter-clockwise, zero fill
        assert torch.allclose(out[i], ref, atol=1e-5), (a, (out[i] - ref).abs().max())


def test_rotate_equals_torchvision_on_non_square_images():
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    out = rotate(x, torch.tensor([10.0, -30.0]))
    for i, a in enumerate([10.0, -30.0]):
        assert torch.allclose(out[i], TF.rotate(x[i], a, interpolation=InterpolationMode.BILINEAR), atol=1e-5)


def test_rotate_is_counter_clockwise():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1.0  # a dot right of the centre...
    y = rotate(x, torch.tensor([90.0]))
    assert y[0, 0, 0, 2] == pytest.approx(1.0, abs=1e-5)  # ...goes to the top


def test_hflip_equals_torchvision_where_flagged():
    x = to_float(_images(4))
    flip = torch.tensor([True, False, True, False])
    out = hflip(x, flip)
    for i in range(4):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]) if flip[i] else x[i])


def test_normalize_round_trip():
    x = _images(3)
    z = normalize(x, MEAN, STD)
    assert z.dtype == torch.float32
    assert torch.allclose(z[:, 1], (x[:, 1].float() / 255 - MEAN[1]) / STD[1])
    assert torch.allclose(denormalize(z, MEAN, STD), to_float(x), atol=1e-6)


# ---------------------------------------------------------------------------- BatchAugment


def test_output_shape_dtype_range():
    x, y = _images(16), torch.arange(16) % 10
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=0)
    xa, ya = aug(x, y)
    assert xa.shape == x.shape and xa.dtype == torch.float32 and torch.isfinite(xa).all()
    assert ya.shape == (16, 10) and ya.dtype == torch.float32
    raw = aug.augment(x)
    assert raw.min() >= 0 and raw.max() <= 1  # before normalisation: a valid image


def test_every_image_draws_its_own_parameters():
    one = _images(1).expand(128, -1, -1, -1).contiguous()  # 128 copies of ONE image
    aug = BatchAugment(_cfg(mix_p=0.0), MEAN, STD, seed=0)
    out = aug.augment(one).flatten(1)
    assert torch.unique(out, dim=0).shape[0] == 128  # v2 on a batch would give one result, 128 times


@pytest.mark.parametrize("field, value", [("rotation", 10.0), ("brightness", 0.15), ("contrast", 0.15),
                                          ("saturation", 0.15), ("hue", 0.075)])
def test_each_op_is_per_image(field, value):
    one = _images(1).expand(32, -1, -1, -1).contiguous()
    aug = BatchAugment(_cfg(**{**NO_AUG, field: value}, mix_p=0.0), MEAN, STD, seed=1)
    assert torch.unique(aug.augment(one).flatten(1), dim=0).shape[0] == 32, field


def test_no_augmentation_is_identity():
    x = _images(4)
    aug = BatchAugment(_cfg(**NO_AUG, mix_p=0.0), MEAN, STD)
    assert torch.equal(aug.augment(x), to_float(x))


def test_flip_frequency():
    n, p = 4000, 0.3
    x = _images(1, 4, 4).expand(n, -1, -1, -1).contiguous()
    aug = BatchAugment(_cfg(**{**NO_AUG, "flip_p": p}, mix_p=0.0), MEAN, STD, seed=0)
    out = aug.augment(x)
    flipped = (out == to_float(x).flip(-1)).flatten(1).all(1)
    kept = (out == to_float(x)).flatten(1).all(1)
    assert (flipped ^ kept).all()  # every image is either mirrored or untouched
    sd = (n * p * (1 - p)) ** 0.5  # binomial: 29; a 5-sd bound fails once in ~3 million runs
    assert abs(int(flipped.sum()) - n * p) < 5 * sd, int(flipped.sum())


@pytest.mark.parametrize("cutmix_p", [0.0, 0.5, 1.0])
def test_soft_targets_sum_to_one(cutmix_p):
    aug = BatchAugment(_cfg(cutmix_p=cutmix_p), MEAN, STD, seed=0)
    x, y = _images(16), torch.arange(16) % 10
    for _ in range(5):
        _, ya = aug(x, y)
        assert torch.allclose(ya.sum(1), torch.ones(16)) and (ya >= 0).all()


def test_cutmix_label_equals_kept_area():
    b = 8
    y = torch.arange(b)  # distinct labels, so each image's own share is readable from its target
    aug = BatchAugment(_cfg(**NO_AUG, cutmix_p=1.0), MEAN, STD, seed=0)
    seen_partial = 0
    for _ in range(10):
        x = normalize(_images(b, seed=seen_partial + 7), MEAN, STD)
        xm, ym = aug.mix(x, y)
        kept = (xm == x).all(1).flatten(1).float().mean(1)  # (B,) fraction of own pixels
        pasted_from = torch.roll(y, 1)  # torchvision pastes from the batch rolled by one
        assert torch.allclose(ym[torch.arange(b), y], kept, atol=1e-6)
        assert torch.allclose(ym[torch.arange(b), pasted_from], 1 - kept, atol=1e-6)
        box = ~(xm == x).all(1)  # (B, H, W) pasted pixels: equal to the neighbour's
        assert torch.equal(xm.permute(1, 0, 2, 3)[:, box], torch.roll(x, 1, 0).permute(1, 0, 2, 3)[:, box])
        seen_partial += int(0 < kept[0] < 1)
    assert seen_partial >= 5  # the test saw real boxes, not only all-or-nothing draws


def test_mixup_blends_images_and_labels_alike():
    b = 8
    y = torch.arange(b)
    aug = BatchAugment(_cfg(**NO_AUG, cutmix_p=0.0), MEAN, STD, seed=0)
    x = normalize(_images(b), MEAN, STD)
    xm, ym = aug.mix(x, y)
    lam = ym[0, 0]
    assert torch.allclose(ym[torch.arange(b), y], lam.expand(b))
    assert torch.allclose(xm, lam * x + (1 - lam) * torch.roll(x, 1, 0), atol=1e-5)


def test_same_seed_same_batch_other_seed_differs():
    x, y = _images(16), torch.arange(16) % 10
    a1, a2, b = (BatchAugment(DataConfig(), MEAN, STD, seed=s) for s in (3, 3, 4))
    xa, ya = a1(x, y)
    xb, yb = a2(x, y)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, yc = b(x, y)
    assert not torch.equal(xa, xc)
    x2, _ = a1(x, y)
    assert not torch.equal(xa, x2)  # the next batch draws new parameters


def test_state_dict_round_trip_and_global_rng_untouched():
    x, y = _images(8), torch.arange(8)
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=0)
    state = aug.state_dict()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = aug(x, y)
    assert torch.equal(torch.get_rng_state(), before)
    aug.load_state_dict(state)
    again = aug(x, y)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_mixing_leaves_the_gpu_generators_alone(monkeypatch):
    """Seeding CutMix/MixUp's draws must not reseed CUDA's generators (dropout's stream on a GPU)."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)  # what torch.manual_seed would call
    aug = BatchAugment(_cfg(mix_p=1.0), MEAN, STD, seed=0)
    for _ in range(4):
        aug(_images(8), torch.arange(8))
    assert reseeded == []


def test_mix_p_zero_gives_one_hot():
    x, y = _images(16), torch.arange(16) % 10
    aug = BatchAugment(_cfg(mix_p=0.0), MEAN, STD, seed=0)
    for _ in range(3):
        xa, ya = aug(x, y)
        assert torch.equal(ya, torch.nn.functional.one_hot(y, 10).float())
        assert torch.isfinite(xa).all()


# ---------------------------------------------------------------------------- BatchAugment.epoch


def _epoch(aug, x, y, order, chunk, start=0, epoch=2, batch=64):
    return [(s, xb.clone(), yb.clone()) for s, xb, yb in aug.epoch(x, y, order, batch, epoch, chunk=chunk, start=start)]


def test_epoch_is_the_same_whatever_the_chunk_size():
    x, y = _images(300), torch.arange(300) % 10  # 5 batches of 64, the last of 44
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=5)  # every op on, CutMix/MixUp on
    per_batch = _epoch(aug, x, y, order, chunk=64)
    assert [s for s, _, _ in per_batch] == [1, 2, 3, 4, 5] and len(per_batch[-1][1]) == 44
    for chunk in (1, 128, 200, 10_000):  # below a batch, whole batches, not a multiple, all at once
        other = _epoch(aug, x, y, order, chunk=chunk)
        assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(per_batch, other)), chunk


def test_epoch_batch_is_the_per_batch_pipeline_with_that_batch_s_generator():
    # Each batch equals augment → normalise → mix on its own images with batch_generator(epoch, step):
    # so the per-image exactness tests above hold for the chunked path too.
    x, y = _images(200), torch.arange(200) % 10
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=0)
    for step, xb, yb in _epoch(aug, x, y, order, chunk=10_000, epoch=7):
        idx = order[(step - 1) * 64:step * 64]
        g = aug.batch_generator(7, step)
        want_x, want_y = aug.mix(normalize(aug.augment(x[idx], g), MEAN, STD), y[idx], g)
        assert torch.equal(xb, want_x) and torch.equal(yb, want_y), step


def test_epoch_resumed_mid_way_yields_the_rest_exactly_and_epochs_differ():
    x, y = _images(300), torch.arange(300) % 10
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=0)
    full = _epoch(aug, x, y, None, chunk=128)
    rest = _epoch(aug, x, y, None, chunk=128, start=3)  # steps 1-3 were trained before the interruption
    assert [s for s, _, _ in rest] == [4, 5]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(full[3:], rest))
    other_epoch = _epoch(aug, x, y, None, chunk=128, epoch=3)
    assert not torch.equal(full[0][1], other_epoch[0][1])  # a new epoch draws new parameters


def test_batch_augment_and_the_reference_loader_share_one_mixer():
    from helpers import reference
    from helpers.augment import batch_mixer
    assert reference.batch_mixer is batch_mixer
    cfg = _cfg(**NO_AUG)
    x, y = normalize(_images(8), MEAN, STD), torch.arange(8)
    got = BatchAugment(cfg, MEAN, STD).mix(x, y, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # the same draws mix() makes: a seed, then "mixed at all?"
    seed = int(torch.randint(2**62, (1,), generator=g))
    assert float(torch.rand(1, generator=g)) < cfg.mix_p
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        want = batch_mixer(cfg)(x, y)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_an_image_s_own_label_dominates_its_mixed_target_70_percent_of_the_time():
    """What a train accuracy counted on Table 1's mixed batches can mean (BENCHMARKS.md, "Table 1's
    200 epochs"): with every batch CutMixed or MixUpped, an image's own label is the dominant label
    of its soft target for about 70 % of images (CutMix's box is clipped at the border, so it
    covers less than 1 − λ, and one pair in ten shares its class)."""
    from helpers.config import get_preset
    cfg = get_preset("seed").data
    assert cfg.mix_p == 1.0
    aug, g = BatchAugment(cfg, MEAN, STD, seed=0), torch.Generator().manual_seed(0)
    x, own = torch.zeros(128, 3, 32, 32), []  # CIFAR's size: the box rounds to whole pixels
    for _ in range(300):  # 38,400 images: the fraction to about ±0.3 %
        y = torch.randint(0, 10, (128,), generator=g)
        own.append(aug.mix(x, y, g)[1].argmax(1) == y)
    assert 0.68 < torch.cat(own).float().mean().item() < 0.72
