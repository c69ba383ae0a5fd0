"""What a checkpoint costs the training loop: ``torch.save``'s defaults against ``helpers.checkpoint.serialise``.

    .venv/bin/python benchmarks/checkpoint.py                  # the seed preset: weights + momentum, 157 MB
    .venv/bin/python benchmarks/checkpoint.py --preset laptop --rounds 9

At each epoch's end ``fit`` serialises the run's state on the main thread (a background thread
then writes the bytes), so this is the checkpoint's share of an epoch. Times, interleaved in one
run on the preset's device:
- ``torch.save``: into memory with torch's defaults: CRC-32 checksums on; device tensors copied
  to the host one by one, each copy a wait for the device;
- ``serialise``: what ``fit`` does: every device tensor copied asynchronously with one wait
  (``to_host``), no CRC-32.
The weights are the untrained model's after one optimiser step (so momentum buffers exist): the
cost depends on the sizes only. Prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.checkpoint import provenance, serialise  # noqa: E402
from helpers.config import PRESETS, get_preset  # noqa: E402
from helpers.engine import pick_device  # noqa: E402
from helpers.model import build_model  # noqa: E402
from helpers.optim import build_optimizer  # noqa: E402


def torch_save(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def run_state(preset: str, overrides: list[str], device: torch.device) -> dict:
    """A checkpoint's large part, as ``fit`` saves it: the model's and the optimiser's state dicts."""
    cfg = get_preset(preset, overrides)
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    model(torch.randn(2, 3, 32, 32, device=device)).float().square().mean().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def measure(state: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each way, interleaved round by round (a drifting machine affects both alike)."""
    ways = {"torch.save": torch_save, "serialise": serialise}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            t = time.perf_counter()
            data = way(state)
            times[name].append(time.perf_counter() - t)
            del data
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    device = pick_device(get_preset(args.preset, args.overrides).train.device)
    state = run_state(args.preset, args.overrides, device)
    tensors = [t for part in state.values() for t in tensors_in(part)]
    mb = sum(t.numel() * t.element_size() for t in tensors) / 1e6
    prov = provenance(device)
    print(f"{args.preset} preset: {len(tensors)} tensors, {mb:.0f} MB on {prov['device_name']} ({device}); "
          f"torch {prov['torch']}, commit {prov['git_commit']}; median of {args.rounds} rounds")
    med = measure(state, args.rounds)
    for name, s in med.items():
        print(f"  {name:10s} {s * 1000:7.1f} ms   ({med['torch.save'] / s:.2f}× torch.save's speed)")
    return {"tensors": len(tensors), "mb": mb, "median_s": med, "provenance": prov}


def tensors_in(x) -> list[torch.Tensor]:
    """The tensors in nested dicts, lists and tuples."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors_in(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors_in(v)]
    return []


if __name__ == "__main__":
    main()
