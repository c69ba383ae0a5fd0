"""The pieces every loop shares: device choice, autocast, one training step, prediction.

``helpers.train.fit`` is the project's one training loop; the LR range test
(``helpers.optim``) and the notebooks reuse these same pieces.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch
from torch import nn

from .augment import normalize


# ---------------------------------------------------------------------------- device

def pick_device(name: str = "auto") -> torch.device:
    """"auto" → CUDA if present, else Apple MPS, else CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device='mps' but Apple MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full fp32).

    "auto" is bf16 on CUDA and on CPUs with native bf16 arithmetic (AVX-512 BF16 or
    AMX), where it runs about twice as fast as fp32; elsewhere (emulated bf16 is
    slower than fp32) and on MPS it is off.
    """
    if amp == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (read from Linux's CPU flags)."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no cheap way to tell, so stay with fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------- one step

def train_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a ready batch. Returns (loss, logits), both detached.

    ``x``: (B, 3, H, W) float, already augmented and normalised; ``target``: (B,)
    labels or (B, K) soft targets. ``scaler`` is only needed for fp16.
    """
    model.train()
    with autocast(x.device, dtype):
        logits = model(x)  # (B, K)
    loss = loss_fn(logits.float(), target)  # the loss in fp32: log-probabilities need the range
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
            batch_size: int = 512, dtype: torch.dtype | None = None, tta_flip: bool = False,
            channels_last: bool = False) -> torch.Tensor:
    """Logits (N, K) in fp32 for uint8 images (N, 3, H, W), in eval mode; optional flip TTA."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size].to(device), mean, std)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits = model(xb).float()
            if tta_flip:  # average with the mirror image's logits
                logits = (logits + model(xb.flip(-1)).float()) / 2
        out.append(logits)
    return torch.cat(out)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
             mean: Sequence[float], std: Sequence[float], **predict_kw) -> dict:
    """Loss, accuracy and logits of ``model`` on uint8 images and int labels."""
    logits = predict(model, x, mean, std, **predict_kw)
    y = y.to(logits.device)
    return {"loss": float(loss_fn(logits, y)), "acc": float((logits.argmax(1) == y).float().mean()),
            "logits": logits}


def per_class_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    correct = torch.zeros(num_classes).index_add_(0, y.cpu(), (logits.argmax(1) == y).float().cpu())
    count = torch.bincount(y.cpu(), minlength=num_classes).clamp_min(1)
    return (correct / count).tolist()
