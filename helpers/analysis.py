"""Evaluating predictions: calibration (expected calibration error and its bins); below it,
predictions of a model or run folder, the confusion matrix, per-class metrics and error analysis.

    probs = logits.softmax(dim=1)                      # (N, K)
    ece, bins = expected_calibration_error(probs, labels)
    reliability_diagram(bins)                          # helpers.plots
"""
from __future__ import annotations

__all__ = ["expected_calibration_error", "mcnemar", "fit_temperature", "REPORT_PER_CLASS", "Predictions",
           "RunModel", "find_checkpoint", "load_run_model", "predictions", "confusion_matrix", "row_normalize",
           "per_class_metrics", "most_confused_pairs", "most_confident_mistakes", "compare_with_report"]

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import nn

from .checkpoint import CheckpointError, RunFolder, eval_weights, load_checkpoint, load_weights
from .config import CLASSES, Config
from .engine import amp_dtype, predict
from .model import build_model

# Rows of `probs` must sum to 1 within this: catches logits passed by mistake.
_PROB_SUM_TOL = 1e-3


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = 15) -> tuple[float, dict]:
    """Expected calibration error (Guo et al. 2017) with ``n_bins`` equal-width confidence bins.

    Confidence = the top predicted probability; a prediction falls in bin b when its
    confidence is in (edges[b], edges[b+1]] (bin 0 also takes confidence 0).
    ECE = Σ_b (n_b / N)·|accuracy_b − confidence_b|.

    Args:
        probs: (N, K) predicted probabilities (softmax of the logits), rows summing to 1.
        labels: (N,) true class indices.
        n_bins: number of bins over [0, 1]; 15 as Guo et al. and Mukhoti et al.

    Returns:
        (ece, bins): ece as a float in [0, 1]; bins = {"confidence", "accuracy": per-bin
        means (nan for empty bins), "count": images per bin, "edges": n_bins + 1 bin edges},
        all plain lists so they plot and serialise directly.
    """
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {tuple(probs.shape)}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(f"labels must be (N,) with N = {len(probs)}, got shape {tuple(labels.shape)}")
    if len(probs) == 0:
        raise ValueError("no predictions: probs has 0 rows")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = probs.detach().to("cpu", torch.float64)  # float64: exact bin edges and sums over 10k images
    y = labels.detach().to("cpu", torch.long)
    worst = (p.sum(dim=1) - 1).abs().max().item()
    if not worst <= _PROB_SUM_TOL or p.min().item() < 0:
        raise ValueError(f"probs must be probabilities (rows >= 0 summing to 1; worst row off by "
                         f"{worst:.3g}): pass logits.softmax(dim=1), not logits")
    conf, pred = p.max(dim=1)  # (N,), (N,)
    correct = (pred == y).to(torch.float64)  # (N,)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # right=False: index b with edges[b] < conf <= edges[b+1]; conf = 0 lands in bin 0.
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # (N,) in 0..n_bins-1
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nonempty = count > 0
    mean_conf = torch.where(nonempty, conf_sum / count.clamp_min(1), torch.nan)
    mean_acc = torch.where(nonempty, acc_sum / count.clamp_min(1), torch.nan)
    gaps = (mean_acc - mean_conf).abs()[nonempty]
    ece = float((count[nonempty] / len(p) * gaps).sum())
    bins = {"confidence": mean_conf.tolist(), "accuracy": mean_acc.tolist(),
            "count": [int(c) for c in count.tolist()], "edges": edges.tolist()}
    return ece, bins


def mcnemar(correct_a: torch.Tensor, correct_b: torch.Tensor) -> tuple[int, int, float, float]:
    """McNemar's test of two classifiers on the same images: (b, c, χ², p).

    ``correct_a``, ``correct_b``: (N,) bool, whether each classifier got each image right.
    b = images only A gets right, c = images only B gets right; images both get right or
    both get wrong say nothing about which is better. If neither is better, b and c are
    two draws of the same coin: χ² = (b − c)² / (b + c) with one degree of freedom (no
    continuity correction; for b + c ≥ 25), and p = P(χ²₁ ≥ χ²) = erfc(√(χ²/2)).
    """
    a, b_ = correct_a.bool().cpu(), correct_b.bool().cpu()
    if a.shape != b_.shape:
        raise ValueError(f"{tuple(a.shape)} and {tuple(b_.shape)}: one answer per image from each classifier")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    chi2 = (b - c) ** 2 / (b + c) if b + c else 0.0
    return b, c, chi2, math.erfc(math.sqrt(chi2 / 2))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of softmax(logits / T).

    T > 1 softens an over-confident model, T < 1 sharpens an under-confident one; the
    predicted classes, hence the accuracy, never change. Fit T on images the model will
    not be judged on (a validation split), or its ECE looks better than it is.
    """
    z, y = logits.detach().float().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), requires_grad=True)  # T = exp(log_t) stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(nll)
    return float(log_t.detach().exp())


# ---------------------------------------------------------------------------- predictions and errors
# Predictions of a model or a run folder, the confusion matrix and what it tells:
#
#     model, cfg, mean, std = load_run_model(runs_dir() / "laptop")   # best.pt of the run
#     pred = predictions(model, test_x, test_y, mean, std, tta_flip=True)
#     cm = confusion_matrix(pred.labels, pred.preds, 10)              # rows true, columns predicted
#     most_confused_pairs(cm, CLASSES, k=5); most_confident_mistakes(pred.probs, pred.labels, k=16)

# The seed report's per-class test accuracy (§5), the numbers this course compares against.
REPORT_PER_CLASS: dict[str, float] = {
    "plane": 0.94, "car": 0.99, "bird": 0.91, "cat": 0.87, "deer": 0.93,
    "dog": 0.85, "frog": 0.97, "horse": 0.94, "ship": 0.94, "truck": 0.94,
}


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class Predictions:
    """A model's outputs on labelled images, all on the CPU.

    logits (N, K) fp32, probs (N, K) = softmax of logits, labels (N,) true classes,
    preds (N,) = argmax of logits.
    """
    logits: torch.Tensor
    probs: torch.Tensor
    labels: torch.Tensor
    preds: torch.Tensor

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> "Predictions":
        logits = logits.detach().float().cpu()
        labels = labels.detach().long().cpu()
        if logits.ndim != 2 or labels.shape != (len(logits),):
            raise ValueError(f"logits must be (N, K) and labels (N,), got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
        return cls(logits, logits.softmax(dim=1), labels, logits.argmax(dim=1))

    @property
    def confidence(self) -> torch.Tensor:
        """(N,) the top probability: how sure the model is of its answer."""
        return self.probs.max(dim=1).values

    @property
    def correct(self) -> torch.Tensor:
        """(N,) bool, prediction == label."""
        return self.preds == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())


class RunModel(NamedTuple):
    model: nn.Module   # in eval mode, on the requested device
    cfg: Config        # the config the run was trained with
    mean: tuple        # the run's normalisation (training-set channel statistics)
    std: tuple


def find_checkpoint(run: str | Path, prefer: str = RunFolder.BEST) -> Path:
    """The checkpoint file to analyse: ``run`` itself if it is a file, else the run folder's
    ``prefer`` (best.pt: the best epoch's weights), else its last.pt, with a warning that says so."""
    run = Path(run)
    if run.is_file():
        return run
    path, note = RunFolder(run).analysis_checkpoint(prefer)
    if note:
        warnings.warn(note, stacklevel=2)
    return path


def load_run_model(run: str | Path, prefer: str = RunFolder.BEST,
                   device: str | torch.device = "cpu") -> RunModel:
    """Rebuild a trained model from a run folder or checkpoint file.

    The architecture comes from the checkpoint's own config and the normalisation
    from its meta, so the model sees exactly the inputs it was trained on.
    """
    path = find_checkpoint(run, prefer)
    state = load_checkpoint(path, map_location=device)
    cfg = Config.from_dict(state["config"])
    meta = state.get("meta", {})
    if "mean" not in meta or "std" not in meta:
        raise CheckpointError(f"{run} has no normalisation statistics (meta.mean/std) in its checkpoint")
    model = build_model(cfg.model).to(device)
    load_weights(model, eval_weights(state), path)
    return RunModel(model.eval(), cfg, tuple(meta["mean"]), tuple(meta["std"]))


def predictions(model: nn.Module | str | Path, x: torch.Tensor, y: torch.Tensor,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                tta_flip: bool = False, batch_size: int = 512, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, tta_translate: int = 0) -> Predictions:
    """Logits, probabilities, labels and predicted classes of a model on uint8 images.

    Args:
        model: a model, or a run folder / checkpoint file (loaded with ``load_run_model``
            onto ``device``; its mean/std are used unless given). A model stays where it is.
        x: (N, 3, H, W) uint8 images; y: (N,) labels.
        mean, std: the normalisation the model was trained with (required for a model).
        tta_flip, tta_translate: test-time augmentation (``helpers.engine.predict``).
        dtype: the autocast dtype. For a run folder, None means the run's own ``train.amp``,
            the precision ``fit`` evaluated in, so the accuracy is the one it reported; for a
            model, None is fp32 (pass ``amp_dtype(cfg.train.amp, device)`` to match ``fit``).
    """
    if isinstance(model, (str, Path)):
        loaded = load_run_model(model, device=device)
        model = loaded.model
        mean = loaded.mean if mean is None else mean
        std = loaded.std if std is None else std
        if dtype is None:
            dtype = amp_dtype(loaded.cfg.train.amp, torch.device(device))
    if mean is None or std is None:
        raise ValueError("pass the model's training mean and std (e.g. FitResult.meta['mean'], "
                         "or load_run_model(run).mean)")
    logits = predict(model, x, mean, std, batch_size=batch_size, dtype=dtype, tta_flip=tta_flip,
                     tta_translate=tta_translate)
    return Predictions.from_logits(logits, y)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int,
                     normalize: bool = False) -> torch.Tensor:
    """(K, K) counts: entry [i, j] = images of true class i predicted as j (rows true,
    columns predicted). ``normalize=True`` divides each row by its class's count (``row_normalize``)."""
    labels, preds = labels.detach().long().cpu().reshape(-1), preds.detach().long().cpu().reshape(-1)
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    for name, t in (("labels", labels), ("preds", preds)):
        if len(t) and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must be in 0..{num_classes - 1}, got {int(t.min())}..{int(t.max())}")
    cm = torch.bincount(labels * num_classes + preds, minlength=num_classes ** 2)
    cm = cm.reshape(num_classes, num_classes)
    return row_normalize(cm) if normalize else cm


def row_normalize(cm: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum: [i, j] = P(predicted j | true i). A class with no images gets a row of 0."""
    cm = cm.double()
    return cm / cm.sum(dim=1, keepdim=True).clamp_min(1)


def per_class_metrics(cm: torch.Tensor, classes: Sequence[str] = CLASSES) -> list[dict]:
    """One row per class: accuracy (= recall, the report's per-class accuracy), precision,
    recall and support (images of the class). 0/0 is ``nan``."""
    cm = cm.double()
    tp, support, predicted = cm.diag(), cm.sum(dim=1), cm.sum(dim=0)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    recall = torch.where(support > 0, tp / support.clamp_min(1), nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    return [{"class": c, "accuracy": float(r), "precision": float(p), "recall": float(r),
             "support": int(s)} for c, r, p, s in zip(classes, recall, precision, support)]


def most_confused_pairs(cm: torch.Tensor, classes: Sequence[str] = CLASSES, k: int = 5,
                        symmetric: bool = False) -> list[dict]:
    """The ``k`` largest off-diagonal entries, most first (ties in row-major order).

    Each row: true, pred, count and rate = count / images of the true class.
    ``symmetric=True`` adds both directions (cat→dog + dog→cat) into one pair,
    listed once as (i, j) with i < j; its rate is over both classes' images.
    """
    cm = cm.long().cpu()
    support = cm.sum(dim=1)
    rows = []
    for i in range(len(cm)):
        for j in range(len(cm)):
            if i == j or (symmetric and j < i):
                continue
            count, n = int(cm[i, j]), int(support[i])
            if symmetric:
                count, n = count + int(cm[j, i]), n + int(support[j])
            if count:
                rows.append({"true": classes[i], "pred": classes[j], "count": count,
                             "rate": count / n if n else float("nan")})
    rows.sort(key=lambda r: -r["count"])  # stable: ties keep row-major order
    return rows[:k]


def most_confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, k: int = 16,
                            true_class: int | None = None, pred_class: int | None = None) -> list[dict]:
    """The ``k`` wrong predictions with the highest confidence, most confident first.

    Optionally only those of one true class and/or one predicted class (e.g. cats called dogs).
    Each row: index (into the images), label, pred, confidence (top probability) and
    prob_true (the probability given to the right class).
    """
    probs, labels = probs.detach().cpu(), labels.detach().long().cpu()
    conf, pred = probs.max(dim=1)
    wrong = pred != labels
    if true_class is not None:
        wrong &= labels == true_class
    if pred_class is not None:
        wrong &= pred == pred_class
    idx = wrong.nonzero().flatten()
    order = conf[idx].argsort(descending=True, stable=True)[:k]
    return [{"index": int(i), "label": int(labels[i]), "pred": int(pred[i]),
             "confidence": float(conf[i]), "prob_true": float(probs[i, labels[i]])}
            for i in idx[order]]


def compare_with_report(ours: Mapping[str, float] | Sequence[float],
                        report: Mapping[str, float] = REPORT_PER_CLASS) -> list[dict]:
    """Rows (class, report, ours, diff = ours − report) in the report's class order.

    ``ours``: {class: accuracy}, or accuracies in ``CLASSES`` order (e.g. the
    ``accuracy`` column of ``per_class_metrics``).
    """
    if not isinstance(ours, Mapping):
        ours = list(ours)
        if len(ours) != len(report):
            raise ValueError(f"{len(ours)} accuracies for {len(report)} classes")
        ours = dict(zip(report, ours))
    missing = set(report) - set(ours)
    if missing:
        raise ValueError(f"no accuracy for {', '.join(sorted(missing))}")
    return [{"class": c, "report": r, "ours": float(ours[c]), "diff": float(ours[c]) - r}
            for c, r in report.items()]
