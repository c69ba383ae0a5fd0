"""Tested helpers for the CIFAR-10 course: every part of the seed recipe, one module per topic.

    from helpers import get_preset, load_cifar10, fit
    result = fit(get_preset("laptop"), out_dir="runs/laptop")

Modules: ``config`` (hyperparameters, presets), ``data`` (CIFAR-10 reader,
device-resident batches), ``augment`` (batched per-image augmentation,
CutMix/MixUp), ``reference`` (the seed's DataLoader pipeline), ``model``
(stem, mixing blocks, classifier), ``losses`` (focal loss), ``optim`` (SGD,
OneCycle, LR range test), ``engine`` (device, one step, prediction), ``train``
(``fit``, the command line), ``checkpoint`` (run folders), ``analysis``,
``plots`` and ``widgets``.
"""
from .analysis import (Predictions, confusion_matrix, expected_calibration_error, load_run_model,
                       per_class_metrics, predictions)
from .augment import BatchAugment, denormalize, normalize
from .checkpoint import CheckpointError, load_checkpoint
from .config import CLASSES, Config, DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig, \
    get_preset, preset_from_env
from .data import CIFAR10, DataError, DeviceBatches, channel_stats, load_cifar10
from .engine import evaluate, pick_device, predict, train_step
from .losses import FocalLoss, build_loss
from .model import MixingNet, build_model
from .optim import build_optimizer, build_scheduler, lr_range_test

__all__ = [
    "Predictions", "confusion_matrix", "expected_calibration_error", "load_run_model",
    "per_class_metrics", "predictions",
    "BatchAugment", "denormalize", "normalize",
    "CheckpointError", "load_checkpoint",
    "CLASSES", "Config", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "TrainConfig",
    "get_preset", "preset_from_env",
    "CIFAR10", "DataError", "DeviceBatches", "channel_stats", "load_cifar10",
    "evaluate", "pick_device", "predict", "train_step",
    "FocalLoss", "build_loss",
    "MixingNet", "build_model",
    "build_optimizer", "build_scheduler", "lr_range_test",
    "FitResult", "fit",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # ``fit`` and ``FitResult`` load on first use, so ``python -m helpers.train`` (``make train``)
    # runs the module once, not after an import of itself (runpy's RuntimeWarning).
    if name in ("fit", "FitResult"):
        from . import train
        return getattr(train, name)
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
