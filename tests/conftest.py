"""Shared fixtures: the real CIFAR-10 (its tests deselected when absent) and tiny fake copies in the official layout."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")  # no display in tests; set before anything imports pyplot

from helpers.data import FOLDER, TEST_FILES, TRAIN_FILES, load_cifar10  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Where the real CIFAR-10 is looked for; HELPERS_TEST_DATA=/nonexistent runs the suite as a clone without data/.
DATA_ROOT = Path(os.environ.get("HELPERS_TEST_DATA") or REPO / "data")
_NOT_RUN = pytest.StashKey[int]()


def have_real_data() -> bool:
    return (DATA_ROOT / FOLDER).is_dir()


@pytest.fixture(scope="session")
def cifar():
    """The real CIFAR-10 from ``<repo>/data``, loaded once per test session.

    Tests that use it are ``real_data`` tests (marked so automatically): without the data they are
    deselected at collection, so this skip is only a fallback.
    """
    if not have_real_data():
        pytest.skip(f"real CIFAR-10 not found in {DATA_ROOT / FOLDER}: run `make data`")
    return load_cifar10(DATA_ROOT)


def pytest_collection_modifyitems(config, items):
    """Without the real CIFAR-10, deselect the few tests that need it (``real_data``) instead of skipping."""
    for item in items:
        if "cifar" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
    if have_real_data():
        return
    need = [item for item in items if item.get_closest_marker("real_data")]
    if need:
        config.hook.pytest_deselected(items=need)
        items[:] = [item for item in items if not item.get_closest_marker("real_data")]
    config.stash[_NOT_RUN] = len(need)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``-n N --dist loadfile`` (``make test``), the notebooks run on one worker, in order.

    Notebook 05 trains ``runs/<preset>`` and 06 analyses that run, so they must not run side by side.
    pytest-xdist's ``xdist_group`` marks would say the same, but its ``loadgroup`` does not see them
    under pytest 9 (it renames ``item._nodeid``, which pytest 9 no longer reads).
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class NotebooksTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)  # the file
            return "notebooks" if scope.endswith(".ipynb") else scope

    return NotebooksTogether(config, log)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.stash.get(_NOT_RUN, 0)
    if n:
        terminalreporter.write_line(f"{n} test{'s' if n != 1 else ''} needing the real CIFAR-10 not run: "
                                    f"no {DATA_ROOT / FOLDER}; `make data` gets it (`make test` always does)")


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
    meta = {b"num_cases_per_batch": per, b"label_names": [b"x"] * 10, b"num_vis": 3072}  # as the official one
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return tmp_path
