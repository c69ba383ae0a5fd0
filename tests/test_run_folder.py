"""Run folders that never lose or mix up work: write order and repair, refusals, the lock,
failed writes, non-finite weights, and the data fingerprint. All on a tiny fake CIFAR-10."""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import helpers.checkpoint as ckpt_mod
import helpers.train as train_mod
from helpers.checkpoint import CheckpointError, RunFolder, load_checkpoint, save_checkpoint
from helpers.config import get_preset
from helpers.data import FOLDER, load_cifar10
from helpers.train import fit, main

# 100 fake training images in batches of 25: 4 steps an epoch, a second each.
TINY = ["data.batch_size=25", "train.epochs=3", "train.num_threads=1", "model.channels=[8,16]",
        "model.strides=[1,2]", "model.stem_channels=8"]
QUIET = dict(progress=False, log=lambda s: None)


def _cfg(*extra: str):
    return get_preset("smoke", [*TINY, *extra])


def _cli(fake_root, *args: str) -> list[str]:
    return [*args, "--data-dir", str(fake_root), "--no-progress"]


def _tiny_cli(fake_root, out, *extra: str) -> list[str]:
    sets = [a for t in [*TINY, *extra] for a in ("--set", t)]
    return _cli(fake_root, "--preset", "smoke", "--out", str(out), *sets)


@pytest.fixture
def data(fake_root):
    return load_cifar10(fake_root)


def _epochs(path) -> list[int]:
    return [h["epoch"] for h in json.loads((path / "history.json").read_text())]


# ---------------------------------------------------------------------------- write order and repair

def test_history_is_written_only_after_the_checkpoint_that_holds_it(data, tmp_path, monkeypatch):
    order = []
    real = ckpt_mod.atomic_write_bytes

    def spy(path, blob):
        order.append(path.name)
        real(path, blob)

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", spy)
    fit(_cfg(), data, out_dir=tmp_path / "run", **QUIET)
    saves = [i for i, name in enumerate(order) if name == "last.pt"]
    assert len(saves) == 3
    for i in saves:  # each epoch: last.pt, then its history (best.pt is a link, not a write)
        assert order[i + 1] == "history.json"


def test_resume_repairs_history_and_best_from_last_pt(data, tmp_path):
    """Case 1: a crash after last.pt and before the history at the final epoch."""
    run = tmp_path / "run"
    fit(_cfg(), data, out_dir=run, **QUIET)
    state = load_checkpoint(run / "last.pt")
    # What the crash leaves: last.pt of epoch 3, recording epoch 3 as the best; history and
    # best.pt one epoch behind.
    state["best"] = {"metric": 2.0, "epoch": 3, "since": 0}
    save_checkpoint(run / "last.pt", state)
    history = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text(json.dumps(history[:2]))
    old = dict(state, epoch=2, history=history[:2])
    (run / "best.pt").unlink()
    save_checkpoint(run / "best.pt", old)
    lines = []
    r = fit(_cfg(), data, out_dir=run, resume=run, progress=False, log=lines.append)
    assert r.status == "completed" and "all 3 epochs are done" in "\n".join(lines)
    assert any("history.json" in line and "Repaired" in line for line in lines)
    assert _epochs(run) == [1, 2, 3]
    assert load_checkpoint(run / "best.pt")["epoch"] == 3


def test_a_full_disk_while_best_pt_is_written_loses_nothing(data, tmp_path, monkeypatch):
    """Case 2: the link to best.pt fails (no space); after a resume, best.pt is the best epoch's."""
    run = tmp_path / "run"
    real = ckpt_mod.atomic_link

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(ckpt_mod, "atomic_link", no_space)
    with pytest.raises(CheckpointError, match=r"No space left on device.*last good checkpoint \(epoch 1\)"):
        fit(_cfg(), data, out_dir=run, **QUIET)
    assert not (run / "best.pt").exists() and load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()
    monkeypatch.setattr(ckpt_mod, "atomic_link", real)
    r = fit(_cfg(), data, out_dir=run, resume=run, **QUIET)
    assert r.status == "completed"
    best = load_checkpoint(run / "last.pt")["best"]["epoch"]
    assert load_checkpoint(run / "best.pt")["epoch"] == best


def test_a_full_disk_on_the_cli_is_one_line_and_exit_2(fake_root, tmp_path, monkeypatch, capsys):
    def no_space(path, blob):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", no_space)
    assert main(_tiny_cli(fake_root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "No checkpoint was written" in err and "Traceback" not in err


def test_leftover_temp_files_are_removed_on_resume(data, tmp_path):
    run = tmp_path / "run"
    fit(_cfg("train.stop_after=1"), data, out_dir=run, **QUIET)
    (run / ".last.pt.x1y2.tmp").write_bytes(b"torn")
    fit(_cfg(), data, out_dir=run, resume=run, **QUIET)
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------- resume: own folder, own last.pt

def test_resuming_from_best_pt_never_rewinds_the_folder(fake_root, tmp_path, capsys):
    """Case 3: --resume RUN/best.pt is refused in RUN; into a new folder it branches."""
    run = tmp_path / "run"
    assert main(_tiny_cli(fake_root, run)) == 0
    before = (run / "last.pt").read_bytes(), (run / "history.json").read_text()
    assert main(_cli(fake_root, "--resume", str(run / "best.pt"))) == 2
    assert "would rewind" in capsys.readouterr().err
    assert ((run / "last.pt").read_bytes(), (run / "history.json").read_text()) == before
    branch = tmp_path / "branch"
    assert main(_cli(fake_root, "--resume", str(run / "best.pt"), "--out", str(branch))) == 0
    assert ((run / "last.pt").read_bytes(), (run / "history.json").read_text()) == before
    meta = json.loads((branch / "run.json").read_text())
    assert meta["branched_from"]["checkpoint"].endswith("best.pt")
    assert _epochs(branch) == [1, 2, 3] and (branch / "best.pt").exists()


def test_resume_into_another_run_s_folder_is_refused(fake_root, tmp_path, capsys):
    """Case 4: --resume A --out B must not overwrite B's own run."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_tiny_cli(fake_root, a, "train.stop_after=1")) == 0
    assert main(_tiny_cli(fake_root, b, "train.stop_after=1", "train.seed=7")) == 0
    before = (b / "last.pt").read_bytes(), (b / "run.json").read_text()
    assert main(_cli(fake_root, "--resume", str(a), "--out", str(b))) == 2
    assert "already holds a run of its own" in capsys.readouterr().err
    assert ((b / "last.pt").read_bytes(), (b / "run.json").read_text()) == before


# ---------------------------------------------------------------------------- one training per folder

def test_a_second_training_in_a_folder_in_use_is_refused(fake_root, tmp_path, capsys):
    """Case 5: while one training holds the folder, another one on the same --out exits 2."""
    run = tmp_path / "run"
    with RunFolder(run).lock():
        assert main(_tiny_cli(fake_root, run)) == 2
        assert "in use by another training" in capsys.readouterr().err
        assert main(_cli(fake_root, "--resume", str(run))) == 2  # nor can a resume sneak in
    assert main(_tiny_cli(fake_root, run)) == 0  # released


@pytest.mark.slow  # two interpreters importing torch
def test_two_processes_on_one_folder_one_is_refused(fake_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "helpers.train", *_tiny_cli(fake_root, run, "train.epochs=30")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        for _ in range(600):  # until the first holds the lock
            if (run / ".lock").exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    finally:
        first.kill()
        first.wait()
    # Refused by the lock, or (if the first already finished an epoch) as a folder that holds a run:
    # never two runs in one folder that both exit 0.
    assert second.returncode == 2, second.stderr
    assert "in use by another training" in second.stderr or "already holds a run" in second.stderr


def test_a_stale_lock_is_taken_over(fake_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that no longer exists
    (run / ".lock").write_text(f"{ckpt_mod.socket.gethostname()} {gone.pid}")
    assert main(_tiny_cli(fake_root, run)) == 0
    assert not (run / ".lock").exists()


def test_a_read_only_folder_is_one_line(fake_root, tmp_path, monkeypatch, capsys):
    real = os.open

    def read_only(path, *a, **kw):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(ckpt_mod.os, "open", read_only)
    assert main(_tiny_cli(fake_root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "cannot write in" in err and "Permission denied" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- non-finite weights

def _poison_after(monkeypatch, epoch_index: int):
    """Make a BatchNorm variance inf at the end of training epoch ``epoch_index`` (the loss stays finite)."""
    real = train_mod.train_epoch

    def poisoned(run, epoch, *a, **kw):
        acc = real(run, epoch, *a, **kw)
        if epoch == epoch_index:
            bn = next(m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return acc

    monkeypatch.setattr(train_mod, "train_epoch", poisoned)


def test_non_finite_weights_never_reach_a_checkpoint(data, tmp_path, monkeypatch):
    run, lines = tmp_path / "run", []
    _poison_after(monkeypatch, 1)
    r = fit(_cfg(), data, out_dir=run, progress=False, log=lines.append)
    assert r.status == "diverged"
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and _epochs(run) == [1] and [h["epoch"] for h in r.history] == [1]
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert any("NaN/inf" in line and "last good checkpoint (epoch 1)" in line for line in lines)


def test_when_nothing_was_saved_the_message_says_so(data, tmp_path, monkeypatch):
    lines = []
    _poison_after(monkeypatch, 0)
    r = fit(_cfg(), data, out_dir=tmp_path / "run", progress=False, log=lines.append)
    assert r.status == "diverged" and not (tmp_path / "run" / "last.pt").exists()
    message = next(line for line in lines if "NaN/inf" in line)
    assert "No checkpoint was written" in message and "kept" not in message


# ---------------------------------------------------------------------------- data and checkpoints

def test_resume_on_other_data_is_refused(fake_root, tmp_path):
    run = tmp_path / "run"
    fit(_cfg("train.stop_after=1"), load_cifar10(fake_root), out_dir=run, **QUIET)
    other = tmp_path / "other"
    shutil.copytree(fake_root / FOLDER, other / FOLDER)
    batch = pickle.loads((other / FOLDER / "data_batch_1").read_bytes())
    batch[b"data"][0, 5] ^= 1  # one pixel
    (other / FOLDER / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(CheckpointError, match="trained on other data"):
        fit(_cfg(), load_cifar10(other), out_dir=run, resume=run, **QUIET)


def test_a_checkpoint_of_another_architecture_is_one_line(data, tmp_path):
    from helpers.analysis import load_run_model
    run = tmp_path / "run"
    fit(_cfg("train.epochs=2"), data, out_dir=run, **QUIET)
    state = load_checkpoint(run / "best.pt")
    state["config"]["model"]["stem_channels"] = 16  # the config no longer matches the weights
    save_checkpoint(run / "best.pt", state)
    with pytest.raises(CheckpointError, match=r"another architecture.*stem") as e:
        load_run_model(run)
    assert "\n" not in str(e.value)


def test_a_checkpoint_whose_config_is_not_a_dict_is_refused(tmp_path):
    torch.save({"model": {}, "config": "seed"}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="'config' is not a dict"):
        load_checkpoint(tmp_path / "odd.pt")


def test_analysis_says_when_it_falls_back_to_last_pt(data, tmp_path):
    from helpers.analysis import load_run_model
    run = tmp_path / "run"
    fit(_cfg("train.epochs=2"), data, out_dir=run, **QUIET)
    (run / "best.pt").unlink()
    with pytest.warns(UserWarning, match="no best.pt: using last.pt"):
        load_run_model(run)


def test_the_run_folder_owns_the_file_names(data, tmp_path):
    folder = RunFolder(tmp_path / "run")
    fit(_cfg("train.epochs=2"), data, out_dir=folder.path, **QUIET)
    assert folder.holds_run() and folder.last.is_file() and folder.best.is_file() and folder.meta.is_file()
    for name in (RunFolder.HISTORY, RunFolder.HISTORY_CSV, RunFolder.REPORT, RunFolder.CURVES):
        assert (folder.path / name).stat().st_size > 0
    assert not (folder.path / RunFolder.LOCK).exists()
    with pytest.raises(ValueError, match="already holds a run"):
        folder.ensure_free()


def test_a_failed_start_leaves_no_empty_folder(data, tmp_path):
    with pytest.raises(ValueError):
        fit(_cfg("train.num_threads=1000"), data, out_dir=tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- finished runs and the reference run

@pytest.mark.slow
def test_status_says_whether_a_run_is_finished(data, tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.status() == "empty" and not run.finished()
    fit(_cfg("train.stop_after=1"), data, out_dir=run.path, **QUIET)
    assert run.status() == "stop_after" and not run.finished()
    fit(_cfg(), data, out_dir=run.path, resume=run.path, **QUIET)
    assert run.status() == "completed" and run.finished()


@pytest.mark.slow
def test_find_run_never_offers_an_unfinished_run(data, tmp_path, monkeypatch):
    from helpers.checkpoint import find_run
    monkeypatch.setattr(ckpt_mod, "reference_dir", lambda: tmp_path / "reference")
    cfg = _cfg()
    assert find_run(cfg, "tiny", root=tmp_path / "runs")[0] is None            # nothing anywhere
    fit(_cfg("train.stop_after=1"), data, out_dir=tmp_path / "runs" / "tiny", **QUIET)
    run, why = find_run(cfg, "tiny", root=tmp_path / "runs")
    assert run is None and "stop_after" in why and "--resume" in why        # unfinished: not used
    done = tmp_path / "done"
    fit(cfg, data, out_dir=done, **QUIET)
    ref = RunFolder(done).export_reference(tmp_path / "reference" / "tiny")
    assert not ref.last.exists() and ref.best.stat().st_size < (done / "best.pt").stat().st_size
    assert "optimizer" not in load_checkpoint(ref.best)
    run, why = find_run(cfg, "tiny", root=tmp_path / "runs")
    assert run.path == ref.path and "reference" in why                      # the shipped run instead
    assert find_run(_cfg("train.seed=1"), "tiny", root=tmp_path / "runs")[0] is None  # not its config
    fit(cfg, data, out_dir=tmp_path / "runs" / "tiny", resume=tmp_path / "runs" / "tiny", **QUIET)
    assert find_run(cfg, "tiny", root=tmp_path / "runs")[0].path == tmp_path / "runs" / "tiny"  # yours


def test_the_shipped_laptop_reference_run_matches_the_preset():
    from helpers.checkpoint import config_mismatches, reference_dir
    ref = RunFolder(reference_dir() / "laptop")
    assert ref.finished() and ref.best.is_file()
    state = load_checkpoint(ref.best)
    assert config_mismatches(state["config"], get_preset("laptop")) == []
    assert state["epoch"] == get_preset("laptop").train.epochs and "optimizer" not in state


def test_serialise_round_trips_a_snapshot():
    """``serialise`` skips torch.save's CRC-32 and copies device tensors itself: what loads is what was saved."""
    w = torch.arange(12.0).view(3, 4).t()  # not contiguous: strides survive
    state = {"model": {"w": w, "n": torch.tensor(3)}, "history": [{"acc": 0.5}], "rng": (torch.zeros(2),)}
    data = ckpt_mod.serialise(state)
    w.add_(1)  # training goes on after the snapshot
    back = torch.load(io.BytesIO(data), weights_only=True)
    assert torch.equal(back["model"]["w"], torch.arange(12.0).view(3, 4).t()) and back["model"]["w"].stride() == (1, 4)
    assert back["model"]["n"] == 3 and back["history"] == [{"acc": 0.5}] and isinstance(back["rng"], tuple)
    assert ckpt_mod.to_host(state)["model"]["w"] is w  # on the CPU nothing is copied twice


def test_torch_load_does_not_check_crc32():
    """Why ``serialise`` skips the zip CRC-32 torch.save computes: torch.load never verifies it, so it
    costs time and catches nothing. If torch starts checking, this fails: keep the CRC then."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(100_000)}, buf)  # CRC-32 on (torch's default)
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF  # one byte inside the tensor's 400 kB
    back = torch.load(io.BytesIO(bytes(data)), weights_only=True)
    assert not torch.equal(back["w"], torch.zeros(100_000))  # the corruption loaded silently
