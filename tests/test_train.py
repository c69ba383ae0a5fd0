"""fit, checkpoints, resume and the command line: the smoke preset on a tiny fake CIFAR-10 (no data/ needed)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helpers.train as train_mod
from helpers.checkpoint import (CheckpointError, CheckpointWriter, atomic_write_bytes, check_compatible, config_mismatches,
                                load_checkpoint, save_checkpoint)
from helpers.config import get_preset
from helpers.data import CIFAR10, load_cifar10
from helpers.train import fit, main

# Smaller than smoke so the several runs below take seconds: 100 fake images, 4 steps an epoch.
TINY = ["data.train_subset=100", "data.test_subset=20", "data.batch_size=25", "train.epochs=3",
        "train.num_threads=1", "model.channels=[8,16]", "model.strides=[1,2]", "model.stem_channels=8"]


@pytest.fixture
def data_dir(fake_root) -> Path:
    """A fake CIFAR-10 (random pixels): these tests check behaviour, never accuracy."""
    return fake_root


@pytest.fixture
def data(data_dir) -> CIFAR10:
    ds = load_cifar10(data_dir)
    assert len(ds.train_x) >= 100 and len(ds.test_x) >= 20, "TINY's subsets need this many fake images"
    return ds


def _cfg(*extra: str):
    return get_preset("smoke", [*TINY, *extra])


def _strip_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith("time")} for h in history]


def test_the_commit_is_the_checkouts_unless_the_environment_names_it(monkeypatch):
    """A copy of the tree shipped to another machine can carry an older .git: HELPERS_GIT_COMMIT wins."""
    from helpers.checkpoint import git_commit, provenance
    monkeypatch.delenv("HELPERS_GIT_COMMIT", raising=False)
    ours = git_commit()
    assert ours != "abc1234" and (ours == "unknown" or len(ours.split("+")[0]) >= 7)
    monkeypatch.setenv("HELPERS_GIT_COMMIT", "abc1234")
    assert git_commit() == "abc1234" and provenance(torch.device("cpu"))["git_commit"] == "abc1234"


def test_fit_writes_a_complete_run_folder(data, tmp_path):
    r = fit(_cfg(), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    assert r.status == "completed" and len(r.history) == 3
    for name in ("run.json", "history.json", "history.csv", "last.pt", "best.pt", "report.txt", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    run = json.loads((tmp_path / "run.json").read_text())
    for key in ("config", "seed", "torch", "torchvision", "device", "git_commit"):
        assert key in run
    assert run["config"]["train"]["epochs"] == 3
    assert json.loads((tmp_path / "history.json").read_text()) == r.history
    report = (tmp_path / "report.txt").read_text()
    assert report.startswith("Epoch 3/3 runtime was: ") and "Accuracy of cat: " in report
    assert set(r.per_class) == set(data.classes)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 0


def test_same_seed_same_numbers_on_cpu(data):
    a = fit(_cfg("train.epochs=2"), data, progress=False, log=lambda s: None)
    b = fit(_cfg("train.epochs=2"), data, progress=False, log=lambda s: None)
    assert _strip_time(a.history) == _strip_time(b.history)


@pytest.mark.slow
def test_resume_after_stop_after_equals_uninterrupted(data, tmp_path):
    full = fit(_cfg(), data, progress=False, log=lambda s: None)
    part = fit(_cfg("train.stop_after=1"), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    assert part.status == "stop_after" and len(part.history) == 1
    first = json.loads((tmp_path / "run.json").read_text())
    rest = fit(_cfg(), data, out_dir=tmp_path, resume=tmp_path, progress=False, log=lambda s: None)
    assert rest.status == "completed"
    assert _strip_time(rest.history) == _strip_time(full.history)
    # run.json keeps the first call's provenance, records the resume after it, and how the run ended
    run = json.loads((tmp_path / "run.json").read_text())
    assert first["status"] == "stop_after" and (run["status"], run["epochs_done"]) == ("completed", 3)
    ended = ("resumes", "status", "epochs_done")
    assert {k: v for k, v in run.items() if k not in ended} == {k: v for k, v in first.items() if k not in ended}
    assert [r["epoch"] for r in run["resumes"]] == [1] and "git_commit" in run["resumes"][0]
    fit(_cfg(), data, out_dir=tmp_path, resume=tmp_path, progress=False, log=lambda s: None)  # reload only
    assert json.loads((tmp_path / "run.json").read_text()) == run


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(data, tmp_path, monkeypatch):
    full = fit(_cfg(), data, progress=False, log=lambda s: None)
    calls = {"n": 0}
    real_step = train_mod.train_step

    def step_then_ctrl_c(*a, **kw):  # Ctrl-C arrives during the 6th step (epoch 2, step 2)
        calls["n"] += 1
        if calls["n"] == 6:
            signal.raise_signal(signal.SIGINT)
        return real_step(*a, **kw)

    monkeypatch.setattr(train_mod, "train_step", step_then_ctrl_c)
    part = fit(_cfg(), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    assert part.status == "interrupted" and len(part.history) == 1
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    rest = fit(_cfg(), data, out_dir=tmp_path, resume=tmp_path, progress=False, log=lambda s: None)
    assert _strip_time(rest.history) == _strip_time(full.history)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    real_step = train_mod.train_step
    calls = {"n": 0}

    def nan_in_epoch_2(*a, **kw):
        calls["n"] += 1
        loss, logits = real_step(*a, **kw)
        return (loss * float("nan") if calls["n"] > 4 else loss), logits

    monkeypatch.setattr(train_mod, "train_step", nan_in_epoch_2)
    lines = []
    r = fit(_cfg(), data, out_dir=tmp_path, progress=False, log=lines.append)
    assert r.status == "diverged" and len(r.history) == 1
    assert any("NaN/inf" in line for line in lines)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_resume_with_incompatible_config_names_the_mismatch(data, tmp_path):
    fit(_cfg("train.stop_after=1"), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(CheckpointError, match=r"model.channels: checkpoint \[8, 16\], config \[4, 8\]"):
        fit(_cfg("model.channels=[4, 8]"), data, resume=tmp_path, progress=False, log=lambda s: None)


def test_a_field_newer_than_the_checkpoint_is_compared_through_its_default():
    saved = get_preset("smoke").to_dict()
    del saved["model"]["stem_stride"]          # a checkpoint written before the field existed
    assert config_mismatches(saved, get_preset("smoke")) == []  # default 1: what the old code did
    with pytest.raises(CheckpointError, match=r"model.stem_stride: checkpoint 1, config 2"):
        check_compatible({"config": saved}, get_preset("smoke", {"model.stem_stride": 2}))


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoints_load_weights_only(tmp_path):
    class Evil:  # an object whose unpickling would run code
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"model": {}, "config": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_atomic_write_keeps_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {}})
    before = path.read_bytes()

    def crash(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"torn")
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_cli_smoke_run_and_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--preset", "smoke", "--out", str(out), "--data-dir", str(data_dir), "--no-progress",
            *[a for t in TINY for a in ("--set", t)]]
    assert main([*args, "--set", "train.stop_after=1"]) == 0
    assert "Stopping after epoch 1" in capsys.readouterr().out
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert len(json.loads((out / "history.json").read_text())) == 3


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "invalid choice"),
    (["--set", "train.epochz=3"], "did you mean 'train.epochs'"),
    (["--set", "optim.max_lr=-1"], "out of range"),
    (["--set", "novalue"], "not of the form"),
    (["--resume", "/nonexistent/run"], "no checkpoint at"),
    (["--set", "optim.pct_start=1.0"], "optim.pct_start=1.0 is out of range"),
    (["--set", "model.num_classes=5"], "model.num_classes must be one of 10"),
    (["--set", "train.seed=18446744073709551616"], "train.seed=18446744073709551616 is out of range"),
])
def test_cli_bad_arguments_are_usage_errors_not_tracebacks(argv, message, capsys, tmp_path):
    try:
        code = main([*argv, "--out", str(tmp_path / "r"), "--no-progress"])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", "--out", str(f), "--no-progress"])
    assert e.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_thousands_of_threads_are_refused_before_training(data):
    with pytest.raises(ValueError, match="train.num_threads=1000 is far more than this machine"):
        fit(_cfg("train.num_threads=1000"), data, progress=False, log=lambda s: None)


def test_cli_refuses_to_overwrite_a_run(data_dir, tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        main(["--preset", "smoke", "--out", str(tmp_path), "--data-dir", str(data_dir)])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


def test_fit_never_overwrites_a_run(data, tmp_path):
    fit(_cfg("train.stop_after=1"), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ValueError, match="already holds a run"):
        fit(_cfg(), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    assert (tmp_path / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_module_entry_point_runs_cleanly():
    # `make train` is `python -m helpers.train`: no runpy "found in sys.modules" warning, no traceback.
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "helpers.train", "--help"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--preset" in proc.stdout and "Warning" not in proc.stderr


def test_best_pt_is_the_best_epoch_s_checkpoint(data, tmp_path):
    r = fit(_cfg("train.epochs=4"), data, out_dir=tmp_path, progress=False, log=lambda s: None)
    best_epoch = max(r.history, key=lambda h: h["test_acc"])["epoch"]  # the first of equal maxima
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4
    assert {"time_train", "time_aug", "time_eval", "time_checkpoint"} <= set(r.history[-1])


def test_checkpoint_writer_links_and_reports_errors(tmp_path):
    writer = CheckpointWriter()
    writer.write(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}, "config": {}}, links=(tmp_path / "best.pt",))
    writer.write(tmp_path / "last.pt", {"model": {"w": torch.zeros(2)}, "config": {}})  # waits for the first
    writer.wait()
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.ones(2))  # untouched
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.zeros(2))
    state = {"model": {"w": torch.ones(2)}, "config": {}}
    (tmp_path / "blocker").write_text("a file where a folder should be")
    writer.write(tmp_path / "blocker" / "last.pt", state)  # returns at once; the write fails later
    with pytest.raises(CheckpointError, match="writing a checkpoint failed"):
        writer.wait()
    writer.wait()  # the error is reported once


def test_a_snapshot_is_taken_before_write_returns(tmp_path):
    w = torch.ones(3)
    writer = CheckpointWriter()
    writer.write(tmp_path / "last.pt", {"model": {"w": w}, "config": {}})
    w.add_(1)  # training goes on changing the weights while the file is written
    writer.wait()
    assert torch.equal(load_checkpoint(tmp_path)["model"]["w"], torch.ones(3))


def test_run_folder_gives_a_changed_config_a_folder_of_its_own(data, tmp_path):
    from helpers.checkpoint import run_folder
    cfg = _cfg("train.epochs=2")
    assert run_folder(cfg, "laptop", root=tmp_path) == tmp_path / "laptop"          # free
    fit(cfg, data, out_dir=tmp_path / "laptop", progress=False, log=lambda s: None)
    assert run_folder(cfg, "laptop", root=tmp_path) == tmp_path / "laptop"          # same config: continue it
    other = run_folder(_cfg("train.epochs=3"), "laptop", root=tmp_path)
    assert other.parent == tmp_path and other.name.startswith("laptop-") and len(other.name) == len("laptop-") + 8
    assert run_folder(_cfg("train.epochs=3"), "laptop", root=tmp_path) == other     # stable: resumable
    assert run_folder(cfg.replace(["train.stop_after=1"]), "laptop", root=tmp_path) == tmp_path / "laptop"


def test_fit_leaves_the_callers_threads_and_rng_alone(data):
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    fit(_cfg("train.epochs=2", "train.num_threads=1"), data, progress=False, log=lambda s: None)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), before)


def test_messages_show_project_paths_relative():
    from helpers.checkpoint import display_path, runs_dir
    assert display_path(runs_dir() / "laptop") == "runs/laptop"
    assert display_path("/elsewhere/run") == "/elsewhere/run"
