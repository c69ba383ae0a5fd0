"""Figures for the notebooks. Each function takes data (and optionally an ``ax`` to draw
into), returns the figure, and leaves matplotlib's global state (rcParams, styles) alone.

    fig = reliability_diagram(bins)                    # bins from expected_calibration_error
    fig, axes = plt.subplots(1, 2); plot_curves(x, {"CE": ce, "focal": fl}, ax=axes[0])
"""
from __future__ import annotations

__all__ = ["show_grid", "reliability_diagram", "plot_curves", "plot_schedule", "plot_lr_finder", "plot_paths_2d",
           "training_curves", "confusion_heatmap", "per_class_bars", "mistakes_gallery", "ablation_bars",
           "accuracy_vs_time"]

import math
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def _to_hwc(img: torch.Tensor) -> "np.ndarray":
    """(3, H, W) uint8 or [0, 1] float → (H, W, 3) float in [0, 1] for imshow."""
    img = img.detach().cpu()
    img = img.float() / 255 if img.dtype == torch.uint8 else img.float().clamp(0, 1)
    return img.permute(1, 2, 0).numpy()


def show_grid(images: torch.Tensor | Sequence[torch.Tensor], titles: Sequence[str] | None = None,
              ncols: int = 8, fig: Figure | None = None, size: float = 1.4,
              fontsize: float = 8, suptitle: str | None = None) -> Figure:
    """Images (B, 3, H, W) (uint8, or float in [0, 1]) in a grid with optional titles.

    Draws into ``fig`` (cleared first) when given, else into a new figure of
    ``size`` inches per image, which is closed in pyplot so that only the
    returned object displays in a notebook. Touches no global rcParams.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    has_titles = titles is not None and any(titles)
    lines = max((str(t).count("\n") + 1 for t in titles), default=1) if has_titles else 0
    if fig is None:
        fig = plt.figure(figsize=(size * ncols, (size + 0.22 * lines) * nrows))  # room for each title line
        plt.close(fig)  # the caller displays the returned figure; pyplot must not show it again
    else:
        fig.clear()
    # Constrained layout makes room for each title between the rows (tight_layout let them overlap
    # the images above: it does not see how imshow's fixed aspect shrinks the axes).
    fig.set_layout_engine("constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(_to_hwc(images[i]), interpolation="nearest")
            if has_titles:
                ax.set_title(str(titles[i]), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _fig_ax(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The given axes and its figure, or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def reliability_diagram(bins: dict, ax: Axes | None = None, title: str | None = None,
                        ece: float | None = None) -> Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration.

    Args:
        bins: the dict returned by ``helpers.analysis.expected_calibration_error``.
        title: axes title; ``ece`` (if given) is appended to it.
    """
    fig, ax = _fig_ax(ax, (4.6, 5.0))
    edges = bins["edges"]
    left = edges[:-1]
    width = [b - a for a, b in zip(edges[:-1], edges[1:])]
    acc = [0.0 if math.isnan(a) else a for a in bins["accuracy"]]  # empty bins: no bar
    conf = [c if not math.isnan(c) else (l + w / 2) for c, l, w in zip(bins["confidence"], left, width)]
    ax.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="white", label="accuracy")
    # The gap between a bin's mean confidence and its accuracy, hatched (visible over the bar
    # too): above the bar = overconfident, inside it = underconfident.
    gap_bottom = [min(a, c) for a, c in zip(acc, conf)]
    gap_height = [abs(c - a) if n else 0.0 for a, c, n in zip(acc, conf, bins["count"])]
    ax.bar(left, gap_height, bottom=gap_bottom, width=width, align="edge", fill=False, hatch="///",
           edgecolor="tab:red", linewidth=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
    label = title or ""
    if ece is not None:
        label = f"{label} (ECE {ece:.3f})" if label else f"ECE {ece:.3f}"
    if label:
        ax.set_title(label)
    # Below the axes: bars can fill any corner (an underconfident model's reach the top left).
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize="small")
    return fig


def plot_curves(x: Sequence[float], curves: Mapping[str, Sequence[float]], ax: Axes | None = None,
                xlabel: str = "", ylabel: str = "", title: str | None = None,
                logx: bool = False, logy: bool = False) -> Figure:
    """One line per entry of ``curves`` (label → y values over ``x``), with a legend."""
    fig, ax = _fig_ax(ax, (5.5, 3.8))
    for label, y in curves.items():
        ax.plot(x, y, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_schedule(lrs: Sequence[float], momenta: Sequence[float] | None = None,
                  steps_per_epoch: int | None = None, ax: Axes | None = None,
                  title: str | None = None) -> Figure:
    """Learning rate (and momentum, on a second axis) per optimizer step, with the
    start, peak and final lr marked. x is in epochs when ``steps_per_epoch`` is given."""
    fig, ax = _fig_ax(ax, (7.0, 3.8))
    scale = 1.0 / steps_per_epoch if steps_per_epoch else 1.0
    x = [i * scale for i in range(len(lrs))]
    ax.plot(x, lrs, color="tab:blue", label="learning rate")
    ax.set(xlabel="epoch" if steps_per_epoch else "step", ylabel="learning rate")
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    ax.set_ylim(0, max(lrs) * 1.3)
    marks = ((0, f"start {lrs[0]:.3g}\n= max_lr / div_factor"),
             (peak, f"peak {lrs[peak]:.3g} = max_lr\nat {peak / len(lrs):.0%} of steps"),
             (len(lrs) - 1, f"end {lrs[-1]:.2g}\n= start / final_div_factor"))
    for i, _ in marks:
        ax.plot(x[i], lrs[i], "o", color="tab:blue")
    ax2 = None
    if momenta is not None:
        ax2 = ax.twinx()
        ax2.plot(x, momenta, color="tab:orange", label="momentum")
        ax2.set_ylabel("momentum", color="tab:orange")
        lo, hi = min(momenta), max(momenta)
        ax2.set_ylim(lo - (hi - lo) * 0.2 - 1e-3, hi + (hi - lo) * 0.6 + 1e-3)
        ax.legend(handles=ax.get_lines()[:1] + ax2.get_lines(), loc="upper right", fontsize="small")
    top = ax2 if ax2 is not None else ax  # the twin axes draws over ax: labels go on it, in ax's data units
    for i, text in marks:
        top.annotate(text, (x[i], lrs[i]), xycoords=ax.transData, textcoords="offset points", xytext=(6, 8),
                     va="bottom", ha="right" if i == len(lrs) - 1 else "left", fontsize="small", zorder=5,
                     bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.9))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def plot_lr_finder(result: Mapping, marks: Mapping[str, float] | None = None,
                   ax: Axes | None = None, title: str | None = None) -> Figure:
    """Smoothed (and raw) loss against lr on a log axis, from ``helpers.optim.lr_range_test``;
    ``marks`` = {label: lr} draws labelled vertical lines (e.g. the suggested and the chosen lr)."""
    fig, ax = _fig_ax(ax, (6.0, 3.8))
    ax.plot(result["lr"], result["raw_loss"], color="lightgray", label="loss per batch")
    ax.plot(result["lr"], result["loss"], color="tab:blue", label="smoothed loss")
    colors = ("tab:green", "tab:red", "tab:purple", "tab:orange")
    for (label, lr), color in zip((marks or {}).items(), colors):
        ax.axvline(lr, color=color, linestyle="--", label=f"{label}: {lr:.3g}")
    ax.set_xscale("log")
    finite = [v for v in result["loss"] if math.isfinite(v)]
    if finite:  # the diverging tail would squash the interesting part
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * min(finite)) * 1.05)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_paths_2d(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  paths: Mapping[str, Sequence[Sequence[float]]], xlim: tuple[float, float],
                  ylim: tuple[float, float], ax: Axes | None = None, title: str | None = None) -> Figure:
    """Optimiser trajectories over the contours of a 2-D function.

    Args:
        fn: maps coordinate grids ``(X, Y)`` (tensors of one shape) to values of that shape.
        paths: label → points ``(T, 2)`` visited, in order.
    """
    fig, ax = _fig_ax(ax, (6.0, 4.0))
    xs = torch.linspace(xlim[0], xlim[1], 200)
    ys = torch.linspace(ylim[0], ylim[1], 200)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")  # (200, 200) each
    Z = fn(X, Y)
    levels = torch.quantile(Z.flatten(), torch.linspace(0.01, 0.95, 12)).unique()
    ax.contour(X.numpy(), Y.numpy(), Z.numpy(), levels=levels.numpy(), colors="lightgray", linewidths=0.8)
    for label, pts in paths.items():
        pts = torch.as_tensor(pts)
        ax.plot(pts[:, 0].numpy(), pts[:, 1].numpy(), marker=".", markersize=3, linewidth=1, label=label)
    ax.plot([0], [0], "k*", markersize=10)
    ax.set(xlim=xlim, ylim=ylim, xlabel="$w_1$", ylabel="$w_2$")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def training_curves(history: Sequence[Mapping[str, float]], title: str | None = None) -> Figure:
    """The report's Figure 3: test acc, train acc, test loss, train loss against epoch (2×2).

    ``history`` is ``fit``'s list of per-epoch records; validation curves are
    drawn too when the records have them.
    """
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True, layout="constrained")
    panels = (("test_acc", "Testing accuracy"), ("train_acc", "Training accuracy"),
              ("test_loss", "Testing loss"), ("train_loss", "Training loss"))
    for ax, (key, name) in zip(axes.flat, panels):
        ax.plot(epochs, [h[key] for h in history], marker="." if len(epochs) < 30 else None)
        val = key.replace("test", "val")
        if key.startswith("test") and history and val in history[0]:
            ax.plot(epochs, [h[val] for h in history], "--", label="validation")
            ax.legend(fontsize="small")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[1][0].xaxis.set_major_locator(MaxNLocator(integer=True))  # shared by all four panels
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------- confusion and errors

def confusion_heatmap(cm: torch.Tensor, classes: Sequence[str], normalize: bool = False,
                      ax: Axes | None = None, title: str | None = None, cmap: str = "Blues") -> Figure:
    """The confusion matrix as a seaborn heatmap: rows = true class, columns = predicted class.

    Args:
        cm: (K, K) counts from ``helpers.analysis.confusion_matrix``.
        normalize: show each row as fractions of its class (``row_normalize``), else counts.
    """
    import seaborn as sns

    from .analysis import row_normalize
    fig, ax = _fig_ax(ax, (6.4, 5.4))
    values = row_normalize(cm) if normalize else cm.long()
    sns.heatmap(values.cpu().numpy(), ax=ax, annot=True, fmt=".2f" if normalize else "d", cmap=cmap,
                xticklabels=list(classes), yticklabels=list(classes), square=True,
                vmin=0, vmax=1 if normalize else None, annot_kws={"fontsize": "small"},
                cbar_kws={"label": "fraction of the true class" if normalize else "images"})
    if not normalize:  # counts: whole numbers on the colour bar
        cbar = ax.collections[0].colorbar
        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(title or ("confusion matrix, row-normalised" if normalize else "confusion matrix (counts)"))
    return fig


def per_class_bars(ours: Mapping[str, float], report: Mapping[str, float] | None = None,
                   ax: Axes | None = None, title: str | None = None,
                   labels: tuple[str, str] = ("report", "this run")) -> Figure:
    """Per-class accuracy as grouped bars: the report's value beside ours for each class.

    ``ours``: {class: accuracy}; ``report`` defaults to ``helpers.analysis.REPORT_PER_CLASS``.
    """
    from .analysis import REPORT_PER_CLASS
    report = REPORT_PER_CLASS if report is None else report
    fig, ax = _fig_ax(ax, (8.0, 3.6))
    names = list(report)
    x = range(len(names))
    w = 0.4
    ax.bar([i - w / 2 for i in x], [report[c] for c in names], width=w, color="lightgray",
           edgecolor="gray", label=labels[0])
    ax.bar([i + w / 2 for i in x], [ours[c] for c in names], width=w, color="tab:blue", label=labels[1])
    ax.set_xticks(list(x), names)
    ax.set(ylim=(0, 1.15), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0], ylabel="per-class accuracy (recall)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", ncols=2, fontsize="small")  # above the bars, which end at 1
    ax.grid(axis="y", alpha=0.3)
    return fig


def mistakes_gallery(images: torch.Tensor, mistakes: Sequence[Mapping], classes: Sequence[str],
                     ncols: int = 8, fig: Figure | None = None, suptitle: str | None = None) -> Figure:
    """Misclassified images titled "true → pred" and the confidence of the wrong answer.

    Args:
        images: (N, 3, H, W) uint8, the images the predictions were made on.
        mistakes: rows from ``helpers.analysis.most_confident_mistakes`` (index, label, pred, confidence).
        fig: draw into this figure (cleared), as ``show_grid``.
    """
    if not mistakes:
        if fig is None:
            fig = plt.figure(figsize=(4, 1))
            plt.close(fig)  # as show_grid: only the returned object displays
        else:
            fig.clear()
        ax = fig.add_subplot()  # a figure without axes does not display in a notebook
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no mistakes to show", ha="center", va="center")
        return fig
    picked = torch.stack([images[m["index"]] for m in mistakes])  # (M, 3, H, W)
    titles = [f"{classes[m['label']]} → {classes[m['pred']]}\n{m['confidence']:.2f}" for m in mistakes]
    return show_grid(picked, titles, ncols=ncols, fig=fig, suptitle=suptitle)


# ---------------------------------------------------------------------------- short-schedule ablation

def ablation_bars(accuracy: Mapping[str, float], baseline: str = "full", ax: Axes | None = None,
                  title: str | None = None) -> Figure:
    """Horizontal bars: each variant's test accuracy minus the baseline's, in points (best on top)."""
    if baseline not in accuracy:
        raise ValueError(f"no {baseline!r} among {', '.join(accuracy)}")
    rows = sorted(((k, (v - accuracy[baseline]) * 100) for k, v in accuracy.items() if k != baseline),
                  key=lambda kv: kv[1])
    fig, ax = _fig_ax(ax, (7.5, 0.45 * len(rows) + 1.2))
    ax.barh([k for k, _ in rows], [d for _, d in rows],
            color=["tab:green" if d > 0 else "tab:red" for _, d in rows])
    for i, (_, d) in enumerate(rows):
        ax.annotate(f"{d:+.2f}", (d, i), xytext=(4 if d >= 0 else -4, 0), textcoords="offset points",
                    ha="left" if d >= 0 else "right", va="center", fontsize="small")
    ax.axvline(0, color="black", lw=0.8)
    ax.margins(x=0.25)
    ax.set_xlabel(f"test accuracy − {baseline}'s ({accuracy[baseline]:.2%}), points")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def accuracy_vs_time(rows: Sequence[Mapping[str, float]], final_acc: float | None = None,
                     budget_s: float | None = None, target: float | None = None, ax: Axes | None = None,
                     title: str | None = None) -> Figure:
    """Accuracy against wall-clock seconds for ``benchmarks/train.py``'s per-epoch rows.

    Plots train accuracy per epoch, test accuracy where it was measured (not NaN), the
    final test accuracy as a star, and optional budget (vertical) and target (horizontal) lines.
    """
    fig, ax = _fig_ax(ax, (7, 4))
    t = [r["elapsed_s"] for r in rows]
    ax.plot(t, [r["train_acc"] for r in rows], marker=".", label="train accuracy (augmented batches)")
    tested = [(r["elapsed_s"], r["test_acc"]) for r in rows if not math.isnan(r["test_acc"])]
    if tested:
        ax.plot(*zip(*tested), marker="o", label="test accuracy")
    if final_acc is not None and rows:
        ax.plot([t[-1]], [final_acc], marker="*", markersize=14, ls="none", color="tab:red",
                label=f"final test accuracy {final_acc:.2%}")
    if budget_s is not None:
        ax.axvline(budget_s, color="gray", ls="--", label=f"budget {budget_s / 60:.0f} min")
    if target is not None:
        ax.axhline(target, color="gray", ls=":", label=f"target {target:.0%}")
    ax.set(xlabel="wall-clock seconds since the data was in memory", ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    if title:
        ax.set_title(title)
    return fig
