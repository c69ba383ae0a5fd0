"""The seed's augmentations, applied to a whole batch on its device, each image drawing its own parameters.

Why not ``torchvision.transforms.v2`` for the per-image part: called on a batch
tensor, a v2 transform draws *one* set of parameters for the whole batch (one
flip decision, one angle, one jitter), which is not the seed's recipe (per
image, every epoch). So flip, rotation and colour jitter are written here as
masked/batched tensor ops whose per-image results equal torchvision's
functional kernels (``tests/test_augment.py`` checks them image by image).
CutMix and MixUp *are* per-batch operations, so those come from
``torchvision.transforms.v2``.

    aug = BatchAugment(cfg.data, mean, std, seed=0)
    x, y_soft = aug(x_uint8, y)       # (B, 3, 32, 32) float normalised, (B, 10) soft targets
    for step, x, y_soft in aug.epoch(train_x, train_y, order, batch_size=128, epoch=3):
        ...                           # training: per-image ops on chunks of thousands of images

Why chunks: on a GPU a call on 128 images is bound by kernel launches, one on
thousands by arithmetic; on a CPU chunks beyond ~1,000 images fall out of the
caches (``AUG_CHUNK``; BENCHMARKS.md, "GPU"). ``epoch`` draws every batch's parameters from
that batch's own generator, seeded by (seed, epoch, step), so the result is the
same whatever the chunk size, and a run resumed mid-epoch redraws it exactly.
"""
from __future__ import annotations

__all__ = ["BatchAugment", "batch_mixer", "AUG_CHUNK", "aug_chunk", "normalize", "denormalize", "to_float",
           "hflip", "translate", "rotate", "adjust_brightness", "adjust_contrast", "adjust_saturation",
           "adjust_hue"]

import functools
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .config import DataConfig, expect_section

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale

# Images per augmentation call when data.aug_chunk = 0, per device type: a GPU is launch-bound
# below thousands of images; on a CPU a chunk of 8,192 no longer fits the caches and is slower
# than one of 1,024 (timings: BENCHMARKS.md, "GPU", the augmentation table and the line after it).
AUG_CHUNK = {"cuda": 8192}
AUG_CHUNK_DEFAULT = 1024


def aug_chunk(chunk: int, device: torch.device) -> int:
    """``data.aug_chunk``, with 0 resolved for ``device``."""
    return chunk or AUG_CHUNK.get(device.type, AUG_CHUNK_DEFAULT)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    # Parameters are drawn on the CPU generator so a seed gives the same batch on every device.
    return torch.rand(n, generator=g) * (hi - lo) + lo


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


@functools.lru_cache(maxsize=32)
def _per_channel(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Made once per device: a tensor built from Python numbers is a host→device copy that waits
    # for the GPU to finish its queue (torch.cuda.set_sync_debug_mode flags it). Never modified.
    return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)  # (1, C, 1, 1)


def _stats(mean: Sequence[float], std: Sequence[float], where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` as tuples of floats, refused if they would make non-finite images."""
    m, s = tuple(map(float, mean)), tuple(map(float, std))
    _check_stats(m, s, where)
    return m, s


@functools.lru_cache(maxsize=32)
def _check_stats(m: tuple[float, ...], s: tuple[float, ...], where: str) -> None:
    # Cached: normalize runs once per batch, and the statistics are the same every time.
    if len(m) != len(s) or not m:
        raise ValueError(f"{where}: mean {m} and std {s} must give one value per channel each")
    if not all(math.isfinite(v) for v in m) or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"{where}: std must be > 0 and mean and std finite (else the images are not finite), "
                         f"got mean {m}, std {s}: pass the training set's channel_stats")


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] images (B, 3, H, W) → per-channel standardised float32."""
    mean, std = _stats(mean, std, "normalize")
    m = _per_channel(mean, x.device, torch.float32)
    s = _per_channel(std, x.device, torch.float32)
    return (to_float(x) - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of ``normalize``, clamped to [0, 1] for display."""
    m = _per_channel(tuple(map(float, mean)), x.device, x.dtype)
    s = _per_channel(tuple(map(float, std)), x.device, x.dtype)
    return (x * s + m).clamp(0, 1)


# ---------------------------------------------------------------------------- per-image ops

def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``flip`` (B,) bool is set."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    # Index i in [-(n-1), 2(n-1)] of a reflect-padded axis of length n → the index it copies.
    return (n - 1) - ((n - 1) - i.abs()).abs()


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each image (B, C, H, W) by its own whole-pixel offsets dx, dy (B,), reflecting at the border.

    Output pixel (r, c) of image b is input pixel (r + dy_b, c + dx_b), mirrored back inside
    the image: for |offsets| ≤ p this is RandomCrop(H, padding=p, padding_mode="reflect")
    with the crop's corner at (p + dy, p + dx). Two gathers, no padded copy; any dtype.
    """
    B, C, H, W = x.shape
    rows = _reflect(torch.arange(H, device=x.device) + dy.view(-1, 1).long(), H)   # (B, H)
    cols = _reflect(torch.arange(W, device=x.device) + dx.view(-1, 1).long(), W)   # (B, W)
    x = x.gather(2, rows.view(B, 1, H, 1).expand(B, C, H, W))
    return x.gather(3, cols.view(B, 1, 1, W).expand(B, C, H, W))


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B, C, H, W) counter-clockwise by its own angle (B,), bilinear, zero fill."""
    B, _, H, W = x.shape
    t = torch.deg2rad(degrees.to(x.dtype)).view(-1, 1, 1)
    cos, sin = torch.cos(t), torch.sin(t)  # (B, 1, 1)
    # Pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False).
    xs = (torch.arange(W, device=x.device, dtype=x.dtype) * 2 + 1) / W - 1  # (W,)
    ys = (torch.arange(H, device=x.device, dtype=x.dtype) * 2 + 1) / H - 1  # (H,)
    xs, ys = xs.view(1, 1, W), ys.view(1, H, 1)
    # The grid maps each output pixel to where it samples the input: the inverse rotation.
    # (What F.affine_grid computes, without its batched matmul, which costs more than the sampling.)
    # The [-1, 1] coordinates squash a non-square image to a square: scale by the aspect ratio.
    grid = torch.stack([cos * xs - sin * ys * (H / W), sin * xs * (W / H) + cos * ys], dim=-1)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)  # (B, 1, H, W)


def _blend(x: torch.Tensor, other: torch.Tensor | float, ratio: torch.Tensor) -> torch.Tensor:
    r = ratio.view(-1, 1, 1, 1)
    return (r * x + (1 - r) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def _mod6(x: torch.Tensor) -> torch.Tensor:
    return x - 6.0 * torch.floor(x / 6.0)  # = x.remainder(6), several times faster on CPU


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by its own ``shift`` (B,) in turns, via HSV as torchvision does."""
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)  # (B, H, W): the value V (faster than x.max(1))
    delta = maxc - torch.minimum(torch.minimum(r, g), b)  # V·S, the chroma
    dc = torch.where(delta == 0, 1.0, delta)  # grey pixels: any hue, their chroma is 0
    # Hue in sextants (one unit = 60°), from whichever channel is the max; one division, not three.
    num = torch.where(maxc == r, g - b, torch.where(maxc == g, b - r + 2 * dc, r - g + 4 * dc))
    h6 = (num / dc + 6.0 * shift.view(-1, 1, 1)).unsqueeze(1)  # (B, 1, H, W), shifted
    # HSV → RGB in closed form: channel n ∈ (R 5, G 3, B 1) is V − V·S·clamp(min(k, 4 − k), 0, 1),
    # k = (n + 6h) mod 6. Equal to torchvision's six-case (v, p, q, t) table, without a gather.
    k = _mod6(h6 + _per_channel((5.0, 3.0, 1.0), x.device, x.dtype))  # (B, 3, H, W)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0, 1)


# ---------------------------------------------------------------------------- the pipeline

def batch_mixer(cfg: DataConfig, num_classes: int = 10) -> v2.RandomChoice:
    """CutMix (p = cutmix_p) or MixUp on a batch: torchvision draws one of them per call."""
    expect_section(cfg, DataConfig, "batch_mixer")
    return v2.RandomChoice([v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes),
                            v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes)],
                           p=[cfg.cutmix_p, 1.0 - cfg.cutmix_p])


def _check_images(x: torch.Tensor, where: str) -> None:
    # Metadata only (no host sync): float images in 0..255 would otherwise come out near white.
    if x.dtype != torch.uint8:
        raise TypeError(f"{where} expects uint8 images in 0..255, got {x.dtype}: pass the uint8 images "
                        "as load_cifar10 gives them (or convert with .to(torch.uint8))")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{where} expects images (N, 3, H, W), got shape {tuple(x.shape)}")


class BatchAugment:
    """Per-image flip → translation → rotation → colour jitter → normalise, then CutMix or MixUp per batch.

    Colour jitter applies brightness, contrast, saturation, hue in that fixed
    order (torchvision shuffles the order per call; a per-image order would
    cost four passes for a difference no one has shown to matter).
    """

    def __init__(self, cfg: DataConfig, mean: Sequence[float], std: Sequence[float],
                 num_classes: int = 10, seed: int = 0):
        expect_section(cfg, DataConfig, "BatchAugment")
        # Floats once here: tensors would cost a host sync per batch in normalize.
        self.mean, self.std = _stats(mean, std, "BatchAugment")
        self.cfg, self.num_classes = cfg, num_classes
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._mixers = batch_mixer(cfg, num_classes)

    def draw(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-image parameters for ``n`` images, (n,) CPU tensors, drawn in a fixed order."""
        c, g = self.cfg, generator or self.generator
        span = 2 * c.translate + 1.0  # offset = floor(u) - translate, u uniform in [0, span)
        ops = (("flip", c.flip_p, 0.0, 1.0), ("dx", c.translate, 0.0, span), ("dy", c.translate, 0.0, span),
               ("rotation", c.rotation, -c.rotation, c.rotation),
               ("brightness", c.brightness, max(0.0, 1 - c.brightness), 1 + c.brightness),
               ("contrast", c.contrast, max(0.0, 1 - c.contrast), 1 + c.contrast),
               ("saturation", c.saturation, max(0.0, 1 - c.saturation), 1 + c.saturation),
               ("hue", c.hue, -c.hue, c.hue))
        return {name: _uniform(n, lo, hi, g) for name, amount, lo, hi in ops if amount > 0}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (B, 3, H, W) and ``draw``'s parameters → augmented float (B, 3, H, W) in [0, 1]."""
        _check_images(x, "BatchAugment")
        p = {}
        if params:  # one copy to the device for all of them, asynchronous on CUDA (page-locked memory)
            packed = torch.stack(list(params.values()))                  # (ops, B) on the CPU
            if x.device.type == "cuda":
                packed = packed.pin_memory()
            p = dict(zip(params, packed.to(x.device, non_blocking=True)))
        if "flip" in p:  # flip and translate only move pixels: done on uint8, 4x less memory
            x = hflip(x, p["flip"] < self.cfg.flip_p)
        if "dx" in p:
            t = self.cfg.translate
            x = translate(x, p["dx"].floor() - t, p["dy"].floor() - t)
        x = to_float(x)
        if "rotation" in p:
            x = rotate(x, p["rotation"])
        for name, op in (("brightness", adjust_brightness), ("contrast", adjust_contrast),
                         ("saturation", adjust_saturation), ("hue", adjust_hue)):
            if name in p:
                x = op(x, p[name])
        return x

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) → augmented float (B, 3, H, W) in [0, 1], not normalised."""
        return self.apply(x, self.draw(len(x), generator))

    def mix(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """CutMix (p = cutmix_p) or MixUp on a batch: (B, 3, H, W), (B,) → same images, (B, K) soft targets."""
        g = generator or self.generator
        seed = int(torch.randint(2**62, (1,), generator=g))
        mixed = float(torch.rand(1, generator=g)) < self.cfg.mix_p
        if not mixed:
            return x, F.one_hot(y, self.num_classes).to(x.dtype)
        # v2's CutMix/MixUp draw from torch's global CPU RNG; fork it and seed it from our
        # generator so the batch is reproducible and the caller's RNG is untouched. Only the CPU
        # generator is seeded: torch.manual_seed would also reseed CUDA's, which are not forked.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self._mixers(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, H, W) and int labels (B,) → normalised float images and soft targets (B, K)."""
        x = normalize(self.augment(x), self.mean, self.std)
        return self.mix(x, y)

    def batch_generator(self, epoch: int, step: int) -> torch.Generator:
        """The generator of batch ``step`` (1-based) of ``epoch`` (0-based): a pure function of both."""
        # Python's hash of a tuple of ints is fixed across runs and machines of one word size.
        return torch.Generator().manual_seed(hash((self.seed, epoch, step)) & (2**63 - 1))

    def epoch(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None, batch_size: int,
              epoch: int, chunk: int = 0, start: int = 0, drop_last: bool = False
              ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """One epoch of training batches: yields (step, normalised images (B, 3, H, W), soft targets (B, K)).

        ``x`` uint8 (N, 3, H, W) and ``y`` (N,) on the training device, ``order`` the epoch's
        permutation (None: as stored). Per-image ops run on chunks of ``chunk`` images (whole
        batches, at least one; 0: ``AUG_CHUNK`` for the device); CutMix/MixUp per batch. Steps up to ``start`` are skipped
        without being computed (a resumed epoch).
        """
        _check_images(x, "BatchAugment.epoch")
        n = len(x)
        steps = n // batch_size if drop_last else -(-n // batch_size)
        per_chunk = max(1, aug_chunk(chunk, x.device) // batch_size)     # batches per chunk
        for first in range(start // per_chunk * per_chunk, steps, per_chunk):
            last = min(first + per_chunk, steps)                         # batches first+1 … last
            idx = slice(first * batch_size, min(last * batch_size, n))
            idx = order[idx] if order is not None else idx
            xs, ys = x[idx], y[idx]                                      # (c, 3, H, W) uint8, (c,)
            gens = [self.batch_generator(epoch, s) for s in range(first + 1, last + 1)]
            sizes = [min(batch_size, n - s * batch_size) for s in range(first, last)]
            draws = [self.draw(b, g) for b, g in zip(sizes, gens)]
            params = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
            xs = normalize(self.apply(xs, params), self.mean, self.std)  # (c, 3, H, W) float
            for i, (g, b) in enumerate(zip(gens, sizes)):
                step = first + i + 1
                if step > start:
                    lo = i * batch_size
                    yield (step, *self.mix(xs[lo:lo + b], ys[lo:lo + b], g))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
