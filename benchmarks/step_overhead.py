"""Host time per training step: the work a GPU waits for when the step is launch-bound.

    .venv/bin/python benchmarks/step_overhead.py                 # on this machine's default device
    .venv/bin/python benchmarks/step_overhead.py --device cpu --rounds 9

``helpers.engine.train_step`` on the seed preset's model with every layer shrunk to 2 channels and
a batch of 2: the same modules, parameters (68 tensors) and loss as the real step, with arithmetic
too small to matter, so what is timed is Python, dispatch and launches. Eager, because that host
work is what remains around a CUDA-graphed model: the loss, the optimiser, the mode switch. Times,
interleaved in one run (median µs per step, and each part alone):
- ``before``: the code before ``1830874``: ``model.train()`` every step, SGD with torch's default
  for the device (``foreach`` on CUDA, a for-loop on a CPU);
- ``now``: what ``fit`` does: the mode checked, SGD fused on CUDA (torch's default elsewhere, so on
  a CPU only the mode switch differs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.checkpoint import provenance  # noqa: E402
from helpers.config import get_preset  # noqa: E402
from helpers.data import CLASSES  # noqa: E402
from helpers.engine import pick_device, train_step  # noqa: E402
from helpers.losses import build_loss  # noqa: E402
from helpers.model import build_model  # noqa: E402
from helpers.optim import build_optimizer  # noqa: E402

TINY = ["model.channels=[2,2,2,2,2,2]", "model.stem_channels=2", "model.reduction_factor=1"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: torch.device, steps: int = 50, rounds: int = 5) -> dict[str, float]:
    """Median µs per step of each way, and of the parts that differ, interleaved round by round."""
    cfg = get_preset("seed", TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    loss_fn = build_loss(cfg.loss, CLASSES).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    target = torch.full((2, cfg.model.num_classes), 1 / cfg.model.num_classes, device=device)
    now = build_optimizer(model, cfg.optim)
    # The same groups (lr, momentum, weight decay) with torch's defaults for this device: foreach on
    # CUDA, a for-loop on a CPU (each group's own "fused"/"foreach" would win over SGD's arguments).
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in now.param_groups]
    before = torch.optim.SGD(groups)

    def step_before():
        model.train()
        train_step(model, loss_fn, before, x, target)

    ways = {"before": step_before, "now": lambda: train_step(model, loss_fn, now, x, target),
            "model.train()": model.train, "SGD step, before": before.step, "SGD step, now": now.step}
    for way in ways.values():  # warm up: first calls allocate and initialise state
        for _ in range(3):
            way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                way()
            _sync(device)
            times[name].append((time.perf_counter() - t) / steps * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--commit", help="the commit to report, where the checkout is a copy without (current) git metadata")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    prov = provenance(device)
    print(f"host time per step, seed model's structure at 2 channels, batch 2, eager, on {prov['device_name']} "
          f"({device}); torch {prov['torch']}, commit {args.commit or prov['git_commit']}; median of {args.rounds} rounds "
          f"of {args.steps}")
    us = measure(device, args.steps, args.rounds)
    for name, t in us.items():
        print(f"  {name:18s} {t:8.0f} µs" + (f"   ({us['before'] / t:.2f}× before's speed)" if name == "now" else ""))
    return {"us": us, "provenance": prov}


if __name__ == "__main__":
    main()
