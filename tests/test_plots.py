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
