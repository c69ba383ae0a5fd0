"""helpers.engine: what it reads of the CPU, and what a step does to the model and costs the host."""
from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

from helpers import engine

linux_only = pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's /proc/cpuinfo")


@linux_only
def test_cpu_info_is_the_first_processor_and_a_copy():
    info = engine.cpu_info()
    assert info.get("processor") == "0"  # the first block of /proc/cpuinfo only
    info["flags"] = "changed"
    assert engine.cpu_info().get("flags") != "changed"  # callers cannot change the cached answer


@linux_only
def test_native_bf16_is_read_from_the_flags_and_leaves_no_file_open():
    engine._cpu_info.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        native = engine.cpu_has_native_bf16.__wrapped__()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    flags = engine.cpu_info().get("flags", "").split()
    assert native == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_a_step_trains_in_train_mode_and_switches_only_when_needed(monkeypatch):
    """forward_backward puts an evaluating model back in train mode, and skips the walk over every
    submodule when the model is already training (host time a GPU would wait for)."""
    import torch
    from torch import nn
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    engine.forward_backward(net, nn.CrossEntropyLoss(), x, y)
    assert all(m.training for m in net.modules())
    walks = []
    monkeypatch.setattr(nn.Sequential, "train", lambda self, mode=True: walks.append(mode) or self)
    engine.forward_backward(net, nn.CrossEntropyLoss(), x, y)
    assert walks == []


def test_sgd_is_fused_only_on_cuda():
    """On a CPU build_optimizer keeps torch's default SGD, so CPU runs compute what they always did."""
    import torch
    from torch import nn
    from helpers.config import OptimConfig
    from helpers.optim import build_optimizer
    opt = build_optimizer(nn.Linear(4, 2), OptimConfig())
    assert not opt.defaults["fused"] and not opt.defaults["foreach"]
    if torch.cuda.is_available():
        assert build_optimizer(nn.Linear(4, 2).cuda(), OptimConfig()).defaults["fused"]
