"""Where a training step's time goes: ``fit``'s own steps under ``torch.profiler``.

    python benchmarks/profile_steps.py                          # the seed preset on this machine's GPU
    python benchmarks/profile_steps.py --preset laptop --trace runs/trace.json

Builds the run as ``fit`` does (compiled as ``fit`` compiles: on CUDA the step as one CUDA graph), trains a few
warm-up steps, then times ``--steps`` steps of ``train_epoch`` (default: as many as share one
augmentation chunk, 64 for the seed preset on CUDA) twice: once plain (the wall time per
step) and once under the profiler. On a GPU it reports how long the GPU was busy (the union of its
kernels and copies) against that wall time: well under 100 % means the GPU waits for the host
(Python, launches, syncs), and the host table says for what. The profiler adds host time per
operation, so only the plain run's wall time is compared. ``--trace`` also writes a Chrome trace
(open it in Perfetto or chrome://tracing).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.augment import aug_chunk  # noqa: E402
from helpers.checkpoint import provenance  # noqa: E402
from helpers.config import PRESETS, get_preset  # noqa: E402
from helpers.data import load_cifar10  # noqa: E402
from helpers.train import build_run, train_epoch, warm_up  # noqa: E402


class StopAfter:
    """Stands in for ``fit``'s Ctrl-C flag: ``train_epoch`` checks it after each step and stops after ``n``."""

    def __init__(self, n: int):
        self.left = n

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self.left <= 0


def _busy_us(events) -> float:
    """The union of the GPU's kernel and copy intervals, µs (overlapping kernels count once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, -float("inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def profile_steps(cfg, data, steps: int = 0, warm: int = 10, top: int = 12, trace: str | None = None) -> dict:
    """Wall time per step, GPU busy time per step (CUDA only), and the top host ops and kernels.

    ``steps`` = 0: one augmentation chunk's worth of batches (64 for the seed preset on CUDA), so
    that the chunk's per-image augmentation is shared by as many steps as in a whole epoch (at
    most an epoch's).
    """
    torch._dynamo.reset()  # compile afresh: the profile must not ride on another model's graphs
    cfg = cfg.replace([f"train.epochs={max(3, cfg.train.epochs)}"])  # three calls below, one epoch each
    run = build_run(cfg, data, log=lambda s: None)
    compile_s = warm_up(run)
    cuda = run.device.type == "cuda"
    b = cfg.data.batch_size
    steps = steps or min(len(run.batches), max(1, aug_chunk(cfg.data.aug_chunk, run.device) // b))
    if steps > len(run.batches):
        raise ValueError(f"{steps} steps to profile, but an epoch has {len(run.batches)}: use --steps")
    warm = min(warm, len(run.batches))
    train_epoch(run, 0, interrupt=StopAfter(warm), progress=False)  # cuDNN's choices, allocator, first chunk
    t = time.perf_counter()
    train_epoch(run, 1, interrupt=StopAfter(steps), progress=False)  # ends with one read: the queue drains
    wall_us = (time.perf_counter() - t) / steps * 1e6
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        train_epoch(run, 2, interrupt=StopAfter(steps), progress=False)
    if trace:
        prof.export_chrome_trace(trace)
    averages = prof.key_averages()
    host = sorted((a for a in averages if a.device_type == torch.autograd.DeviceType.CPU),
                  key=lambda a: a.self_cpu_time_total, reverse=True)
    kernels = sorted((a for a in averages if a.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda a: a.self_device_time_total, reverse=True)
    # The host operations by the GPU time of the kernels they launched themselves: which eager op
    # (a copy, a multiplication, …) is behind a kernel whose name alone does not say.
    launchers = sorted((a for a in host if a.self_device_time_total > 0),
                       key=lambda a: a.self_device_time_total, reverse=True)
    out = {"device": str(run.device), "steps": steps, "batch": b, "compile": cfg.train.compile, "compile_s": compile_s,
           "wall_us_per_step": wall_us,
           "gpu_busy_us_per_step": _busy_us(prof.events()) / steps if cuda else None,
           "host_top": [{"op": a.key, "us_per_step": a.self_cpu_time_total / steps, "calls_per_step": a.count / steps}
                        for a in host[:top]],
           # 150 characters: enough to reach the functor of ATen's element-wise kernels
           "kernels_top": [{"kernel": a.key[:150], "us_per_step": a.self_device_time_total / steps,
                            "calls_per_step": a.count / steps} for a in kernels[:top]],
           "launchers_top": [{"op": a.key, "gpu_us_per_step": a.self_device_time_total / steps,
                              "calls_per_step": a.count / steps} for a in launchers[:top]]}
    if cuda:
        out["gpu_busy_fraction"] = out["gpu_busy_us_per_step"] / wall_us
    return out


def report(p: dict) -> list[str]:
    """The profile in a few lines of text (gpu_check's Markdown reuses them)."""
    lines = [f"{p['steps']} steps of batch {p['batch']} (train.compile={p['compile']}): wall "
             f"{p['wall_us_per_step'] / 1000:.2f} ms a step without the profiler."]
    if p["gpu_busy_us_per_step"] is not None:
        frac = p["gpu_busy_fraction"]
        lines += [f"GPU busy {p['gpu_busy_us_per_step'] / 1000:.2f} ms a step ({frac:.0%} of the wall time): "
                  + ("the GPU is the bottleneck." if frac >= 0.9 else
                     f"the GPU waits for the host {1 - frac:.0%} of the time (host table below).")]
    lines += ["", "| host op (self time) | µs/step | calls/step |", "|---|---|---|"]
    lines += [f"| `{h['op']}` | {h['us_per_step']:.0f} | {h['calls_per_step']:.1f} |" for h in p["host_top"]]
    if p["kernels_top"]:
        lines += ["", "| GPU kernel | µs/step | calls/step |", "|---|---|---|"]
        lines += [f"| `{k['kernel']}` | {k['us_per_step']:.0f} | {k['calls_per_step']:.1f} |" for k in p["kernels_top"]]
    if p.get("launchers_top"):
        lines += ["", "| host op, by the GPU time of the kernels it launched | GPU µs/step | calls/step |",
                  "|---|---|---|"]
        lines += [f"| `{k['op']}` | {k['gpu_us_per_step']:.0f} | {k['calls_per_step']:.1f} |" for k in p["launchers_top"]]
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=0, help="steps to time (default: one augmentation chunk's)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--trace", help="also write a Chrome trace to this file")
    p.add_argument("--commit", help="the commit to report, where the checkout is a copy without (current) git metadata")
    args = p.parse_args(argv)
    cfg = get_preset(args.preset, args.overrides)
    try:
        out = profile_steps(cfg, load_cifar10(args.data_dir), steps=args.steps, trace=args.trace)
    except ValueError as e:
        p.error(str(e))
    prov = provenance(torch.device(out["device"]))
    print(f"{args.preset} preset on {prov['device_name']}; torch {prov['torch']}, commit {args.commit or prov['git_commit']}")
    print("\n".join(report(out)))
    return out


if __name__ == "__main__":
    main()
