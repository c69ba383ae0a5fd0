"""Predictions, confusion matrix, per-class metrics and error analysis on hand-made cases.

The 3-class example used throughout (every number below is counted by hand):

    labels  0 0 0 0 | 1 1 1 | 2 2 2
    preds   0 0 1 2 | 1 1 0 | 2 1 1

    confusion (rows true, columns predicted)   recall      precision
        [[2, 1, 1],                            2/4         2/3 (column 0 holds 3)
         [1, 2, 0],                            2/3         2/5 (column 1 holds 5)
         [0, 2, 1]]                            1/3         1/2 (column 2 holds 2)
"""
import math

import pytest
import torch
from torch import nn

from helpers.analysis import (REPORT_PER_CLASS, Predictions, compare_with_report, confusion_matrix,
                              find_checkpoint, load_run_model, most_confident_mistakes,
                              most_confused_pairs, per_class_metrics, predictions, row_normalize)
from helpers.checkpoint import CheckpointError, save_checkpoint
from helpers.config import CLASSES, get_preset
from helpers.engine import amp_dtype, predict
from helpers.model import build_model

LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 1, 1])
ABC = ("a", "b", "c")


def test_confusion_matrix_counts_rows_true_columns_predicted():
    cm = confusion_matrix(LABELS, PREDS, 3)
    assert cm.tolist() == [[2, 1, 1],
                           [1, 2, 0],
                           [0, 2, 1]]
    assert cm.sum() == 10 and cm.sum(dim=1).tolist() == [4, 3, 3]  # rows: images per true class


def test_row_normalised():
    expected = torch.tensor([[2 / 4, 1 / 4, 1 / 4],
                             [1 / 3, 2 / 3, 0.0],
                             [0.0, 2 / 3, 1 / 3]], dtype=torch.float64)
    assert torch.allclose(confusion_matrix(LABELS, PREDS, 3, normalize=True), expected)
    assert torch.allclose(row_normalize(confusion_matrix(LABELS, PREDS, 3)), expected)
    # a class with no images gets a row of zeros, not nan
    assert row_normalize(torch.tensor([[1, 1], [0, 0]])).tolist() == [[0.5, 0.5], [0.0, 0.0]]


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="preds must be in 0..2"):
        confusion_matrix(LABELS, PREDS + 1, 3)
    with pytest.raises(ValueError, match="10 labels but 9"):
        confusion_matrix(LABELS, PREDS[:-1], 3)


def test_per_class_metrics():
    rows = per_class_metrics(confusion_matrix(LABELS, PREDS, 3), ABC)
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    assert [r["support"] for r in rows] == [4, 3, 3]
    assert [r["recall"] for r in rows] == pytest.approx([2 / 4, 2 / 3, 1 / 3])
    assert [r["accuracy"] for r in rows] == [r["recall"] for r in rows]  # the report's per-class accuracy
    assert [r["precision"] for r in rows] == pytest.approx([2 / 3, 2 / 5, 1 / 2])
    # never predicted → precision 0/0 = nan; no images → recall nan
    empty = per_class_metrics(torch.tensor([[3, 0], [0, 0]]), ("x", "y"))
    assert empty[0]["precision"] == 1.0 and math.isnan(empty[1]["precision"])
    assert math.isnan(empty[1]["recall"]) and empty[1]["support"] == 0


def test_per_class_accuracy_agrees_with_engine():
    from helpers.engine import per_class_accuracy
    logits = torch.nn.functional.one_hot(PREDS, 3).float()
    rows = per_class_metrics(confusion_matrix(LABELS, PREDS, 3), ABC)
    assert [r["accuracy"] for r in rows] == pytest.approx(per_class_accuracy(logits, LABELS, 3))


def test_a_class_without_images_is_nan_in_both_per_class_accuracies():
    from helpers.engine import per_class_accuracy
    labels, preds = torch.tensor([0, 0, 2]), torch.tensor([0, 1, 2])  # no image of class b
    ours = per_class_accuracy(torch.nn.functional.one_hot(preds, 3).float(), labels, 3)
    rows = per_class_metrics(confusion_matrix(labels, preds, 3), ABC)
    assert ours[0] == 0.5 and ours[2] == 1.0 and math.isnan(ours[1]) and math.isnan(rows[1]["accuracy"])


def test_most_confused_pairs():
    cm = confusion_matrix(LABELS, PREDS, 3)
    # off-diagonal: c→b 2; a→b 1, a→c 1, b→a 1 (ties keep row-major order)
    assert most_confused_pairs(cm, ABC, k=3) == [
        {"true": "c", "pred": "b", "count": 2, "rate": pytest.approx(2 / 3)},
        {"true": "a", "pred": "b", "count": 1, "rate": 0.25},
        {"true": "a", "pred": "c", "count": 1, "rate": 0.25},
    ]
    assert len(most_confused_pairs(cm, ABC, k=10)) == 4  # zero cells are not pairs
    # both directions together: a↔b = 1 + 1 of 4 + 3 images, b↔c = 0 + 2 of 6, a↔c = 1 + 0 of 7
    assert most_confused_pairs(cm, ABC, k=5, symmetric=True) == [
        {"true": "a", "pred": "b", "count": 2, "rate": pytest.approx(2 / 7)},
        {"true": "b", "pred": "c", "count": 2, "rate": pytest.approx(2 / 6)},
        {"true": "a", "pred": "c", "count": 1, "rate": pytest.approx(1 / 7)},
    ]


PROBS = torch.tensor([[0.70, 0.20, 0.10],   # label 0, right
                      [0.10, 0.80, 0.10],   # label 0, called 1 at 0.8
                      [0.20, 0.20, 0.60],   # label 1, called 2 at 0.6
                      [0.05, 0.90, 0.05],   # label 2, called 1 at 0.9
                      [0.30, 0.30, 0.40]])  # label 2, right
PROBS_LABELS = torch.tensor([0, 0, 1, 2, 2])


def test_most_confident_mistakes():
    rows = most_confident_mistakes(PROBS, PROBS_LABELS, k=10)
    assert [r["index"] for r in rows] == [3, 1, 2]
    assert rows[0] == {"index": 3, "label": 2, "pred": 1, "confidence": pytest.approx(0.9),
                       "prob_true": pytest.approx(0.05)}
    assert [r["index"] for r in most_confident_mistakes(PROBS, PROBS_LABELS, k=2)] == [3, 1]
    assert [r["index"] for r in most_confident_mistakes(PROBS, PROBS_LABELS, true_class=0)] == [1]
    assert [r["index"] for r in most_confident_mistakes(PROBS, PROBS_LABELS, pred_class=1)] == [3, 1]
    assert most_confident_mistakes(PROBS, PROBS_LABELS, true_class=1, pred_class=0) == []


def test_report_table_and_comparison():
    assert tuple(REPORT_PER_CLASS) == CLASSES
    assert sum(REPORT_PER_CLASS.values()) / 10 == pytest.approx(0.928)  # ≈ the report's 0.9275 overall
    ours = [0.9] * 10
    rows = compare_with_report(ours)
    assert rows[3] == {"class": "cat", "report": 0.87, "ours": 0.9, "diff": pytest.approx(0.03)}
    assert rows[1]["diff"] == pytest.approx(-0.09) and len(rows) == 10
    assert compare_with_report(dict(zip(CLASSES, ours))) == rows
    with pytest.raises(ValueError, match="no accuracy for cat"):
        compare_with_report({c: 0.5 for c in CLASSES if c != "cat"})
    with pytest.raises(ValueError, match="9 accuracies"):
        compare_with_report([0.5] * 9)


# ---------------------------------------------------------------------------- predictions

class _Fixed(nn.Module):
    """Logits = a fixed linear map of the mean of each channel: known, and not flip-invariant per pixel."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 2 * 2, 3)
        torch.manual_seed(0)
        nn.init.normal_(self.lin.weight)

    def forward(self, x):  # (B, 3, 2, 2)
        return self.lin(x.flatten(1))


def test_predictions_are_engine_predict_plus_softmax():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (7, 3, 2, 2), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (7,), generator=g)
    model, mean, std = _Fixed(), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    for tta in (False, True):
        pred = predictions(model, x, y, mean, std, tta_flip=tta, batch_size=3)
        logits = predict(model, x, mean, std, batch_size=3, tta_flip=tta)
        assert torch.equal(pred.logits, logits)
        assert torch.allclose(pred.probs, logits.softmax(1)) and torch.equal(pred.preds, logits.argmax(1))
        assert torch.equal(pred.labels, y)
    plain, flipped = (predictions(model, x, y, mean, std, tta_flip=t).logits for t in (False, True))
    assert not torch.allclose(plain, flipped)  # flip TTA reaches the model
    with pytest.raises(ValueError, match="mean and std"):
        predictions(model, x, y)


def test_predictions_properties():
    pred = Predictions.from_logits(PROBS.log(), PROBS_LABELS)
    assert torch.allclose(pred.probs, PROBS)
    assert pred.preds.tolist() == [0, 1, 2, 1, 2]
    assert pred.correct.tolist() == [True, False, False, False, True]
    assert pred.accuracy == pytest.approx(0.4)
    assert pred.confidence.tolist() == pytest.approx([0.7, 0.8, 0.6, 0.9, 0.4])


def _tiny_run(tmp_path, names=("best.pt", "last.pt")):
    cfg = get_preset("smoke", {"model.channels": [8], "model.strides": [1], "model.stem_channels": 8,
                               "model.num_k": 2})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    meta = {"mean": (0.4, 0.5, 0.6), "std": (0.25, 0.25, 0.25), "device": "cpu"}
    for name in names:
        save_checkpoint(tmp_path / name, {"model": model.state_dict(), "config": cfg.to_dict(), "meta": meta})
    return model, meta


def test_load_run_model_and_predictions_from_a_run_folder(tmp_path):
    model, meta = _tiny_run(tmp_path)
    loaded, cfg, mean, std = load_run_model(tmp_path)
    assert (mean, std) == (meta["mean"], meta["std"]) and cfg.model.channels == [8]
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 3, 4])
    from_run = predictions(tmp_path, x, y)  # mean/std and the evaluation precision from the checkpoint
    same_as_fit = amp_dtype(cfg.train.amp, torch.device("cpu"))  # what fit evaluated the run in
    assert torch.equal(from_run.logits, predict(model, x, meta["mean"], meta["std"], dtype=same_as_fit))


def test_find_checkpoint_prefers_best_then_last(tmp_path):
    _tiny_run(tmp_path, names=("last.pt",))
    with pytest.warns(UserWarning, match="no best.pt: using last.pt"):  # no best.pt: fall back, and say so
        assert find_checkpoint(tmp_path) == tmp_path / "last.pt"
    _tiny_run(tmp_path, names=("best.pt",))
    assert find_checkpoint(tmp_path) == tmp_path / "best.pt"
    assert find_checkpoint(tmp_path, prefer="last.pt") == tmp_path / "last.pt"
    assert find_checkpoint(tmp_path / "last.pt") == tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        find_checkpoint(tmp_path / "nothing")
