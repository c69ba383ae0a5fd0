"""Confusion heatmap, per-class bars and the mistakes gallery: return their figure, label it,
draw into a given axes, and leave matplotlib's global state alone."""
import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from helpers.analysis import REPORT_PER_CLASS, confusion_matrix, most_confident_mistakes  # noqa: E402
from helpers.plots import confusion_heatmap, mistakes_gallery, per_class_bars  # noqa: E402

LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 1, 1])
ABC = ["a", "b", "c"]


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_confusion_heatmap_counts_and_normalised():
    before = dict(matplotlib.rcParams)
    cm = confusion_matrix(LABELS, PREDS, 3)
    fig = confusion_heatmap(cm, ABC)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]  # the heatmap; fig.axes[1] is its colour bar
    assert len(fig.axes) == 2
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert [t.get_text() for t in ax.get_xticklabels()] == ABC
    assert [t.get_text() for t in ax.get_yticklabels()] == ABC
    assert _texts(ax) == ["2", "1", "1", "1", "2", "0", "0", "2", "1"]  # row by row: rows are true classes
    assert "counts" in ax.get_title()

    fig2, axes = plt.subplots(1, 2)
    assert confusion_heatmap(cm, ABC, normalize=True, ax=axes[1], title="norm") is fig2
    assert _texts(axes[1]) == ["0.50", "0.25", "0.25", "0.33", "0.67", "0.00", "0.00", "0.67", "0.33"]
    assert axes[1].get_title() == "norm"
    assert dict(matplotlib.rcParams) == before
    plt.close("all")


def test_per_class_bars_pairs_report_and_ours():
    before = dict(matplotlib.rcParams)
    ours = {c: 0.5 for c in REPORT_PER_CLASS}
    fig = per_class_bars(ours, title="t")
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:10] == list(REPORT_PER_CLASS.values()) and heights[10:] == [0.5] * 10
    assert [t.get_text() for t in ax.get_xticklabels()] == list(REPORT_PER_CLASS)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["report", "this run"]
    assert ax.get_title() == "t" and "accuracy" in ax.get_ylabel()
    fig2, ax2 = plt.subplots()
    assert per_class_bars({"x": 0.2, "y": 0.4}, report={"x": 0.3, "y": 0.6}, ax=ax2,
                          labels=("no factors", "factors")) is fig2
    assert [p.get_height() for p in ax2.patches] == [0.3, 0.6, 0.2, 0.4]
    assert dict(matplotlib.rcParams) == before
    plt.close("all")


def test_mistakes_gallery_titles_true_pred_and_confidence():
    before = dict(matplotlib.rcParams)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.05, 0.9, 0.05]])
    labels = torch.tensor([0, 0, 1, 2])
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mistakes = most_confident_mistakes(probs, labels, k=5)
    fig = mistakes_gallery(images, mistakes, ABC, ncols=2, suptitle="wrong")
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["c → b\n0.90", "a → b\n0.80", "b → c\n0.60"]
    assert len(fig.axes) == 4  # 3 mistakes on a 2 × 2 grid
    assert fig.axes[0].images[0].get_array().shape == (8, 8, 3)
    empty = mistakes_gallery(images, [], ABC)
    assert isinstance(empty, Figure) and "no mistakes" in empty.axes[0].texts[0].get_text()
    assert dict(matplotlib.rcParams) == before
    plt.close("all")
