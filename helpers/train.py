"""Training: one step, one ``fit``, evaluation, and the command-line entry point.

    result = fit(get_preset("smoke"), out_dir="runs/smoke")
    python -m helpers.train --preset laptop --set train.epochs=5 --out runs/try

Per batch: device-resident uint8 images → per-image augmentation → CutMix/MixUp
→ model → focal loss → SGD + OneCycle. Per epoch: train/test (and validation)
loss and accuracy, a checkpoint, early stopping.
"""
from __future__ import annotations

import csv
import io
import json
import math
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

from .augment import BatchAugment
from .checkpoint import (CheckpointError, check_compatible, load_checkpoint, provenance, rng_state, runs_dir,
                         save_checkpoint, set_rng_state, write_json, atomic_write_bytes,
                         atomic_write_text)
from .config import Config, get_preset, PRESETS, apply_overrides
from .data import CIFAR10, DataError, DeviceBatches, channel_stats, load_cifar10, subset
from .engine import amp_dtype, evaluate, per_class_accuracy, pick_device, predict, train_step
from .losses import build_loss
from .model import build_model
from .optim import build_optimizer, build_scheduler


# ---------------------------------------------------------------------------- fit

@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    per_class: dict[str, float]
    status: str                    # "completed", "early_stop", "stop_after", "interrupted", "diverged"
    out_dir: Path | None = None
    report: str = ""
    meta: dict = field(default_factory=dict)


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
    log = log or tqdm.write
    tc = cfg.train
    if out_dir is not None and resume is None and (Path(out_dir) / "last.pt").exists():
        raise ValueError(f"{out_dir} already holds a run: continue it with resume={str(out_dir)!r}, "
                         "or choose another out_dir (runs are never overwritten)")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = pick_device(tc.device)
    dtype = amp_dtype(tc.amp, device)
    torch.manual_seed(tc.seed)

    ds, val = subset(data if data is not None else load_cifar10(cfg.data.root), cfg.data)
    mean, std = channel_stats(ds.train_x)
    model = build_model(cfg.model).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if tc.compile else model
    loss_fn = build_loss(cfg.loss, ds.classes).to(device)
    batches = DeviceBatches(ds.train_x, ds.train_y, cfg.data.batch_size, shuffle=True,
                            drop_last=cfg.data.drop_last, device=device, seed=tc.seed)
    aug = BatchAugment(cfg.data, mean, std, num_classes=cfg.model.num_classes, seed=tc.seed + 1)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, epochs=tc.epochs, steps_per_epoch=len(batches))
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    test_x, test_y = ds.test_x.to(device), ds.test_y.to(device)
    pred_kw = dict(batch_size=cfg.data.eval_batch_size, dtype=dtype, tta_flip=tc.tta_flip,
                   channels_last=tc.channels_last)

    history: list[dict] = []
    best = {"metric": -math.inf, "epoch": 0, "since": 0}
    start_epoch, start_step, partial = 0, 0, None
    prov = provenance(device)
    meta = {"config": cfg.to_dict(), "seed": tc.seed, "mean": mean, "std": std, **prov}
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        check_compatible(state, cfg, resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], batches.generator, aug.generator)
        history, best = state["history"], state["best"]
        start_epoch, start_step, partial = state["epoch"], state["step"], state["partial"]
        log(f"Resumed from {resume} at epoch {start_epoch + 1}, step {start_step}"
            if start_epoch < tc.epochs else
            f"Reloaded {resume}: all {tc.epochs} epochs are done (delete the folder to train again)")

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        run_json = out / "run.json"
        if resume is None or not run_json.exists():
            write_json(run_json, meta)
        elif start_epoch < tc.epochs:  # keep the original provenance; record where each resume ran
            saved = json.loads(run_json.read_text())
            saved.setdefault("resumes", []).append({"epoch": start_epoch, "step": start_step, **prov})
            write_json(run_json, saved)

    def checkpoint(epoch: int, step: int, acc: dict | None, name: str = "last.pt",
                   order_state: torch.Tensor | None = None) -> None:
        if out is None:
            return
        rng = rng_state(batches.generator, aug.generator)
        if order_state is not None:  # mid-epoch: resume redraws this epoch's order from here
            rng["generators"][0] = order_state
        save_checkpoint(out / name, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
            "rng": rng, "epoch": epoch, "step": step, "partial": acc, "history": history,
            "best": best, "config": cfg.to_dict(),
            "meta": {k: v for k, v in meta.items() if k != "config"}})

    status, test_logits = "completed", None
    epochs_bar = tqdm(range(start_epoch, tc.epochs), desc="epochs", disable=not progress,
                      initial=start_epoch, total=tc.epochs)
    with _Interrupt() as interrupt:
        for epoch in epochs_bar:
            t0 = time.perf_counter()
            order_state = batches.generator.get_state()  # before this epoch's shuffle
            acc = partial or {"loss": 0.0, "correct": 0.0, "n": 0, "time": 0.0}
            skip, partial, start_step = start_step, None, 0
            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}", leave=False,
                       disable=not progress, initial=skip)
            # Summed on the device (no sync per step), starting from a resumed epoch's partial sums
            # so the additions happen in the same order as in an uninterrupted run.
            loss_sum = torch.tensor(acc["loss"], device=device)
            correct = torch.tensor(acc["correct"], device=device)
            step = 0
            for step, (xb, yb) in enumerate(batches, start=1):
                if step <= skip:
                    continue  # resuming mid-epoch: these batches were trained before
                x, target = aug(xb, yb)
                if tc.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss, logits = train_step(run_model, loss_fn, optimizer, x, target, dtype, scaler)
                scheduler.step()
                loss_sum += loss * len(yb)
                correct += (logits.argmax(1) == target.argmax(1)).sum()  # vs the dominant label
                acc["n"] += len(yb)
                bar.update()
                if (step % 50 == 0 or step == len(batches)) and not torch.isfinite(loss_sum):
                    status = "diverged"
                    break
                if interrupt.requested:
                    break
            bar.close()
            acc["loss"], acc["correct"] = float(loss_sum), float(correct)
            acc["time"] += time.perf_counter() - t0
            if status == "diverged":
                log(f"Stopped: the training loss became NaN/inf in epoch {epoch + 1}. "
                    + (f"The last good checkpoint in {out} is kept; " if out else "")
                    + "try a lower optim.max_lr.")
                break
            if interrupt.requested and step < len(batches):
                checkpoint(epoch, step, acc, order_state=order_state)
                status = "interrupted"
                log(f"Interrupted in epoch {epoch + 1} after step {step}; "
                    + (f"saved, resume with --resume {out}" if out else "no out_dir, nothing saved"))
                break

            # ---- end of epoch: evaluate, record, checkpoint, decide
            test = evaluate(run_model, test_x, test_y, loss_fn, mean, std, **pred_kw)
            test_logits = test["logits"]
            rec = {"epoch": epoch + 1, "train_loss": acc["loss"] / acc["n"],
                   "train_acc": acc["correct"] / acc["n"], "test_loss": test["loss"],
                   "test_acc": test["acc"], "lr": scheduler.get_last_lr()[0]}
            if val is not None:
                v = evaluate(run_model, val[0].to(device), val[1].to(device), loss_fn, mean, std, **pred_kw)
                rec.update(val_loss=v["loss"], val_acc=v["acc"])
            rec["time"] = acc["time"]
            history.append(rec)
            log(f"Epoch {epoch + 1}/{tc.epochs} runtime was: {rec['time']:.2f} seconds")
            log(f"Epoch: {epoch + 1}, Train Acc: {rec['train_acc']:.4f}, Train Loss: {rec['train_loss']:.4f}, "
                f"Test Acc: {rec['test_acc']:.4f}, Test Loss: {rec['test_loss']:.4f}"
                + (f", Val Acc: {rec['val_acc']:.4f}" if val is not None else ""))
            epochs_bar.set_postfix(test_acc=f"{rec['test_acc']:.4f}")
            improved = rec[tc.monitor] > best["metric"]
            best = ({"metric": rec[tc.monitor], "epoch": epoch + 1, "since": 0} if improved
                    else {**best, "since": best["since"] + 1})
            checkpoint(epoch + 1, 0, None)
            if improved:
                checkpoint(epoch + 1, 0, None, name="best.pt")
            if out is not None:
                _write_history(out, history)
            if on_epoch is not None:
                on_epoch(history)
            if tc.patience and best["since"] >= tc.patience:
                status = "early_stop"
                log(f"Early stop: {tc.monitor} has not improved for {tc.patience} epochs "
                    f"(best {best['metric']:.4f} at epoch {best['epoch']})")
                break
            if interrupt.requested:
                status = "interrupted"
                log(f"Interrupted after epoch {epoch + 1}; "
                    + (f"saved, resume with --resume {out}" if out else "no out_dir, nothing saved"))
                break
            if tc.stop_after and tc.stop_after <= epoch + 1 < tc.epochs:
                status = "stop_after"
                log(f"Stopping after epoch {epoch + 1} as asked (train.stop_after); "
                    + (f"resume with --resume {out}" if out else "no out_dir, nothing to resume"))
                break
    epochs_bar.close()

    if test_logits is None:  # no epoch finished in this call
        test_logits = predict(run_model, test_x, mean, std, **pred_kw)
    per_class = dict(zip(ds.classes, per_class_accuracy(test_logits, test_y, cfg.model.num_classes)))
    report = _report(history, per_class, tc.epochs)
    if history:
        log(report.split("\n\n", 1)[-1])
    if out is not None and history:
        atomic_write_text(out / "report.txt", report)
        _save_curves(out, history)
    return FitResult(model, history, per_class, status, out, report, meta)


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


def _write_history(out: Path, history: list[dict]) -> None:
    write_json(out / "history.json", history)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[-1]))
    w.writeheader()
    w.writerows(history)
    atomic_write_text(out / "history.csv", buf.getvalue())


def _save_curves(out: Path, history: list[dict]) -> None:
    from .plots import training_curves
    import matplotlib.pyplot as plt
    fig = training_curves(history)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out / "curves.png", buf.getvalue())


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
            if (out / "last.pt").exists():
                p.error(f"{out} already holds a run: continue it with --resume {out}, "
                        "or choose another --out")
        result = fit(cfg, out_dir=out, resume=args.resume, progress=not args.no_progress)
    except (ValueError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Run folder: {out} ({result.status})")
    return 0 if result.status in ("completed", "early_stop", "stop_after", "interrupted") else 1


if __name__ == "__main__":
    raise SystemExit(main())
