"""The pieces every loop shares: device choice, autocast, compilation, one training step,
prediction, and a timer for a loop's phases.

``helpers.train.fit`` is the project's one training loop; the LR range test
(``helpers.optim``) and the notebooks reuse these same pieces.
"""
from __future__ import annotations

__all__ = ["pick_device", "amp_dtype", "cpu_info", "cpu_has_native_bf16", "autocast", "COMPILE_MODES",
           "resolve_compile", "compile_model", "is_compiled", "forward_backward", "train_step", "predict",
           "evaluate", "per_class_accuracy", "PhaseTimer"]

import contextlib
import functools
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .augment import normalize, translate


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


def cpu_info() -> dict[str, str]:
    """The first processor's fields in Linux's ``/proc/cpuinfo`` ("model name", "flags", …); {} elsewhere."""
    return dict(_cpu_info())  # a copy: the cached dict must not be changed by a caller


@functools.lru_cache(maxsize=1)
def _cpu_info() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return {}
    fields = (line.partition(":") for line in text.split("\n\n", 1)[0].splitlines())
    return {key.strip(): value.strip() for key, sep, value in fields if sep}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (read from Linux's CPU flags)."""
    flags = cpu_info().get("flags", "").split()  # none (not Linux): no cheap way to tell, so fp32
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or nothing for None. ``cache=False`` while recording a CUDA graph."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype,
                                                                          cache_enabled=cache)


# ---------------------------------------------------------------------------- compilation

# train.compile → torch.compile's mode. "reduce-overhead" records the compiled model's forward and
# backward as CUDA graphs: one launch replays each. "graph" compiles the model plainly and
# ``helpers.graphs`` records forward, loss and backward together as one CUDA graph.
COMPILE_MODES = {"default": "default", "cudagraphs": "reduce-overhead", "graph": "default"}


def resolve_compile(name: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """What ``train.compile`` = ``name`` runs for autocast ``dtype`` on ``device``.

    "auto" → "graph" on CUDA, the fastest measured (one H200: 1.40 s a seed-preset epoch against
    2.05 s with "cudagraphs"; BENCHMARKS.md, "The step as one CUDA graph"), or "cudagraphs" under
    fp16, whose loss scaling the recorded step leaves out; "off" elsewhere (on a CPU compiling
    costs more than it saves).
    """
    if name == "auto":
        if device.type != "cuda":
            return "off"
        return "cudagraphs" if dtype == torch.float16 else "graph"
    return name


def compile_model(model: nn.Module, mode: str, device: torch.device,
                  backend: str | Callable = "inductor") -> nn.Module:
    """``torch.compile(model)`` for ``train.compile`` = ``mode``, or ``model`` itself when off.

    ``dynamic=False``: one specialised graph per input shape. Callers keep the shapes
    few (``fit`` runs the last, smaller batch eagerly; ``predict`` pads), so nothing
    recompiles after the first epoch. The compiled module shares ``model``'s parameters,
    and ``model.state_dict()`` keeps its plain keys. ``backend`` other than inductor
    (e.g. "aot_eager") is for tests on a CPU.
    """
    mode = resolve_compile(mode, device)
    if mode == "off":
        return model
    kw = {"mode": COMPILE_MODES[mode]} if backend == "inductor" else {}
    return torch.compile(model, backend=backend, dynamic=False, **kw)


def is_compiled(model: nn.Module) -> bool:
    return hasattr(model, "_orig_mod")  # torch.compile's wrapper


def _new_step(model: nn.Module) -> None:
    # CUDA graphs reuse their output memory: tell them a new step begins, so that the
    # previous step's outputs may be overwritten (callers copy what they keep).
    if is_compiled(model):
        torch.compiler.cudagraph_mark_step_begin()


# ---------------------------------------------------------------------------- one step

def forward_backward(model: nn.Module, loss_fn: Callable, x: torch.Tensor, target: torch.Tensor,
                     dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
                     autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss and backward in train mode; gradients accumulate. Returns (loss, logits), detached."""
    if not getattr(model, "_orig_mod", model).training:
        # Only when needed: train() walks every submodule, 0.2–0.4 ms of host time a step for the
        # seed model on a slow CPU (BENCHMARKS.md, "Host time per step"), which a GPU waits for.
        model.train()
    _new_step(model)
    with autocast(x.device, dtype, autocast_cache):
        logits = model(x)  # (B, K)
    loss = loss_fn(logits.float(), target)  # the loss in fp32: log-probabilities need the range
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss.detach(), logits.detach()


def train_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a ready batch. Returns (loss, logits), both detached.

    ``x``: (B, 3, H, W) float, already augmented and normalised; ``target``: (B,)
    labels or (B, K) soft targets. ``scaler`` is only needed for fp16. No host sync:
    on a GPU the step is queued and the call returns. (Under fp16 that needs a fused
    optimiser, as ``build_optimizer`` gives on CUDA; with another the scaler's step
    reads whether the gradients overflowed.)
    """
    optimizer.zero_grad(set_to_none=True)
    loss, logits = forward_backward(model, loss_fn, x, target, dtype, scaler)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss, logits


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
            batch_size: int = 512, dtype: torch.dtype | None = None, tta_flip: bool = False,
            channels_last: bool = False, tta_translate: int = 0) -> torch.Tensor:
    """Logits (N, K) in fp32 for uint8 images (N, 3, H, W), in eval mode; optional test-time augmentation.

    TTA averages the logits of several views of each image: ``tta_flip`` adds the mirror
    image; ``tta_translate`` = t adds every view shifted by (t, t) and (-t, -t) pixels
    (reflect border, as ``augment.translate``), so flip and translate give 6 views.
    A compiled model sees one shape only: the last, smaller batch is padded with
    zeros (eval mode: each image's logits depend on that image alone).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    compiled = is_compiled(model)
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size].to(device), mean, std)
        n = len(xb)
        if compiled and n < batch_size:
            xb = torch.cat([xb, xb.new_zeros(batch_size - n, *xb.shape[1:])])
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        views = [xb, xb.flip(-1)] if tta_flip else [xb]
        if tta_translate:
            shift = torch.full((len(xb),), tta_translate, device=device)
            views += [translate(v, s, s) for v in views for s in (shift, -shift)]
        logits = 0
        with autocast(device, dtype):
            for v in views:
                _new_step(model)
                # A clone: CUDA graphs overwrite a compiled model's outputs at its next call.
                view_logits = model(v).float()
                logits = logits + (view_logits.clone() if compiled else view_logits)
        out.append(logits[:n] / len(views))
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
             mean: Sequence[float], std: Sequence[float], **predict_kw) -> dict:
    """Loss, accuracy and logits of ``model`` on uint8 images and int labels."""
    logits = predict(model, x, mean, std, **predict_kw)
    y = y.to(logits.device)
    acc = (logits.argmax(1) == y).float().mean()
    loss, acc = torch.stack([loss_fn(logits, y).float(), acc]).tolist()  # one read: the host waits once
    return {"loss": loss, "acc": acc, "logits": logits}


def per_class_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy on each true class, in class order (nan for a class without images).

    The ``accuracy`` column of ``helpers.analysis.per_class_metrics``, computed by it.
    """
    from .analysis import confusion_matrix, per_class_metrics  # here: analysis imports this module
    cm = confusion_matrix(y, logits.argmax(1), num_classes)
    return [row["accuracy"] for row in per_class_metrics(cm, [str(k) for k in range(num_classes)])]


# ---------------------------------------------------------------------------- timing

class PhaseTimer:
    """Seconds spent in each named phase of a loop: ``with timer("train"): ...``.

    On CUDA each phase is bracketed by two CUDA events, read once in ``totals()``:
    the device's own time, with no host sync per step. Elsewhere, wall time.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            t = time.perf_counter()
            yield
            self._totals[name] += time.perf_counter() - t

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (waits for the device once)."""
        for name, start, end in self._pending:
            end.synchronize()
            self._totals[name] += start.elapsed_time(end) / 1000
        self._pending.clear()
        return dict(self._totals)
