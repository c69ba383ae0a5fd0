"""The short-schedule techniques: translation, max-pool downsampling, max pooling
in the head, a whitened stem, EMA of the weights and translate TTA. Each is off by default."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from helpers.analysis import load_run_model, predictions
from helpers.augment import BatchAugment, normalize, translate
from helpers.checkpoint import load_checkpoint
from helpers.config import DataConfig, ModelConfig, TrainConfig, get_preset
from helpers.data import load_cifar10
from helpers.engine import predict
from helpers.model import MixingBlock, build_model, whiten_stem
from helpers.train import fit

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
NO_AUG = dict(flip_p=0.0, rotation=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, mix_p=0.0)


def test_defaults_are_off_so_seed_stays_table_1():
    d, m, t = DataConfig(), ModelConfig(), TrainConfig()
    assert (d.translate, m.downsample, m.head_pool, m.stem_whiten) == (0, "stride", "avg", False)
    assert (t.ema, t.tta_translate) == (0.0, 0)


# ---------------------------------------------------------------------------- translation

@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_translate_equals_torchvision_reflect_padded_crop(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (9, 3, 32, 32), generator=g).to(dtype)
    pad = 4
    dx = torch.randint(-pad, pad + 1, (9,), generator=g)
    dy = torch.randint(-pad, pad + 1, (9,), generator=g)
    out = translate(x, dx, dy)
    assert out.dtype == dtype
    for b in range(9):
        want = TF.crop(TF.pad(x[b], [pad], padding_mode="reflect"), int(dy[b]) + pad, int(dx[b]) + pad, 32, 32)
        assert torch.equal(out[b], want), b


def test_translate_by_zero_is_the_identity_and_keeps_non_square_shapes():
    x = torch.rand(2, 3, 8, 12)
    assert torch.equal(translate(x, torch.zeros(2), torch.zeros(2)), x)
    out = translate(x, torch.tensor([1, -2]), torch.tensor([0, 3]))
    assert out.shape == x.shape and torch.equal(out[0, :, :, :-1], x[0, :, :, 1:])


def test_batch_augment_draws_every_offset_in_range_per_image():
    aug = BatchAugment(DataConfig(**NO_AUG, translate=2), MEAN, STD, seed=0)
    params = aug.draw(20000)
    for k in ("dx", "dy"):
        offsets = params[k].floor() - 2
        counts = torch.bincount((offsets + 2).long(), minlength=5)
        assert offsets.min() == -2 and offsets.max() == 2 and len(counts) == 5
        assert (counts - 4000).abs().max() < 300  # uniform over the five offsets
    # each output image is its input shifted by those offsets
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    p = aug.draw(16)
    got = aug.apply(x, p)
    want = translate(x, p["dx"].floor() - 2, p["dy"].floor() - 2).float() / 255
    torch.testing.assert_close(got, want)


def test_translate_off_draws_nothing_so_other_streams_are_unchanged():
    a = BatchAugment(DataConfig(), MEAN, STD, seed=3).draw(8)
    assert "dx" not in a and "dy" not in a


# ---------------------------------------------------------------------------- the model

def test_maxpool_block_pools_first_then_runs_at_stride_1():
    torch.manual_seed(0)
    block = MixingBlock(8, 16, stride=2, num_k=2, reduction_factor=2, downsample="maxpool").eval()
    assert block.mix.stride == 1 and isinstance(block.pool, torch.nn.MaxPool2d)
    x = torch.randn(3, 8, 16, 16)
    y = block(x)
    assert y.shape == (3, 16, 8, 8)
    # the same block at stride 1 applied to the pooled input gives the same output
    plain = MixingBlock(8, 16, stride=1, num_k=2, reduction_factor=2).eval()
    plain.load_state_dict(block.state_dict())
    torch.testing.assert_close(y, plain(F.max_pool2d(x, 2)))


def test_bad_downsample_or_pool_names_are_clear_errors():
    with pytest.raises(ValueError, match="downsample"):
        MixingBlock(8, 8, downsample="avg")
    with pytest.raises(ValueError, match="model.head_pool"):
        get_preset("smoke", ["model.head_pool=min"])


def test_head_max_pool_takes_the_largest_response():
    torch.manual_seed(0)
    model = build_model(get_preset("smoke", ["model.head_pool=max", "model.dropout=0.0"]).model).eval()
    feats = torch.randn(2, model.num_features, 4, 4)
    torch.testing.assert_close(model.forward_head(feats), model.head.fc(feats.amax(dim=(2, 3))))


def test_whitened_stem_decorrelates_patches_and_is_frozen():
    g = torch.Generator().manual_seed(0)
    # correlated channels: the raw patches are far from white
    base = torch.rand(200, 1, 32, 32, generator=g)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.rand(200, 1, 32, 32, generator=g),
                        torch.rand(200, 1, 32, 32, generator=g)], 1)
    model = build_model(get_preset("smoke", ["model.stem_channels=16"]).model)
    whiten_stem(model.stem, images)
    w = model.stem.conv.weight
    assert not w.requires_grad
    torch.testing.assert_close(w[8:16], -w[:8])  # ± pairs
    out = F.conv2d(images, w[:8])                 # valid positions: exactly the patches it was fitted on
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(8, -1))
    torch.testing.assert_close(cov, torch.eye(8), atol=5e-3, rtol=0)


# ---------------------------------------------------------------------------- evaluation

class _Position(torch.nn.Module):
    """Logits that depend on where the image's mass is: a test model that TTA visibly changes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(10, 3 * 8 * 8))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def test_translate_tta_averages_the_six_views():
    torch.manual_seed(0)
    model = _Position().train()
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    got = predict(model, x, MEAN, STD, tta_flip=True, tta_translate=1)
    xn = normalize(x, MEAN, STD)
    one = torch.ones(5)
    views = [xn, xn.flip(-1)]
    views += [translate(v, s * one, s * one) for v in views for s in (1, -1)]
    want = torch.stack([model(v) for v in views]).mean(0)
    torch.testing.assert_close(got, want)
    assert model.training  # predict puts the model back in the mode it found it in
    plain = predict(model, x, MEAN, STD)
    assert not torch.allclose(got, plain)


# ---------------------------------------------------------------------------- EMA, end to end

ALL = ["data.translate=2", "model.downsample=maxpool", "model.head_pool=max", "model.stem_whiten=True",
       "train.ema=0.9", "train.tta_translate=1", "train.tta_flip=True", "data.batch_size=32",
       "data.eval_batch_size=16", "train.epochs=3", "train.num_threads=1"]


def _quiet(cfg, data, **kw):
    return fit(cfg, data, progress=False, log=lambda s: None, **kw)


@pytest.mark.slow
def test_every_technique_at_once_trains_saves_and_resumes_exactly(fake_root, tmp_path):
    data = load_cifar10(fake_root)
    cfg = get_preset("smoke", ALL)
    full = _quiet(cfg, data, out_dir=tmp_path / "full")
    assert full.status == "completed"
    state = load_checkpoint(tmp_path / "full" / "last.pt")
    assert "ema" in state and int(state["ema"]["n_averaged"]) == 3 * 4  # 100 images / 32 = 4 steps × 3
    # the EMA weights differ from the trained ones, and are what fit evaluated and returned
    assert not torch.equal(state["ema"]["module.head.fc.weight"], state["model"]["head.fc.weight"])
    torch.testing.assert_close(full.model.head.fc.weight, state["ema"]["module.head.fc.weight"])
    assert torch.equal(state["model"]["stem.conv.weight"], full.model.stem.conv.weight)  # frozen stem
    # the analysis loader evaluates the same (EMA) model, with the run's TTA, to the same accuracy
    loaded = load_run_model(tmp_path / "full", prefer="last.pt")
    pred = predictions(loaded.model, data.test_x, data.test_y, loaded.mean, loaded.std, tta_flip=True,
                       tta_translate=1, batch_size=16)
    assert float(pred.correct.float().mean()) == pytest.approx(full.history[-1]["test_acc"])
    # stop after epoch 1 and resume: the EMA is restored with everything else
    part = _quiet(get_preset("smoke", ALL + ["train.stop_after=1"]), data, out_dir=tmp_path / "part")
    assert part.status == "stop_after"
    rest = _quiet(cfg, data, out_dir=tmp_path / "part", resume=tmp_path / "part")
    strip = [{k: v for k, v in h.items() if not k.startswith("time")} for h in rest.history]
    assert strip == [{k: v for k, v in h.items() if not k.startswith("time")} for h in full.history]


def test_eval_every_tests_only_the_chosen_epochs_and_always_the_last(fake_root, tmp_path):
    import math
    data = load_cifar10(fake_root)
    r = _quiet(get_preset("smoke", ["data.batch_size=32", "train.epochs=3", "train.num_threads=1",
                                    "train.eval_every=2"]), data, out_dir=tmp_path)
    tested = [not math.isnan(h["test_acc"]) for h in r.history]
    assert tested == [False, True, True]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] in (2, 3)  # an evaluated epoch
    r0 = _quiet(get_preset("smoke", ["data.batch_size=32", "train.epochs=2", "train.num_threads=1",
                                     "train.eval_every=0"]), data)
    assert [math.isnan(h["test_acc"]) for h in r0.history] == [True, False]
    with pytest.raises(ValueError, match="train.eval_every"):
        get_preset("smoke", ["train.patience=5", "train.eval_every=2"])
