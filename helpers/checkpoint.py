"""Run folders and checkpoints: atomic writes, RNG capture, provenance, safe loading.

A checkpoint is data, not code: it holds only tensors, numbers, strings, lists
and dicts, and is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .data import PROJECT

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


def serialise(state: dict) -> bytes:
    """``torch.save`` into memory (device tensors are copied to the host: a snapshot)."""
    buf = io.BytesIO()
    torch.save(state, buf)
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
    Why only the writing is in the background (measured on the 2-core box, 157 MB seed
    checkpoint): serialising takes 0.16–0.19 s, and serialising in a second thread fights the
    training thread for Python's GIL (a Python loop there ran 2× slower for 1.7 s), while a
    thread that only writes slowed it 1.3× for 0.16 s.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, path: Path, state: dict, links: tuple[Path, ...] = ()) -> None:
        """Save ``state`` to ``path``, then make each of ``links`` the same file."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(Path(path), serialise(state), links),
                                        name="checkpoint-writer")
        self._thread.start()

    def _run(self, path: Path, data: bytes, links: tuple[Path, ...]) -> None:
        try:
            atomic_write_bytes(path, data)
            for link in links:
                atomic_link(path, Path(link))
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint failed: {type(error).__name__}: {error}") from error


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (weights_only: no code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
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
    return state


def eval_weights(state: dict) -> dict:
    """The weights a checkpoint's run evaluated: its EMA's (``train.ema``) when it kept one, else the model's."""
    if "ema" not in state:
        return state["model"]
    # AveragedModel's state: "module.<name>" per weight, plus its own "n_averaged" counter.
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}


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
    meta = folder / "run.json"
    if not (folder / "last.pt").exists() or not meta.exists():
        return folder
    if not config_mismatches(json.loads(meta.read_text())["config"], cfg):
        return folder
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return base / f"{name}-{digest}"


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
    """The checkout's commit (with ``+dirty`` for uncommitted changes), or ``"unknown"``."""
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
    try:  # Linux names the CPU model here; elsewhere platform's answer is the best we have
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
