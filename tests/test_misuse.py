"""Misuse of the public API fails at once, in one line that names the cause and the fix."""
from __future__ import annotations

import math

import pytest
import torch

from helpers.augment import BatchAugment, batch_mixer, normalize
from helpers.config import Config, DataConfig, get_preset
from helpers.losses import build_loss
from helpers.model import build_model
from helpers.optim import build_optimizer, build_scheduler
from helpers.reference import train_transform

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- augmentation input

@pytest.mark.parametrize("call", ["__call__", "augment", "apply", "epoch"])
def test_batch_augment_refuses_float_images(call):
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=0)
    x, y = _images().float(), torch.arange(4)  # 0..255 floats: would come out near white
    run = {"__call__": lambda: aug(x, y), "augment": lambda: aug.augment(x),
           "apply": lambda: aug.apply(x, aug.draw(4)),
           "epoch": lambda: next(aug.epoch(x, y, None, batch_size=2, epoch=0))}[call]
    with pytest.raises(TypeError, match=r"expects uint8 images in 0\.\.255, got torch\.float32: .*load_cifar10"):
        run()


@pytest.mark.parametrize("shape", [(3, 32, 32), (4, 1, 32, 32), (4, 32, 32, 3)])
def test_batch_augment_refuses_other_shapes(shape):
    aug = BatchAugment(DataConfig(), MEAN, STD, seed=0)
    with pytest.raises(ValueError, match=r"expects images \(N, 3, H, W\), got shape"):
        aug.augment(torch.zeros(shape, dtype=torch.uint8))


@pytest.mark.parametrize("mean, std", [
    (MEAN, (0.25, 0.0, 0.26)),               # zero std: division by zero
    (MEAN, (0.25, -0.24, 0.26)),
    ((0.49, math.nan, 0.45), STD),
    (MEAN, (0.25, math.inf, 0.26)),
    (MEAN, (0.25, 0.24)),                    # one value short
])
def test_bad_channel_statistics_are_refused(mean, std):
    with pytest.raises(ValueError, match="mean|std"):
        normalize(_images(), mean, std)
    with pytest.raises(ValueError, match="BatchAugment"):
        BatchAugment(DataConfig(), mean, std)
    with pytest.raises(ValueError, match="BatchAugment"):  # tensors: checked once, at construction
        BatchAugment(DataConfig(), torch.tensor(mean), torch.tensor(std))


def test_tensor_statistics_still_work_and_become_floats():
    aug = BatchAugment(DataConfig(), torch.tensor(MEAN), torch.tensor(STD))
    assert aug.mean == pytest.approx(MEAN) and all(type(v) is float for v in aug.mean + aug.std)
    assert torch.isfinite(aug(_images(), torch.arange(4))[0]).all()


# ---------------------------------------------------------------------------- a whole Config for a section

def _builders():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return {
        "build_model": ("model", "ModelConfig", lambda c: build_model(c)),
        "build_loss": ("loss", "LossConfig", lambda c: build_loss(c)),
        "build_optimizer": ("optim", "OptimConfig", lambda c: build_optimizer(net, c)),
        "build_scheduler": ("optim", "OptimConfig", lambda c: build_scheduler(opt, c, 2, 10)),
        "BatchAugment": ("data", "DataConfig", lambda c: BatchAugment(c, MEAN, STD)),
        "batch_mixer": ("data", "DataConfig", lambda c: batch_mixer(c)),
        "train_transform": ("data", "DataConfig", lambda c: train_transform(c, MEAN, STD)),
    }


@pytest.mark.parametrize("where", list(_builders()))
def test_a_whole_config_where_a_section_is_expected(where):
    section, cls, build = _builders()[where]
    cfg = get_preset("smoke")
    with pytest.raises(TypeError, match=rf"^{where} expects cfg\.{section} \(a {cls}\), got a Config: "
                                        rf"pass cfg\.{section}$"):
        build(cfg)
    build(getattr(cfg, section))  # the section itself builds


def test_a_section_of_another_kind_is_named_too():
    with pytest.raises(TypeError, match=r"build_model expects cfg\.model \(a ModelConfig\), got a DataConfig"):
        build_model(Config().data)


# ---------------------------------------------------------------------------- model input

@pytest.fixture(scope="module")
def net():
    return build_model(get_preset("smoke").model).eval()


def test_model_refuses_uint8_images(net):
    with pytest.raises(TypeError, match=r"MixingNet expects normalised float images \(B, 3, 32, 32\); got "
                                        r"torch\.uint8: normalise them with helpers\.normalize\(x, mean, std\)"):
        net(_images())


def test_model_refuses_float64_images_even_under_autocast(net):
    x = normalize(_images(), MEAN, STD).double()
    with pytest.raises(TypeError, match=r"weights are torch\.float32 but the images are torch\.float64: "
                                        r"convert them with x\.to\(torch\.float32\)$"):
        net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="float64"):
        net(x)  # autocast never casts float64


def test_model_refuses_bf16_images_without_autocast(net):
    with pytest.raises(TypeError, match=r"torch\.bfloat16: convert them with x\.to\(torch\.float32\) or run "
                                        r"under torch\.autocast"):
        net(normalize(_images(), MEAN, STD).bfloat16())


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32)])
def test_model_refuses_other_shapes(net, shape):
    with pytest.raises(ValueError, match=r"MixingNet expects normalised float images .*; got shape"):
        net(torch.zeros(shape))


def test_model_accepts_float32_and_autocast_inputs(net):
    x = normalize(_images(2), MEAN, STD)
    with torch.no_grad():
        assert net(x).shape == (2, 10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert net(x).dtype == torch.bfloat16
            assert net(x.bfloat16()).shape == (2, 10)


def test_model_checks_compile_without_graph_breaks(net):
    # fullgraph=True fails on any graph break: the checks only read dtype and shape.
    x = normalize(_images(2), MEAN, STD)
    with torch.no_grad():
        full = torch.compile(net, backend="eager", fullgraph=True, dynamic=False)
        torch.testing.assert_close(full(x), net(x))
        with pytest.raises(TypeError, match="float64"):  # as compile_model compiles: not fullgraph
            torch.compile(net, backend="eager", dynamic=False)(x.double())
