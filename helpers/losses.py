"""Focal loss with label smoothing, per-class factors and soft targets (report §3, Table 1).

For one image with target distribution ``q`` (label-smoothed, and for CutMix/MixUp
already mixed) and predicted ``p = softmax(logits)``:

    loss = −w · Σ_c q_c (1 − p_c)^γ log p_c,      w = Σ_c q_c · factor_c

γ = 0 with every factor 1 is exactly cross-entropy with the same label smoothing
(``F.cross_entropy(logits, target, label_smoothing=ε)``), for hard and soft targets.

    loss_fn = build_loss(cfg.loss)             # FocalLoss(γ=2, ε=0.1, seed's class factors)
    loss = loss_fn(logits, y)                  # y: (B,) int labels or (B, K) soft targets
"""
from __future__ import annotations

__all__ = ["FocalLoss", "build_loss"]

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLASSES, LossConfig, expect_section

# Soft targets must sum to 1 within this tolerance; half-precision targets get a looser one
# (ten bf16 values summed carry ~1e-2 relative error).
_SUM_TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
_SUM_TOL_DEFAULT = 1e-3
# (1 − p) is clamped here before the power: d/dp (1 − p)^γ is infinite at p = 1 for γ < 1.
# The clamp changes the loss by < 1e-12^γ · |log p| ≈ 0, since log p ≈ 0 when p ≈ 1.
_ONE_MINUS_P_MIN = 1e-12

Weights = torch.Tensor | Sequence[float] | Mapping[str, float] | None


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) with label smoothing, class factors and soft targets.

    Args:
        gamma: focusing parameter γ ≥ 0; 0 gives cross-entropy.
        label_smoothing: ε in [0, 1]; the target becomes ``(1 − ε)·q + ε/K``.
        class_weights: per-class loss factors: a length-K tensor/sequence, or a
            ``{class name: factor}`` mapping over ``classes`` (missing names = 1.0).
            None = all 1 (and K is taken from the logits).
        reduction: "mean" (plain mean over images, so factors scale the loss exactly;
            unlike ``F.cross_entropy(weight=...)``, which divides by the summed weights),
            "sum" or "none" (per-image losses, shape (B,)).
        classes: class names that a mapping's keys refer to.
        check_values: validate label range / soft-target sums. These checks read tensor
            values, i.e. one host–device sync per call, which stalls a GPU pipeline every
            step. None (default) = check when the inputs are on the CPU (free there) and
            skip on accelerators; True = always (debugging); False = never.
            Shape/dtype checks are metadata-only and always run.
    """

    def __init__(self, gamma: float = 2.0, label_smoothing: float = 0.1,
                 class_weights: Weights = None, reduction: str = "mean",
                 classes: Sequence[str] = CLASSES, check_values: bool | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.gamma, self.label_smoothing, self.reduction = float(gamma), float(label_smoothing), reduction
        self.check_values = check_values
        # A buffer, so .to(device) moves it and state_dict records it; None when all factors are 1.
        self.register_buffer("class_weights", _weights_tensor(class_weights, classes))

    @property
    def num_classes(self) -> int | None:
        """K fixed by ``class_weights``; None when any K is accepted."""
        return None if self.class_weights is None else len(self.class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss for logits (B, K) and int labels (B,) or soft targets (B, K); scalar unless reduction="none"."""
        q = self._target_distribution(logits, target)  # (B, K), float32
        # float32 even under autocast: log_softmax of bf16 logits loses the small probabilities.
        logp = F.log_softmax(logits.float(), dim=1)  # (B, K), finite for any finite logits
        per_class = q * logp  # (B, K)
        if self.gamma > 0:
            # 1 − p via expm1(log p): exact near p = 1, where 1 − softmax(…) would round to 0 or < 0.
            one_minus_p = (-torch.expm1(logp)).clamp_min(_ONE_MINUS_P_MIN)
            per_class = per_class * one_minus_p.pow(self.gamma)
        loss = -per_class.sum(dim=1)  # (B,)
        if self.class_weights is not None:
            loss = loss * (q @ self.class_weights.float())  # w = Σ_c q_c·factor_c, (B,)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def _target_distribution(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Validate the inputs and return the smoothed target distribution q (B, K)."""
        if logits.ndim != 2:
            raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
        b, k = logits.shape
        if b == 0:
            raise ValueError("empty batch: logits have 0 rows")
        if self.num_classes is not None and k != self.num_classes:
            raise ValueError(f"logits have {k} classes but class_weights has {self.num_classes}")
        check = self.check_values if self.check_values is not None else target.device.type == "cpu"
        if target.ndim == 1:
            if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
                raise ValueError(f"integer labels must have an integer dtype, got {target.dtype}")
            if len(target) != b:
                raise ValueError(f"{b} logits rows but {len(target)} labels")
            if check:
                lo, hi = torch.aminmax(target)
                if lo.item() < 0 or hi.item() >= k:
                    raise ValueError(f"labels out of range: got values in [{lo.item()}, {hi.item()}], "
                                     f"allowed 0..{k - 1}")
            q = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, target.long().unsqueeze(1), 1.0)
        elif target.ndim == 2:
            if target.shape != logits.shape:
                raise ValueError(f"soft targets {tuple(target.shape)} do not match logits "
                                 f"{tuple(logits.shape)} (wrong number of classes?)")
            if not target.is_floating_point():
                raise ValueError(f"soft targets must be floating point, got {target.dtype}")
            if check:
                tol = _SUM_TOL.get(target.dtype, _SUM_TOL_DEFAULT)
                sums = target.float().sum(dim=1)
                # One sync for both checks: [max |Σq − 1|, min q].
                err, low = torch.stack([(sums - 1).abs().max(), target.min().float()]).tolist()
                if not err <= tol:  # `not <=` also catches NaN
                    raise ValueError(f"soft targets must sum to 1 per row (±{tol:g}); "
                                     f"worst row is off by {err:.3g}")
                if low < -tol:
                    raise ValueError(f"soft targets must be >= 0, got a minimum of {low:.3g}")
            q = target.float()
        else:
            raise ValueError(f"target must be (B,) labels or (B, K) soft targets, got shape {tuple(target.shape)}")
        if self.label_smoothing > 0:
            q = q * (1.0 - self.label_smoothing) + self.label_smoothing / k
        return q

    def extra_repr(self) -> str:
        w = None if self.class_weights is None else [round(v, 4) for v in self.class_weights.tolist()]
        return (f"gamma={self.gamma}, label_smoothing={self.label_smoothing}, "
                f"class_weights={w}, reduction={self.reduction!r}")


def _weights_tensor(weights: Weights, classes: Sequence[str]) -> torch.Tensor | None:
    """class_weights argument → float32 tensor (K,), or None for "all ones"."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        unknown = [name for name in weights if name not in classes]
        if unknown:
            raise ValueError(f"class_weights: unknown class name(s) {unknown}; classes are {', '.join(classes)}")
        weights = [float(weights.get(name, 1.0)) for name in classes]
    w = torch.as_tensor(weights, dtype=torch.float32).detach().clone()
    if w.ndim != 1 or len(w) < 2:
        raise ValueError(f"class_weights must be one factor per class (K >= 2), got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError(f"class_weights must be finite and > 0, got {w.tolist()}")
    return w


def build_loss(cfg: LossConfig, classes: Sequence[str] = CLASSES) -> FocalLoss:
    """The configured loss: "focal" (γ, ε, class factors) or "ce" (γ = 0, no factors, same ε)."""
    expect_section(cfg, LossConfig, "build_loss")
    if cfg.name == "ce":
        return FocalLoss(gamma=0.0, label_smoothing=cfg.label_smoothing, class_weights=None)
    if cfg.name == "focal":
        return FocalLoss(gamma=cfg.gamma, label_smoothing=cfg.label_smoothing,
                         class_weights=dict(cfg.class_factors), classes=classes)
    raise ValueError(f"loss.name must be 'focal' or 'ce', got {cfg.name!r}")
