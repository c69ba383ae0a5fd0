"""The checks behind ``helpers.exercises``: for each exercise, a list of (what it checks, check).

A check calls the student's function on small fixed inputs (fixed seeds, explicit generators)
and raises ``Mismatch`` with what was expected and what came back; edge cases catch the classic
mistakes (a transposed confusion matrix, a missing ``zero_grad``, an unweighted ECE).
"""
from __future__ import annotations

__all__ = ["Mismatch", "Check", "HFLIP", "MIX_CONV", "FOCAL_LOSS", "TRAIN_STEP", "CONFUSION_MATRIX", "ECE"]

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .analysis import confusion_matrix, expected_calibration_error
from .augment import hflip
from .engine import train_step
from .losses import FocalLoss
from .model import MixConv

Check = tuple[str, Callable[[Callable], None]]  # (what it checks, the check: raises Mismatch on failure)


class Mismatch(AssertionError):
    """A check failed: the message says what was expected and what came back."""


# ---------------------------------------------------------------------------- comparing

def _show(t: torch.Tensor) -> str:
    if t.ndim == 0:
        return f"{t.item():.6g}"
    return str(t.tolist()) if t.numel() <= 16 else f"a tensor of shape {tuple(t.shape)}"


def _expect_close(got, expected: torch.Tensor, what: str = "the result",
                  atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Raise Mismatch unless ``got`` is a tensor of ``expected``'s shape with close values."""
    if not isinstance(got, torch.Tensor):
        raise Mismatch(f"expected {what} to be a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise Mismatch(f"expected {what} of shape {tuple(expected.shape)}, got shape {tuple(got.shape)}")
    g, e = got.detach().double().cpu(), expected.detach().double().cpu()
    if torch.allclose(g, e, atol=atol, rtol=rtol):
        return
    if e.numel() <= 16:
        raise Mismatch(f"expected {what} = {_show(expected.detach())}, got {_show(got.detach())}")
    diff = (g - e).abs().nan_to_num(nan=float("inf"))
    i = tuple(int(v) for v in torch.unravel_index(diff.argmax(), diff.shape))
    raise Mismatch(f"{what} at {list(i)}: expected {e[i].item():.6g}, got {g[i].item():.6g}")


def _expect_number(got, expected: float, what: str = "the result", atol: float = 1e-6) -> None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)):
        raise Mismatch(f"expected {what} to be a number, got {type(got).__name__}")
    if not abs(got - expected) <= atol:  # `not <=` also catches NaN
        raise Mismatch(f"expected {what} = {expected:.6g}, got {got:.6g}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- 01 · hflip

def _hflip_random(fn: Callable) -> None:
    g = _gen(0)
    x = torch.rand(6, 3, 5, 7, generator=g)  # H ≠ W: flipping the wrong axis shows
    flip = torch.rand(6, generator=g) < 0.5
    _expect_close(fn(x, flip), hflip(x, flip))


def _hflip_none(fn: Callable) -> None:
    x = torch.rand(4, 3, 5, 7, generator=_gen(1))
    _expect_close(fn(x, torch.zeros(4, dtype=torch.bool)), x)


def _hflip_all(fn: Callable) -> None:
    x = torch.rand(4, 3, 5, 7, generator=_gen(2))
    _expect_close(fn(x, torch.ones(4, dtype=torch.bool)), x.flip(-1))


def _hflip_uint8(fn: Callable) -> None:
    x = torch.randint(0, 256, (4, 3, 5, 7), generator=_gen(3), dtype=torch.uint8)
    flip = torch.tensor([True, False, False, True])
    got = fn(x, flip)
    if isinstance(got, torch.Tensor) and got.dtype != torch.uint8:
        raise Mismatch(f"expected dtype torch.uint8 (the input's), got {got.dtype}")
    _expect_close(got, hflip(x, flip))


def _hflip_input_kept(fn: Callable) -> None:
    x = torch.rand(4, 3, 5, 7, generator=_gen(4))
    before = x.clone()
    fn(x, torch.tensor([True, True, False, True]))
    _expect_close(x, before, "the input after the call (it must not change in place)")


# ---------------------------------------------------------------------------- 02 · mixing sum

def _mix_inputs(seed: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = _gen(seed)
    h = torch.randn(3, 4, 6, 6, generator=g)                     # (B, C_in, H, W)
    a = torch.rand(3, 5, generator=g).softmax(dim=1)             # (B, K), a different a per image
    w = torch.randn(5, 2, 4, 3, 3, generator=g)                  # (K, C_out, C_in, 3, 3)
    b = torch.randn(5, 2, generator=g) if bias else None         # (K, C_out)
    return h, a, w, b


def _mix_reference(h: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: int) -> torch.Tensor:
    # MixConv keeps the K kernels stacked as (K·C_out, C_in, k, k); the exercise passes them as (K, C_out, ...).
    k, c_out, c_in = weight.shape[:3]
    conv = MixConv(c_in, c_out, k, stride=stride, bias=bias is not None, impl="naive")
    with torch.no_grad():
        conv.weight.copy_(weight.flatten(0, 1))
        if bias is not None:
            conv.bias.copy_(bias)
        return conv(h, a)


def _mix_one_hot(fn: Callable) -> None:
    h, _, w, b = _mix_inputs(0, bias=True)
    a = F.one_hot(torch.full((3,), 2), 5).float()                # every image picks C_2
    _expect_close(fn(h, a, w, b, 1, 1), F.conv2d(h, w[2], b[2], 1, 1))


def _mix_per_image(fn: Callable) -> None:
    h, _, w, b = _mix_inputs(1, bias=True)
    ks = [4, 0, 2]                                               # image i picks C_{ks[i]}
    a = F.one_hot(torch.tensor(ks), 5).float()
    expected = torch.cat([F.conv2d(h[i:i + 1], w[k], b[k], 1, 1) for i, k in enumerate(ks)])
    _expect_close(fn(h, a, w, b, 1, 1), expected)


def _mix_random(fn: Callable) -> None:
    h, a, w, b = _mix_inputs(2, bias=True)
    _expect_close(fn(h, a, w, b, 1, 1), _mix_reference(h, a, w, b, 1))


def _mix_stride_no_bias(fn: Callable) -> None:
    h, a, w, _ = _mix_inputs(3, bias=False)
    _expect_close(fn(h, a, w, None, 2, 1), _mix_reference(h, a, w, None, 2))


# ---------------------------------------------------------------------------- 03 · focal loss

def _focal_inputs(seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(32, 10, generator=g) * scale, torch.randint(0, 10, (32,), generator=g)


def _focal_scalar(fn: Callable) -> None:
    logits, y = _focal_inputs(0)
    got = fn(logits, y, 2.0, 0.1)
    if not isinstance(got, torch.Tensor) or got.ndim != 0:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise Mismatch(f"expected one number (a 0-dim tensor: the mean over the batch), got {shape}")


def _focal_ce(fn: Callable) -> None:
    logits, y = _focal_inputs(1)
    _expect_close(fn(logits, y, 0.0, 0.0), F.cross_entropy(logits, y))


def _focal_ce_smoothing(fn: Callable) -> None:
    logits, y = _focal_inputs(2)
    _expect_close(fn(logits, y, 0.0, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))


def _focal_gamma(fn: Callable) -> None:
    for seed, gamma, eps, scale in ((3, 2.0, 0.1, 3.0), (4, 5.0, 0.2, 8.0), (5, 0.5, 0.0, 1.0)):
        logits, y = _focal_inputs(seed, scale)
        _expect_close(fn(logits, y, gamma, eps), FocalLoss(gamma, eps)(logits, y),
                      f"the loss at γ = {gamma}, ε = {eps}")


def _focal_grad(fn: Callable) -> None:
    logits, y = _focal_inputs(6)
    ours = logits.clone().requires_grad_()
    got = fn(ours, y, 2.0, 0.2)
    if not isinstance(got, torch.Tensor) or not got.requires_grad:
        raise Mismatch("expected a loss that backpropagates to the logits (no .item(), no .detach())")
    got.backward()
    ref = logits.clone().requires_grad_()
    FocalLoss(2.0, 0.2)(ref, y).backward()
    _expect_close(ours.grad, ref.grad, "the gradient w.r.t. the logits")


# ---------------------------------------------------------------------------- 04 · train_step

def _tiny_setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """A tiny conv net with BatchNorm (so train/eval mode matters), SGD + Nesterov, one fixed batch."""
    torch.manual_seed(seed)  # model init; check() runs inside fork_rng, so the caller's RNG is untouched
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    return model, _sgd(model), x, y


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


class _RecordingLoss:
    """Cross-entropy with label smoothing that remembers the dtype of the logits it was given."""

    def __init__(self):
        self.dtypes: list[torch.dtype] = []

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.dtypes.append(logits.dtype)
        return F.cross_entropy(logits, target, label_smoothing=0.1)


def _step_both(fn: Callable, prepare: Callable[[nn.Module], None] = lambda m: None,
               dtype: torch.dtype | None = None):
    """One step by the student and one by helpers' train_step, from identical copies."""
    model, opt, x, y = _tiny_setup()
    ref_model = copy.deepcopy(model)
    ref_opt = _sgd(ref_model)
    for m in (model, ref_model):
        prepare(m)
    loss_fn = _RecordingLoss()
    got = fn(model, loss_fn, opt, x, y, dtype)
    ref, _ = train_step(ref_model, _RecordingLoss(), ref_opt, x, y, dtype)
    return got, ref, model, ref_model, loss_fn


def _expect_same_weights(model: nn.Module, ref_model: nn.Module, hint: str = "") -> None:
    for (name, got), exp in zip(model.state_dict().items(), ref_model.state_dict().values()):
        try:
            _expect_close(got, exp, f"{name} after the step", atol=1e-6)
        except Mismatch as e:
            raise Mismatch(f"{e}{hint}") from None


def _step_returns(fn: Callable) -> None:
    got, ref, *_ = _step_both(fn)
    if not isinstance(got, torch.Tensor) or got.ndim != 0:
        raise Mismatch(f"expected the loss (a 0-dim tensor) back, got {type(got).__name__}")
    if got.requires_grad:
        raise Mismatch("expected the loss detached (return loss.detach()): the graph is no longer needed")
    _expect_close(got, ref, "the returned loss")


def _step_same(fn: Callable) -> None:
    _, _, model, ref_model, _ = _step_both(fn)
    _expect_same_weights(model, ref_model)


def _step_zero_grad(fn: Callable) -> None:
    def stale(m: nn.Module) -> None:  # gradients left over from an earlier step
        for p in m.parameters():
            p.grad = torch.ones_like(p)
    _, _, model, ref_model, _ = _step_both(fn, stale)
    _expect_same_weights(model, ref_model, " (old gradients were left over: clear them first)")


def _step_train_mode(fn: Callable) -> None:
    _, _, model, ref_model, _ = _step_both(fn, lambda m: m.eval())
    if not model.training:
        raise Mismatch("expected model.training to be True after the step: call model.train()")
    _expect_same_weights(model, ref_model)


def _step_autocast(fn: Callable) -> None:
    seen: list[torch.dtype] = []
    model, opt, x, y = _tiny_setup()
    model[-1].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    loss_fn = _RecordingLoss()
    fn(model, loss_fn, opt, x, y, torch.bfloat16)
    if seen != [torch.bfloat16]:
        raise Mismatch(f"expected one forward under torch.autocast with dtype=torch.bfloat16 "
                       f"(logits in bfloat16), got logits in {seen}")
    if loss_fn.dtypes != [torch.float32]:
        raise Mismatch(f"expected loss_fn to get float32 logits (logits.float()), got {loss_fn.dtypes}")


def _step_learns(fn: Callable) -> None:
    model, opt, x, y = _tiny_setup(1)
    losses = [float(fn(model, F.cross_entropy, opt, x, y, None)) for _ in range(5)]
    if not losses[-1] < losses[0]:
        raise Mismatch(f"expected five steps on one batch to lower the loss, got {[round(v, 4) for v in losses]}")


# ---------------------------------------------------------------------------- 06 · ECE, confusion matrix

def _two_class(confidences: Sequence[float], right: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions for class 0 at the given confidences; labels that make each right or wrong."""
    c = torch.tensor(confidences)
    probs = torch.stack([c, 1 - c], dim=1)                       # (N, 2)
    return probs, torch.tensor([0 if r else 1 for r in right])


def _ece_calibrated(fn: Callable) -> None:
    probs, labels = _two_class([0.8] * 10 + [0.6] * 5, [True] * 8 + [False] * 2 + [True] * 3 + [False] * 2)
    _expect_number(fn(probs, labels, 15), 0.0, "the ECE of calibrated predictions (80 % right at 0.8, 60 % at 0.6)")


def _ece_wrong(fn: Callable) -> None:
    probs, labels = _two_class([0.9] * 8, [False] * 8)
    _expect_number(fn(probs, labels, 15), 0.9, "the ECE of predictions all wrong at confidence 0.9")


def _ece_weighted(fn: Callable) -> None:
    # One image wrong at 0.95 and nine at 0.55: bins count by their share of the images, not equally.
    probs, labels = _two_class([0.95] + [0.55] * 9, [False] + [True] * 5 + [False] * 4)
    ref, _ = expected_calibration_error(probs, labels, 15)
    _expect_number(fn(probs, labels, 15), ref, "the ECE (each bin weighted by n_b / N)")


def _ece_random(fn: Callable) -> None:
    g = _gen(0)
    probs = (torch.randn(500, 10, generator=g) * 2).softmax(dim=1)
    labels = torch.randint(0, 10, (500,), generator=g)
    for n_bins in (15, 10):
        ref, _ = expected_calibration_error(probs, labels, n_bins)
        _expect_number(fn(probs, labels, n_bins), ref, f"the ECE of 500 random predictions with {n_bins} bins")


def _cm_orientation(fn: Callable) -> None:
    labels, preds = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    _expect_close(fn(labels, preds, 2), torch.tensor([[0, 3], [0, 0]]),
                  "the matrix for 3 images of class 0 predicted as 1 (rows: true class)")


def _cm_toy(fn: Callable) -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])       # notebook 06's hand-made example
    preds = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 1, 1])
    _expect_close(fn(labels, preds, 3), confusion_matrix(labels, preds, 3))


def _cm_random(fn: Callable) -> None:
    g = _gen(0)
    labels, preds = torch.randint(0, 10, (200,), generator=g), torch.randint(0, 10, (200,), generator=g)
    got = fn(labels, preds, 10)
    _expect_close(got, confusion_matrix(labels, preds, 10))
    _expect_close(got.sum(dim=1), torch.bincount(labels, minlength=10), "the row sums (images per class)")


def _cm_empty_class(fn: Callable) -> None:
    labels, preds = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 2, 2, 1])
    _expect_close(fn(labels, preds, 5), confusion_matrix(labels, preds, 5),
                  "the 5×5 matrix (classes 3 and 4 have no images: zero rows and columns)")


# ---------------------------------------------------------------------------- the lists

HFLIP: list[Check] = [
    ("matches helpers.augment.hflip on a random batch", _hflip_random),
    ("a mask of all False returns the input", _hflip_none),
    ("a mask of all True mirrors every image left–right", _hflip_all),
    ("uint8 images stay uint8", _hflip_uint8),
    ("the input is not changed in place", _hflip_input_kept),
]

MIX_CONV: list[Check] = [
    ("a one-hot a gives the single convolution C_k(h)", _mix_one_hot),
    ("each image uses its own row of a", _mix_per_image),
    ("matches MixConv (naive) with biases", _mix_random),
    ("matches MixConv at stride 2 without biases", _mix_stride_no_bias),
]

FOCAL_LOSS: list[Check] = [
    ("returns the mean over the batch", _focal_scalar),
    ("γ = 0, ε = 0 is cross-entropy", _focal_ce),
    ("γ = 0, ε = 0.1 is cross-entropy with label smoothing", _focal_ce_smoothing),
    ("matches helpers.losses.FocalLoss for γ ∈ {0.5, 2, 5}", _focal_gamma),
    ("its gradient matches FocalLoss's", _focal_grad),
]

TRAIN_STEP: list[Check] = [
    ("returns the loss, detached", _step_returns),
    ("same weights as helpers.engine.train_step after one step", _step_same),
    ("old gradients are cleared first", _step_zero_grad),
    ("the model is put in train mode", _step_train_mode),
    ("forward under bf16 autocast, the loss in float32", _step_autocast),
    ("five steps lower the loss on a fixed batch", _step_learns),
]

CONFUSION_MATRIX: list[Check] = [
    ("rows are true classes, columns predictions", _cm_orientation),
    ("matches confusion_matrix on notebook 06's example", _cm_toy),
    ("matches confusion_matrix on 200 random predictions; rows sum to class counts", _cm_random),
    ("classes without images still get a row and a column", _cm_empty_class),
]

ECE: list[Check] = [
    ("calibrated predictions give 0", _ece_calibrated),
    ("all wrong at confidence 0.9 gives 0.9", _ece_wrong),
    ("bins are weighted by their share of the images", _ece_weighted),
    ("matches expected_calibration_error on random predictions", _ece_random),
]
