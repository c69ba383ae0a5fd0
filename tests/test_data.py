"""helpers.data: the reader on real and broken data, DeviceBatches, channel_stats, subsets."""
import hashlib
import pickle
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import helpers
import helpers.data as data_mod
from conftest import DATA_ROOT, REPO, fake_batch, image_index
from helpers.config import CLASSES, DataConfig
from helpers.data import (FOLDER, DataError, DeviceBatches, channel_stats, fingerprint, load_cifar10,
                          main, official_files, subset)

# ---------------------------------------------------------------------------- the real data


def test_real_shapes_dtypes_counts(cifar):
    assert cifar.train_x.shape == (50000, 3, 32, 32) and cifar.train_x.dtype == torch.uint8
    assert cifar.test_x.shape == (10000, 3, 32, 32) and cifar.test_x.dtype == torch.uint8
    assert cifar.train_y.shape == (50000,) and cifar.train_y.dtype == torch.int64
    assert cifar.test_y.shape == (10000,) and cifar.test_y.dtype == torch.int64
    assert torch.bincount(cifar.train_y, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(cifar.test_y, minlength=10).tolist() == [1000] * 10
    assert cifar.classes == CLASSES


def test_real_channel_means_near_official(cifar):
    mean, std = channel_stats(cifar.train_x[::10])  # a 5,000-image sample is within 1e-2
    assert np.allclose(mean, (0.4914, 0.4822, 0.4465), atol=1e-2)
    assert np.allclose(std, (0.2470, 0.2435, 0.2616), atol=1e-2)


def test_second_load_is_fast(cifar):
    times = []
    for _ in range(2):  # the best of two, so one hiccup of the shared CPU does not fail it
        t0 = time.perf_counter()
        load_cifar10(DATA_ROOT)
        times.append(time.perf_counter() - t0)
    assert min(times) < 1.0, times


# ---------------------------------------------------------------------------- the reader on fake data


def test_fake_layout_loads(fake_root):
    ds = load_cifar10(fake_root)
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert image_index(ds.train_x) == list(range(100))  # files read in order 1..5
    assert ds.train_y.tolist() == [i % 10 for i in range(100)]
    # Row layout: 1024 R bytes, then G, then B; check one pixel against the raw bytes.
    raw = fake_batch(20, start=0)[b"data"]
    assert ds.train_x[3, 1, 2, 5] == raw[3, 1024 + 2 * 32 + 5]
    assert ds.train_x[7, 2, 31, 31] == raw[7, 2048 + 1023]


def _no_chained_traceback(err):
    """One clear error, not 'During handling of the above exception, another exception occurred'."""
    return err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def _snapshot(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_missing_folder_message(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    msg = str(e.value)
    assert str((tmp_path / FOLDER).resolve()) in msg       # where it looked
    assert "download=True" in msg and "offline" in msg  # the two ways to get data
    assert _no_chained_traceback(e.value)
    assert list(tmp_path.iterdir()) == []                    # nothing created


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="Could not download.*network is unreachable(?s:.*)download=True"):
        load_cifar10(tmp_path, download=True)


def _corrupt(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "wrong shape":
        d = fake_batch(20)
        d[b"data"] = d[b"data"][:, :3000]
        path.write_bytes(pickle.dumps(d, protocol=4))
    elif how == "wrong dtype":
        d = fake_batch(20)
        d[b"data"] = d[b"data"].astype(np.float32)
        path.write_bytes(pickle.dumps(d, protocol=4))
    elif how == "missing key":
        d = fake_batch(20)
        del d[b"labels"]
        path.write_bytes(pickle.dumps(d, protocol=4))
    elif how == "bad labels":
        d = fake_batch(20)
        d[b"labels"][0] = 10
        path.write_bytes(pickle.dumps(d, protocol=4))
    elif how == "code":  # a pickle that would run a command when loaded
        path.write_bytes(pickle.dumps({b"data": ShellOut(), b"labels": [0]}, protocol=4))
    elif how == "deleted":
        path.unlink()


class ShellOut:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("how, words", [
    ("truncated", "corrupt or truncated"),
    ("garbage", "corrupt or truncated"),
    ("empty", "corrupt or truncated"),
    ("missing key", "corrupt or truncated"),
    ("code", "corrupt or truncated"),
    ("wrong shape", "wrong shape"),
    ("wrong dtype", "wrong shape"),
    ("bad labels", "labels outside"),
    ("deleted", "missing"),
])
@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
def test_broken_file_names_the_file_and_changes_nothing(fake_root, how, words, name, capsys):
    path = fake_root / FOLDER / name
    _corrupt(path, how)
    before = _snapshot(fake_root)
    with pytest.raises(DataError, match=words) as e:
        load_cifar10(fake_root)
    assert str(path.resolve()) in str(e.value)
    assert _no_chained_traceback(e.value)
    assert _snapshot(fake_root) == before  # nothing deleted or overwritten
    # ...and the same with download=True: existing (broken) data is never replaced.
    with pytest.raises(DataError):
        load_cifar10(fake_root, download=True)
    assert _snapshot(fake_root) == before
    assert "must never run" not in capsys.readouterr().out


def _write(path, batch):
    path.write_bytes(pickle.dumps(batch, protocol=4))


def _with_labels(labels):
    d = fake_batch(20)
    d[b"labels"] = labels
    return d


@pytest.mark.parametrize("labels", [
    [0.0, 1.5] + [0.0] * 18,                       # floats: a cast would silently make 1.5 a 1
    [float(i % 10) for i in range(20)],            # whole-number floats are still not labels
    [b"cat"] * 20,                                 # strings
    [True] * 20,                                   # bool is not an integer label
    [[i % 10] for i in range(20)],                 # shaped (N, 1)
    np.zeros((20, 1), dtype=np.int64),
])
def test_labels_must_be_a_flat_list_of_integers(fake_root, labels):
    path = fake_root / FOLDER / "data_batch_2"
    _write(path, _with_labels(labels))
    with pytest.raises(DataError, match="not a flat list of integers") as e:
        load_cifar10(fake_root)
    assert str(path.resolve()) in str(e.value) and "\n" not in str(e.value)
    assert _no_chained_traceback(e.value)


def test_integer_label_arrays_are_accepted(fake_root):
    _write(fake_root / FOLDER / "data_batch_1", _with_labels(np.arange(20, dtype=np.uint8) % 10))
    assert load_cifar10(fake_root).train_y[:20].tolist() == [i % 10 for i in range(20)]


@pytest.mark.parametrize("meta", [True, False])
@pytest.mark.parametrize("name", ["data_batch_5", "test_batch"])
def test_wrong_image_count_is_refused(fake_root, name, meta):
    folder = fake_root / FOLDER
    _write(folder / name, fake_batch(10, start=80))  # 90 training images in all, or 10 test
    if not meta:  # a hand-made layout: the six files must still agree
        (folder / "batches.meta").unlink()
    words = "num_cases_per_batch" if meta else "the other batch files"
    with pytest.raises(DataError, match=f"holds 10 images, not 20 \\(.*{words}") as e:
        load_cifar10(fake_root)
    assert str((folder / name).resolve()) in str(e.value)


def test_count_comes_from_batches_meta(fake_root):
    folder = fake_root / FOLDER
    _write(folder / "batches.meta", {b"num_cases_per_batch": 10, b"label_names": [b"x"] * 10})
    with pytest.raises(DataError, match="holds 20 images, not 10") as e:
        load_cifar10(fake_root)
    assert "data_batch_1" in str(e.value)
    _write(folder / "batches.meta", {b"label_names": [b"x"] * 10})  # no key: equal counts suffice
    assert len(load_cifar10(fake_root).train_y) == 100


def test_batches_meta_corrupt_is_a_data_error(fake_root):
    path = fake_root / FOLDER / "batches.meta"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="batches.meta is corrupt") as e:
        load_cifar10(fake_root)
    assert str(path.resolve()) in str(e.value) and _no_chained_traceback(e.value)


def test_training_file_equal_to_test_file_is_refused(fake_root):
    folder = fake_root / FOLDER
    (folder / "data_batch_1").write_bytes((folder / "test_batch").read_bytes())
    with pytest.raises(DataError, match="train and test would overlap") as e:
        load_cifar10(fake_root)
    assert str((folder / "data_batch_1").resolve()) in str(e.value)


def test_official_files_checks_torchvisions_md5s(fake_root, monkeypatch, capsys):
    from torchvision.datasets import CIFAR10 as Official
    assert not official_files(fake_root)  # like the offline copy: accepted, not official
    assert main(["--root", str(fake_root)]) == 0
    assert "not the official files" in capsys.readouterr().out
    folder = fake_root / FOLDER
    md5s = [[p.name, hashlib.md5(p.read_bytes()).hexdigest()] for p in sorted(folder.glob("*_batch*"))]
    monkeypatch.setattr(Official, "train_list", md5s[:5])
    monkeypatch.setattr(Official, "test_list", md5s[5:])
    assert [n for n, _ in md5s] == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert official_files(fake_root)
    assert main(["--root", str(fake_root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "official files"
    (folder / "test_batch").unlink()
    assert not official_files(fake_root)


def test_download_gives_up_on_a_server_that_never_answers(tmp_path, monkeypatch):
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    stop, conns = threading.Event(), []

    def accept_and_say_nothing():
        deadline = time.monotonic() + 10  # then hang up, so a download without a timeout fails, not hangs
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                pass
        for c in conns:
            c.close()

    server = threading.Thread(target=accept_and_say_nothing, daemon=True)
    server.start()
    monkeypatch.setenv("no_proxy", "*")
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/cifar-10-python.tar.gz"
    monkeypatch.setattr(data_mod, "URL", url)
    monkeypatch.setattr(data_mod, "DOWNLOAD_TIMEOUT", 1.0)
    before = socket.getdefaulttimeout()
    t0 = time.perf_counter()
    try:
        with pytest.raises(DataError, match="server at 127.0.0.1:[0-9]+ did not answer within 1 s") as e:
            load_cifar10(tmp_path, download=True)
    finally:
        stop.set()
        server.join()
        srv.close()
    assert time.perf_counter() - t0 < 8 and conns  # it connected, waited ~1 s, gave up
    assert socket.getdefaulttimeout() == before   # the process-wide default is restored
    assert "download=True" in str(e.value) and _no_chained_traceback(e.value)


def test_fingerprint_tells_data_apart(fake_root):
    a, b = load_cifar10(fake_root), load_cifar10(fake_root)
    fp = fingerprint(a)
    assert fp == fingerprint(b) and len(fp) == 16 and int(fp, 16) >= 0
    x = b.train_x.clone()
    x[7, 2, 31, 31] ^= 1
    assert fingerprint(b._replace(train_x=x)) != fp
    ty = b.test_y.clone()
    ty[3] = (ty[3] + 1) % 10
    assert fingerprint(b._replace(test_y=ty)) != fp
    swapped = b._replace(train_x=b.train_x[:80], train_y=b.train_y[:80],
                         test_x=torch.cat([b.train_x[80:], b.test_x]),
                         test_y=torch.cat([b.train_y[80:], b.test_y]))
    assert fingerprint(swapped) != fp  # the same bytes, split elsewhere


# ---------------------------------------------------------------------------- the package


@pytest.mark.slow  # a fresh interpreter each; helpers.train's: test_train.test_module_entry_point_runs_cleanly
@pytest.mark.parametrize("module", ["helpers.data"])
def test_command_lines_run_without_runpy_warning(module):
    r = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "RuntimeWarning" not in r.stderr, r.stderr


def test_every_public_name_resolves_and_loads_lazily():
    for name in helpers.__all__:
        assert getattr(helpers, name) is not None, name
    assert set(helpers.__all__) <= set(dir(helpers))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        helpers.nope  # noqa: B018
    code = "import sys, helpers; print(sorted(m for m in sys.modules if m.startswith('helpers.')))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr  # `import helpers` loads no submodule


# ---------------------------------------------------------------------------- DeviceBatches


def _epoch(batches):
    return [y.tolist() for _, y in batches]


@pytest.mark.parametrize("n, bs, drop_last, sizes", [
    (10, 4, False, [4, 4, 2]),
    (10, 4, True, [4, 4]),
    (8, 4, True, [4, 4]),
    (3, 4, False, [3]),
    (3, 4, True, []),
])
def test_batch_sizes(n, bs, drop_last, sizes):
    db = DeviceBatches(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.arange(n), bs,
                       drop_last=drop_last)
    assert len(db) == len(sizes)
    assert [len(y) for y in _epoch(db)] == sizes


def test_batches_cover_every_index_once_and_pair_x_with_y():
    n = 300
    x = torch.arange(n).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    db = DeviceBatches(x, torch.arange(n), 128, seed=1)
    seen = []
    for xb, yb in db:
        assert xb.shape[1:] == (3, 2, 2)
        assert torch.equal(xb[:, 0, 0, 0], yb)
        seen += yb.tolist()
    assert sorted(seen) == list(range(n)) and seen != list(range(n))


def test_reshuffles_each_epoch_and_seed_repeats():
    x, y = torch.zeros(200, 3, 2, 2), torch.arange(200)
    a = DeviceBatches(x, y, 50, seed=0)
    e1, e2 = _epoch(a), _epoch(a)
    assert e1 != e2
    b = DeviceBatches(x, y, 50, seed=0)
    assert _epoch(b) == e1 and _epoch(b) == e2
    assert _epoch(DeviceBatches(x, y, 50, seed=1)) != e1


def test_no_shuffle_is_in_order():
    db = DeviceBatches(torch.zeros(10, 1, 1, 1), torch.arange(10), 4, shuffle=False)
    assert _epoch(db) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] == _epoch(db)


def test_state_dict_round_trip():
    x, y = torch.zeros(100, 1, 1, 1), torch.arange(100)
    db = DeviceBatches(x, y, 30, seed=5)
    _epoch(db)
    state = db.state_dict()
    nxt = _epoch(db)
    db.load_state_dict(state)
    assert _epoch(db) == nxt
    other = DeviceBatches(x, y, 30, seed=99)  # a resumed run: fresh object, restored state
    other.load_state_dict(state)
    assert _epoch(other) == nxt


def test_device_batches_checks_arguments():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        DeviceBatches(torch.zeros(3, 1, 1, 1), torch.zeros(2), 2)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(torch.zeros(3, 1, 1, 1), torch.zeros(3), 0)


def test_batches_stay_uint8_on_device():
    x = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    xb, yb = next(iter(DeviceBatches(x, torch.arange(5), 2, device="cpu")))
    assert xb.dtype == torch.uint8 and xb.device.type == "cpu" and yb.dtype == torch.int64


# ---------------------------------------------------------------------------- channel_stats, subset


def test_channel_stats_known_values():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[:, 1] = 255                  # green: all 1.0
    x[0, 2] = 255                  # blue: half the pixels 1.0, half 0.0
    x[:, 0, :2] = 51               # red: half 0.2, half 0.0
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.1, 1.0, 0.5), abs=1e-12)
    assert std == pytest.approx((0.1, 0.0, 0.5), abs=1e-12)  # the population std (divide by n)
    ref = x.double().div(255)
    assert std == pytest.approx(ref.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_subset_and_validation_split(fake_root):
    ds = load_cifar10(fake_root)
    out, val = subset(ds, DataConfig(val_size=30, train_subset=50, test_subset=7))
    train_idx, val_idx = image_index(out.train_x), image_index(val[0])
    assert len(train_idx) == 50 and len(val_idx) == 30 and len(out.test_x) == 7
    assert not set(train_idx) & set(val_idx)
    assert val_idx == list(range(70, 100))  # the last val_size images, for every seed
    assert val[1].tolist() == [i % 10 for i in val_idx]
    assert out.train_y.tolist() == [i % 10 for i in train_idx]


def test_subset_without_val(fake_root):
    ds = load_cifar10(fake_root)
    out, val = subset(ds, DataConfig())
    assert val is None and len(out.train_x) == 100 and len(out.test_x) == 20
    with pytest.raises(ValueError, match="val_size=100 leaves no training images"):
        subset(ds, DataConfig(val_size=100))


def test_real_validation_split(cifar):
    out, (vx, vy) = subset(cifar, DataConfig(val_size=5000))
    assert len(out.train_x) == 45000 and len(vx) == 5000
    assert torch.equal(vx, cifar.train_x[45000:]) and torch.equal(out.train_x, cifar.train_x[:45000])
