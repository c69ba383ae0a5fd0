"""Training: one step, one ``fit``, evaluation, and the command-line entry point.

    result = fit(get_preset("smoke"), out_dir="runs/smoke")
    python -m helpers.train --preset laptop --set train.epochs=5 --out runs/try

Per epoch: device-resident uint8 images → per-image augmentation in chunks of
thousands → per batch CutMix/MixUp → model → focal loss → SGD + OneCycle; then
test (and validation) loss and accuracy, a checkpoint, early stopping.

``fit`` reads top to bottom through its parts: ``build_run`` (the run's objects),
``warm_up`` (compilation, timed apart), ``train_epoch``, ``evaluate_run`` and
``end_epoch`` (history, checkpoint, early stop).
"""
from __future__ import annotations

__all__ = ["fit", "FitResult", "Run", "build_run", "warm_up", "train_epoch", "evaluate_run", "end_epoch", "save",
           "restore", "nonfinite_weights", "main"]

import contextlib
import copy
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import BatchAugment, normalize
from .checkpoint import (CheckpointError, RunFolder, check_compatible, display_path,
                         load_checkpoint, load_weights, provenance, resume_source, rng_state, runs_dir, set_rng_state)
from .config import Config, get_preset, PRESETS, apply_overrides
from .data import CIFAR10, DataError, DeviceBatches, channel_stats, fingerprint, load_cifar10, subset
from .engine import (PhaseTimer, amp_dtype, compile_model, evaluate, forward_backward, per_class_accuracy,
                     pick_device, predict, resolve_compile, train_step)
from .graphs import StepGraph, check_recordable
from .losses import build_loss
from .model import WHITEN_IMAGES, build_model, whiten_stem
from .optim import EMA, build_optimizer, build_scheduler


# ---------------------------------------------------------------------------- the run's objects

@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    per_class: dict[str, float]
    status: str                    # "completed", "early_stop", "stop_after", "interrupted", "diverged"
    out_dir: Path | None = None
    report: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class Run:
    """Everything one training run holds; ``build_run`` makes it, the loop's parts read it."""
    cfg: Config
    device: torch.device
    dtype: torch.dtype | None          # autocast dtype, None = fp32
    model: nn.Module                   # the weights: saved, loaded, returned
    net: nn.Module                     # what runs them: ``model`` or its compiled wrapper
    compile_mode: str                  # train.compile resolved: "off", "default", "cudagraphs" or "graph"
    loss_fn: nn.Module
    batches: DeviceBatches             # uint8 training images on the device, the shuffling generator
    aug: BatchAugment
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]   # "test" (and "val"): uint8 images, labels
    classes: tuple[str, ...]
    mean: list[float]
    std: list[float]
    meta: dict                         # config, seed, provenance, data fingerprint: written to run.json
    folder: RunFolder | None           # where the run is written; None: nothing is
    log: Callable[[str], None]
    ema: EMA | None = None             # an EMA of ``model``'s weights and buffers (train.ema > 0)
    graph: StepGraph | None = None     # train.compile="graph": the step recorded by ``warm_up``
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"metric": -math.inf, "epoch": 0, "since": 0})

    @property
    def out(self) -> Path | None:
        return self.folder.path if self.folder is not None else None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated, saved for analysis and returned: the EMA's when kept."""
        return self.ema.module if self.ema is not None else self.model

    def predict_kw(self) -> dict:
        tc = self.cfg.train
        return dict(batch_size=self.cfg.data.eval_batch_size, dtype=self.dtype, tta_flip=tc.tta_flip,
                    tta_translate=tc.tta_translate, channels_last=tc.channels_last)


def build_run(cfg: Config, data: CIFAR10, out_dir: str | Path | RunFolder | None = None,
              log: Callable[[str], None] = print) -> Run:
    """Model, loss, data, augmentation, optimiser and schedule for ``cfg``, on its device."""
    tc = cfg.train
    if tc.num_threads:
        cpus = os.cpu_count() or 1
        if tc.num_threads > 4 * cpus:  # thousands of threads on a few cores make no progress at all
            raise ValueError(f"train.num_threads={tc.num_threads} is far more than this machine's {cpus} "
                             f"CPUs: use at most {cpus} (or 0 for torch's default)")
        torch.set_num_threads(tc.num_threads)
    device = pick_device(tc.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once
    torch.manual_seed(tc.seed)
    ds, val = subset(data, cfg.data)
    mean, std = channel_stats(ds.train_x)
    model = build_model(cfg.model).to(device)
    if cfg.model.stem_whiten:  # data-dependent, frozen first layer (whitening.py)
        whiten_stem(model.stem, normalize(ds.train_x[:WHITEN_IMAGES], mean, std))
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = DeviceBatches(ds.train_x, ds.train_y, cfg.data.batch_size, shuffle=True,
                            drop_last=cfg.data.drop_last, device=device, seed=tc.seed)
    optimizer = build_optimizer(model, cfg.optim)
    dtype = amp_dtype(tc.amp, device)
    compile_mode = resolve_compile(tc.compile, device, dtype)
    if compile_mode == "graph":
        check_recordable(device, dtype)
    eval_sets = {"test": (ds.test_x.to(device), ds.test_y.to(device))}
    if val is not None:
        eval_sets["val"] = (val[0].to(device), val[1].to(device))
    ema = EMA(model, tc.ema) if tc.ema else None
    return Run(
        cfg=cfg, device=device, dtype=dtype, model=model, net=compile_model(model, compile_mode, device),
        compile_mode=compile_mode, ema=ema,
        loss_fn=build_loss(cfg.loss, ds.classes).to(device), batches=batches,
        aug=BatchAugment(cfg.data, mean, std, num_classes=cfg.model.num_classes, seed=tc.seed + 1),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.optim, epochs=tc.epochs, steps_per_epoch=len(batches)),
        scaler=torch.amp.GradScaler(device.type) if dtype == torch.float16 else None,
        eval_sets=eval_sets, classes=ds.classes, mean=mean, std=std,
        meta={"config": cfg.to_dict(), "seed": tc.seed, "mean": mean, "std": std,
              "data_fingerprint": fingerprint(data), **provenance(device)},
        folder=(out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)) if out_dir is not None else None,
        log=log)


def warm_up(run: Run) -> float:
    """Compile (and record the CUDA graphs of) the training step before epoch 1.

    Returns the seconds it took (0 when not compiled). Weights, BatchNorm statistics,
    gradients and RNG states are restored afterwards, so the run computes exactly
    what it would have computed without it. Under train.compile="graph" it also records
    ``run.graph``.
    """
    if run.net is run.model:
        return 0.0
    t0 = time.perf_counter()
    weights, rng = copy.deepcopy(run.model.state_dict()), rng_state()
    b, k = run.cfg.data.batch_size, run.cfg.model.num_classes
    x = torch.zeros(b, 3, 32, 32, device=run.device)
    if run.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.full((b, k), 1 / k, device=run.device)
    try:
        recorded = run.compile_mode == "graph" and _record(run, x, target)
        if not recorded:
            for _ in range(3):  # CUDA graphs: the first call warms up, the second records, the third replays
                # Fresh gradients each time, as train_step: accumulating into the last call's would read
                # memory that the CUDA graphs own and have since reused.
                run.model.zero_grad(set_to_none=True)
                forward_backward(run.net, run.loss_fn, x, target, run.dtype)
    finally:  # also when compiling fails, so that the run can go on eagerly from the same state
        run.model.zero_grad(set_to_none=True)
        run.model.load_state_dict(weights)  # copies in place: the graphs keep pointing at the weights
        set_rng_state(rng)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _record(run: Run, x: torch.Tensor, target: torch.Tensor) -> bool:
    """train.compile="graph": record ``run.graph``; if that fails, say why and switch ``run.net`` (and
    ``run.compile_mode``) to torch's own CUDA graphs ("cudagraphs"; compiling may well have worked).
    Whether it recorded."""
    try:
        run.graph = StepGraph(run.net, run.model, run.loss_fn, x, target, run.dtype)
        return True
    except Exception as e:
        run.meta["graph_error"] = _one_line(e)
        run.log(f"Recording the step as one CUDA graph failed ({run.meta['graph_error']}); "
                "training with train.compile='cudagraphs' instead")
        run.net, run.compile_mode = compile_model(run.model, "cudagraphs", run.device), "cudagraphs"
        return False


def _one_line(e: Exception) -> str:
    """An exception as one line of at most ~300 characters (torch's errors run to pages)."""
    why = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:300]
    return f"{type(e).__name__}: {why}"


# ---------------------------------------------------------------------------- checkpoints

def save(run: Run, epoch: int, step: int, partial: dict | None, best: bool = False,
         order_state: torch.Tensor | None = None) -> None:
    """Start writing ``last.pt`` (and ``best.pt``, the same file) in the background; nothing without an out_dir."""
    if run.folder is None:
        return
    rng = rng_state(run.batches.generator, run.aug.generator)
    if order_state is not None:  # mid-epoch: resume redraws this epoch's order from here
        rng["generators"][0] = order_state
    run.folder.save({
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else {},
        "rng": rng, "epoch": epoch, "step": step, "partial": partial, "history": run.history,
        "best": run.best, "config": run.cfg.to_dict(),
        **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
        "meta": {k: v for k, v in run.meta.items() if k != "config"}}, best=best)


def restore(run: Run, state: dict, path: str | Path) -> tuple[int, int, dict | None]:
    """Load a checkpoint's ``state`` into ``run``; returns (epochs done, steps done in the next, its partial sums)."""
    check_compatible(state, run.cfg, display_path(path))
    saved, now = state.get("meta", {}).get("data_fingerprint"), run.meta["data_fingerprint"]
    if saved is not None and saved != now:  # checkpoints from before fingerprints are taken on trust
        raise CheckpointError(
            f"{display_path(path)} was trained on other data (fingerprint {saved}, this data {now}): resume it "
            "with the CIFAR-10 copy it was trained on (data.root / --data-dir), or start a new run")
    load_weights(run.model, state["model"], path)
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], run.batches.generator, run.aug.generator)
    run.history, run.best = state["history"], state["best"]
    return state["epoch"], state["step"], state["partial"]


def nonfinite_weights(run: Run) -> list[str]:
    """Names of the weights and buffers (the EMA's too) holding NaN or inf; one host sync."""
    tensors = dict(run.model.state_dict())
    if run.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in run.ema.state_dict().items()})
    floats = [(k, t) for k, t in tensors.items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()
    return [k for (k, _), ok in zip(floats, finite) if not ok]


def _diverged(run: Run, epoch: int, what: str) -> str:
    """The message for a run stopped by non-finite numbers: what happened and, truthfully, what was kept."""
    kept = run.folder.kept() if run.folder is not None else "Nothing was saved (no out_dir)."
    return f"Stopped: {what} in epoch {epoch + 1}. {kept} Try a lower optim.max_lr."


# ---------------------------------------------------------------------------- one epoch

def train_epoch(run: Run, epoch: int, start: int = 0, partial: dict | None = None,
                interrupt: "_Interrupt | None" = None, progress: bool = True) -> dict:
    """Train one epoch (0-based), from step ``start`` when resuming; returns its sums and times.

    The returned dict holds the summed loss, the number correct, images seen,
    ``steps`` done, ``time`` (wall), ``time_train`` and ``time_aug`` (the device's
    own time on CUDA), and ``diverged``. Sums stay on the device until the epoch
    ends: no step waits for the GPU.
    """
    b = run.cfg.data.batch_size
    run.model.train()  # every module, once an epoch: the steps only check the model's own flag
    acc = partial or {"loss": 0.0, "correct": 0.0, "n": 0, "time": 0.0, "time_train": 0.0, "time_aug": 0.0}
    order_state = run.batches.generator.get_state()  # before this epoch's shuffle
    order = run.batches.epoch_order()
    timer, t0 = PhaseTimer(run.device), time.perf_counter()
    # Continued from a resumed epoch's partial sums, so the additions happen in the same order.
    # torch.full, not torch.tensor: a tensor made from a Python number is a copy the host waits on.
    loss_sum = torch.full((), acc["loss"], dtype=torch.float32, device=run.device)
    correct = torch.full((), acc["correct"], dtype=torch.float32, device=run.device)
    steps = len(run.batches)
    batches = run.aug.epoch(run.batches.x, run.batches.y, order, b, epoch, chunk=run.cfg.data.aug_chunk,
                            start=start, drop_last=run.cfg.data.drop_last)
    step = start
    with tqdm(total=steps, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, initial=start) as bar:
        while True:
            with timer("aug"):  # per-image ops once per chunk, CutMix/MixUp per batch
                item = next(batches, None)
            if item is None:
                break
            step, x, target = item
            with timer("train"):
                if run.cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # The last, smaller batch runs eagerly: a compiled step keeps one shape.
                if run.graph is not None and len(x) == b:
                    loss, logits = run.graph.train_step(run.optimizer, x, target)
                else:
                    net = run.net if len(x) == b else run.model
                    loss, logits = train_step(net, run.loss_fn, run.optimizer, x, target, run.dtype, run.scaler)
                run.scheduler.step()
                if run.ema is not None:
                    run.ema.update_parameters(run.model)
                loss_sum += loss * len(x)
                correct += (logits.argmax(1) == target.argmax(1)).sum()  # vs the dominant label
            acc["n"] += len(x)
            bar.update()
            if interrupt is not None and interrupt.requested:
                break
    phases = timer.totals()
    loss_total, correct_total = torch.stack([loss_sum, correct]).tolist()  # the epoch's one read
    acc.update(loss=loss_total, correct=correct_total, steps=step,
               time=acc["time"] + time.perf_counter() - t0,
               time_train=acc["time_train"] + phases.get("train", 0.0),
               time_aug=acc["time_aug"] + phases.get("aug", 0.0))
    acc["diverged"] = not math.isfinite(acc["loss"])
    acc["order_state"] = order_state
    return acc


def evaluate_run(run: Run) -> dict[str, dict]:
    """Loss, accuracy and logits on each evaluation set ("test", and "val" if held out).

    Eager, not compiled: evaluation is 2 % of an epoch's images, and alternating a CUDA-graphed
    evaluation with the CUDA-graphed training step broke the step's backward (torch 2.11, H200:
    "accessing tensor output of CUDAGraphs that has been overwritten").
    """
    return {name: evaluate(run.eval_model, x, y, run.loss_fn, run.mean, run.std, **run.predict_kw())
            for name, (x, y) in run.eval_sets.items()}


def end_epoch(run: Run, epoch: int, acc: dict, metrics: dict[str, dict], eval_s: float,
              on_epoch: Callable[[list[dict]], None] | None = None) -> str | None:
    """Record the epoch, checkpoint it, and decide: returns "early_stop", "diverged" or None (go on).

    ``metrics`` None: an epoch that ``train.eval_every`` does not evaluate; its test (and
    validation) figures are NaN, and it cannot become the best epoch.
    """
    tc = run.cfg.train
    nan = {"loss": math.nan, "acc": math.nan}
    sets = metrics or {name: nan for name in run.eval_sets}
    rec = {"epoch": epoch + 1, "train_loss": acc["loss"] / acc["n"], "train_acc": acc["correct"] / acc["n"],
           "test_loss": sets["test"]["loss"], "test_acc": sets["test"]["acc"],
           "lr": run.scheduler.get_last_lr()[0]}
    if "val" in sets:
        rec.update(val_loss=sets["val"]["loss"], val_acc=sets["val"]["acc"])
    rec.update(time=acc["time"] + eval_s, time_train=acc["time_train"], time_aug=acc["time_aug"],
               time_eval=eval_s)
    run.log(f"Epoch {epoch + 1}/{tc.epochs} runtime was: {rec['time']:.2f} seconds")
    run.log(f"Epoch: {epoch + 1}, Train Acc: {rec['train_acc']:.4f}, Train Loss: {rec['train_loss']:.4f}, "
            f"Test Acc: {rec['test_acc']:.4f}, Test Loss: {rec['test_loss']:.4f}"
            + (f", Val Acc: {rec['val_acc']:.4f}" if "val" in sets else ""))
    bad = nonfinite_weights(run)
    if bad:  # a finite loss does not mean finite weights (e.g. BatchNorm variances of inf at a huge lr)
        run.log(_diverged(run, epoch, f"{len(bad)} weights or buffers became NaN/inf (e.g. {bad[0]})"))
        return "diverged"  # the epoch enters neither the history nor a checkpoint
    run.history.append(rec)
    improved = metrics is not None and rec[tc.monitor] > run.best["metric"]
    run.best = ({"metric": rec[tc.monitor], "epoch": epoch + 1, "since": 0} if improved
                else {**run.best, "since": run.best["since"] + 1})
    t = time.perf_counter()
    save(run, epoch + 1, 0, None, best=improved)  # written while the next epoch trains; history after it
    rec["time_checkpoint"] = time.perf_counter() - t  # in the next checkpoint's history and the final history.json
    if on_epoch is not None:
        on_epoch(run.history)
    if tc.patience and run.best["since"] >= tc.patience:
        run.log(f"Early stop: {tc.monitor} has not improved for {tc.patience} epochs "
                f"(best {run.best['metric']:.4f} at epoch {run.best['epoch']})")
        return "early_stop"
    return None


# ---------------------------------------------------------------------------- fit

class _Interrupt:
    """Ctrl-C sets a flag so the loop can finish its step and save; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def fit(cfg: Config, data: CIFAR10 | None = None, out_dir: str | Path | None = None,
        resume: str | Path | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None,
        on_epoch: Callable[[list[dict]], None] | None = None) -> FitResult:
    """Train the recipe in ``cfg``; the one training loop of the project.

    Args:
        cfg: the full config (``get_preset(...)``).
        data: loaded CIFAR-10 (default: ``load_cifar10(cfg.data.root)``).
        out_dir: run folder for config, history, checkpoints, report and curves (None: nothing written).
        resume: a run folder or checkpoint to continue from; ``cfg`` must match it
            except for ``checkpoint.RESUME_SAFE`` keys.
        progress: show tqdm bars. log: where report lines go (default: ``tqdm.write``).
        on_epoch: called with the history after every epoch (e.g. live plots).
    """
    folder = RunFolder(out_dir) if out_dir is not None else None
    if folder is not None and resume is None:
        folder.ensure_free()  # refused before the folder is touched
    # The run seeds torch's global RNG (dropout draws from it) and may set the thread count:
    # both are the caller's again when fit returns.
    threads = torch.get_num_threads()
    try:
        with (folder.lock() if folder is not None else contextlib.nullcontext(),
              torch.random.fork_rng(devices=list(range(torch.cuda.device_count())))):
            if folder is not None and resume is None:
                folder.ensure_free()  # again under the lock: another training may have begun meanwhile
            return _fit(cfg, data, folder, resume, progress, log or tqdm.write, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: Config, data: CIFAR10 | None, folder: RunFolder | None, resume: str | Path | None,
         progress: bool, log: Callable[[str], None],
         on_epoch: Callable[[list[dict]], None] | None) -> FitResult:
    tc = cfg.train
    state = branch = None
    if resume is not None:
        source, branch = resume_source(resume, folder)
        state = load_checkpoint(source)
    run = build_run(cfg, data if data is not None else load_cifar10(cfg.data.root), folder, log)
    start_epoch, start_step, partial = 0, 0, None
    if resume is not None:
        start_epoch, start_step, partial = restore(run, state, source)
        if folder is not None:
            if branch:  # a new folder starts from a copy of the checkpoint, so it is complete on its own
                folder.start_from(source)
            for fixed in folder.repair(state):
                log(f"Repaired {display_path(folder.path)}: {fixed}")
        log(f"Resumed from {display_path(source)} at epoch {start_epoch + 1}, step {start_step}"
            + (f", into the new folder {display_path(folder.path)}" if branch else "")
            if start_epoch < tc.epochs else
            f"Reloaded {display_path(source)}: all {tc.epochs} epochs are done (delete the folder to train again)")
    if start_epoch < tc.epochs and run.net is not run.model:
        try:
            run.meta["compile_s"] = warm_up(run)
            log(f"Compiled ({run.compile_mode}) in {run.meta['compile_s']:.1f} s (not counted in the epoch times)")
        except Exception as e:  # e.g. no C compiler or Triton here: the eager model trains the same
            run.net, run.compile_mode = run.model, "off"
            run.meta["compile_error"] = _one_line(e)
            log(f"Compiling failed ({run.meta['compile_error']}); training without compilation "
                "(set train.compile=off to skip the attempt)")
    if folder is not None:
        folder.write_meta(run.meta, (start_epoch, start_step) if resume is not None else None,
                          branched_from={"checkpoint": display_path(source), "epoch": start_epoch,
                                         "step": start_step} if branch else None,
                          finished=start_epoch >= tc.epochs)

    try:
        status, test_logits = _epochs(run, start_epoch, start_step, partial, progress, on_epoch)
    finally:
        if folder is not None:
            folder.wait()  # the last checkpoint is on disk before fit returns (or its failure is raised)

    test_x, test_y = run.eval_sets["test"]
    if test_logits is None:  # no epoch finished in this call
        test_logits = predict(run.eval_model, test_x, run.mean, run.std, **run.predict_kw())
    per_class = dict(zip(run.classes, per_class_accuracy(test_logits, test_y, cfg.model.num_classes)))
    report = _report(run.history, per_class, tc.epochs)
    if run.history:
        log(report.split("\n\n", 1)[-1])
    if folder is not None and run.history:
        folder.write_history(run.history)  # complete now: the last epoch's checkpoint time included
        folder.write_report(report, run.history)
    if folder is not None and folder.meta.exists():
        folder.write_status(status, len(run.history))
    return FitResult(run.eval_model, run.history, per_class, status, run.out, report, run.meta)


def _epochs(run: Run, start_epoch: int, start_step: int, partial: dict | None, progress: bool,
            on_epoch: Callable[[list[dict]], None] | None) -> tuple[str, torch.Tensor | None]:
    """The epoch loop: train, evaluate, record, and stop when told. Returns (status, last test logits)."""
    status, test_logits = "completed", None
    with _Interrupt() as interrupt, tqdm(range(start_epoch, run.cfg.train.epochs), desc="epochs", disable=not progress,
                                         initial=start_epoch, total=run.cfg.train.epochs) as epochs_bar:
        for epoch in epochs_bar:
            acc = train_epoch(run, epoch, start_step, partial, interrupt, progress)
            start_step, partial = 0, None
            if acc["diverged"]:
                status = "diverged"
                run.log(_diverged(run, epoch, "the training loss became NaN/inf"))
                break
            if interrupt.requested and acc["steps"] < len(run.batches):
                bad = nonfinite_weights(run)
                if bad:
                    status = "diverged"
                    run.log(_diverged(run, epoch, f"{len(bad)} weights or buffers became NaN/inf (e.g. {bad[0]})"))
                    break
                saved = {k: acc[k] for k in ("loss", "correct", "n", "time", "time_train", "time_aug")}
                save(run, epoch, acc["steps"], saved, order_state=acc["order_state"])
                if run.folder is not None:
                    run.folder.wait()
                status = "interrupted"
                run.log(f"Interrupted in epoch {epoch + 1} after step {acc['steps']}; "
                    + (f"saved, resume with --resume {display_path(run.out)}" if run.out else "no out_dir, nothing saved"))
                break
            t = time.perf_counter()
            every, last = run.cfg.train.eval_every, epoch + 1 == run.cfg.train.epochs
            metrics = evaluate_run(run) if last or (every and (epoch + 1) % every == 0) else None
            if metrics is not None:
                test_logits = metrics["test"]["logits"]
                epochs_bar.set_postfix(test_acc=f"{metrics['test']['acc']:.4f}")
            status = end_epoch(run, epoch, acc, metrics, time.perf_counter() - t, on_epoch) or status
            if status in ("early_stop", "diverged"):
                break
            if interrupt.requested:
                status = "interrupted"
                run.log(f"Interrupted after epoch {epoch + 1}; "
                    + (f"saved, resume with --resume {display_path(run.out)}" if run.out else "no out_dir, nothing saved"))
                break
            if run.cfg.train.stop_after and run.cfg.train.stop_after <= epoch + 1 < run.cfg.train.epochs:
                status = "stop_after"
                run.log(f"Stopping after epoch {epoch + 1} as asked (train.stop_after); "
                    + (f"resume with --resume {display_path(run.out)}" if run.out else "no out_dir, nothing to resume"))
                break
    return status, test_logits


def _report(history: list[dict], per_class: dict[str, float], epochs: int) -> str:
    """The seed report's §5 block for the last epoch."""
    if not history:
        return ""
    h = history[-1]
    lines = [f"Epoch {h['epoch']}/{epochs} runtime was: {h['time']:.2f} seconds",
             f"Epoch: {h['epoch']}, Train Acc: {h['train_acc']:.4f}, Train Loss: {h['train_loss']:.4f}, "
             f"Test Acc: {h['test_acc']:.4f}, Test Loss: {h['test_loss']:.4f}", "",
             "Per-class accuracy:"]
    lines += [f"Accuracy of {name}: {acc:.2f}" for name, acc in per_class.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- command line

def _parser():
    import argparse
    p = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train the seed recipe (focal loss, CutMix/MixUp, SGD + OneCycle) on CIFAR-10.",
        epilog="Examples:\n  python -m helpers.train --preset smoke --out runs/smoke\n"
               "  python -m helpers.train --preset seed --set train.stop_after=50 --out runs/seed\n"
               "  python -m helpers.train --resume runs/seed",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="seed (Table 1), laptop (minutes on a CPU) or smoke (seconds); "
                        "default: seed on a GPU, laptop on a CPU")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--out", help="run folder (default: the project's runs/<preset>)")
    p.add_argument("--resume", help="continue the run in this folder (or from this checkpoint)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.root={args.data_dir}")
    try:
        if args.resume:
            if args.preset:
                p.error("--resume continues a run with its own config: drop --preset "
                        "(use --set for the few keys that may change)")
            state = load_checkpoint(args.resume)
            cfg = Config.from_dict(state["config"])
            cfg.train.stop_after = 0  # a resumed run goes on to the end unless told otherwise
            cfg = apply_overrides(cfg, overrides)
            out = Path(args.out) if args.out else (Path(args.resume) if Path(args.resume).is_dir()
                                                    else Path(args.resume).parent)
            print(f"Resuming {args.resume} (epoch {state['epoch']}, step {state['step']})")
        else:
            name = args.preset or ("seed" if pick_device().type != "cpu" else "laptop")
            if not args.preset:
                why = "a GPU is present" if name == "seed" else "no GPU was found"
                print(f"Preset: {name} (default, because {why}; choose with --preset)")
            cfg = get_preset(name, overrides)
            out = Path(args.out) if args.out else runs_dir() / name
            try:
                RunFolder(out).ensure_free()
            except ValueError as e:
                p.error(str(e))
        result = fit(cfg, out_dir=out, resume=args.resume, progress=not args.no_progress)
    except (ValueError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Run folder: {out} ({result.status})")
    return 0 if result.status in ("completed", "early_stop", "stop_after", "interrupted") else 1


if __name__ == "__main__":
    raise SystemExit(main())
