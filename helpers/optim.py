"""SGD + OneCycle from ``OptimConfig`` (report §3, Table 1), and an LR range test.

    optimizer = build_optimizer(model, cfg.optim)            # SGD, Nesterov, wd 5e-4
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.epochs, len(train_batches))
    ...  # after every optimizer.step(): scheduler.step()

Momentum under OneCycle: with ``cycle_momentum`` (PyTorch's default, kept because the
report uses OneCycleLR's defaults) the scheduler *overwrites* SGD's momentum every step,
0.95 → 0.85 while the lr warms up and 0.85 → 0.95 while it anneals. ``cfg.momentum = 0.9``
is only the value before the first step; it is also the cycle's midpoint. Nesterov stays
on throughout (the flag is not touched). Cycling momentum inversely to the lr keeps the
effective step lr/(1 − momentum) from swinging as far as the lr does (Smith 2018).
"""
from __future__ import annotations

__all__ = ["build_optimizer", "build_scheduler", "param_groups", "schedule_values", "EMA",
           "lr_range_test", "suggest_lr", "BASE_MOMENTUM", "MAX_MOMENTUM", "NORM_LAYERS"]

import copy
import math
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import OptimConfig, expect_section
from .engine import train_step  # not .train: train imports optim

# OneCycleLR's own defaults, written out so notebooks and tests can show them. The report
# does not set them; if they should become tunable, their home is OptimConfig.
BASE_MOMENTUM = 0.85  # momentum at the lr peak
MAX_MOMENTUM = 0.95   # momentum at the start and the end

# Parameters of these layers are exempt from weight decay when no_decay_norm_bias is on:
# shrinking a norm layer's scale towards 0 fights the normalisation rather than regularising.
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """Trainable parameters as optimizer groups: one group, or "decay" + "no_decay" (norm and bias).

    Each parameter appears once even if modules share it.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = no_decay_norm_bias and (isinstance(module, NORM_LAYERS) or name == "bias")
            (no_decay if exempt else decay).append(p)
    if not no_decay_norm_bias:
        return [{"name": "all", "params": decay, "weight_decay": weight_decay}]
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # SGD accepts empty groups, but they only confuse


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool | None = None) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and weight decay; norm/bias exempt if ``cfg.no_decay_norm_bias``.

    ``fused``: one kernel for every parameter; None = when the parameters are on CUDA.
    """
    expect_section(cfg, OptimConfig, "build_optimizer")
    if cfg.nesterov and cfg.momentum <= 0:
        raise ValueError(f"optim.nesterov=True needs optim.momentum > 0, got {cfg.momentum}")
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norm_bias)
    if not any(g["params"] for g in groups):
        raise ValueError("the model has no trainable parameters")
    # On CUDA one fused kernel updates every parameter; torch's default there (foreach) launches
    # several and costs more host time a step (BENCHMARKS.md, "Host time per step"). Elsewhere
    # torch's default, whose numbers fused SGD does not match to the last bit.
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    # `lr` is the report's base lr; a OneCycle scheduler replaces it with max_lr / div_factor.
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int,
                    steps_per_epoch: int) -> OneCycleLR:
    """OneCycleLR over ``epochs × steps_per_epoch`` optimizer steps; call ``.step()`` after every batch.

    Pass ``steps_per_epoch = len(train_batches)`` (it counts the last, smaller batch
    unless drop_last), so the schedule has exactly as many steps as training takes and
    OneCycleLR's "Tried to step N times" cannot happen. Early stopping takes fewer steps
    (fine); a resumed run must rebuild the scheduler with the same arguments before
    ``load_state_dict`` (the state records total_steps and the step count).
    Two phases (three_phase=False): cosine warm-up from max_lr/div_factor to max_lr over
    pct_start of the steps, then cosine annealing to max_lr/(div_factor·final_div_factor).
    """
    expect_section(cfg, OptimConfig, "build_scheduler")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"need epochs >= 1 and steps_per_epoch >= 1, got {epochs} and {steps_per_epoch}")
    total_steps = epochs * steps_per_epoch
    if total_steps * cfg.pct_start <= 1:
        # The warm-up ends at step pct_start·total − 1; at ≤ 0 OneCycleLR divides by zero or
        # starts mid-annealing. Only tiny runs get here.
        raise ValueError(f"{total_steps} steps × pct_start {cfg.pct_start} is not even one warm-up "
                         "step; train for more steps or raise optim.pct_start")
    return OneCycleLR(optimizer, max_lr=cfg.max_lr, total_steps=total_steps,
                      pct_start=cfg.pct_start, div_factor=cfg.div_factor,
                      final_div_factor=cfg.final_div_factor, three_phase=False,
                      anneal_strategy="cos", cycle_momentum=True,
                      base_momentum=BASE_MOMENTUM, max_momentum=MAX_MOMENTUM)


def schedule_values(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> dict[str, list[float]]:
    """The lr and momentum used at every optimizer step of a full run, without training.

    Builds the real scheduler on a throwaway one-parameter SGD and steps it through,
    so the curves are exactly what ``build_scheduler`` does. Returns {"lr", "momentum"},
    each a list of ``epochs × steps_per_epoch`` floats.
    """
    optimizer = build_optimizer(nn.Linear(1, 1, bias=False), cfg)
    scheduler = build_scheduler(optimizer, cfg, epochs, steps_per_epoch)
    optimizer.step()  # no grads, so a no-op; it keeps the scheduler's "step order" warning quiet
    group = optimizer.param_groups[0]
    lrs, momenta = [], []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(group["lr"])
        momenta.append(group["momentum"])
        scheduler.step()
    return {"lr": lrs, "momentum": momenta}


# ---------------------------------------------------------------------------- weight averaging

class EMA(AveragedModel):
    """An exponential moving average (``decay``) of a model's weights and buffers: torch's
    ``AveragedModel`` with its EMA function, stepped without making the host wait for the GPU.

    ``AveragedModel.update_parameters`` copies its step counter to the device at every call, a
    blocking copy (``tests/test_host_sync.py`` finds it); this update applies the same
    ``get_ema_multi_avg_fn`` to each dtype's tensors without it. The state dict is AveragedModel's.
    """

    def __init__(self, model: nn.Module, decay: float):
        # use_buffers: BatchNorm's running statistics are averaged too, so ``.module`` evaluates as is.
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self.n_averaged == 0:  # the first call copies the weights (the counter is a CPU tensor: no sync)
            return super().update_parameters(model)
        groups: dict[torch.dtype, tuple[list, list]] = defaultdict(lambda: ([], []))
        for mine, theirs in zip([*self.module.parameters(), *self.module.buffers()],
                                [*model.parameters(), *model.buffers()]):
            groups[mine.dtype][0].append(mine.detach())
            groups[mine.dtype][1].append(theirs.detach())
        for mine, theirs in groups.values():  # one foreach lerp per dtype; integer buffers as AveragedModel
            self.multi_avg_fn(mine, theirs, None)
        self.n_averaged += 1


# ---------------------------------------------------------------------------- LR range test

def lr_range_test(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]], start_lr: float = 1e-5,
                  end_lr: float = 1.0, num_steps: int = 100, smooth: float = 0.98,
                  diverge: float = 4.0, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """LR range test (Smith 2017): train with an exponentially growing lr, record the loss.

    Each step is one ``helpers.train.train_step`` at lr = start_lr·(end_lr/start_lr)^(i/(num_steps−1)).
    The loss is smoothed with a bias-corrected exponential moving average (``smooth``);
    the test stops early once the smoothed loss exceeds ``diverge`` × its minimum or is
    not finite. Afterwards the model (parameters, buffers, train/eval mode), the optimizer
    (lrs, momentum buffers) and the RNG state are exactly as before.

    Args:
        batches: yields ready ``(x, target)`` pairs (augmented, normalised, on the device);
            re-iterated if it runs out and can be iterated again.
        dtype: autocast dtype passed to ``train_step`` (None = fp32).

    Returns:
        {"lr": [...], "loss": smoothed [...], "raw_loss": [...], "stopped": reason,
         "lr_at_min_loss": float, "suggested_lr": float (see ``suggest_lr``)}.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_steps < 2 or not 0 <= smooth < 1 or diverge <= 1:
        raise ValueError(f"need num_steps >= 2, 0 <= smooth < 1 and diverge > 1; "
                         f"got {num_steps}, {smooth}, {diverge}")
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {m: m.training for m in model.modules()}
    optim_state = copy.deepcopy(optimizer.state_dict())
    device = next(model.parameters()).device
    lrs, losses, raw = [], [], []
    stopped = "end_lr reached"
    # fork_rng: dropout and augmentation draws here must not shift the real run's randomness.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            it, avg, best = iter(batches), 0.0, math.inf
            for i in range(num_steps):
                lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                try:
                    x, target = next(it)
                except StopIteration:
                    it = iter(batches)
                    if it is batches:  # a one-shot generator cannot be restarted
                        stopped = "batches exhausted"
                        break
                    x, target = next(it)
                loss, _ = train_step(model, loss_fn, optimizer, x, target, dtype=dtype)
                value = loss.item()  # one sync per step: needed for the divergence test
                avg = smooth * avg + (1 - smooth) * value
                smoothed = avg / (1 - smooth ** (i + 1))  # bias correction for the zero start
                lrs.append(lr)
                raw.append(value)
                losses.append(smoothed)
                if not math.isfinite(smoothed) or smoothed > diverge * best:
                    stopped = "diverged"
                    break
                best = min(best, smoothed)
        finally:  # restore even if a step raises
            model.load_state_dict(model_state)
            for m, training in modes.items():
                m.train(training)
            optimizer.load_state_dict(optim_state)
    finite = [(l, lr) for l, lr in zip(losses, lrs) if math.isfinite(l)]
    result = {"lr": lrs, "loss": losses, "raw_loss": raw, "stopped": stopped,
              "lr_at_min_loss": min(finite)[1] if finite else math.nan}
    result["suggested_lr"] = suggest_lr(result)
    return result


def suggest_lr(result: dict[str, Any], skip_start: int = 5, skip_end: int = 3) -> float:
    """The lr where the smoothed loss falls fastest per decade of lr (a heuristic, not a rule).

    Looks between ``skip_start`` steps from the start and the lowest loss, at most
    ``skip_end`` steps before the end (the first steps are noisy; past the minimum the run
    is diverging, and a loss falling back after a blow-up is not a good lr). Falls back to
    ``lr_at_min_loss / 10`` (at least the first lr tried) when that part is too short.
    Smith's rule of thumb for OneCycle's max_lr is a value a little below where the loss
    is still falling steeply.
    """
    lrs, losses = result["lr"], result["loss"]
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    i_min = min(finite, key=losses.__getitem__) if finite else len(lrs)
    lo, hi = skip_start, min(len(lrs) - skip_end, i_min + 1)
    if hi - lo < 3:  # too few points before the minimum: a decade below it, inside the tested range
        return max(result["lr_at_min_loss"] / 10, lrs[0]) if lrs else math.nan
    slopes = [(losses[i + 1] - losses[i - 1]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i - 1]))
              for i in range(lo + 1, hi - 1)]  # central differences in log10(lr)
    i = min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[lo + 1 + i]
