"""helpers.widgets: the explorer's callbacks and the grid, without a browser."""
import dataclasses

import ipywidgets as W
import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from helpers.config import CLASSES, Config, DataConfig, validate
from helpers.widgets import AUGMENT_FIELDS, MIX_FIELDS, AugmentExplorer, show_grid, soft_label_text

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture
def explorer():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    return AugmentExplorer(x, torch.arange(6), CLASSES, DataConfig(batch_size=7), MEAN, STD, ncols=3)


def _png(e):
    (out,) = e.output.outputs
    return out["data"]["image/png"]


def test_builds_with_a_slider_per_field(explorer):
    assert isinstance(explorer.widget, W.VBox)
    assert set(explorer.sliders) == set(AUGMENT_FIELDS + MIX_FIELDS) == {
        "flip_p", "translate", "rotation", "brightness", "contrast", "saturation", "hue",
        "cutmix_alpha", "mixup_alpha", "cutmix_p", "mix_p"}
    assert explorer.config() == DataConfig(batch_size=7)  # starts at the given settings
    assert isinstance(explorer.figure, Figure) and _png(explorer)  # a first grid is shown


def test_slider_ranges_are_the_config_ranges(explorer):
    s = explorer.sliders
    assert (s["flip_p"].min, s["flip_p"].max) == (0.0, 1.0)
    assert (s["hue"].min, s["hue"].max) == (0.0, 0.5)
    assert (s["rotation"].min, s["rotation"].max) == (0.0, 180.0)
    assert (s["translate"].min, s["translate"].max, s["translate"].step) == (0, 16, 1)  # whole pixels
    assert s["cutmix_alpha"].min > 0 and s["mixup_alpha"].min > 0  # Beta(0, 0) is not a distribution
    explorer.set(**{n: sl.min for n, sl in s.items()})  # every slider position is a valid config
    validate(Config(data=explorer.config()))
    explorer.set(**{n: sl.max for n, sl in s.items()})
    validate(Config(data=explorer.config()))


def test_sliders_drive_config_and_redraw(explorer):
    first = _png(explorer)
    explorer.sliders["rotation"].value = 45.0
    explorer.sliders["flip_p"].value = 1.0
    explorer.sliders["mix_p"].value = 0.0
    cfg = explorer.config()
    assert (cfg.rotation, cfg.flip_p, cfg.mix_p) == (45.0, 1.0, 0.0)
    assert cfg.batch_size == 7 and cfg.hue == 0.075  # fields without a slider are kept
    assert _png(explorer) != first  # the observers redrew the grid
    assert len(explorer.output.outputs) == 1  # replaced, not appended


def test_sample_follows_settings(explorer):
    explorer.set(**{n: 0.0 for n in AUGMENT_FIELDS}, mix_p=0.0)
    x, y = explorer.sample()
    assert torch.allclose(x, explorer.images.float() / 255, atol=1e-6)  # nothing to do: the originals
    assert torch.equal(y, torch.eye(10)[explorer.labels])
    explorer.sliders["flip_p"].value = 1.0
    x, _ = explorer.sample()
    assert torch.allclose(x, explorer.images.flip(-1).float() / 255, atol=1e-6)
    explorer.sliders["mix_p"].value = 1.0
    _, y = explorer.sample()
    assert torch.allclose(y.sum(1), torch.ones(6)) and (y.max(1).values < 1).all()
    assert explorer.titles(y)[0].count("\n") == 1  # two classes named: a soft label


def test_redraw_button_changes_the_sample(explorer):
    before_x, before_y = explorer.sample()
    before_png = _png(explorer)
    explorer.redraw_button.click()
    assert explorer.seed.value == 1
    after_x, _ = explorer.sample()
    assert not torch.equal(before_x, after_x)
    assert _png(explorer) != before_png
    explorer.seed.value = 0  # back to the first seed: the first sample again
    again_x, again_y = explorer.sample()
    assert torch.equal(again_x, before_x) and torch.equal(again_y, before_y)


def test_mix_toggle(explorer):
    explorer.show_mix.value = False
    assert all(explorer.sliders[n].disabled for n in MIX_FIELDS)
    assert not any(explorer.sliders[n].disabled for n in AUGMENT_FIELDS)
    _, y = explorer.sample()
    assert torch.equal(y, torch.eye(10)[explorer.labels])
    assert explorer.titles(y) == list(CLASSES[:6])
    explorer.show_mix.value = True
    assert not any(explorer.sliders[n].disabled for n in MIX_FIELDS)


def test_set_moves_sliders_and_redraws_once(explorer, monkeypatch):
    calls = []
    monkeypatch.setattr(explorer, "redraw", lambda: calls.append(1))
    explorer.set(rotation=30, hue=0.2, mix_p=0.5)
    assert calls == [1]
    assert (explorer.config().rotation, explorer.config().hue, explorer.config().mix_p) == (30, 0.2, 0.5)
    with pytest.raises(ValueError, match="no slider for batch_size"):
        explorer.set(batch_size=3)


def test_redraw_returns_the_figure_and_leaves_pyplot_clean(explorer):
    open_before = plt.get_fignums()
    fig = explorer.redraw()
    assert fig is explorer.figure and len(fig.axes) == 6
    assert plt.get_fignums() == open_before


def test_starts_at_any_valid_config():
    cfg = DataConfig(cutmix_alpha=9.0, rotation=180.0)
    e = AugmentExplorer(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.arange(2), CLASSES, cfg, MEAN, STD)
    assert e.config() == cfg


def test_rejects_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        AugmentExplorer(torch.zeros(2, 3, 8, 8), torch.arange(2), CLASSES, DataConfig(), MEAN, STD)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        AugmentExplorer(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.arange(3), CLASSES,
                        DataConfig(), MEAN, STD)


def test_show_grid():
    rc = dict(matplotlib.rcParams)
    open_before = plt.get_fignums()
    imgs = torch.rand(5, 3, 8, 8)
    fig = show_grid(imgs, [f"t{i}" for i in range(5)], ncols=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6 and sum(bool(ax.images) for ax in fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes[:5]] == ["t0", "t1", "t2", "t3", "t4"]
    assert plt.get_fignums() == open_before  # closed in pyplot: displays once, from the return value
    assert dict(matplotlib.rcParams) == rc
    again = show_grid(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, fig=fig)  # redraw into a figure
    assert again is fig and len(fig.axes) == 2 and fig.axes[0].get_title() == ""


def test_soft_label_text():
    assert soft_label_text(torch.eye(10)[3], CLASSES) == "cat"
    t = torch.zeros(10)
    t[3], t[5] = 0.7, 0.3
    assert soft_label_text(t, CLASSES) == "0.70 cat\n0.30 dog"
    t = torch.zeros(10)
    t[1], t[2] = 0.5, 0.5
    assert set(soft_label_text(t, CLASSES).split("\n")) == {"0.50 car", "0.50 bird"}


def test_config_is_a_dataclass_replace(explorer):
    cfg = explorer.config()
    assert dataclasses.is_dataclass(cfg) and cfg is not explorer.base_cfg
