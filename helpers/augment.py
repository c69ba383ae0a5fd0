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
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .config import DataConfig

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    # Parameters are drawn on the CPU generator so a seed gives the same batch on every device.
    return (torch.rand(n, generator=g) * (hi - lo) + lo).to(device, non_blocking=True)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] images (B, 3, H, W) → per-channel standardised float32."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (to_float(x) - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of ``normalize``, clamped to [0, 1] for display."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


# ---------------------------------------------------------------------------- per-image ops

def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``flip`` (B,) bool is set."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


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
    k = _mod6(h6 + x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1))  # (B, 3, H, W)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0, 1)


# ---------------------------------------------------------------------------- the pipeline

class BatchAugment:
    """Per-image flip → rotation → colour jitter → normalise, then CutMix or MixUp per batch.

    Colour jitter applies brightness, contrast, saturation, hue in that fixed
    order (torchvision shuffles the order per call; a per-image order would
    cost four passes for a difference no one has shown to matter).
    """

    def __init__(self, cfg: DataConfig, mean: Sequence[float], std: Sequence[float],
                 num_classes: int = 10, seed: int = 0):
        self.cfg, self.mean, self.std, self.num_classes = cfg, tuple(mean), tuple(std), num_classes
        self.generator = torch.Generator().manual_seed(seed)
        self._mixers = v2.RandomChoice(
            [v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes),
             v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes)],
            p=[cfg.cutmix_p, 1.0 - cfg.cutmix_p])

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → augmented float (B, 3, H, W) in [0, 1], not normalised."""
        c, g, n, dev = self.cfg, self.generator, len(x), x.device
        x = to_float(x)
        if c.flip_p > 0:
            x = hflip(x, _uniform(n, 0, 1, g, dev) < c.flip_p)
        if c.rotation > 0:
            x = rotate(x, _uniform(n, -c.rotation, c.rotation, g, dev))
        for amount, op in ((c.brightness, adjust_brightness), (c.contrast, adjust_contrast),
                           (c.saturation, adjust_saturation)):
            if amount > 0:
                x = op(x, _uniform(n, max(0.0, 1 - amount), 1 + amount, g, dev))
        if c.hue > 0:
            x = adjust_hue(x, _uniform(n, -c.hue, c.hue, g, dev))
        return x

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CutMix (p = cutmix_p) or MixUp on a batch: (B, 3, H, W), (B,) → same images, (B, K) soft targets."""
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        mixed = float(torch.rand(1, generator=self.generator)) < self.cfg.mix_p
        if not mixed:
            return x, F.one_hot(y, self.num_classes).to(x.dtype)
        # v2's CutMix/MixUp draw from torch's global RNG; fork it and seed it from our
        # generator so the batch is reproducible and the caller's RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._mixers(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, 3, H, W) and int labels (B,) → normalised float images and soft targets (B, K)."""
        x = normalize(self.augment(x), self.mean, self.std)
        return self.mix(x, y)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


__all__ = ["BatchAugment", "normalize", "denormalize", "to_float", "hflip", "rotate",
           "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"]
