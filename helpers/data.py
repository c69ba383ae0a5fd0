"""CIFAR-10: a fast reader for the official python layout, and device-resident batches.

    ds = load_cifar10("data")                         # uint8 (N, 3, 32, 32), int64 labels
    for x, y in DeviceBatches(ds.train_x, ds.train_y, batch_size=128, device="cuda", seed=0):
        ...                                           # x: uint8 (B, 3, 32, 32) on the device

The seed report's own pipeline (a Dataset of PIL images, per-sample transforms,
a DataLoader) is kept in ``helpers.reference`` for teaching and benchmarking.
"""
from __future__ import annotations

__all__ = ["CIFAR10", "DataError", "DeviceBatches", "load_cifar10", "subset", "channel_stats", "fingerprint",
           "official_files", "resolve_root", "PROJECT", "FOLDER", "TRAIN_FILES", "TEST_FILES", "URL", "MD5",
           "DOWNLOAD_TIMEOUT"]

import hashlib
import pickle
import socket
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from .config import CLASSES, DataConfig

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"  # of the official archive (torchvision's value)
DOWNLOAD_TIMEOUT = 60.0  # s without a byte from the server before the download gives up


class DataError(RuntimeError):
    """The data is missing or unreadable; the message says where and what to do."""


class CIFAR10(NamedTuple):
    train_x: torch.Tensor  # (50000, 3, 32, 32) uint8
    train_y: torch.Tensor  # (50000,) int64
    test_x: torch.Tensor   # (10000, 3, 32, 32) uint8
    test_y: torch.Tensor   # (10000,) int64
    classes: tuple[str, ...]


def load_cifar10(root: str | Path = "data", download: bool = False) -> CIFAR10:
    """Read CIFAR-10 from ``root/cifar-10-batches-py`` (the official python layout).

    With ``download=True`` and no data yet, fetch the official archive first
    (MD5-checked). Existing files are never deleted or overwritten.
    Raises ``DataError`` with a clear message for missing or corrupt data, files
    of the wrong size, and a training file that repeats the test file.
    """
    root = resolve_root(root)
    folder = root / FOLDER
    if not folder.is_dir():
        if download:
            _download(root)
        else:
            raise DataError(_missing_message(folder)) from None
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    test = [_read_batch(folder / name) for name in TEST_FILES]
    _check_counts(folder, [len(y) for _, y in train + test])
    _check_no_overlap(folder, train, test)
    x, y = (torch.cat(t) for t in zip(*train))
    tx, ty = (torch.cat(t) for t in zip(*test))
    return CIFAR10(x, y, tx, ty, CLASSES)


PROJECT = Path(__file__).resolve().parents[1]  # the checkout holding helpers/, notebooks/, data/


def resolve_root(root: str | Path) -> Path:
    """Where ``root`` is: as given if absolute or present here, else under the project folder.

    So ``"data"`` finds the project's ``data/`` from the project root and from
    ``notebooks/`` alike, without a ``"../data"`` hard-coded anywhere.
    """
    root = Path(root).expanduser()
    if root.is_absolute() or (root / FOLDER).is_dir() or not (PROJECT / root / FOLDER).is_dir():
        return root
    return PROJECT / root


def _missing_message(folder: Path) -> str:
    return (f"CIFAR-10 not found: looked for {folder.resolve()}.\n"
            "Get it one of two ways:\n"
            f"  1. online: load_cifar10({str(folder.parent)!r}, download=True)  "
            "(or `make data`), which fetches the official archive;\n"
            f"  2. offline: extract the official archive ({URL.rsplit('/', 1)[1]}) into "
            f"{folder.parent}, or write the same layout there yourself.")


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive
    # torchvision opens its URLs with no timeout, so a server that accepts and never answers
    # hangs it for ever; the default timeout is the only way in, and it is restored after.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        download_and_extract_archive(URL, download_root=str(root), md5=MD5)
    except Exception as e:  # URLError, socket errors, bad MD5: all mean "no usable download"
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, TimeoutError):
            host = URL.split("/")[2]
            raise DataError(f"Could not download CIFAR-10: the server at {host} did not answer within "
                            f"{DOWNLOAD_TIMEOUT:g} s; check the network (or proxy) and retry.\n"
                            + _missing_message(root / FOLDER)) from None
        raise DataError(f"Could not download CIFAR-10 from {URL} ({type(e).__name__}: {e}).\n"
                        + _missing_message(root / FOLDER)) from None
    finally:
        socket.setdefaulttimeout(old)


class _ArrayUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch needs (numpy arrays); a pickle is code, so refuse the rest."""

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar")
                or (module, name) == ("_codecs", "encode")):  # Python 3's protocol-2 bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file → (uint8 (N, 3, 32, 32), int64 (N,)), or a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch file missing: {path.resolve()}. The folder is incomplete; "
                        "replace it with a complete copy (see load_cifar10's docstring).") from None
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    except Exception as e:  # truncated (EOFError), garbage (UnpicklingError), missing keys...
        raise DataError(f"CIFAR-10 batch file is corrupt or truncated: {path.resolve()} "
                        f"({type(e).__name__}: {e}). Replace it with a fresh copy.") from None
    # Casting would turn 1.5 into 1 and fail on b"cat" far from the cause: require integers
    # (dtype kind i/u, so not bool) in one flat list.
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"CIFAR-10 batch file has labels that are not a flat list of integers: "
                        f"{path.resolve()} holds labels {labels.dtype}{labels.shape}; expected (N,) "
                        "integers 0..9. Replace it with a fresh copy.")
    labels = labels.astype(np.int64)
    n = len(labels)
    if data.dtype != np.uint8 or data.shape != (n, 3 * 32 * 32) or n == 0:
        raise DataError(f"CIFAR-10 batch file has the wrong shape: {path.resolve()} holds data "
                        f"{data.dtype}{tuple(data.shape)} for {n} labels; expected uint8 ({n}, 3072).")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"CIFAR-10 batch file has labels outside 0..9: {path.resolve()}")
    # Rows are the R plane, then G, then B (1024 bytes each): a reshape, no copy per image.
    return torch.from_numpy(data.reshape(n, 3, 32, 32).copy()), torch.from_numpy(labels)


def _read_meta(folder: Path) -> int | None:
    """``num_cases_per_batch`` from ``batches.meta``: None without the file or the key."""
    path = folder / "batches.meta"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            n = _ArrayUnpickler(f, encoding="bytes").load().get(b"num_cases_per_batch")
    except Exception as e:  # as in _read_batch: truncated, garbage, not a dict...
        raise DataError(f"CIFAR-10 batches.meta is corrupt or truncated: {path.resolve()} "
                        f"({type(e).__name__}: {e}). Replace it with a fresh copy.") from None
    if n is not None and (type(n) is not int or n < 1):
        raise DataError(f"CIFAR-10 batches.meta has num_cases_per_batch={n!r}: {path.resolve()}; "
                        "expected a positive integer. Replace it with a fresh copy.")
    return n


def _check_counts(folder: Path, counts: list[int]) -> None:
    """Every batch file holds ``num_cases_per_batch`` images (or, without it, as many as the others)."""
    expected = _read_meta(folder)
    source = "num_cases_per_batch in batches.meta"
    if expected is None:  # a hand-made layout: the files must at least agree with each other
        expected, source = Counter(counts).most_common(1)[0][0], "as the other batch files hold"
    for name, n in zip(TRAIN_FILES + TEST_FILES, counts):
        if n != expected:
            raise DataError(f"CIFAR-10 batch file holds {n} images, not {expected} ({source}): "
                            f"{(folder / name).resolve()}. The folder is incomplete or mixed; "
                            "replace it with a complete copy.")


def _check_no_overlap(folder: Path, train: list[tuple[torch.Tensor, torch.Tensor]],
                      test: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """No training file is a copy of the test file (a whole-array compare: milliseconds)."""
    for name, (x, _) in zip(TRAIN_FILES, train):
        for test_name, (tx, _) in zip(TEST_FILES, test):
            if torch.equal(x, tx):
                raise DataError(f"CIFAR-10 training file holds the same images as {test_name}: "
                                f"{(folder / name).resolve()}; train and test would overlap. "
                                "Replace it with a fresh copy.")


def official_files(root: str | Path = "data") -> bool:
    """Whether the batch files are byte for byte the official release (torchvision's MD5s).

    The offline JPEG copy is not (its pixels went through one JPEG round trip) and
    is still accepted; this only says whether figures may differ slightly. Hashes
    180 MB, so it is for ``python -m helpers.data``, not for every load.
    """
    from torchvision.datasets import CIFAR10 as Official
    folder = resolve_root(root) / FOLDER
    for name, md5 in Official.train_list + Official.test_list:
        path = folder / name
        if not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != md5:
            return False
    return True


def fingerprint(ds: CIFAR10) -> str:
    """A 16-hex-digit digest of the images and labels (train and test), for checkpoints to record.

    Any changed pixel, label, order or split changes it, so a resume can notice
    other data (the offline JPEG copy has other pixels than the official files).
    """
    h = hashlib.sha256()  # CPUs with SHA extensions do it ~2x faster than blake2b: ~0.25 s here
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        a = t.detach().cpu().contiguous().numpy()
        h.update(repr((a.dtype.str, a.shape)).encode())  # so a moved split boundary counts
        h.update(a.reshape(-1).view(np.uint8))           # the raw bytes, no per-image loop
    return h.hexdigest()[:16]


def subset(ds: CIFAR10, cfg: DataConfig) -> tuple[CIFAR10, tuple[torch.Tensor, torch.Tensor] | None]:
    """Apply ``cfg``'s subsets and validation hold-out: (train/test data, (val_x, val_y) or None).

    The validation images are the *last* ``val_size`` training images, so the
    split is the same for every seed and never overlaps the training images.
    """
    x, y = ds.train_x, ds.train_y
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(x):
            raise ValueError(f"data.val_size={cfg.val_size} leaves no training images (of {len(x)})")
        x, y, val = x[:-cfg.val_size], y[:-cfg.val_size], (x[-cfg.val_size:], y[-cfg.val_size:])
    if cfg.train_subset:
        x, y = x[:cfg.train_subset], y[:cfg.train_subset]
    tx, ty = ds.test_x, ds.test_y
    if cfg.test_subset:
        tx, ty = tx[:cfg.test_subset], ty[:cfg.test_subset]
    return CIFAR10(x, y, tx, ty, ds.classes), val


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images ``(N, 3, H, W)``, on the [0, 1] scale."""
    # A 256-bin histogram per channel gives exact sums in one pass, with no float copy of the data.
    mean, std = [], []
    v = torch.arange(256, dtype=torch.float64) / 255
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        m = (counts * v).sum() / counts.sum()
        mean.append(float(m))
        std.append(float(((counts * (v - m) ** 2).sum() / counts.sum()).sqrt()))
    return tuple(mean), tuple(std)


class DeviceBatches:
    """Mini-batches of tensors that already live on the target device.

    The whole split is moved once (CIFAR-10 train is 150 MB as uint8), then each
    epoch indexes it with a fresh permutation drawn from ``generator``: no
    DataLoader, no worker processes, nothing to pickle or hang. The generator
    lives on the CPU so a seed gives the same order on every device.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                 shuffle: bool = True, drop_last: bool = False,
                 device: torch.device | str | None = None, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = torch.device(device) if device is not None else x.device
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch_order(self) -> torch.Tensor | None:
        """A new epoch's order: a permutation (N,) on the device, drawn from ``generator``; None unshuffled."""
        if not self.shuffle:
            return None
        order = torch.randperm(len(self.x), generator=self.generator)  # (N,) on the CPU
        if self.x.device.type == "cuda":  # from page-locked memory the copy is asynchronous: no wait
            order = order.pin_memory()
        return order.to(self.x.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order()
        for i in range(len(self)):
            if order is None:
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield self.x[sl], self.y[sl]
            else:
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.data [--root data] [--download]``: check (or fetch) the data."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m helpers.data", description=main.__doc__)
    p.add_argument("--root", default="data", help="folder holding cifar-10-batches-py (default: data)")
    p.add_argument("--download", action="store_true", help="fetch the official archive if absent")
    args = p.parse_args(argv)
    try:
        ds = load_cifar10(args.root, download=args.download)
    except DataError as e:
        print(f"error: {e}")
        return 1
    print(f"CIFAR-10 OK in {resolve_root(args.root) / FOLDER}: "
          f"{len(ds.train_y)} train, {len(ds.test_y)} test images")
    print("official files" if official_files(args.root) else
          "not the official files (e.g. the offline copy): figures may differ slightly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
