"""Images/s of the seed's input pipeline vs the batched one, measured in the same run.

    .venv/bin/python benchmarks/data_pipeline.py            # ~1 minute on 2 cores
    .venv/bin/python benchmarks/data_pipeline.py --batches 40 --rounds 1   # quicker

(a) seed-style: PIL images → per-sample v2 transforms → DataLoader with one
    worker per core → CutMix/MixUp on the collated batch (helpers.reference);
(b) batched: device-resident uint8 → per-image flip/rotation/jitter/normalise
    as batched tensor ops → CutMix/MixUp (helpers.data + helpers.augment).
Both produce normalised (128, 3, 32, 32) float batches with (128, 10) soft targets.
Rounds alternate between the two so a busy machine slows both alike; the
median round is reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.augment import BatchAugment  # noqa: E402
from helpers.config import get_preset  # noqa: E402
from helpers.data import DeviceBatches, channel_stats, load_cifar10  # noqa: E402
from helpers.engine import pick_device  # noqa: E402
from helpers.reference import images_per_second, seed_loader  # noqa: E402


def batched_pipeline(x, y, cfg, mean, std, device):
    """Endless augmented batches from the device-resident pipeline."""
    batches = DeviceBatches(x, y, cfg.batch_size, device=device, seed=0)
    aug = BatchAugment(cfg, mean, std, seed=1)
    while True:
        for xb, yb in batches:
            out = aug(xb, yb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            yield out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=100, help="batches timed per round and pipeline")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: cores)")
    p.add_argument("--device", default="auto", help="device of the batched pipeline")
    p.add_argument("--data-dir", default="data")
    args = p.parse_args()

    cfg = get_preset("seed").data
    ds = load_cifar10(args.data_dir)
    mean, std = channel_stats(ds.train_x)
    device = pick_device(args.device)

    loader = seed_loader(ds.train_x, ds.train_y, cfg, mean, std, num_workers=args.workers)
    fast = batched_pipeline(ds.train_x, ds.train_y, cfg, mean, std, device)
    ref_ips, fast_ips = [], []
    for _ in range(args.rounds):
        ref = iter(loader)  # a fresh epoch; its workers start before the timed batches
        ref_ips.append(images_per_second(ref, args.batches))
        ref.close()         # stop the workers, or their prefetching would slow the next measurement
        fast_ips.append(images_per_second(fast, args.batches))
    a, b = statistics.median(ref_ips), statistics.median(fast_ips)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, python "
          f"{platform.python_version()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"batched device {device}")
    print(f"batch {cfg.batch_size}, {args.batches} batches x {args.rounds} rounds")
    print(f"(a) seed-style DataLoader + PIL ({args.workers} workers): {a:10.0f} images/s")
    print(f"(b) batched per-image on {device.type:4s}:                {b:10.0f} images/s")
    print(f"ratio (b)/(a): {b / a:.1f}x")


if __name__ == "__main__":
    main()
