"""Run folders and checkpoints: atomic writes, RNG capture, provenance, safe loading.

A checkpoint is data, not code: it holds only tensors, numbers, strings, lists
and dicts, and is read with ``torch.load(weights_only=True)``.

A run folder (``RunFolder``) is the one owner of a run's file names and of the
order of its writes. ``last.pt`` is the truth: it holds the complete state of
the newest finished epoch (or of an interrupted step), history and best epoch
included. Everything else is derived from it and repaired from it on resume:

    last.pt        newest complete state         best.pt      the best epoch's (a hard link)
    run.json       config, provenance, resumes   history.*    per-epoch figures
    report.txt     the report's §5 block         curves.png   training curves
    .lock          held while a training runs in the folder
"""
from __future__ import annotations

__all__ = ["CheckpointError", "RunFolder", "CheckpointWriter", "FINISHED", "RESUME_SAFE", "load_checkpoint",
           "load_weights", "find_run", "reference_dir",
           "eval_weights", "save_checkpoint", "resume_source", "run_folder", "runs_dir", "display_path",
           "config_mismatches", "check_compatible", "rng_state", "set_rng_state", "provenance", "git_commit",
           "atomic_write_bytes", "atomic_write_text", "atomic_link", "serialise", "to_host", "write_json"]

import contextlib
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.serialization import config as serialization_config

from .config import Config
from .data import PROJECT
from .engine import cpu_info

# How a fit call ends when the run is done (RunFolder.status); every other status can be resumed.
FINISHED = frozenset({"completed", "early_stop"})
# Keys that may differ between a checkpoint and the config that resumes it:
# they change where or how fast the run goes, not what it computes.
RESUME_SAFE = {"train.stop_after", "train.device", "train.compile", "train.num_threads",
               "data.root", "data.eval_batch_size", "data.aug_chunk"}


def display_path(path: str | Path) -> str:
    """``path`` as messages show it: relative to the project folder when inside it (no machine's
    absolute paths in logs and notebook outputs), else as given."""
    try:  # abspath, not resolve: a symlinked runs/ still counts as inside
        return str(Path(os.path.abspath(path)).relative_to(PROJECT))
    except ValueError:
        return str(path)


def runs_dir() -> Path:
    """Where run folders go: the project's ``runs/`` (from any working directory), else ``./runs``."""
    return PROJECT / "runs" if (PROJECT / "notebooks").is_dir() else Path("runs")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which file and why."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def to_host(state: Any) -> Any:
    """``state`` (nested dicts, lists, tuples) with every device tensor copied to the host.

    ``torch.save`` copies device tensors itself, one blocking copy per tensor: 190 for the seed
    preset's weights and momentum, each a wait for the GPU's queue. Here the copies are queued
    asynchronously (from CUDA, into page-locked memory) and the host waits once, for all of them.
    """
    copied = False

    def host(x: Any) -> Any:
        nonlocal copied
        if isinstance(x, torch.Tensor) and x.device.type != "cpu":
            copied = True
            return x.to("cpu", non_blocking=True)
        if isinstance(x, dict):
            return {k: host(v) for k, v in x.items()}
        if type(x) in (list, tuple):
            return type(x)(host(v) for v in x)
        return x

    out = host(state)
    if copied:  # the copies are complete: a snapshot that training may now overwrite
        torch.accelerator.current_stream().synchronize()  # the copies' stream (sync debug mode sees it)
    return out


def serialise(state: dict) -> bytes:
    """``torch.save`` into memory, device tensors copied to the host first (``to_host``): a snapshot.

    Without zip CRC-32 checksums: ``torch.load`` does not verify them (``tests/test_run_folder.py``
    shows a corrupted tensor loading silently either way), and computing them took a third of the
    time (``benchmarks/checkpoint.py``). Writes are atomic and fsynced, so no half-written file loads.
    """
    buf = io.BytesIO()
    with serialization_config.patch({"save.compute_crc32": False}):
        torch.save(to_host(state), buf)
    return buf.getvalue()


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``."""
    atomic_write_bytes(Path(path), serialise(state))


def atomic_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically: a hard link (no copy), else a copy.

    ``save_checkpoint`` replaces a file by renaming a new one over it, so a later
    ``last.pt`` never changes what ``best.pt`` links to.
    """
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:  # no hard links on this file system
        Path(tmp).unlink(missing_ok=True)
        atomic_write_bytes(dst, Path(src).read_bytes())


class CheckpointWriter:
    """Serialises a checkpoint at once and writes it to disk in a background thread.

    ``write`` returns once the state is serialised (a snapshot: training may go on changing
    the tensors); the file appears atomically once written and fsynced. ``wait`` (which the
    next ``write`` calls first) blocks until it is on disk and re-raises the writer's error.
    Only the writing is in the background: serialising in a second thread fights the training
    thread for Python's GIL, a thread that only writes barely does (BENCHMARKS.md, GPU section,
    "Checkpoint writing and the GIL").
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, path: Path, state: dict, links: tuple[Path, ...] = (),
              then: Callable[[], None] | None = None) -> None:
        """Save ``state`` to ``path``, then make each of ``links`` the same file, then call ``then``
        (in the writer's thread: files derived from this checkpoint are written only after it)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(Path(path), serialise(state), links, then),
                                        name="checkpoint-writer")
        self._thread.start()

    def _run(self, path: Path, data: bytes, links: tuple[Path, ...], then: Callable[[], None] | None) -> None:
        try:
            atomic_write_bytes(path, data)
            for link in links:
                atomic_link(path, Path(link))
            if then is not None:
                then()
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint failed: {_os_error(error)}") from error


def _os_error(e: BaseException) -> str:
    """One line for a failed write: the cause a user can act on (a full disk, no permission)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    return f"{type(e).__name__}: {e}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (weights_only: no code runs)."""
    path = Path(path)
    if path.is_dir():  # a run folder: its newest state (what resume continues)
        path = path / RunFolder.LAST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path.resolve()}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path.resolve()} "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path.resolve()} is not a checkpoint of this project "
                              "(no 'model' and 'config' entries)")
    if not isinstance(state["config"], dict) or not all(isinstance(v, dict) for v in state["config"].values()):
        raise CheckpointError(f"{path.resolve()} is not a checkpoint of this project "
                              "(its 'config' is not a dict of config sections)")
    return state


def load_weights(model: torch.nn.Module, weights: dict, path: str | Path = "checkpoint") -> None:
    """``model.load_state_dict(weights)``, with one line instead of a wall of size mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(v.shape)}"
              for k, v in own.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        example = (shapes or [f"missing {k}" for k in missing] or [f"unexpected {k}" for k in unexpected])[0]
        raise CheckpointError(
            f"{display_path(path)} holds weights of another architecture ({len(shapes)} shapes differ, "
            f"{len(missing)} missing, {len(unexpected)} unexpected; e.g. {example}): build the model from "
            "the checkpoint's own config (load_run_model does)")
    model.load_state_dict(weights)


def eval_weights(state: dict) -> dict:
    """The weights a checkpoint's run evaluated: its EMA's (``train.ema``) when it kept one, else the model's."""
    if "ema" not in state:
        return state["model"]
    # AveragedModel's state: "module.<name>" per weight, plus its own "n_averaged" counter.
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}


class RunFolder:
    """One run's folder: the owner of its file names, its lock, the order of its writes, and reading it back.

    Writes go ``last.pt`` first, then ``best.pt`` (a link to it), then the history: a crash
    between them leaves files that ``repair`` brings back in line with ``last.pt``. Resume reads
    ``last.pt`` (the newest state); analysis reads ``best.pt`` (the best epoch's weights) and says
    so when it must fall back to ``last.pt``.
    """

    LAST, BEST, META = "last.pt", "best.pt", "run.json"
    HISTORY, HISTORY_CSV, REPORT, CURVES, LOCK = "history.json", "history.csv", "report.txt", "curves.png", ".lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.writer = CheckpointWriter()
        self.saved: dict | None = None  # {"epoch", "step"} of the newest last.pt on disk, once known

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({display_path(self.path)!r})"

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def meta(self) -> Path:
        return self.path / self.META

    def holds_run(self) -> bool:
        return self.last.exists()

    def ensure_free(self) -> None:
        """Refuse (``ValueError``) to start a new run where one already is: runs are never overwritten."""
        where = display_path(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{where} is a file, not a folder: choose a folder for the run")
        if self.holds_run():
            raise ValueError(f"{where} already holds a run: continue it with --resume {where} (in Python: "
                             f"resume={where!r}), or choose another folder (runs are never overwritten)")

    # ------------------------------------------------------------------ one training at a time

    @contextlib.contextmanager
    def lock(self) -> Iterator["RunFolder"]:
        """Hold the folder while a training runs in it; a second training is refused meanwhile.

        The lock is a file naming this host and process; one left by a process that no longer
        exists (killed, machine restarted) is taken over. Leftover temporary files of an
        interrupted write are removed once the lock is held (nobody else is writing then).
        """
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        except OSError as e:
            raise CheckpointError(f"cannot write in {display_path(self.path)}: {_os_error(e)}. "
                                  "Choose a folder you can write to (--out).") from None
        try:
            for tmp in self.path.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            yield self
        finally:
            (self.path / self.LOCK).unlink(missing_ok=True)
            if created and not any(self.path.iterdir()):  # a run that failed before writing anything
                self.path.rmdir()

    def _take_lock(self) -> None:
        path, me = self.path / self.LOCK, f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = path.read_text(errors="replace").strip()
                if _lock_owner_alive(owner):
                    where = display_path(self.path)
                    raise CheckpointError(
                        f"{where} is in use by another training (host and process: {owner or 'unknown'}): "
                        f"wait for it to end or choose another folder (--out). If no training runs there, "
                        f"delete {where}/{self.LOCK}.") from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return
        raise CheckpointError(f"{display_path(self.path)} was locked by another training just now: "
                              "choose another folder (--out)")

    # ------------------------------------------------------------------ writing

    def save(self, state: dict, best: bool = False) -> None:
        """Write ``state`` to ``last.pt`` in the background, then link ``best.pt`` to it and write
        the history it holds. Returns once ``state`` is serialised (a snapshot)."""
        history = [dict(h) for h in state["history"]]
        mark = {"epoch": state["epoch"], "step": state["step"]}

        def then() -> None:  # in the writer's thread, once last.pt is on disk
            self.saved = mark
            if best:
                atomic_link(self.last, self.best)
            self.write_history(history)

        try:
            self.writer.write(self.last, state, then=then)
        except CheckpointError as e:  # the previous write failed
            raise self._failed(e) from None

    def wait(self) -> None:
        """Block until the last ``save`` is on disk; a failed write raises, saying what was kept."""
        try:
            self.writer.wait()
        except CheckpointError as e:
            raise self._failed(e) from None

    def kept(self) -> str:
        """What the folder holds to go on from, in words, for error messages."""
        where = display_path(self.path)
        if self.saved is None and not self.holds_run():
            return f"No checkpoint was written to {where}."
        at = (f"epoch {self.saved['epoch']}" + (f", step {self.saved['step']}" if self.saved["step"] else "")
              if self.saved else "the newest complete epoch")
        return f"The last good checkpoint ({at}) is kept in {display_path(self.last)}."

    def _failed(self, e: BaseException) -> CheckpointError:
        return CheckpointError(f"{e}. {self.kept()} Fix the cause (e.g. free disk space), then continue "
                               f"with --resume {display_path(self.path)}.")

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """A failed write of ``name`` (full disk, no permission) as one line that says what was kept."""
        try:
            yield
        except OSError as e:
            raise self._failed(f"writing {display_path(self.path / name)} failed: {_os_error(e)}") from None

    def start_from(self, checkpoint: Path) -> None:
        """Begin a new folder (a branch) with a copy of another run's checkpoint as its ``last.pt``."""
        with self._writing(self.LAST):
            atomic_write_bytes(self.last, Path(checkpoint).read_bytes())

    def write_meta(self, meta: dict, resumed_at: tuple[int, int] | None = None,
                   branched_from: dict | None = None, finished: bool = False) -> None:
        """``run.json``: the config and provenance of the run's start, then a record per resume."""
        with self._writing(self.META):
            self._write_meta(meta, resumed_at, branched_from, finished)

    def _write_meta(self, meta: dict, resumed_at: tuple[int, int] | None, branched_from: dict | None,
                    finished: bool) -> None:
        if resumed_at is None or branched_from is not None or not self.meta.exists():
            write_json(self.meta, {**meta, **({"branched_from": branched_from} if branched_from else {})})
        elif not finished:  # keep the original provenance; record each resume
            saved = json.loads(self.meta.read_text())
            saved.setdefault("resumes", []).append({"epoch": resumed_at[0], "step": resumed_at[1],
                                                    **{k: v for k, v in meta.items() if k != "config"}})
            write_json(self.meta, saved)

    def write_status(self, status: str, epochs_done: int) -> None:
        """Record in ``run.json`` how the last ``fit`` call ended ("completed", "interrupted", ...)."""
        with self._writing(self.META):
            meta = _read_json(self.meta) or {}
            write_json(self.meta, {**meta, "status": status, "epochs_done": epochs_done})

    def status(self) -> str:
        """How the run stands: "completed" or "early_stop" (finished), "interrupted", "stop_after",
        "diverged", "unfinished" (a checkpoint short of the last epoch, cause unknown) or "empty"."""
        meta = _read_json(self.meta)
        if isinstance(meta, dict) and "status" in meta:
            return meta["status"]
        state = _checkpoint_state(self.last)  # runs from before run.json recorded it
        if state is None:
            return "empty"
        return "completed" if state["epoch"] >= state["config"]["train"]["epochs"] else "unfinished"

    def finished(self) -> bool:
        return self.status() in FINISHED

    def export_reference(self, to: str | Path) -> "RunFolder":
        """A small copy of this finished run for analysis only: ``best.pt`` without optimiser,
        scheduler or RNG state (about half the size), with its run.json, history, report and curves."""
        if not self.finished():
            raise CheckpointError(f"{display_path(self.path)} is not finished ({self.status()}): "
                                  "export only a finished run")
        out = RunFolder(to)
        out.path.mkdir(parents=True, exist_ok=True)
        state = load_checkpoint(self.analysis_checkpoint()[0])
        keep = ("model", "ema", "config", "meta", "epoch", "step", "history", "best")
        save_checkpoint(out.best, {k: state[k] for k in keep if k in state} | {"partial": None})
        for name in (self.META, self.HISTORY, self.HISTORY_CSV, self.REPORT, self.CURVES):
            if (self.path / name).is_file():
                atomic_write_bytes(out.path / name, (self.path / name).read_bytes())
        out.write_status(self.status(), state["epoch"])
        return out

    def write_history(self, history: list[dict]) -> None:
        """``history.json`` and ``history.csv`` (a column per key any epoch has)."""
        with self._writing(self.HISTORY):
            self._write_history(history)

    def _write_history(self, history: list[dict]) -> None:
        import csv
        write_json(self.path / self.HISTORY, history)
        if not history:
            return
        keys = list(dict.fromkeys(k for h in history for k in h))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.path / self.HISTORY_CSV, buf.getvalue())

    def write_report(self, report: str, history: list[dict]) -> None:
        """``report.txt`` and ``curves.png``."""
        from .plots import training_curves
        import matplotlib.pyplot as plt
        fig = training_curves(history)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        with self._writing(self.REPORT):
            atomic_write_text(self.path / self.REPORT, report)
            atomic_write_bytes(self.path / self.CURVES, buf.getvalue())

    # ------------------------------------------------------------------ reading back

    def repair(self, state: dict) -> list[str]:
        """Bring the derived files in line with ``state`` (this folder's ``last.pt``) after a crash
        between writes or a failed write; returns what was fixed, in words."""
        self.saved = {"epoch": state["epoch"], "step": state["step"]}  # what last.pt holds
        fixed = []
        on_disk = _read_json(self.path / self.HISTORY)
        if [h.get("epoch") for h in on_disk or []] != [h["epoch"] for h in state["history"]]:
            self.write_history(state["history"])
            fixed.append(f"history.json/.csv rewritten from last.pt ({len(state['history'])} epochs)")
        best = state.get("best", {}).get("epoch", 0)
        if best and _checkpoint_epoch(self.best) != (best, 0):
            if (state["epoch"], state["step"]) == (best, 0):  # last.pt is the best epoch's own checkpoint
                atomic_link(self.last, self.best)
                fixed.append(f"best.pt relinked to last.pt (epoch {best}, the best)")
            else:
                fixed.append(f"best.pt does not hold the best epoch ({best}) and cannot be rebuilt; "
                             "analysis will use last.pt")
        return fixed

    def analysis_checkpoint(self, prefer: str = BEST) -> tuple[Path, str | None]:
        """The file analysis should read: ``prefer`` (best.pt), else last.pt with a note that says so."""
        if (self.path / prefer).is_file():
            return self.path / prefer, None
        if self.last.is_file():
            return self.last, (f"{display_path(self.path)} has no {prefer}: using {self.LAST} "
                               "(the newest weights, not necessarily the best)")
        raise CheckpointError(f"no checkpoint in {display_path(self.path)} (looked for {prefer} and "
                              f"{self.LAST}); train one with `python -m helpers.train --out <folder>`")


def resume_source(resume: str | Path, out: "RunFolder | None") -> tuple[Path, bool]:
    """Where a resume reads from, and whether it starts a new folder (a branch) from there.

    A run continues in its own folder from its own ``last.pt``. Resuming from any other
    checkpoint of that folder would rewind it, and resuming into another folder that holds
    a run would overwrite that run: both are refused, with the words that do what was meant.
    """
    src = Path(resume)
    ckpt = src / RunFolder.LAST if src.is_dir() else src
    if out is None:
        return ckpt, False
    if os.path.abspath(ckpt.parent) == os.path.abspath(out.path):
        if ckpt.name != RunFolder.LAST:
            raise ValueError(
                f"resuming {display_path(out.path)} from {ckpt.name} would rewind its last.pt and history "
                f"to that checkpoint's epoch. To continue from {ckpt.name}, start a new folder from it: "
                f"--resume {display_path(ckpt)} --out <new folder>")
        return ckpt, False
    if out.holds_run():
        raise ValueError(
            f"{display_path(out.path)} already holds a run of its own: resuming {display_path(src)} into it "
            f"would overwrite it. Give a new folder (--out), or continue {display_path(out.path)} itself "
            f"(--resume {display_path(out.path)})")
    return ckpt, True


def _lock_owner_alive(owner: str) -> bool:
    """Whether the process named in a lock file ("host pid") may still run."""
    try:
        host, pid = owner.rsplit(" ", 1)
        pid = int(pid)
    except ValueError:
        return False  # unreadable: a lock torn by a crash while it was written
    if host != socket.gethostname():
        return True  # another machine's process (a shared file system): cannot tell, so assume so
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    return True


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_state(path: Path) -> dict | None:
    """A checkpoint file's contents (memory-mapped: cheap), or None if it is missing or unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None


def _checkpoint_epoch(path: Path) -> tuple[int, int] | None:
    """(epoch, step) recorded in a checkpoint file, or None if it is missing or unreadable."""
    state = _checkpoint_state(path)
    return (state["epoch"], state["step"]) if state is not None else None


def config_mismatches(saved: dict, cfg: Config, allowed: set[str] = RESUME_SAFE) -> list[str]:
    """``"key: checkpoint X, config Y"`` for each field that differs, outside ``allowed``.

    A field the checkpoint does not have (added to the config after it was made) is
    compared through its default, which is what the older code behaved as.
    """
    def flat(d: dict) -> dict:
        return {f"{section}.{key}": v for section, values in d.items() for key, v in values.items()}

    now = flat(cfg.to_dict())
    saved = {**flat(Config().to_dict()), **flat(saved)}  # every current field, defaults filling the gaps
    return [f"{key}: checkpoint {value!r}, config {current!r}"
            for key, value in saved.items()
            if key not in allowed and (current := now.get(key, "<absent>")) != value]


def run_folder(cfg: Config, name: str, root: str | Path | None = None) -> Path:
    """Where to train ``cfg``: ``<root>/<name>`` if it is free or holds a run of the same config,
    else ``<root>/<name>-<digest>``, a folder of this config's own (``root``: ``runs_dir()``).

    So trying a setting (``train.epochs=3``) next to a finished run continues neither the old run
    nor overwrites it: it trains in, and later resumes from, a folder of its own.
    """
    base = Path(root) if root is not None else runs_dir()
    folder = base / name
    meta = _read_json(folder / RunFolder.META)
    if not (folder / RunFolder.LAST).exists() or not isinstance(meta, dict) or "config" not in meta:
        return folder
    if not config_mismatches(meta["config"], cfg):
        return folder
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return base / f"{name}-{digest}"


def reference_dir() -> Path:
    """The shipped reference runs (``reference/<preset>``): finished runs that analysis can read
    right after a fresh clone, before anything has been trained."""
    return PROJECT / "reference"


def find_run(cfg: Config, name: str, root: str | Path | None = None) -> tuple[RunFolder | None, str]:
    """The run to analyse for preset ``name`` with config ``cfg``, and a sentence saying which and why.

    Your own finished run (``run_folder(cfg, name)``) first; else the shipped reference run of the
    same config; else None (train one). An unfinished run is never returned as if it were finished:
    the sentence says how to finish it.
    """
    own = RunFolder(run_folder(cfg, name, root))
    status = own.status()
    if own.finished():
        return own, f"Using your run {display_path(own.path)} ({status})."
    ref = RunFolder(reference_dir() / name)
    ref_meta = _read_json(ref.meta)
    usable = ref.best.is_file() and isinstance(ref_meta, dict) and not config_mismatches(ref_meta["config"], cfg)
    why = (f"{display_path(own.path)} is {status}: finish it with `python -m helpers.train --resume "
           f"{display_path(own.path)}`" if status != "empty" else f"no run in {display_path(own.path)} yet")
    if usable:
        return ref, (f"Using the shipped reference run {display_path(ref.path)} (trained on "
                     f"{ref_meta.get('device_name', '?')}, commit {ref_meta.get('git_commit', '?')}): {why}.")
    return None, why[0].upper() + why[1:] + "."


def check_compatible(state: dict, cfg: Config, path: str | Path = "checkpoint",
                     allowed: set[str] = RESUME_SAFE) -> None:
    """Raise ``CheckpointError`` naming every mismatch between a checkpoint and ``cfg``."""
    bad = config_mismatches(state["config"], cfg, allowed)
    if bad:
        raise CheckpointError(f"{path} was made with a different config:\n  " + "\n  ".join(bad))


def rng_state(*generators: torch.Generator) -> dict:
    """Every RNG a run draws from: torch's global CPU (and CUDA) state plus the given generators."""
    state = {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit(folder: Path | None = None) -> str:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), or ``"unknown"``.

    ``$HELPERS_GIT_COMMIT`` overrides it, for a copy of the tree whose ``.git`` is not its own (the
    course's GPU machines received such copies, whose git said an older commit).
    """
    if os.environ.get("HELPERS_GIT_COMMIT"):
        return os.environ["HELPERS_GIT_COMMIT"]
    folder = folder or PROJECT
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=folder, capture_output=True,
                                        text=True, timeout=5).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        return (commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
                if commit else "unknown")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device) -> dict[str, Any]:
    """Versions, device and commit: what a result needs to be reproduced."""
    import torchvision
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def _cpu_name() -> str:
    # Linux names the CPU model in /proc/cpuinfo; elsewhere platform's answer is the best we have
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
