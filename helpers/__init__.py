"""Tested helpers for the CIFAR-10 course: every part of the seed recipe, one module per topic.

    from helpers import get_preset, load_cifar10, fit
    result = fit(get_preset("laptop"), out_dir="runs/laptop")

Modules: ``config`` (hyperparameters, presets), ``data`` (CIFAR-10 reader,
device-resident batches), ``augment`` (batched per-image augmentation,
CutMix/MixUp), ``reference`` (the seed's DataLoader pipeline), ``model``
(stem, mixing blocks, classifier), ``losses`` (focal loss), ``optim`` (SGD,
OneCycle, LR range test), ``engine`` (device, one step, prediction), ``graphs``
(the step recorded as one CUDA graph), ``train``
(``fit``, the command line), ``checkpoint`` (run folders), ``analysis``,
``plots``, ``widgets``, and ``exercises`` with ``exercise_checks`` (the
students' exercises: building them, grading them).
"""
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

import importlib  # after __all__, so the public names lead the file

# Each public name loads its module on first use, so `import helpers` stays cheap and
# ``python -m helpers.data`` / ``-m helpers.train`` run their module once, not after the
# package imported it (runpy's RuntimeWarning "found in sys.modules").
_SOURCE = {name: module for module, names in {
    "analysis": ("Predictions", "confusion_matrix", "expected_calibration_error", "load_run_model",
                 "per_class_metrics", "predictions"),
    "augment": ("BatchAugment", "denormalize", "normalize"),
    "checkpoint": ("CheckpointError", "load_checkpoint"),
    "config": ("CLASSES", "Config", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig",
               "TrainConfig", "get_preset", "preset_from_env"),
    "data": ("CIFAR10", "DataError", "DeviceBatches", "channel_stats", "load_cifar10"),
    "engine": ("evaluate", "pick_device", "predict", "train_step"),
    "losses": ("FocalLoss", "build_loss"),
    "model": ("MixingNet", "build_model"),
    "optim": ("build_optimizer", "build_scheduler", "lr_range_test"),
    "train": ("FitResult", "fit"),
}.items() for name in names}


def __getattr__(name: str):
    if name not in _SOURCE:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCE[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
