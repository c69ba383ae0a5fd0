"""The seed report's network: a stem, six mixing blocks and a classifier.

    model = build_model(get_preset("seed").model)      # 19.6 M parameters
    logits = model(x)                                  # x: float (B, 3, 32, 32) → (B, 10)
    logits, mix = model(x, return_mix=True)            # mix: one (B, K) tensor per block
    model.set_mix_impl("naive")                        # same weights, the readable path

A mixing block (the course design plus the report's additions, see
``SEED_RECIPE.md``) computes, for an input ``x`` with per-channel means ``m``::

    a = gate(Linear(m))                 # (B, K): softmax by default, sigmoid selectable
    h = ReLU(BN(Conv1x1(x)))            # bottleneck: out_channels / reduction_factor wide
    y = ReLU(BN(Σ_k a_k · C_k(h) + skip(x)))

``Σ_k a_k·C_k(h)`` has four exact implementations sharing one weight tensor
``(K·C_out, C_mid, 3, 3)`` (rows k·C_out… are C_k), so a checkpoint loads under any of them:

* ``naive``   — K convolutions, then the weighted sum: the formula as written.
* ``stacked`` — one convolution with K·C_out outputs, then the weighted sum.
* ``kernel``  — mix the K kernels per image first, W_b = Σ_k a_bk·W_k, then one
  grouped convolution (groups = images): about K× fewer convolution FLOPs, but the
  B per-image kernels must be written and read, which is cheap only where the
  feature map is large compared with the kernel (CondConv / Dynamic Convolution).
* ``stacked_input`` — scale the input instead: one convolution of the K copies a_k·h,
  stacked along the channels, with the K kernels side by side (K·C_in inputs, C_out
  outputs): nothing K·C_out wide to write and sum.
* ``auto``    — per block and per device, the one measured fastest (``STACKED_INPUT_MAX_OUT``,
  ``NAIVE_CHANNELS_LAST``, ``KERNEL_MIN_HW``, ``STACKED_MAX_OUT``): on a CPU, for NCHW inputs,
  ``stacked_input`` in narrow stride-1 blocks, else ``kernel`` at ≥ 8×8 and ``stacked`` or
  ``naive`` below, and ``naive`` for channels_last inputs; on CUDA ``stacked`` everywhere.
"""
from __future__ import annotations

__all__ = ["MixingNet", "MixingBlock", "MixConv", "Stem", "Classifier", "build_model", "whiten_stem",
           "resolve_mix_impl", "count_params", "layer_summary", "block_budget", "MIX_IMPLS", "DOWNSAMPLE",
           "POOLS", "STACKED_INPUT_MAX_OUT", "NAIVE_CHANNELS_LAST", "KERNEL_MIN_HW", "STACKED_MAX_OUT",
           "AUTO_FALLBACK", "KERNEL_CHUNK", "WHITEN_IMAGES"]

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, expect_section

MIX_IMPLS = ("naive", "stacked", "kernel", "stacked_input")
DOWNSAMPLE = ("stride", "maxpool")   # how a block with stride s shrinks its input (see MixingBlock)
POOLS = ("avg", "max")               # the classifier's global pooling

# "auto" → impl, per device type, from the block's layout, stride, output size (H·W) and K·C_out:
# a rule read off measurements, never a path that measured slower than "naive" on that device.
# CPU, NCHW (as the CPU presets train; BENCHMARKS.md, "Model: mixing the inputs", 2-core Intel Xeon
# with AMX, bf16 and fp32): "stacked_input" was the fastest path in every block of the `laptop`
# model (stride 1, K·C_out up to 512): its whole training step ran 1.19-1.33× naive's speed, where
# the rule before measured 0.93-0.97×. At stride 2, or K·C_out = 1024, it was no faster than naive.
# There the earlier rule stands (BENCHMARKS.md, "Model" and "Training"): kernel mixing wins at
# ≥ 8×8 outputs, where each per-image kernel is reused over ≥ 64 positions; below, one GEMM with
# K·C_out outputs ("stacked") beats K GEMMs ("naive") while K·C_out ≤ 1024.
# CPU, channels_last: the rule before ran the laptop model at 0.45× naive's speed, and no path beat
# "naive" reliably: "naive".
# CUDA (BENCHMARKS.md, "GPU"): "stacked" is the fastest whole-model step, and the fastest block
# but for block 1 at 32×32, where "kernel" is about even. A GPU is launch-bound at this size:
# one large convolution beats K small ones, and the per-image grouped convolution is slowest.
# `benchmarks/gpu_check.py` re-times every block per impl ("stacked_input" not yet on a GPU).
STACKED_INPUT_MAX_OUT = {"cpu": 512}               # NCHW, stride 1: "stacked_input" up to this K·C_out
NAIVE_CHANNELS_LAST = {"cpu"}                      # devices where channels_last blocks run "naive"
KERNEL_MIN_HW = {"cpu": 64}                        # else: smallest H_out·W_out at which "kernel" is chosen
STACKED_MAX_OUT = {"cpu": 1024, "cuda": math.inf}  # below that size, "stacked" up to this K·C_out, else:
AUTO_FALLBACK = "naive"                            # larger blocks, and devices not measured (MPS)
# Images per grouped convolution in "kernel". On CPU, 32 keeps a chunk's mixed kernels near the
# caches (faster than the whole batch: BENCHMARKS.md, "Model"); a GPU wants one launch.
KERNEL_CHUNK = {"cpu": 32}


def resolve_mix_impl(name: str, device_type: str, out_hw: int, stacked_out: int,
                     channels_last: bool = False, stride: int = 1) -> str:
    """The implementation ``name`` stands for on ``device_type``, for a block whose output has
    ``out_hw`` pixels, whose stacked convolution would have ``stacked_out`` = K·C_out outputs,
    whose input is ``channels_last`` or not, and whose K convolutions have ``stride``."""
    if name != "auto":
        return name
    if channels_last and device_type in NAIVE_CHANNELS_LAST:
        return "naive"
    if not channels_last and stride == 1 and stacked_out <= STACKED_INPUT_MAX_OUT.get(device_type, 0):
        return "stacked_input"
    if out_hw >= KERNEL_MIN_HW.get(device_type, math.inf):
        return "kernel"
    return "stacked" if stacked_out <= STACKED_MAX_OUT.get(device_type, 0) else AUTO_FALLBACK


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, C, H, W) is laid out channels_last (a tensor that is both, e.g. 1×1, counts as NCHW)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class MixConv(nn.Module):
    """K parallel k×k convolutions mixed per image: ``y_b = Σ_k a_bk · (W_k ∗ h_b + b_k)``.

    Args:
        in_channels: channels of ``h``.
        out_channels: channels of every ``C_k(h)`` and of the result.
        num_k: number of parallel convolutions K.
        stride: stride of every convolution.
        kernel_size: odd kernel size; padding keeps "same" size at stride 1.
        bias: give each C_k a bias (mixed with the same a_k as its kernel).
        impl: "naive", "stacked", "kernel", "stacked_input" or "auto"; only changes how forward computes.
    """

    def __init__(self, in_channels: int, out_channels: int, num_k: int, stride: int = 1,
                 kernel_size: int = 3, bias: bool = False, impl: str = "auto"):
        super().__init__()
        self.in_channels, self.out_channels, self.num_k = in_channels, out_channels, num_k
        self.stride, self.padding = stride, kernel_size // 2
        # One tensor for all K kernels, so every impl has the same state_dict keys; rows
        # k·C_out … (k+1)·C_out are C_k. 4-D (not (K, C_out, ...)) so that
        # model.to(memory_format=torch.channels_last) applies to it like to any conv weight.
        self.weight = nn.Parameter(torch.empty(num_k * out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_k, out_channels)) if bias else None
        self.impl = impl
        self.kernel_chunk: int | None = None  # images per grouped conv; None = KERNEL_CHUNK's device default
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each C_k initialised as nn.Conv2d would be on its own.
        fan_in = self.weight[0].numel()
        for w in self.weight.data.chunk(self.num_k):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, name: str) -> None:
        if name not in MIX_IMPLS + ("auto",):
            raise ValueError(f"mix impl must be one of {', '.join(MIX_IMPLS + ('auto',))}, got {name!r}")
        self._impl = name

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.weight.shape[-1]) // self.stride + 1

    def forward(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``h``: (B, C_in, H, W), ``a``: (B, K) → (B, C_out, H', W')."""
        hw = self.out_size(h.shape[-2]) * self.out_size(h.shape[-1])
        impl = resolve_mix_impl(self.impl, h.device.type, hw, self.num_k * self.out_channels,
                                channels_last=_channels_last(h), stride=self.stride)
        return getattr(self, f"_{impl}")(h, a)

    def _naive(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # The course's formula: K convolutions of the same input, then Σ a_k·C_k(h).
        y = 0
        for k, w in enumerate(self.weight.chunk(self.num_k)):          # w: (C_out, C_in, 3, 3)
            b = None if self.bias is None else self.bias[k]
            y = y + a[:, k, None, None, None] * F.conv2d(h, w, b, self.stride, self.padding)
        return y  # (B, C_out, H', W')

    def _stacked(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # One convolution with K·C_out outputs: one large GEMM instead of K smaller ones.
        K, O = self.num_k, self.out_channels
        b = None if self.bias is None else self.bias.flatten()
        y = F.conv2d(h, self.weight, b, self.stride, self.padding)      # (B, K·O, H', W')
        a = a.to(y.dtype)
        if _channels_last(y):
            # Summed in y's own layout, (B, H', W', K, O), so the result stays channels_last. Summed over
            # the NCHW view instead, it came out NCHW, and every convolution after it (the next block's,
            # and this one's backward) converted its input or gradient back: an activation-sized copy each.
            y = y.permute(0, 2, 3, 1).unflatten(3, (K, O))              # (B, H', W', K, O): a view
            return (y * a[:, None, None, :, None]).sum(3).permute(0, 3, 1, 2)  # (B, O, H', W'), channels_last
        y = y.unflatten(1, (K, O))                                      # (B, K, O, H', W')
        return (y * a[:, :, None, None, None]).sum(1)                   # (B, O, H', W')

    def _stacked_input(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # Linearity on the input side: Σ_k a_k·(W_k∗h) = [W_1 … W_K] ∗ [a_1·h; …; a_K·h]. One convolution
        # with K·C_in inputs and C_out outputs: no (B, K·C_out, H', W') result to weigh and sum, only
        # (B, K·C_in, H, W) scaled copies of h, which the bottleneck makes 4× narrower than C_out.
        K, O = self.num_k, self.out_channels
        a = a.to(h.dtype)
        w = self.weight.unflatten(0, (K, O))                                          # (K, O, C_in, 3, 3)
        if _channels_last(h):
            # Input and kernels built channels_last, each in one pass: a convolution given mixed
            # layouts converts one of them first.
            x = (h.permute(0, 2, 3, 1).unsqueeze(3) * a[:, None, None, :, None])      # (B, H, W, K, C_in)
            x = x.flatten(3).permute(0, 3, 1, 2)                                      # (B, K·C_in, H, W)
            w = w.permute(1, 3, 4, 0, 2).flatten(3).permute(0, 3, 1, 2)               # (O, K·C_in, 3, 3)
        else:
            x = (h.unsqueeze(1) * a[:, :, None, None, None]).flatten(1, 2)            # (B, K·C_in, H, W)
            w = w.transpose(0, 1).flatten(1, 2)                                       # (O, K·C_in, 3, 3)
        y = F.conv2d(x, w, None, self.stride, self.padding)                          # (B, O, H', W')
        return y if self.bias is None else y + (a @ self.bias)[:, :, None, None]     # Σ a_k·b_k: (B, O)

    def _kernel(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        # Mix kernels per image (linearity: Σ a_k·(W_k∗h) = (Σ a_k·W_k)∗h), then one
        # grouped convolution per chunk of images, in which image b is group b.
        B, C, H, W = h.shape
        K, O = self.num_k, self.out_channels
        chunk = self.kernel_chunk or KERNEL_CHUNK.get(h.device.type, B)
        wk = self.weight.reshape(K, -1)                                  # (K, O·C_in·3·3)
        h = h.contiguous()  # grouped conv reads (1, c·C, H, W): NCHW; converting back measured slower
        out = []
        for s in range(0, B, chunk):
            ac, c = a[s:s + chunk], min(chunk, B - s)
            w = (ac @ wk).reshape(c * O, C, *self.weight.shape[-2:])     # (c·O, C_in, 3, 3)
            b = None if self.bias is None else (ac @ self.bias).reshape(c * O)  # (c·O,)
            y = F.conv2d(h[s:s + c].reshape(1, c * C, H, W), w, b, self.stride, self.padding, groups=c)
            out.append(y.reshape(c, O, *y.shape[-2:]))                   # (c, O, H', W')
        return torch.cat(out) if len(out) > 1 else out[0]                # (B, O, H', W')

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, num_k={self.num_k}, kernel_size={self.weight.shape[-1]}, "
                f"stride={self.stride}, bias={self.bias is not None}, impl={self.impl!r}")


class Stem(nn.Module):
    """3×3 convolution + norm + activation *(reading of the lost figure 1)*.

    ``stride`` 1 (the reading) keeps full resolution; 2 halves it, so every block
    after it costs 4× fewer FLOPs: the CPU preset's trade of accuracy for epochs.
    """

    def __init__(self, in_chans: int = 3, out_channels: int = 64, stride: int = 1,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_channels, 3, stride, padding=1, bias=False)  # BN follows: no bias
        self.bn = norm_layer(out_channels)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # (B, 3, H, W) → (B, C, H/stride, W/stride)


WHITEN_IMAGES = 5000  # training images whose 3×3 patches estimate the covariance (5,000 × 900 patches)


@torch.no_grad()
def whiten_stem(stem: Stem, images: torch.Tensor, eps: float = 5e-4) -> Stem:
    """Make the stem's convolution a fixed whitening of 3×3 patches, then freeze it (airbench's first layer).

    The covariance of the (3·3·3 = 27)-dim patches of ``images`` (N, 3, H, W), normalised, has
    eigenvectors v_i with eigenvalues λ_i; filter v_i / sqrt(λ_i + eps) maps each patch to its
    coordinate along v_i with unit variance. The stem gets the C // 2 largest directions as a
    ± pair each (the ReLU after it keeps both signs); any filters left over keep their init.
    Frozen: trained, these filters would drift from whitening (the BN after it still trains).
    """
    conv = stem.conv
    k = conv.kernel_size[0]
    patches = F.unfold(images.float(), k, stride=conv.stride)                  # (N, 27, L)
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()   # (N·L, 27)
    cov = torch.cov(patches.T)                                                 # (27, 27)
    eigvals, eigvecs = torch.linalg.eigh(cov)                                  # ascending
    n = min(conv.out_channels // 2, len(eigvals))
    filters = (eigvecs[:, -n:].flip(1) / (eigvals[-n:].flip(0) + eps).sqrt()).T  # (n, 27), largest first
    filters = filters.reshape(n, *conv.weight.shape[1:]).to(conv.weight)
    conv.weight[:2 * n] = torch.cat([filters, -filters])
    conv.weight.requires_grad_(False)
    return stem


class MixingBlock(nn.Module):
    """Bottleneck → K mixed 3×3 convolutions, plus a skip, then norm + activation.

    Reading (the report does not say where BatchNorm sits inside the block): the
    1×1 bottleneck is followed by BN + ReLU, as in He et al.'s bottleneck; the K
    convolutions have no norm of their own; the "BatchNorm + ReLU after each block"
    is applied to the sum of the mix and the skip, as in a post-activation ResNet.

    Args:
        in_channels / out_channels: widths of the block's input and output.
        stride: stride of the K convolutions and of the skip projection.
        num_k: K, the number of parallel convolutions.
        reduction_factor: the bottleneck is ``out_channels // reduction_factor`` wide.
        gate: "softmax" (a sums to 1 per image) or "sigmoid" (each a_k in (0, 1)).
        mix_impl: see ``MixConv``.
        bias: biases on the K convolutions (off: a BatchNorm follows).
        downsample: how ``stride`` shrinks the map: "stride" (the K convolutions and the skip
            stride) or "maxpool" (a stride×stride max-pool on the input, then stride 1).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, num_k: int = 4,
                 reduction_factor: int = 4, gate: str = "softmax", mix_impl: str = "auto",
                 bias: bool = False, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, downsample: str = "stride"):
        super().__init__()
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"gate must be 'softmax' or 'sigmoid', got {gate!r}")
        if downsample not in DOWNSAMPLE:
            raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLE)}, got {downsample!r}")
        # "maxpool": pool the input first, then run the whole block at stride 1 on the smaller map:
        # every convolution costs stride² fewer FLOPs, and pooling keeps the strongest response.
        self.pool = nn.MaxPool2d(stride) if downsample == "maxpool" and stride > 1 else nn.Identity()
        if downsample == "maxpool":
            stride = 1
        mid = max(1, out_channels // reduction_factor)
        self.gate = gate
        self.fc = nn.Linear(in_channels, num_k)                          # m (B, C_in) → logits of a (B, K)
        self.reduce = nn.Conv2d(in_channels, mid, 1, bias=False)         # 1×1 bottleneck
        self.bn_reduce = norm_layer(mid)
        self.act_reduce = act_layer()
        self.mix = MixConv(mid, out_channels, num_k, stride, bias=bias, impl=mix_impl)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          norm_layer(out_channels))
        else:
            self.shortcut = nn.Identity()
        self.bn = norm_layer(out_channels)
        self.act = act_layer()

    def mixing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """a = gate(Linear(channel means of x)): (B, C_in, H, W) → (B, K)."""
        z = self.fc(x.mean(dim=(2, 3)))                                  # (B, K)
        return torch.softmax(z, dim=1) if self.gate == "softmax" else torch.sigmoid(z)

    def forward(self, x: torch.Tensor, return_mix: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) → (B, C_out, H/s, W/s) [, a (B, K)]."""
        x = self.pool(x)                                                 # (B, C_in, H/s, W/s) under "maxpool"
        a = self.mixing_weights(x)                                       # (B, K), from the block INPUT
        h = self.act_reduce(self.bn_reduce(self.reduce(x)))              # (B, mid, H, W)
        y = self.act(self.bn(self.mix(h, a) + self.shortcut(x)))         # (B, C_out, H/s, W/s)
        return (y, a) if return_mix else y


class Classifier(nn.Module):
    """Global pool → dropout → [Linear → act]* → Linear *(reading of the lost figure 2)*.

    ``pool`` "avg" (the reading) or "max": the strongest response anywhere in the map.
    """

    def __init__(self, in_features: int, num_classes: int = 10, hidden: tuple[int, ...] = (),
                 drop_rate: float = 0.3, act_layer: Callable[[], nn.Module] = nn.ReLU, pool: str = "avg"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.pool = pool
        self.drop = nn.Dropout(drop_rate)
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), act_layer()]
            in_features = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = feats.mean(dim=(2, 3)) if self.pool == "avg" else feats.amax(dim=(2, 3))  # (B, C)
        x = self.hidden(self.drop(pooled))                               # (B, hidden[-1] or C)
        return x if pre_logits else self.fc(x)                           # (B, num_classes)


class MixingNet(nn.Module):
    """Stem → mixing blocks → classifier. ``forward(x, return_mix=True)`` also returns each block's a."""

    def __init__(self, channels: list[int], strides: list[int], stem_channels: int = 64,
                 stem_stride: int = 1, num_k: int = 4, reduction_factor: int = 4, gate: str = "softmax",
                 head_hidden: tuple[int, ...] = (), drop_rate: float = 0.3, num_classes: int = 10,
                 mix_impl: str = "auto", in_chans: int = 3, bias: bool = False,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, downsample: str = "stride",
                 head_pool: str = "avg"):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError(f"{len(channels)} channel widths but {len(strides)} strides")
        self.num_classes, self.num_features, self.in_chans = num_classes, channels[-1], in_chans
        self.stem = Stem(in_chans, stem_channels, stem_stride, norm_layer, act_layer)
        widths = [stem_channels] + list(channels)
        self.blocks = nn.ModuleList(
            MixingBlock(widths[i], widths[i + 1], strides[i], num_k, reduction_factor, gate,
                        mix_impl, bias, norm_layer, act_layer, downsample) for i in range(len(channels)))
        self.head = Classifier(channels[-1], num_classes, tuple(head_hidden), drop_rate, act_layer, head_pool)

    def set_mix_impl(self, name: str) -> "MixingNet":
        """Switch every block to ``name`` ("naive", "stacked", "kernel", "auto"); weights untouched."""
        for m in self.modules():
            if isinstance(m, MixConv):
                m.impl = name
        return self

    @property
    def mix_impl(self) -> str:
        return self.blocks[0].mix.impl

    def forward_features(self, x: torch.Tensor, return_mix: bool = False
                         ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) → (B, C_last, H/S, W/S), S = product of strides [, list of (B, K) per block]."""
        x = self.stem(x)                                                 # (B, C_stem, H/s, W/s), s = stem stride
        mix = []
        for block in self.blocks:
            x, a = block(x, return_mix=True)
            mix.append(a)
        return (x, mix) if return_mix else x

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(feats, pre_logits)                              # (B, num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        # Metadata only, so torch.compile turns it into guards: a wrong dtype would otherwise fail
        # deep inside a convolution. Autocast casts float32/16 inputs per op, never float64.
        want = f"normalised float images (B, {self.in_chans}, 32, 32)"
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MixingNet expects {want}; got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"MixingNet expects {want}; got {x.dtype}: normalise them with "
                            "helpers.normalize(x, mean, std) first")
        weight = self.stem.conv.weight.dtype
        if x.dtype != weight and (x.dtype == torch.float64 or not torch.is_autocast_enabled(x.device.type)):
            fix = f"x.to({weight})" + ("" if x.dtype == torch.float64 else " or run under torch.autocast")
            raise TypeError(f"MixingNet's weights are {weight} but the images are {x.dtype}: convert them with {fix}")

    def forward(self, x: torch.Tensor, return_mix: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) → logits (B, num_classes) [, list of a (B, K), one per block]."""
        self._check_input(x)
        feats, mix = self.forward_features(x, return_mix=True)
        logits = self.forward_head(feats)
        return (logits, mix) if return_mix else logits


def build_model(cfg: ModelConfig) -> MixingNet:
    """A ``MixingNet`` from ``cfg``; builds on the CPU in fp32, the caller moves it."""
    expect_section(cfg, ModelConfig, "build_model")
    return MixingNet(channels=list(cfg.channels), strides=list(cfg.strides),
                     stem_channels=cfg.stem_channels, stem_stride=cfg.stem_stride, num_k=cfg.num_k,
                     reduction_factor=cfg.reduction_factor, gate=cfg.gate,
                     head_hidden=tuple(cfg.head_hidden), drop_rate=cfg.dropout,
                     num_classes=cfg.num_classes, mix_impl=cfg.mix_impl, downsample=cfg.downsample,
                     head_pool=cfg.head_pool)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_summary(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, type, output shape, own parameters) of every leaf layer, in call order, for input ``x``.

    A leaf is a module without children (``MixConv`` counts as one layer); a layer
    called twice appears twice. Runs ``model`` once under ``no_grad``.
    """
    rows: list[tuple[str, str, tuple[int, ...], int]] = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, name=name: rows.append(
            (name, type(mod).__name__, tuple(out.shape), count_params(mod))))
        for name, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return rows


def block_budget(model: MixingNet, x: torch.Tensor) -> list[tuple[str, int, float]]:
    """(part, parameters, forward FLOPs per image) for the stem, each block and the head.

    FLOPs are counted by ``torch.utils.flop_counter`` under the model's current mix
    impl (set "naive" for the formula's nominal cost), in eval mode, for input ``x``.
    """
    from torch.utils.flop_counter import FlopCounterMode
    parts = {"stem": model.stem, **{f"block{i + 1}": b for i, b in enumerate(model.blocks)}, "head": model.head}
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    counts = counter.get_flop_counts()  # {"MixingNet.blocks.0": {op: flops}, ...}
    root = type(model).__name__
    names = {"stem": "stem", "head": "head", **{f"block{i + 1}": f"blocks.{i}" for i in range(len(model.blocks))}}
    return [(part, count_params(m), sum(counts.get(f"{root}.{names[part]}", {}).values()) / len(x))
            for part, m in parts.items()]
