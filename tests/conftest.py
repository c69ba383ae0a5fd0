"""Shared fixtures: the real CIFAR-10 (skipped when absent) and tiny fake copies in the official layout."""
from __future__ import annotations

import pickle
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")  # no display in tests; set before anything imports pyplot

from helpers.data import FOLDER, TEST_FILES, TRAIN_FILES, load_cifar10  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / "data"


@pytest.fixture(scope="session")
def cifar():
    """The real CIFAR-10 from ``<repo>/data``, loaded once per test session."""
    if not (DATA_ROOT / FOLDER).is_dir():
        pytest.skip(f"real CIFAR-10 not found in {DATA_ROOT / FOLDER}: run `make data` or "
                    "`python ../shared/data/cifar10/make_batches.py data` to test against it")
    return load_cifar10(DATA_ROOT)


def fake_batch(n: int, start: int = 0) -> dict:
    """A batch dict as the official pickles hold it (bytes keys), image ``start + i`` coded in its pixels.

    Pixel (R, 0, 0) holds the index's low byte and (R, 0, 1) its high byte, so a
    test can tell which original image any output row is.
    """
    rng = np.random.default_rng(start)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    idx = np.arange(start, start + n)
    data[:, 0], data[:, 1] = idx % 256, idx // 256
    return {b"batch_label": b"fake", b"labels": [int(i % 10) for i in idx],
            b"data": data, b"filenames": [f"img{i}.png".encode() for i in idx]}


def image_index(x) -> list[int]:
    """The indices that ``fake_batch`` coded into uint8 images (N, 3, 32, 32)."""
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A data root holding a tiny CIFAR-10 (5 × 20 train images, 20 test) in the official layout."""
    folder = tmp_path / FOLDER
    folder.mkdir()
    per = 20
    for i, name in enumerate(TRAIN_FILES):
        (folder / name).write_bytes(pickle.dumps(fake_batch(per, start=i * per), protocol=4))
    (folder / TEST_FILES[0]).write_bytes(pickle.dumps(fake_batch(per, start=1000), protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}, protocol=4))
    return tmp_path
