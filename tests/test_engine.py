"""helpers.engine: what it reads of the CPU."""
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
