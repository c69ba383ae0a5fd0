"""benchmarks/gpu_check.py runs end to end on a CPU (--smoke) on a fake CIFAR-10, writing its JSON and Markdown."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.mark.slow
def test_smoke_mode_writes_every_section(fake_root, tmp_path, monkeypatch):
    """Every section, and where the step can be recorded as one graph (here a stand-in on the CPU:
    replaying runs the step again; fit's "compiled" model is a plain wrapper), its rows too."""
    import torch
    from benchmarks.gpu_check import main
    from helpers import graphs
    import helpers.train as train_mod

    class Twin(torch.nn.Module):  # what fit takes for a compiled model, without the seconds of tracing
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, x):
            return self._orig_mod(x)
    monkeypatch.setattr(graphs, "RECORDABLE", {"cuda", "cpu"})
    monkeypatch.setattr(graphs, "cuda_capture", lambda fn: (fn(), (fn, None))[1])
    monkeypatch.setattr(train_mod, "compile_model", lambda model, mode, device: model if mode == "off" else Twin(model))
    code = main(["--smoke", "--backend", "aot_eager", "--compiled-impls", "stacked", "--full", "--speedrun", "--budget", "0",
                 "--data-dir", str(fake_root), "--out", str(tmp_path / "out"), "--commit", "abc1234",
                 "--set", "data.batch_size=16"])  # 100 fake images: 7 steps an epoch, enough for the warm-up
    assert code == 0
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert rep["provenance"]["git_commit"] == "abc1234" and rep["preset"] == "smoke"
    steps = {(r["impl"], r["compile"]): r for r in rep["steps"]}
    assert {("naive", "off"), ("stacked", "off"), ("kernel", "off"), ("stacked_input", "off"), ("auto", "off"),
            ("stacked", "cudagraphs"), ("auto", "graph")} == set(steps)
    for compiled in steps[("stacked", "cudagraphs")], steps[("auto", "graph")]:  # each checked against eager
        assert compiled["grads_finite"] and abs(compiled["loss_compiled"] - compiled["loss_eager"]) < 1e-4
    assert len(rep["blocks"]) == 3 and all(set(b["ms"]) == {"naive", "stacked", "kernel", "stacked_input"}
                                           for b in rep["blocks"])
    assert [a["chunk"] for a in rep["augment"]] == [128, 1024, 8192]
    prof = rep["profile"]  # on a CPU: the host's operations, no GPU figures
    assert prof["wall_us_per_step"] > 0 and prof["gpu_busy_us_per_step"] is None and prof["host_top"]
    ck = rep["checkpoint"]  # the smoke model's weights and momentum buffers, serialised both ways
    assert ck["tensors"] > 10 and set(ck["median_s"]) == {"torch.save", "serialise"}
    for key in ("fit", "fit_graph", "fit_laptop", "full"):
        assert len(rep[key]["history"]) == 2 and rep[key]["status"] == "completed"
        assert not rep[key]["compile_error"] and not rep[key]["graph_error"]
        assert {"time_train", "time_aug", "time_eval", "time_checkpoint"} <= set(rep[key]["history"][0])
    assert rep["fit_graph"]["compile"] == "graph" and rep["profile_graph"]["compile"] == "graph"
    assert rep["profile_graph"]["wall_us_per_step"] > 0
    assert set(rep["full"]["per_class"]) == {"plane", "car", "bird", "cat", "deer", "dog", "frog", "horse",
                                             "ship", "truck"}
    sp = rep["speedrun"]  # the speedrun preset, shrunk to seconds (SMOKE_SPEEDRUN): the path runs end to end
    assert sp["preset"] == "speedrun" and sp["status"] == "completed" and len(sp["history"]) == 1
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    for words in ("ms/step", "auto picks", "with the step recorded as one CUDA graph",
                  "torch.profiler, the step recorded as one CUDA graph", "s/epoch", "| serialise |",
                  "| host op (self time) |", "Final test accuracy", "| cat |", "the speedrun preset",
                  "Training time, compilation apart"):
        assert words in md, words


def test_the_budget_skips_what_does_not_fit_least_useful_last_and_says_so(fake_root, tmp_path, monkeypatch, capsys):
    """With 1 s, no compilation fits (guessed at a minute until one is measured): the eager steps,
    blocks, augmentation and checkpoint still run; everything else is listed, in the order it would have run."""
    from benchmarks import gpu_check as gc
    from helpers import graphs
    monkeypatch.setattr(graphs, "RECORDABLE", {"cuda", "cpu"})  # so the graph rows are planned too
    assert gc.main(["--smoke", "--backend", "aot_eager", "--compiled-impls", "stacked,naive", "--budget", "1",
                    "--data-dir", str(fake_root), "--out", str(tmp_path), "--set", "data.batch_size=16"]) == 0
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {r["compile"] for r in rep["steps"]} == {"off"} and len(rep["steps"]) == 5
    assert rep["blocks"] and rep["augment"] and rep["checkpoint"]
    assert not {"fit", "fit_graph", "fit_laptop", "profile", "profile_graph"} & set(rep)
    skipped = [what.split(" (estimated")[0] for what in rep["budget"]["skipped"]]
    assert skipped == ["2. stacked step, compile=cudagraphs", "2. auto step, compile=graph",
                       "5. fit: smoke preset, 2 epochs, train.compile=off",      # the preset as it is
                       "5. fit: smoke preset, 2 epochs, train.compile=graph",
                       "5. fit: smoke preset, 2 epochs, train.compile=off",      # the laptop preset's place
                       "2. naive step, compile=cudagraphs",
                       "5b. profile: fit's steps, train.compile=off", "5b. profile: fit's steps, train.compile=graph"]
    assert rep["budget"]["used_s"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Skipped to stay within the budget" in md and "- 5b. profile: fit's steps, train.compile=graph" in md
    assert "skipped, to stay within --budget 1 s" in capsys.readouterr().out


def test_budget_estimates_from_what_it_measured():
    from benchmarks.gpu_check import COMPILE_GUESS_S, Budget
    now = [0.0]
    b = Budget(100, clock=lambda: now[0])
    assert b.compile_s == COMPILE_GUESS_S and b.left() == 100
    b.measured_compile(20.0)
    b.measured_compile(12.0)
    assert b.compile_s == 20.0                      # the slowest measured, not the guess
    now[0] = 70.0
    assert b.fits("a", 30.0) and not b.fits("b", 31.0)
    assert b.skipped == ["b (estimated 31 s, 30 s left)"]
    assert Budget(0, clock=lambda: 1e9).fits("c", 1e6)  # 0: no limit


def test_refuses_to_report_cpu_figures_as_gpu_figures(capsys):
    from benchmarks.gpu_check import main
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["--out", "/nonexistent"]) == 2
    assert "No CUDA device" in capsys.readouterr().err


def test_skip_bench_report_holds_only_the_runs_and_says_how_to_finish_one(fake_root, tmp_path, capsys):
    """--skip-bench leaves out sections 2-4 (no empty tables); a run cut short names its resume command."""
    from benchmarks.gpu_check import main
    out = tmp_path / "out"
    code = main(["--smoke", "--skip-bench", "--full", "--data-dir", str(fake_root), "--out", str(out),
                 "--set", "data.batch_size=16", "--set", "train.stop_after=1"])
    assert code == 0
    md = (out / "gpu_check.md").read_text()
    assert "ms/step" not in md and "auto picks" not in md and "s/epoch |" not in md
    assert "Stopped before its last epoch" in md and f"--resume {out / 'full-run'}" in md
    assert "median" in md and "best" in md
    assert f"--resume {out / 'full-run'}" in capsys.readouterr().out


def test_sync_sites_counts_only_sync_warnings_by_call_site():
    """On a GPU the report names where host syncs come from; here the counting is checked on made-up warnings."""
    import warnings
    from benchmarks.gpu_check import sync_sites
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            warnings.warn_explicit("called a synchronizing operation", UserWarning, "/x/augment.py", 42)
        warnings.warn_explicit("called a synchronizing operation", UserWarning, "/x/train.py", 7)
        warnings.warn_explicit("something else", UserWarning, "/x/train.py", 9)
    assert sync_sites(caught) == {"augment.py:42": 3, "train.py:7": 1}


@pytest.mark.slow
def test_a_full_run_cut_short_is_finished_by_resume(fake_root, tmp_path, capsys):
    """--full stopped early (a time limit), then --full --resume: one run, every epoch in the report."""
    from benchmarks.gpu_check import main
    out, run = tmp_path / "out", tmp_path / "run"
    common = ["--smoke", "--skip-bench", "--full", "--data-dir", str(fake_root), "--full-dir", str(run),
              "--set", "data.batch_size=16"]
    assert main(common + ["--out", str(out / "a"), "--resume"]) == 2            # nothing to resume yet
    assert "holds no run" in capsys.readouterr().err
    assert main(common + ["--out", str(out / "a"), "--set", "train.stop_after=1"]) == 0
    assert main(common + ["--out", str(out / "b"), "--resume"]) == 0
    rep = json.loads((out / "b" / "gpu_check.json").read_text())
    assert rep["full"]["status"] == "completed" and len(rep["full"]["history"]) == 2
    assert len(rep["full"]["epoch_wall_s"]) == 1                                 # only this call's epoch
    md = (out / "b" / "gpu_check.md").read_text()
    assert "Resumed after epoch 1" in md and "| 2 |" in md
    assert main(common + ["--out", str(out / "c"), "--resume"]) == 2            # finished: nothing to resume
    assert "finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_profile_is_reported_and_the_check_goes_on(fake_root, tmp_path, monkeypatch):
    import benchmarks.gpu_check as gc

    def broken(*a, **k):
        raise RuntimeError("CUPTI said no")

    monkeypatch.setattr(gc, "profile_steps", broken)
    code = gc.main(["--smoke", "--compiled-impls", "", "--data-dir", str(fake_root), "--out", str(tmp_path / "out"),
                    "--set", "data.batch_size=16", "--epochs", "1", "--full"])
    assert code == 0
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert "CUPTI said no" in rep["profile_error"] and rep["full"]["status"] == "completed"  # --full still ran
    assert "**Failed:** RuntimeError: CUPTI said no" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_a_failed_graph_recording_is_reported_and_the_check_goes_on(fake_root, tmp_path, monkeypatch):
    from benchmarks import gpu_check as gc
    from helpers import graphs

    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(graphs, "RECORDABLE", {"cuda", "cpu"})
    monkeypatch.setattr(graphs, "cuda_capture", broken)
    timed = gc.time_step  # only the graph row is really timed; sections 3 on are not what this test is about
    monkeypatch.setattr(gc, "time_step", lambda cfg, impl, mode, *a, **k: timed(cfg, impl, mode, *a, **k)
                        if mode == "graph" else {"impl": impl, "compile": mode, "ms": 1.0, "img_s": 1.0, "warmup_s": 0.0})
    monkeypatch.setattr(gc, "compile_model", lambda model, *a, **k: model)  # recording fails, compiled or not
    monkeypatch.setattr(gc, "time_blocks", lambda *a, **k: [])
    monkeypatch.setattr(gc, "print_blocks", lambda *a, **k: None)
    monkeypatch.setattr(gc, "time_augment", lambda *a, **k: [])
    monkeypatch.setattr(gc, "time_checkpoint", lambda *a, **k: {})
    monkeypatch.setattr(gc, "run_fit", lambda *a, **k: (_ for _ in ()).throw(SystemExit(7)))
    with pytest.raises(SystemExit) as stop:  # reached section 5: the failure did not end the check
        gc.main(["--smoke", "--backend", "aot_eager", "--compiled-impls", "stacked", "--data-dir", str(fake_root),
                 "--out", str(tmp_path), "--set", "data.batch_size=8"])
    assert stop.value.code == 7
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert ["auto, graph: RuntimeError: operation not permitted when stream is capturing"] == rep["step_errors"]
    assert "**failed**: auto, graph" in (tmp_path / "gpu_check.md").read_text()


def test_the_speedrun_training_time_leaves_out_the_compilation_once():
    # run_fit already took the compilation out of the first epoch's wall time; the report once took it
    # out a second time and printed -20.1 s for a 25 s run.
    from benchmarks.gpu_check import markdown
    f = {"status": "completed", "compile_s": 40.0, "total_s": 50.0, "epoch_wall_s": [4.0, 3.0, 3.0],
         "history": [{"epoch": e, "time_train": 1, "time_aug": 1, "time_eval": 1, "time_checkpoint": 0,
                      "test_acc": 0.5} for e in (1, 2, 3)], "median_epoch_s": 3.0, "mean_epoch_s": 3.0,
         "preset": "speedrun"}
    rep = {"provenance": {"device_name": "X", "device": "cuda", "torch": "t", "torchvision": "v", "python": "p",
                          "git_commit": "c"}, "date": "d", "preset": "seed", "batch": 128, "steps": [], "blocks": [],
           "augment": [], "speedrun": f}
    assert "Training time, compilation apart: 10.0 s" in markdown(rep)


def test_the_preset_s_own_implementation_compiles_first_and_the_others_after_fit(fake_root, tmp_path, monkeypatch):
    """The order of the work, which decides what a budget leaves out: stand-ins record each call."""
    from benchmarks import gpu_check as gc
    from helpers import graphs
    calls = []
    monkeypatch.setattr(graphs, "RECORDABLE", {"cuda", "cpu"})
    monkeypatch.setattr(gc, "time_step", lambda cfg, impl, mode, *a, **k: calls.append(f"step {impl} {mode}") or {
        "impl": impl, "compile": mode, "ms": 1.0, "img_s": 1.0, "warmup_s": 0.0})
    monkeypatch.setattr(gc, "time_blocks", lambda *a, **k: calls.append("blocks") or [])
    monkeypatch.setattr(gc, "print_blocks", lambda *a, **k: None)
    monkeypatch.setattr(gc, "time_augment", lambda *a, **k: calls.append("augment") or [])
    monkeypatch.setattr(gc, "time_checkpoint", lambda *a, **k: calls.append("checkpoint") or {})
    monkeypatch.setattr(gc, "run_fit", lambda cfg, *a, **k: calls.append(f"fit {cfg.train.compile}") or {
        "status": "stop_after", "compile_s": 0.0, "total_s": 1.0, "epoch_wall_s": [1.0, 1.0], "history": [],
        "per_class": {}, "compile_error": None, "graph_error": None})
    monkeypatch.setattr(gc, "profile_steps", lambda cfg, data: calls.append(f"profile {cfg.train.compile}") or {
        "steps": 1, "batch": 1, "compile": cfg.train.compile, "wall_us_per_step": 1.0, "gpu_busy_us_per_step": None,
        "host_top": [], "kernels_top": []})
    assert gc.main(["--smoke", "--backend", "aot_eager", "--compiled-impls", "naive,auto,kernel", "--budget", "0",
                    "--data-dir", str(fake_root), "--out", str(tmp_path), "--set", "data.batch_size=16"]) == 0
    assert calls[:5] == ["step naive off", "step stacked off", "step kernel off", "step stacked_input off",
                         "step auto off"]
    assert calls[5:] == ["step auto cudagraphs", "step auto graph", "blocks", "augment", "checkpoint",
                         "fit off", "fit graph", "fit off",  # the smoke preset: off; then graph; the laptop's place
                         "step naive cudagraphs", "step kernel cudagraphs", "profile off", "profile graph"]


def test_fit_is_compared_with_the_other_cuda_graph_mode():
    """On CUDA `auto` records the whole step as one graph, so sections 5 and 5b compare torch's CUDA
    graphs with it; a run set to cudagraphs is compared with the graph; on a CPU, or under fp16, neither."""
    import torch
    from benchmarks.gpu_check import other_mode
    from helpers.config import get_preset
    seed, cuda = get_preset("seed"), torch.device("cuda")  # a device object: no GPU needed
    assert other_mode(seed, cuda) == "cudagraphs"
    assert other_mode(seed.replace(["train.compile=cudagraphs"]), cuda) == "graph"
    assert other_mode(seed.replace(["train.amp=fp16"]), cuda) is None  # auto: cudagraphs; the graph refuses fp16
    assert other_mode(seed, torch.device("cpu")) is None
