"""Compilation on a CPU: the paths that CUDA graphs take on a GPU, with torch.compile's cheap backends.

Inductor itself takes 80+ s to compile even the smoke model on 2 cores (and, with torch 2.14 on
this CPU, gave NaN gradients under bf16 autocast), so these tests compile with "aot_eager"
(traced forward and backward, eager kernels) or a backend that counts the graphs it is handed.
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

import helpers.train as train_mod
from helpers.checkpoint import load_checkpoint
from helpers.config import Config, get_preset
from helpers.data import load_cifar10
from helpers.engine import PhaseTimer, compile_model, is_compiled, predict, resolve_compile
from helpers.model import build_model
from helpers.train import build_run, fit, warm_up

# 100 fake training images: three full batches of 32 and a last one of 4; 20 test images in batches of 8.
ODD = ["data.train_subset=100", "data.test_subset=20", "data.batch_size=32", "data.eval_batch_size=8",
       "train.tta_flip=True", "train.epochs=3", "train.num_threads=1", "train.compile=default",
       "model.channels=[8,16]", "model.strides=[1,2]", "model.stem_channels=8"]
QUIET = dict(progress=False, log=lambda s: None)


def _strip_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith("time")} for h in history]


@pytest.fixture
def data(fake_root):
    """A fake CIFAR-10 (random pixels): compilation is checked by behaviour, not accuracy."""
    ds = load_cifar10(fake_root)
    assert len(ds.train_x) >= 100 and len(ds.test_x) >= 20, "ODD's subsets need this many fake images"
    return ds


@pytest.fixture
def backend(monkeypatch):
    """fit compiles with aot_eager, and ``graphs`` lists every graph dynamo hands over."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(len(example_inputs))
        return lookup_backend("aot_eager")(gm, example_inputs)  # forward and backward traced, as inductor would

    monkeypatch.setattr(train_mod, "compile_model", functools.partial(compile_model, backend=counting))
    return graphs


def test_compile_defaults():
    assert resolve_compile("auto", torch.device("cuda")) == "graph"  # the whole step as one CUDA graph
    assert resolve_compile("auto", torch.device("cuda"), torch.bfloat16) == "graph"
    assert resolve_compile("auto", torch.device("cuda"), torch.float16) == "cudagraphs"  # loss scaling: not recorded
    assert resolve_compile("auto", torch.device("cpu")) == "off"
    assert resolve_compile("default", torch.device("cpu")) == "default"
    model = build_model(get_preset("smoke").model)
    assert compile_model(model, "auto", torch.device("cpu")) is model  # off on a CPU: the module itself
    assert is_compiled(compile_model(model, "default", torch.device("cpu"), backend="aot_eager"))
    assert get_preset("seed").train.compile == "auto"


def test_old_configs_with_a_boolean_compile_still_load():
    for old, new in ((True, "default"), (False, "off")):
        d = get_preset("smoke").to_dict()
        d["train"]["compile"] = old
        assert Config.from_dict(d).train.compile == new


@pytest.mark.slow
def test_nothing_recompiles_after_the_first_epoch(data, backend):
    # The last, smaller batch runs eagerly and evaluation is eager: one graph, compiled once.
    per_epoch = []
    r = fit(get_preset("smoke", ODD), data, on_epoch=lambda h: per_epoch.append(len(backend)), **QUIET)
    assert r.status == "completed" and len(r.history) == 3
    assert per_epoch == [1, 1, 1], per_epoch
    assert r.meta["compile_s"] > 0


@pytest.mark.slow
def test_compiled_run_resumes_exactly_and_its_checkpoints_load_uncompiled(data, backend, tmp_path):
    straight = fit(get_preset("smoke", ODD), data, **QUIET)
    part = fit(get_preset("smoke", ODD + ["train.stop_after=1"]), data, out_dir=tmp_path, **QUIET)
    assert part.status == "stop_after"
    rest = fit(get_preset("smoke", ODD), data, out_dir=tmp_path, resume=tmp_path, **QUIET)
    assert _strip_time(rest.history) == _strip_time(straight.history)
    state = load_checkpoint(tmp_path)
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    plain = build_model(get_preset("smoke", ODD).model)
    plain.load_state_dict(state["model"])  # strict: same keys with or without compilation
    # and an uncompiled run may resume a compiled one (train.compile is resume-safe)
    off = get_preset("smoke", ODD + ["train.compile=off", "train.epochs=3"])
    again = fit(off, data, out_dir=tmp_path, resume=tmp_path, **QUIET)
    assert again.status == "completed"


@pytest.mark.slow
def test_warm_up_changes_nothing(data, backend):
    run = build_run(get_preset("smoke", ODD), data, log=lambda s: None)
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = torch.get_rng_state()
    assert warm_up(run) > 0
    assert all(torch.equal(weights[k], v) for k, v in run.model.state_dict().items())  # BN statistics too
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in run.model.parameters())


def test_predict_pads_the_last_batch_of_a_compiled_model():
    model = build_model(get_preset("smoke", ODD).model).eval()
    seen = []

    def shapes(gm, example_inputs):
        seen.append(tuple(example_inputs[-1].shape) if example_inputs else None)
        return gm.forward

    net = compile_model(model, "default", torch.device("cpu"), backend=shapes)
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    got = predict(net, x, mean, std, batch_size=128, tta_flip=True)
    want = predict(model, x, mean, std, batch_size=128, tta_flip=True)
    assert got.shape == (300, 10) and torch.allclose(got, want, atol=1e-5)
    assert len(seen) == 1  # 128, 128 and 44 padded to 128: one shape, one graph


def test_phase_timer_sums_each_phase():
    timer = PhaseTimer(torch.device("cpu"))
    for _ in range(3):
        with timer("a"):
            torch.ones(1000).sum()
        with timer("b"):
            pass
    totals = timer.totals()
    assert set(totals) == {"a", "b"} and totals["a"] > 0 and totals["b"] >= 0


def test_a_failed_compile_falls_back_to_the_eager_model(data, monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    monkeypatch.setattr(train_mod, "compile_model", functools.partial(compile_model, backend=broken))
    lines = []
    r = fit(get_preset("smoke", ODD), data, progress=False, log=lines.append)
    eager = fit(get_preset("smoke", ODD + ["train.compile=off"]), data, **QUIET)
    assert r.status == "completed" and "no C compiler here" in r.meta["compile_error"]
    assert any(line.startswith("Compiling failed") for line in lines)
    assert _strip_time(r.history) == _strip_time(eager.history)  # the same run, eagerly


def test_an_unknown_compile_mode_names_the_choices():
    with pytest.raises(ValueError, match="train.compile must be one of 'auto', 'off', 'default', 'cudagraphs', 'graph'"):
        get_preset("smoke", ["train.compile=fast"])
