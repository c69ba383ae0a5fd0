"""benchmarks/regularisation.py end to end in seconds on the tiny fake CIFAR-10 (its real run takes ~25 minutes)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# The fake CIFAR-10 has 100 training images: a subset of 64 in batches of 16, two epochs.
SMALL = ["--preset", "smoke", "--set", "data.train_subset=64", "--set", "train.epochs=2", "--set", "data.batch_size=16",
         "--set", "train.num_threads=1"]


def test_variants_add_table1_values():
    import regularisation
    from helpers.config import get_preset
    seed, laptop = get_preset("seed"), get_preset("laptop")
    for name, (_, overrides) in regularisation.VARIANTS.items():
        cfg = get_preset("laptop", regularisation.BASE + overrides)
        assert cfg.data.train_subset == 5000 and cfg.train.eval_every == 1 and not cfg.train.tta_flip
        jitter = (cfg.data.rotation, cfg.data.brightness, cfg.data.contrast, cfg.data.saturation, cfg.data.hue)
        on = name in ("+rotation_jitter", "all")
        assert jitter == ((seed.data.rotation, seed.data.brightness, seed.data.contrast, seed.data.saturation,
                           seed.data.hue) if on else (0.0,) * 5)
        assert cfg.data.mix_p == (seed.data.mix_p if name in ("+cutmix_mixup", "all") else laptop.data.mix_p)
        assert cfg.model.dropout == (seed.model.dropout if name in ("+dropout", "all") else 0.0)
    assert seed.data.mix_p == 1.0 and seed.model.dropout > 0 and seed.data.rotation > 0


@pytest.mark.slow
def test_writes_one_json_per_variant_and_a_table_then_skips(fake_root, tmp_path, capsys):
    import regularisation
    out = tmp_path / "reg"
    argv = SMALL + ["--only", "none,all", "--data-dir", str(fake_root), "--out-dir", str(out)]
    assert regularisation.main(argv) == 0
    runs = {name: json.loads((out / f"{name}.json").read_text()) for name in ("none", "all")}
    for r in runs.values():
        assert r["status"] == "completed" and len(r["epochs"]) == 2 and r["device"] == "cpu" and r["git_commit"]
        for e in r["epochs"]:
            assert {"train_acc", "test_acc", "train_loss", "test_loss", "train_acc_augmented", "epoch_s"} <= set(e)
            assert 0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1  # evaluated every epoch: no NaN
        assert r["final_acc"] == r["epochs"][-1]["test_acc"] and r["config"]["data"]["train_subset"] == 64
    assert runs["all"]["overrides"][-1].startswith("model.dropout=") and runs["all"]["config"]["data"]["mix_p"] == 1.0
    table = (out / "table.md").read_text()
    assert "| none | laptop as it is" in table and "| all |" in table and "clean" in table
    # a second call keeps what was measured and trains nothing
    capsys.readouterr()
    assert regularisation.main(argv) == 0
    printed = capsys.readouterr().out
    assert "none: kept" in printed and "all: kept" in printed and "== " not in printed


@pytest.mark.slow
def test_training_is_fits_own(fake_root):
    """The script's loop over fit's parts trains exactly what fit trains (the extra evaluation changes nothing)."""
    import regularisation
    from helpers.config import get_preset
    from helpers.data import load_cifar10
    from helpers.train import fit
    overrides = ["data.train_subset=64", "train.epochs=2", "data.batch_size=16", "train.num_threads=1",
                 "train.eval_every=1", "data.mix_p=1.0", "model.dropout=0.3"]
    data = load_cifar10(fake_root)
    ours = regularisation.train_variant("smoke", overrides, data, echo=False)
    theirs = fit(get_preset("smoke", overrides), data, progress=False, log=lambda s: None).history
    for a, b in zip(ours["epochs"], theirs, strict=True):
        assert (a["train_acc_augmented"], a["train_loss_augmented"], a["test_acc"], a["test_loss"]) == \
               (b["train_acc"], b["train_loss"], b["test_acc"], b["test_loss"])
