"""helpers.config: defaults are Table 1, presets build, overrides are checked."""
import dataclasses
import typing

import pytest

from helpers.config import (CLASSES, Config, DataConfig, LossConfig, ModelConfig, OptimConfig,
                            TrainConfig, get_preset, preset_from_env, preset_name_from_env)


def test_defaults_are_table_1():
    # Written out from SEED_RECIPE.md on purpose: a changed default must fail here.
    c = Config()
    d, m, l, o, t = c.data, c.model, c.loss, c.optim, c.train
    assert d.root == "data"
    assert d.batch_size == 128
    assert (d.brightness, d.contrast, d.saturation, d.hue) == (0.15, 0.15, 0.15, 0.075)
    assert d.flip_p == 0.3
    assert d.rotation == 10.0
    assert (d.cutmix_alpha, d.mixup_alpha) == (1.0, 0.2)
    assert d.cutmix_p == 0.5 and d.mix_p == 1.0
    assert (d.train_subset, d.test_subset, d.val_size) == (0, 0, 0)  # all 50,000 / 10,000

    assert m.num_blocks == 6
    assert m.channels == [64, 128, 256, 512, 768, 1024]
    assert m.strides == [1, 2, 2, 2, 1, 1]
    assert m.stem_channels == 64 and m.stem_stride == 1  # full resolution (reading)
    assert m.num_k == 4 and m.reduction_factor == 4
    assert m.gate == "softmax"
    assert m.dropout == 0.3
    assert m.num_classes == 10

    assert l.name == "focal" and l.gamma == 2.0 and l.label_smoothing == 0.1
    assert l.class_factors == {"bird": 1.1, "cat": 1.2, "deer": 1.05, "dog": 1.1}

    assert o.lr == 0.01 and o.momentum == 0.9 and o.nesterov is True
    assert o.weight_decay == 5e-4
    assert (o.max_lr, o.pct_start, o.div_factor, o.final_div_factor) == (0.05, 0.15, 25.0, 1e4)

    assert t.epochs == 200 and t.patience == 20 and t.monitor == "test_acc" and t.seed == 0

    assert CLASSES == ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_seed_preset_is_exactly_the_defaults():
    assert get_preset("seed") == Config()


@pytest.mark.parametrize("name", ["seed", "laptop", "smoke"])
def test_presets_build_and_round_trip(name):
    cfg = get_preset(name)
    d = cfg.to_dict()
    assert set(d) == {"data", "model", "loss", "optim", "train"}
    back = Config.from_dict(d)
    assert back == cfg and back.to_dict() == d


def test_smoke_is_small():
    c = get_preset("smoke")
    assert 0 < c.data.train_subset <= 2048 and 0 < c.data.test_subset <= 1024
    assert c.train.epochs <= 2


def test_presets_are_fresh_copies():
    a = get_preset("seed")
    a.model.channels.append(7)
    a.loss.class_factors["cat"] = 9.0
    b = get_preset("seed")
    assert b.model.channels == [64, 128, 256, 512, 768, 1024] and b.loss.class_factors["cat"] == 1.2


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'fast'.*seed, laptop, speedrun, smoke"):
        get_preset("fast")


def test_env_var_selects_preset(monkeypatch):
    monkeypatch.setenv("HELPERS_PRESET", "smoke")
    assert preset_name_from_env() == "smoke"
    assert preset_from_env() == get_preset("smoke")
    monkeypatch.setenv("HELPERS_PRESET", "  seed ")
    assert preset_from_env("laptop") == get_preset("seed")
    monkeypatch.delenv("HELPERS_PRESET")
    assert preset_from_env() == get_preset("laptop")
    assert preset_from_env("smoke") == get_preset("smoke")
    monkeypatch.setenv("HELPERS_PRESET", "SMOKE")  # any case
    assert preset_name_from_env() == "smoke"
    monkeypatch.setenv("HELPERS_PRESET", "nope")
    with pytest.raises(ValueError, match="HELPERS_PRESET='nope' is not a preset; choose one of seed, laptop"):
        preset_from_env()


def test_num_classes_is_the_data_s():
    with pytest.raises(ValueError, match="model.num_classes must be one of 10, got 5"):
        get_preset("smoke", ["model.num_classes=5"])


def test_preset_from_env_applies_overrides(monkeypatch):
    monkeypatch.setenv("HELPERS_PRESET", "smoke")
    assert preset_from_env(overrides=["train.epochs=1"]).train.epochs == 1


def test_dotted_overrides():
    c = get_preset("seed", ["train.epochs=5", "data.flip_p=0.5", "model.channels=[8, 16]",
                            "model.strides=[1, 2]", "model.gate=sigmoid", "optim.nesterov=False",
                            "optim.lr=1"])
    assert c.train.epochs == 5 and c.data.flip_p == 0.5
    assert c.model.channels == [8, 16] and c.model.num_blocks == 2
    assert c.model.gate == "sigmoid" and c.optim.nesterov is False
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)  # ints widen to floats
    d = get_preset("seed", {"train.epochs": 3, "loss.gamma": 0})
    assert d.train.epochs == 3 and d.loss.gamma == 0.0


def test_replace_returns_validated_copy():
    base = get_preset("seed")
    c = base.replace(["train.epochs=3"])
    assert c.train.epochs == 3 and base.train.epochs == 200
    with pytest.raises(ValueError, match="train.epochs"):
        base.replace(["train.epochs=0"])


@pytest.mark.parametrize("override, field, allowed", [
    ("optim.lr=-0.1", "optim.lr", "(0.0, inf)"),
    ("optim.lr=0", "optim.lr", "(0.0, inf)"),
    ("optim.max_lr=-1", "optim.max_lr", "(0.0, inf)"),
    ("data.flip_p=1.5", "data.flip_p", "[0.0, 1.0]"),
    ("data.flip_p=-0.1", "data.flip_p", "[0.0, 1.0]"),
    ("data.mix_p=2", "data.mix_p", "[0.0, 1.0]"),
    ("data.cutmix_p=-1", "data.cutmix_p", "[0.0, 1.0]"),
    ("model.dropout=1.01", "model.dropout", "[0.0, 1.0]"),
    ("data.hue=0.6", "data.hue", "[0.0, 0.5]"),
    ("data.rotation=-5", "data.rotation", "[0.0, 180.0]"),
    ("data.cutmix_alpha=0", "data.cutmix_alpha", "(0.0, inf)"),
    ("train.epochs=0", "train.epochs", "[1, 100000]"),
    ("train.epochs=10000000000", "train.epochs", "[1, 100000]"),
    ("train.seed=18446744073709551616", "train.seed", "[0, 9223372036854775807]"),
    ("train.num_threads=5000", "train.num_threads", "[0, 1024]"),
    ("optim.pct_start=1.0", "optim.pct_start", "(0.0, 0.99]"),
    ("data.batch_size=0", "data.batch_size", "[1, inf)"),
    ("train.patience=-1", "train.patience", "[0, inf)"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay", "[0.0, inf)"),
    ("optim.pct_start=0", "optim.pct_start", "(0.0, 0.99]"),
])
def test_out_of_range_names_field_and_range(override, field, allowed):
    with pytest.raises(ValueError) as e:
        get_preset("seed", [override])
    msg = str(e.value)
    assert field in msg and allowed in msg, msg


@pytest.mark.parametrize("override, words", [
    ("model.gate=tanh", ["model.gate", "'softmax'", "'sigmoid'"]),
    ("train.device=tpu", ["train.device", "'cuda'"]),
    ("train.epochs=ten", ["train.epochs", "int"]),
    ("train.epochs=2.5", ["train.epochs", "int"]),
    ("data.flip_p=True", ["data.flip_p", "float"]),
    ("model.channels=64", ["model.channels", "list"]),
    ("model.channels=[64, 128, 256, 512, 768, 0]", ["model.channels", ">= 1"]),
    ("model.strides=[1]", ["model.strides", "model.channels"]),
    ("loss.class_factors={'lion': 2.0}", ["loss.class_factors", "lion"]),
    ("train.monitor=val_acc", ["train.monitor", "data.val_size"]),
])
def test_bad_value_names_field(override, words):
    with pytest.raises(ValueError) as e:
        get_preset("seed", [override])
    for w in words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("override, suggestion", [
    ("data.flip=0.3", "data.flip_p"),
    ("train.epoch=3", "train.epochs"),
    ("optimizer.lr=0.1", None),
    ("lr=0.1", None),
])
def test_unknown_key(override, suggestion):
    with pytest.raises(ValueError, match="unknown config key") as e:
        get_preset("seed", [override])
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(e.value)


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train.epochs:3"])
def test_malformed_override(bad):
    with pytest.raises(ValueError, match="section.key=value"):
        get_preset("seed", [bad])


def test_from_dict_validates():
    d = Config().to_dict()
    d["data"]["flip_p"] = 3.0
    with pytest.raises(ValueError, match="data.flip_p"):
        Config.from_dict(d)
    d = Config().to_dict()
    d["data"]["nonsense"] = 1
    with pytest.raises(ValueError, match="unknown config key 'data.nonsense'"):
        Config.from_dict(d)


def test_every_numeric_field_has_a_range():
    # Documentation and validation share one home: each number says what it allows.
    for cls in (DataConfig, ModelConfig, LossConfig, OptimConfig, TrainConfig):
        hints = typing.get_type_hints(cls)  # real types, whether or not annotations are postponed
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                meta = f.metadata
                assert meta.get("lo") is not None or meta.get("hi") is not None or meta.get("choices"), \
                    f"{cls.__name__}.{f.name} has no allowed range"
