"""train.compile="graph" (helpers/graphs.py) on a CPU: everything but the CUDA recording itself.

A CPU cannot record a CUDA graph, so ``strict_capture`` stands in for ``cuda_capture``: replaying
runs the recorded step again, and it fails where a real graph would silently go wrong: when the
gradients on the parameters are not the tensors the recording writes (the optimiser would then
step with stale or missing gradients), or when the step makes new gradient tensors instead of
writing into them. What only a GPU can show (that the step records at all, and its speed) is
``benchmarks/gpu_check.py``'s job.
"""
from __future__ import annotations

import functools

import pytest
import torch

import helpers.graphs as graphs_mod
import helpers.train as train_mod
from helpers.checkpoint import load_checkpoint
from helpers.config import get_preset
from helpers.data import load_cifar10
from helpers.engine import compile_model, forward_backward
from helpers.losses import build_loss
from helpers.model import build_model
from helpers.train import build_run, fit

# 100 fake training images: three full batches of 32 and a last one of 4 (which runs eagerly).
SMALL = ["data.train_subset=100", "data.test_subset=20", "data.batch_size=32", "data.eval_batch_size=8",
         "train.epochs=3", "train.num_threads=1", "model.channels=[8,16]", "model.strides=[1,2]",
         "model.stem_channels=8"]
QUIET = dict(progress=False, log=lambda s: None)


def _strip_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith("time")} for h in history]


def strict_capture(model: torch.nn.Module, replays: list | None = None):
    """A stand-in for ``graphs.cuda_capture``: runs the step once to "record", and again at each replay."""
    def capture(fn):
        fn()
        params = [p for p in model.parameters() if p.requires_grad]
        recorded = [p.grad for p in params]  # what the recorded kernels would write
        assert all(g is not None for g in recorded)

        def replay():
            assert all(p.grad is g for p, g in zip(params, recorded)), \
                "replayed while the parameters hold other gradients than the ones the graph writes"
            fn()
            assert all(p.grad is g for p, g in zip(params, recorded)), "the step made new gradient tensors"
            if replays is not None:
                replays.append(1)
        return replay, None
    return capture


@pytest.fixture
def data(fake_root):
    return load_cifar10(fake_root)


@pytest.fixture
def on_cpu(monkeypatch):
    """Let fit record "graphs" on the CPU: the strict stand-in, and torch.compile with a backend that
    counts the graphs it is handed and runs them as eager. Lists the replays; ``.compiled`` counts."""
    class Replays(list):
        compiled = 0

    class CPUStepGraph(graphs_mod.StepGraph):
        def __init__(self, net, model, loss_fn, x, target, dtype, warmup=3, capture=None):
            super().__init__(net, model, loss_fn, x, target, dtype, warmup, strict_capture(model, replays))

    monkeypatch.setattr(graphs_mod, "RECORDABLE", {"cuda", "cpu"})
    monkeypatch.setattr(train_mod, "StepGraph", CPUStepGraph)
    def counting(gm, example_inputs):  # dynamo hands each graph it compiles to its backend once
        replays.compiled += 1
        return gm.forward  # kernels as eager: the same numbers as no compilation
    replays = Replays()
    monkeypatch.setattr(train_mod, "compile_model", functools.partial(compile_model, backend=counting))
    torch._dynamo.reset()
    yield replays
    torch._dynamo.reset()  # dynamo's cache keeps this backend's code for the model: later tests must compile afresh


@pytest.mark.parametrize("extra", [[], ["train.ema=0.9", "train.channels_last=True", "model.stem_whiten=True"]],
                         ids=["plain", "ema-channels_last-frozen_stem"])
def test_a_graphed_run_trains_exactly_as_the_eager_one(data, on_cpu, extra):
    eager = fit(get_preset("smoke", SMALL + extra + ["train.compile=off"]), data, **QUIET)
    graphed = fit(get_preset("smoke", SMALL + extra + ["train.compile=graph"]), data, **QUIET)
    assert graphed.status == eager.status == "completed" and not graphed.meta.get("compile_error")
    assert len(on_cpu) == 3 * 3  # three full batches an epoch replayed; the last, smaller one eager
    assert on_cpu.compiled == 1  # compiled once, in the warm-up: recording the same step compiles nothing
    assert _strip_time(graphed.history) == _strip_time(eager.history)
    for (name, a), b in zip(graphed.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_graphed_run_resumes_exactly(data, on_cpu, tmp_path):
    whole = fit(get_preset("smoke", SMALL + ["train.compile=graph"]), data, out_dir=tmp_path / "a", **QUIET)
    cut = get_preset("smoke", SMALL + ["train.compile=graph", "train.stop_after=1"])
    assert fit(cut, data, out_dir=tmp_path / "b", **QUIET).status == "stop_after"
    resumed = fit(get_preset("smoke", SMALL + ["train.compile=graph"]), data, out_dir=tmp_path / "b",
                  resume=tmp_path / "b", **QUIET)
    assert _strip_time(resumed.history) == _strip_time(whole.history)
    # the checkpoint is the plain model's and optimiser's state: it loads without any graph
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    plain = build_model(get_preset("smoke", SMALL).model)
    plain.load_state_dict(state["model"])
    for (name, a), b in zip(plain.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b.cpu()), name


def test_graph_mode_is_refused_where_it_cannot_record(data, monkeypatch):
    with pytest.raises(ValueError, match="records a CUDA graph, and this run is on cpu"):
        build_run(get_preset("smoke", SMALL + ["train.compile=graph"]), data, log=lambda s: None)
    monkeypatch.setattr(graphs_mod, "RECORDABLE", {"cuda", "cpu"})
    with pytest.raises(ValueError, match="runs bf16 or fp32"):
        build_run(get_preset("smoke", SMALL + ["train.compile=graph", "train.amp=fp16"]), data, log=lambda s: None)


def test_step_graph_computes_the_eager_step_into_the_same_tensors():
    torch.manual_seed(0)
    cfg = get_preset("smoke", SMALL + ["model.dropout=0.0"])
    model, loss_fn = build_model(cfg.model), build_loss(cfg.loss)
    x = torch.randn(4, 3, 32, 32)
    target = torch.nn.functional.one_hot(torch.arange(4) % 10, 10).float()
    graph = graphs_mod.StepGraph(model, model, loss_fn, x, target, None, warmup=1,
                                 capture=strict_capture(model))
    x2, t2 = torch.randn(4, 3, 32, 32), target.roll(1, 0)
    ref = build_model(cfg.model)
    ref.load_state_dict(model.state_dict())  # BatchNorm statistics too, as the warm-up left them
    loss_ref, logits_ref = forward_backward(ref, loss_fn, x2, t2)
    loss, logits = graph(x2, t2)
    assert loss is graph.loss and logits is graph.logits  # the same tensors, rewritten
    assert torch.equal(loss, loss_ref) and torch.equal(logits, logits_ref)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    model.zero_grad(set_to_none=True)  # as an eager step does: the next call puts the graph's gradients back
    graph(x2, t2)
    assert all(p.grad is g for p, g in zip(graph.params, graph.grads))


def test_a_failed_recording_trains_with_torchs_cuda_graphs_instead(data, on_cpu, monkeypatch):
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    class Broken(graphs_mod.StepGraph):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "capture": broken})
    monkeypatch.setattr(train_mod, "StepGraph", Broken)
    said = []
    r = fit(get_preset("smoke", SMALL + ["train.compile=graph", "train.stop_after=1"]), data, progress=False, log=said.append)
    eager = fit(get_preset("smoke", SMALL + ["train.compile=off", "train.stop_after=1"]), data, **QUIET)
    assert r.status == "stop_after" and "stream is capturing" in r.meta["graph_error"]
    assert not r.meta.get("compile_error") and len(on_cpu) == 0
    assert any("training with train.compile='cudagraphs' instead" in s for s in said)
    assert any(s.startswith("Compiled (cudagraphs)") for s in said)
    # the failed attempt's warm-up left nothing behind: the same numbers as a run without it
    assert _strip_time(r.history) == _strip_time(eager.history)
