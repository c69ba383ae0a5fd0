"""The seed report's own input pipeline (§1), kept as the reference and for teaching.

A ``torchvision.datasets.CIFAR10``-style Dataset of PIL images, per-sample
transforms, a ``DataLoader`` with worker processes, then CutMix/MixUp on each
collated batch. It reads the same files as ``helpers.data`` (torchvision's own
class would refuse the offline copy's MD5s). ``helpers.augment`` does the same
work batched on the device; ``benchmarks/data_pipeline.py`` compares the two.
"""
from __future__ import annotations

__all__ = ["CIFAR10Images", "train_transform", "seed_loader", "images_per_second"]

import os
import time
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .augment import batch_mixer  # one CutMix/MixUp chooser for both pipelines
from .config import DataConfig, expect_section


class CIFAR10Images(Dataset):
    """(PIL image, label) pairs from uint8 tensors (N, 3, 32, 32), as torchvision's CIFAR10 yields."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None):
        self.x = x.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3): PIL's layout
        self.y = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.x[i])
        return (self.transform(img) if self.transform else img), self.y[i]


def train_transform(cfg: DataConfig, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The seed's per-sample training transform: flip, rotation, colour jitter, to tensor, normalise."""
    expect_section(cfg, DataConfig, "train_transform")
    return v2.Compose([
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomRotation(cfg.rotation),
        v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def seed_loader(x: torch.Tensor, y: torch.Tensor, cfg: DataConfig, mean: Sequence[float],
                std: Sequence[float], num_workers: int | None = None, seed: int = 0) -> Iterable:
    """The report's training loader: yields (normalised images (B, 3, 32, 32), soft targets (B, 10))."""
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    ds = CIFAR10Images(x, y, train_transform(cfg, mean, std))
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                        drop_last=cfg.drop_last,
                        generator=torch.Generator().manual_seed(seed))
    mix = batch_mixer(cfg)

    class _Mixed:  # re-iterable like a DataLoader, applying the batch mix
        def __len__(self) -> int:
            return len(loader)

        def __iter__(self):
            for xb, yb in loader:
                yield mix(xb, yb)

    return _Mixed()


def images_per_second(batches: Iterable, num_batches: int, warmup: int = 2) -> float:
    """Throughput of an iterable of (images, targets) batches over ``num_batches`` after ``warmup``."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(num_batches):
        xb, _ = next(it)
        n += len(xb)
    if xb.is_cuda:  # CUDA work is asynchronous: wait for it before reading the clock
        torch.cuda.synchronize(xb.device)
    return n / (time.perf_counter() - t0)

