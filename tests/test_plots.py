"""Plot functions: draw into a given axes or a new figure, return it, leave rcParams alone."""
import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from helpers.analysis import expected_calibration_error  # noqa: E402
from helpers.config import OptimConfig  # noqa: E402
from helpers.optim import schedule_values  # noqa: E402
from helpers.plots import (plot_curves, plot_lr_finder, plot_paths_2d, plot_schedule,  # noqa: E402
                           reliability_diagram, training_curves)


def test_every_plot_returns_its_figure_and_keeps_rcparams():
    before = dict(matplotlib.rcParams)
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(200, 10, generator=g) * 3).softmax(dim=1)
    ece, bins = expected_calibration_error(probs, torch.randint(0, 10, (200,), generator=g))
    values = schedule_values(OptimConfig(), 3, 20)
    lrs = [1e-4 * 1.2 ** i for i in range(40)]
    finder = {"lr": lrs, "loss": [2 - i / 40 for i in range(40)], "raw_loss": [2.0] * 40}

    fig, axes = plt.subplots(1, 5)
    assert reliability_diagram(bins, ax=axes[0], ece=ece) is fig
    assert plot_curves([0, 1], {"a": [0, 1], "b": [1, 0]}, ax=axes[1], logy=False) is fig
    assert plot_schedule(values["lr"], values["momentum"], steps_per_epoch=20, ax=axes[2]) is fig
    assert plot_lr_finder(finder, marks={"chosen": 1e-3}, ax=axes[3]) is fig
    paths = {"a": [[-1.0, 1.0], [-0.5, 0.2], [0.0, 0.0]]}
    assert plot_paths_2d(lambda x, y: x ** 2 + 4 * y ** 2, paths, (-2, 2), (-1.5, 1.5), ax=axes[4]) is fig
    for new in (reliability_diagram(bins), plot_curves([1, 2], {"a": [1, 2]}, logx=True),
                plot_schedule(values["lr"]), plot_lr_finder(finder)):
        assert new is not fig and len(new.axes) >= 1
    assert dict(matplotlib.rcParams) == before
    plt.close("all")


def test_training_curves_from_fit_history():
    history = [{"epoch": e, "train_loss": 2 - e / 10, "test_loss": 1.9 - e / 10, "train_acc": e / 10,
                "test_acc": e / 9, "lr": 0.01} for e in (1, 2, 3)]
    fig = training_curves(history, title="t")
    assert len(fig.axes) == 4  # the report's Figure 3: test/train accuracy and loss
    plt.close("all")


def test_ablation_bars_and_accuracy_vs_time():
    from helpers.plots import ablation_bars, accuracy_vs_time
    fig = ablation_bars({"full": 0.85, "no_translate": 0.83, "ema": 0.855})
    ax = fig.axes[0]
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == [-2.0, 0.5]                          # points against full, full itself not drawn
    assert [t.get_text() for t in ax.get_yticklabels()] == ["no_translate", "ema"]  # best on top
    plt.close(fig)
    nan = float("nan")
    rows = [{"elapsed_s": 60.0 * i, "train_acc": 0.5 + 0.05 * i, "test_acc": nan} for i in range(1, 4)]
    fig = accuracy_vs_time(rows, final_acc=0.8, budget_s=600, target=0.85)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "test accuracy" not in labels                  # no test point was measured before the end
    assert any("final test accuracy 80.00%" in s for s in labels) and any("target" in s for s in labels)
    plt.close(fig)
    try:
        ablation_bars({"a": 0.5})
    except ValueError as e:
        assert "full" in str(e)
    else:
        raise AssertionError("a missing baseline must be an error")
