"""Every hyperparameter of the recipe, in one place.

Defaults are the seed report's Table 1 (see ``SEED_RECIPE.md``); fields marked
*(reading)* fill gaps left by the report's lost figures. Each field carries its
allowed range in its metadata, so validation and documentation share one home.

    cfg = get_preset("seed")                          # exact Table 1
    cfg = get_preset("smoke", ["train.epochs=2"])     # dotted overrides
    cfg = preset_from_env()                           # $HELPERS_PRESET, for notebooks
"""
from __future__ import annotations

__all__ = ["Config", "DataConfig", "ModelConfig", "LossConfig", "OptimConfig", "TrainConfig", "CLASSES", "PRESETS",
           "ENV_VAR", "get_preset", "preset_from_env", "preset_name_from_env", "apply_overrides", "all_keys",
           "validate", "expect_section"]

import ast
import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

CLASSES: tuple[str, ...] = (
    "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # CIFAR-10's label order; short names as the report prints them


def _f(default: Any, lo: float | None = None, hi: float | None = None,
       choices: tuple | None = None, lo_open: bool = False) -> Any:
    """A dataclass field with its allowed range (inclusive unless ``lo_open``)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    root: str = "data"                              # folder holding cifar-10-batches-py/
    batch_size: int = _f(128, lo=1)                 # images per training step
    eval_batch_size: int = _f(512, lo=1)            # images per evaluation step (no grads)
    train_subset: int = _f(0, lo=0)                 # first N training images; 0 = all 50,000
    test_subset: int = _f(0, lo=0)                  # first N test images; 0 = all 10,000
    val_size: int = _f(0, lo=0)                     # images held out of train as validation; 0 = none
    drop_last: bool = False                         # drop the last, smaller training batch
    aug_chunk: int = _f(0, lo=0)                    # images augmented per call; 0 = per device (speed only)
    # per-image augmentation (report §1, Table 1)
    flip_p: float = _f(0.3, lo=0.0, hi=1.0)         # horizontal flip probability
    translate: int = _f(0, lo=0, hi=16)             # pixels, uniform in ±translate per axis, reflect border (not in the report)
    rotation: float = _f(10.0, lo=0.0, hi=180.0)    # degrees, uniform in ±rotation
    brightness: float = _f(0.15, lo=0.0, hi=1.0)    # factor uniform in [1-b, 1+b]
    contrast: float = _f(0.15, lo=0.0, hi=1.0)      # factor uniform in [1-c, 1+c]
    saturation: float = _f(0.15, lo=0.0, hi=1.0)    # factor uniform in [1-s, 1+s]
    hue: float = _f(0.075, lo=0.0, hi=0.5)          # shift uniform in ±hue (fraction of the colour wheel)
    # batch mixing (report §1, Table 1)
    cutmix_alpha: float = _f(1.0, lo=0.0, lo_open=True)  # Beta(α, α) for the pasted box's area
    mixup_alpha: float = _f(0.2, lo=0.0, lo_open=True)   # Beta(α, α) for the blend weight
    cutmix_p: float = _f(0.5, lo=0.0, hi=1.0)       # P(CutMix) vs P(MixUp) = 1 - cutmix_p *(reading)*
    mix_p: float = _f(1.0, lo=0.0, hi=1.0)          # P(a batch is mixed at all); the report mixes every batch


@dataclass
class ModelConfig:
    channels: list = _f([64, 128, 256, 512, 768, 1024])  # output channels of each block (report §2)
    strides: list = _f([1, 2, 2, 2, 1, 1])          # per-block stride: 32→16→8→4 *(reading)*
    stem_channels: int = _f(64, lo=1)               # 3×3 conv + BN + ReLU stem *(reading)*
    stem_stride: int = _f(1, lo=1, hi=2)            # 2 halves the resolution before the blocks (4× cheaper)
    stem_whiten: bool = False                       # stem conv = fixed whitening of the data's 3×3 patches (airbench)
    downsample: str = _f("stride", choices=("stride", "maxpool"))  # a strided block: strided convs, or max-pool first
    head_pool: str = _f("avg", choices=("avg", "max"))  # the classifier's global pooling *(reading: avg)*
    num_k: int = _f(4, lo=1)                        # parallel 3×3 convolutions per block (Table 1)
    reduction_factor: int = _f(4, lo=1)             # 1×1 bottleneck divides the width by this (Table 1)
    gate: str = _f("softmax", choices=("softmax", "sigmoid"))  # how `a` is squashed *(reading)*
    head_hidden: list = _f([])                      # hidden widths of the classifier MLP *(reading)*
    dropout: float = _f(0.3, lo=0.0, hi=1.0)        # before the classifier's linear layer(s) (Table 1)
    num_classes: int = _f(10, choices=(10,))        # CIFAR-10's ten classes; the data decides it
    mix_impl: str = _f("auto", choices=("auto", "naive", "stacked", "kernel"))  # how Σ a_k·C_k is computed

    @property
    def num_blocks(self) -> int:  # Table 1's num_blocks = 6; derived so it cannot disagree
        return len(self.channels)


@dataclass
class LossConfig:
    name: str = _f("focal", choices=("focal", "ce"))  # "ce" is focal with gamma 0 and no class factors
    gamma: float = _f(2.0, lo=0.0)                  # focusing parameter (Lin et al. 2017)
    label_smoothing: float = _f(0.1, lo=0.0, hi=1.0)
    class_factors: dict = _f({"bird": 1.1, "cat": 1.2, "deer": 1.05, "dog": 1.1})  # others 1.0


@dataclass
class OptimConfig:
    # OneCycleLR overwrites the lr: it starts at max_lr / div_factor = 0.002, peaks at max_lr
    # and ends at max_lr / (div_factor * final_div_factor). `lr` is kept as the report's value.
    lr: float = _f(0.01, lo=0.0, lo_open=True)      # base learning rate (Table 1)
    momentum: float = _f(0.9, lo=0.0, hi=1.0)       # Nesterov momentum (OneCycle cycles it 0.95→0.85→0.95)
    nesterov: bool = True
    weight_decay: float = _f(5e-4, lo=0.0)          # L2 via SGD's weight_decay
    no_decay_norm_bias: bool = False                # exempt BatchNorm and bias params from decay (off: as the report)
    max_lr: float = _f(0.05, lo=0.0, lo_open=True)  # OneCycle peak
    pct_start: float = _f(0.15, lo=0.0, hi=0.99, lo_open=True)  # fraction of steps spent warming up (< 1: some must anneal)
    div_factor: float = _f(25.0, lo=1.0)            # initial lr = max_lr / div_factor
    final_div_factor: float = _f(1e4, lo=1.0)       # final lr = initial lr / final_div_factor


@dataclass
class TrainConfig:
    epochs: int = _f(200, lo=1, hi=100_000)
    patience: int = _f(20, lo=0)                    # early-stop after this many epochs without improvement; 0 = off
    monitor: str = _f("test_acc", choices=("test_acc", "val_acc"))  # report: test_acc; sound: val_acc
    seed: int = _f(0, lo=0, hi=2**63 - 1)            # torch.manual_seed takes a 64-bit integer
    device: str = _f("auto", choices=("auto", "cpu", "cuda", "mps"))
    amp: str = _f("auto", choices=("auto", "off", "bf16", "fp16"))  # auto: bf16 on CUDA and bf16-capable CPUs
    channels_last: bool = True
    # torch.compile the model: "cudagraphs" = mode="reduce-overhead" (CUDA graphs replay the
    # forward and the backward, one launch each; BENCHMARKS.md, "GPU"); "graph" (CUDA only): forward,
    # loss and backward recorded as one CUDA graph (helpers/graphs.py); auto: graph on CUDA
    # (cudagraphs under fp16), off elsewhere
    compile: str = _f("auto", choices=("auto", "off", "default", "cudagraphs", "graph"))
    eval_every: int = _f(1, lo=0)                   # test after every N-th epoch and the last; 0 = the last only
    tta_flip: bool = False                          # average logits of image and its mirror at test time
    tta_translate: int = _f(0, lo=0, hi=8)          # also average views shifted by ±(t, t) pixels; 0 = off
    ema: float = _f(0.0, lo=0.0, hi=1.0)            # decay of an EMA of the weights, evaluated and saved; 0 = off
    stop_after: int = _f(0, lo=0)                   # end cleanly after this epoch, as if interrupted; 0 = never
    num_threads: int = _f(0, lo=0, hi=1024)         # CPU threads for torch; 0 = torch's default


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Rebuild a config saved by ``to_dict``, validating every value."""
        cfg = cls()
        for section, values in d.items():
            for key, value in values.items():
                key = f"{section}.{key}"
                _set(cfg, key, _LEGACY.get(key, {}).get(value, value) if isinstance(value, bool) else value)
        validate(cfg)
        return cfg

    def replace(self, overrides: Iterable[str] | dict = ()) -> "Config":
        """A validated copy with dotted overrides applied."""
        return apply_overrides(copy.deepcopy(self), overrides)


# Values older runs saved that a field has since replaced: train.compile was a bool.
_LEGACY = {"train.compile": {True: "default", False: "off"}}


def expect_section(value: Any, cls: type, where: str) -> None:
    """Raise a one-line ``TypeError`` unless ``value`` is a ``cls``: builders take one section, not the ``Config``."""
    if isinstance(value, cls):
        return
    name = next((n for n, t in typing.get_type_hints(Config).items() if t is cls), None)
    want = f"cfg.{name} (a {cls.__name__})" if name else f"a {cls.__name__}"
    fix = f"pass cfg.{name}" if isinstance(value, Config) else f"pass {want}"
    raise TypeError(f"{where} expects {want}, got a {type(value).__name__}: {fix}")


# ---------------------------------------------------------------------------- presets

def _seed() -> Config:
    return Config()


def _laptop() -> Config:
    # Ten minutes on a 2-core CPU: the same model family, loss and optimiser with the short-schedule
    # techniques (each measured on and off in BENCHMARKS.md, "Training fast"):
    # - model: a stride-2 stem of 32 channels, then one mixing block per stage at 16×16, 8×8 and
    #   4×4, the last two entered by max-pooling (model.downsample) rather than strided convolutions;
    #   K = 2 convolutions per block (Table 1: 4), reduction factor 4; max pooling in the head;
    #   0.45 M parameters. K = 1 scored within noise of K = 4 over eight epochs, so the arithmetic
    #   of the extra kernels goes to more epochs (14) instead;
    # - translate (±2 px, reflected) + flip (p 0.5); rotation, colour jitter, CutMix/MixUp and
    #   dropout are off: fourteen epochs underfit, they do not overfit;
    # - label smoothing 0.2; batch 256 with a peak lr of 0.4 reached at 20 % of the steps;
    # - test only after the last epoch (train.eval_every=0), with flip + translate TTA: six views
    #   of the test set cost about half an epoch on the 2-core CPU (BENCHMARKS.md, "What
    #   test-time augmentation costs");
    # - bf16 autocast where the CPU has it (train.amp="auto") and the plain layout.
    return apply_overrides(Config(), {
        "model.channels": [64, 128, 256], "model.strides": [1, 2, 2], "model.stem_channels": 32,
        "model.stem_stride": 2, "model.downsample": "maxpool", "model.head_pool": "max", "model.dropout": 0.0,
        "model.num_k": 2,
        "data.batch_size": 256, "data.translate": 2, "data.flip_p": 0.5, "data.mix_p": 0.0,
        "data.rotation": 0.0, "data.brightness": 0.0, "data.contrast": 0.0, "data.saturation": 0.0,
        "data.hue": 0.0, "loss.label_smoothing": 0.2, "optim.max_lr": 0.4, "optim.pct_start": 0.2,
        "train.epochs": 14, "train.patience": 0, "train.eval_every": 0, "train.tta_flip": True,
        "train.tta_translate": 1, "train.channels_last": False,
    })


def _smoke() -> Config:
    # Seconds: a small subset and a narrow model, enough to exercise every code path.
    return apply_overrides(Config(), {
        "data.train_subset": 1024, "data.test_subset": 512, "data.batch_size": 128,
        "model.channels": [16, 32, 64], "model.strides": [1, 2, 2], "model.stem_channels": 16,
        "train.epochs": 2, "train.patience": 0, "train.channels_last": False,
        "train.compile": "off",  # seconds of training: compiling would cost more (BENCHMARKS.md, "GPU")
    })


def _speedrun() -> Config:
    # The laptop preset's short-schedule recipe at GPU scale: target ≥ 93 % test accuracy in
    # ≤ 60 s of training on one H100/H200, not met yet (BENCHMARKS.md, "`speedrun` on a GPU:
    # measured, target not met"; gpu_check.py --speedrun).
    # Two mixing blocks per stage at 16×16, 8×8 and 4×4 after a frozen whitening stem at full
    # resolution; max-pool downsampling, translate + flip, label smoothing 0.2, no CutMix/MixUp,
    # rotation or jitter (a short run underfits), flip + translate TTA.
    return apply_overrides(Config(), {
        "model.channels": [128, 128, 256, 256, 512, 512], "model.strides": [2, 1, 2, 1, 2, 1],
        "model.stem_channels": 64, "model.stem_whiten": True, "model.downsample": "maxpool",
        "model.head_pool": "max", "model.dropout": 0.0,
        "data.batch_size": 512, "data.translate": 2, "data.flip_p": 0.5, "data.mix_p": 0.0,
        "data.rotation": 0.0, "data.brightness": 0.0, "data.contrast": 0.0, "data.saturation": 0.0,
        "data.hue": 0.0, "loss.label_smoothing": 0.2, "optim.max_lr": 0.2, "optim.pct_start": 0.2,
        "train.epochs": 16, "train.patience": 0, "train.eval_every": 0, "train.tta_flip": True,
        "train.tta_translate": 1,
    })


PRESETS = {"seed": _seed, "laptop": _laptop, "speedrun": _speedrun, "smoke": _smoke}
ENV_VAR = "HELPERS_PRESET"


def get_preset(name: str, overrides: Iterable[str] | dict = ()) -> Config:
    """A fresh config for preset ``name`` ("seed", "laptop", "speedrun" or "smoke"), with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name](), overrides)


def preset_from_env(default: str = "laptop", overrides: Iterable[str] | dict = ()) -> Config:
    """The preset named by ``$HELPERS_PRESET`` (nbval sets it to "smoke"), else ``default``."""
    return get_preset(preset_name_from_env(default), overrides)


def preset_name_from_env(default: str = "laptop") -> str:
    """``$HELPERS_PRESET`` (any case, e.g. ``SMOKE``), else ``default``; an unknown name is a one-line error."""
    name = os.environ.get(ENV_VAR, "").strip().lower() or default
    if name not in PRESETS:
        raise ValueError(f"{ENV_VAR}={os.environ.get(ENV_VAR)!r} is not a preset; choose one of "
                         f"{', '.join(PRESETS)} (or unset it for {default!r})")
    return name


# ---------------------------------------------------------------------------- overrides

def apply_overrides(cfg: Config, overrides: Iterable[str] | dict = ()) -> Config:
    """Apply ``"section.key=value"`` strings (or a ``{dotted key: value}`` dict) in place.

    String values are parsed as Python literals (``5``, ``0.1``, ``[64, 128]``,
    ``True``) and fall back to the raw string. Returns ``cfg`` after validation.
    """
    items = overrides.items() if isinstance(overrides, dict) else map(_split, overrides)
    for key, value in items:
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def _split(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not of the form section.key=value")
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _set(cfg: Config, key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    sub = getattr(cfg, section, None) if section in _SECTIONS else None
    if sub is None or name not in _fields(type(sub)):
        near = difflib.get_close_matches(key, all_keys(), n=3)
        hint = f"did you mean {' or '.join(map(repr, near))}? " if near else ""
        raise ValueError(f"unknown config key {key!r}; {hint}valid keys: {', '.join(all_keys())}")
    setattr(sub, name, _coerce(key, value, _fields(type(sub))[name]))


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check ``value`` against the field's type; ints widen to floats, nothing else converts."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if not ok:
        raise ValueError(f"{key} must be of type {typ.__name__}, got {value!r} ({type(value).__name__})")
    return copy.deepcopy(value)


_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys() -> list[str]:
    return [f"{s}.{n}" for s in _SECTIONS
            for n in _fields(typing.get_type_hints(Config)[s])]


# ---------------------------------------------------------------------------- validation

def validate(cfg: Config) -> Config:
    """Raise ``ValueError`` naming the field and its allowed range for any bad value."""
    for s in _SECTIONS:
        sub = getattr(cfg, s)
        for f in dataclasses.fields(sub):
            _check_range(f"{s}.{f.name}", getattr(sub, f.name), f.metadata)
    m = cfg.model
    if len(m.strides) != len(m.channels):
        raise ValueError(f"model.strides has {len(m.strides)} entries but model.channels has "
                         f"{len(m.channels)}: give one stride per block")
    for k, vals, lo in (("model.channels", m.channels, 1), ("model.strides", m.strides, 1),
                        ("model.head_hidden", m.head_hidden, 1)):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in vals):
            raise ValueError(f"{k} must be a list of integers >= {lo}, got {vals!r}")
    if not m.channels:
        raise ValueError("model.channels must name at least one block")
    for c in m.channels:
        if c // m.reduction_factor < 1:
            raise ValueError(f"model.reduction_factor={m.reduction_factor} leaves no bottleneck "
                             f"channels for a block of width {c}")
    for name, factor in cfg.loss.class_factors.items():
        if name not in CLASSES:
            raise ValueError(f"loss.class_factors: unknown class {name!r}; classes are {', '.join(CLASSES)}")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
            raise ValueError(f"loss.class_factors[{name!r}] must be a number > 0, got {factor!r}")
    if cfg.train.patience and cfg.train.eval_every != 1:
        raise ValueError("train.patience > 0 (early stopping) needs an evaluation every epoch: "
                         f"set train.eval_every=1 (got {cfg.train.eval_every}) or train.patience=0")
    if cfg.train.monitor == "val_acc" and cfg.data.val_size == 0:
        raise ValueError("train.monitor='val_acc' needs data.val_size > 0 (e.g. data.val_size=5000)")
    return cfg


def _check_range(key: str, value: Any, meta: Any) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if lo is None and hi is None:
        return
    below = value <= lo if meta.get("lo_open") else value < lo if lo is not None else False
    if below or (hi is not None and value > hi):
        left = "(" if meta.get("lo_open") else "["
        rng = f"{left}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
        raise ValueError(f"{key}={value!r} is out of range: allowed {rng}")
