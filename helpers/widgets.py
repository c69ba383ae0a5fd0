"""The augmentation explorer: sliders for every augmentation setting, a live grid of results.

    explorer = AugmentExplorer(x[:16], y[:16], CLASSES, cfg.data, mean, std)
    explorer.widget                      # display it in a notebook
    explorer.sliders["rotation"].value = 30
    explorer.config()                    # the DataConfig the sliders now describe
    images, targets = explorer.sample()  # what the grid shows: [0, 1] images, (B, K) soft targets

The logic lives in plain methods (``config``, ``sample``, ``redraw``) that the
widget callbacks call, so it is testable without a browser. The augmentations
themselves are ``helpers.augment.BatchAugment``: the explorer only draws.
The grid is stored as a PNG in the ``Output`` widget's state, so a notebook saved
with its widget state shows the last grid as a static snapshot (nbviewer).
"""
from __future__ import annotations

__all__ = ["AugmentExplorer", "show_grid", "soft_label_text", "STEPS", "AUGMENT_FIELDS", "MIX_FIELDS"]

import base64
import dataclasses
import io
from typing import Sequence

import ipywidgets as W
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .augment import BatchAugment, denormalize
from .plots import show_grid  # noqa: F401  (re-exported: notebooks import it from here too)
from .config import DataConfig, expect_section

# Slider step per DataConfig field; the slider's range comes from the field's own
# allowed range (config.py is its one home). Fields with no upper bound get _ALPHA_MAX.
STEPS: dict[str, float] = {
    "flip_p": 0.05, "translate": 1, "rotation": 1.0, "brightness": 0.05, "contrast": 0.05,
    "saturation": 0.05, "hue": 0.025,
    "cutmix_alpha": 0.05, "mixup_alpha": 0.05, "cutmix_p": 0.05, "mix_p": 0.05,
}
AUGMENT_FIELDS = ("flip_p", "translate", "rotation", "brightness", "contrast", "saturation", "hue")
MIX_FIELDS = ("cutmix_alpha", "mixup_alpha", "cutmix_p", "mix_p")
_ALPHA_MAX = 4.0  # Beta(α, α) beyond α = 4 looks like α = ∞: every mix is near 50/50


def soft_label_text(target: torch.Tensor, classes: Sequence[str], k: int = 2) -> str:
    """A (K,) probability vector as text: the class name if one-hot, else the top ``k`` as ``0.62 cat``."""
    p, idx = target.detach().cpu().float().topk(min(k, len(target)))
    if p[0] >= 1 - 1e-6:
        return classes[int(idx[0])]
    return "\n".join(f"{float(pi):.2f} {classes[int(i)]}" for pi, i in zip(p, idx) if pi > 0.005)


def _field_range(name: str) -> tuple[float, float]:
    meta = {f.name: f.metadata for f in dataclasses.fields(DataConfig)}[name]
    lo, hi = meta.get("lo") or 0.0, meta.get("hi")
    if meta.get("lo_open"):
        lo += STEPS[name]  # an open bound (α > 0): start one step above it
    return float(lo), float(hi if hi is not None else _ALPHA_MAX)


class AugmentExplorer:
    """Sliders for every augmentation strength and probability of a ``DataConfig``, and a live grid.

    Args:
        images_uint8: (B, 3, H, W) uint8 images to augment (a dozen or two is plenty).
        labels: (B,) int labels.
        classes: class names, for the titles.
        cfg: the starting settings (e.g. ``cfg.data`` of a preset); fields without a slider are kept.
        mean, std: the normalisation ``BatchAugment`` applies (undone for display).
        seed: the starting seed of the augmentation generator.
        ncols: images per row of the grid.
    """

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                 cfg: DataConfig, mean: Sequence[float], std: Sequence[float],
                 seed: int = 0, ncols: int = 8):
        expect_section(cfg, DataConfig, "AugmentExplorer")
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
            raise ValueError(f"images_uint8 must be uint8 (B, 3, H, W), got "
                             f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
        if len(images_uint8) != len(labels):
            raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
        self.images, self.labels = images_uint8, labels.long()
        self.classes, self.base_cfg = tuple(classes), cfg
        self.mean, self.std, self.ncols = tuple(mean), tuple(std), ncols
        self.figure: Figure | None = None
        self._hold = False  # set() changes several sliders, then redraws once

        style = {"description_width": "90px"}
        self.sliders: dict[str, W.FloatSlider | W.IntSlider] = {}
        for name in AUGMENT_FIELDS + MIX_FIELDS:
            lo, hi = _field_range(name)
            value = getattr(cfg, name)
            kind, fmt = (W.IntSlider, "d") if isinstance(value, int) else (W.FloatSlider, ".3g")
            self.sliders[name] = kind(  # widened to hold a given value beyond the usual range
                value=value, min=min(lo, value), max=max(hi, value), step=STEPS[name],
                description=name, continuous_update=False, style=style, readout_format=fmt)
        self.seed = W.IntText(value=seed, description="seed", style={"description_width": "40px"},
                              layout=W.Layout(width="130px"))
        self.redraw_button = W.Button(description="Re-draw", icon="refresh",
                                      tooltip="new random parameters (seed + 1)")
        self.show_mix = W.ToggleButton(value=True, description="CutMix / MixUp",
                                       tooltip="show or hide the batch mixing step")
        self.output = W.Output()

        for s in self.sliders.values():
            s.observe(self._on_change, names="value")
        self.seed.observe(self._on_change, names="value")
        self.show_mix.observe(self._on_toggle, names="value")
        self.redraw_button.on_click(self._on_redraw)

        column = lambda title, names: W.VBox(  # noqa: E731
            [W.HTML(f"<b>{title}</b>")] + [self.sliders[n] for n in names])
        self.widget = W.VBox([
            W.HBox([column("per image", AUGMENT_FIELDS), column("per batch", MIX_FIELDS)]),
            W.HBox([self.seed, self.redraw_button, self.show_mix]),
            self.output,
        ])
        self.redraw()

    # ------------------------------------------------------------------ logic (no browser needed)

    def config(self) -> DataConfig:
        """The ``DataConfig`` the sliders describe (other fields as given to the constructor)."""
        return dataclasses.replace(self.base_cfg, **{n: s.value for n, s in self.sliders.items()})

    def set(self, **values: float) -> None:
        """Move several sliders at once (``set(rotation=30, mix_p=0)``), then redraw once."""
        unknown = set(values) - set(self.sliders)
        if unknown:
            raise ValueError(f"no slider for {', '.join(sorted(unknown))}; sliders: {', '.join(self.sliders)}")
        self._hold = True
        try:
            for name, v in values.items():
                self.sliders[name].value = v
        finally:
            self._hold = False
        self.redraw()

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment the images with the current settings and seed.

        Returns [0, 1] float images (B, 3, H, W) for display and (B, K) soft
        targets (one-hot when mixing is hidden or the batch was not mixed).
        """
        aug = BatchAugment(self.config(), self.mean, self.std, num_classes=len(self.classes),
                           seed=int(self.seed.value))
        if not self.show_mix.value:
            return aug.augment(self.images), F.one_hot(self.labels, len(self.classes)).float()
        x, y = aug(self.images, self.labels)
        return denormalize(x, self.mean, self.std), y

    def titles(self, targets: torch.Tensor) -> list[str]:
        return [soft_label_text(t, self.classes) for t in targets]

    def redraw(self) -> Figure:
        """Re-sample, draw the grid into ``self.figure`` and put it in the output widget."""
        images, targets = self.sample()
        self.figure = show_grid(images, self.titles(targets), ncols=self.ncols, fig=self.figure)
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=80)
        png = base64.b64encode(buf.getvalue()).decode("ascii")
        # Set the outputs directly (not `with output: display(...)`): works without a kernel,
        # replaces the old grid in one step, and is saved in the widget state.
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": png, "text/plain": "<augmented images>"}},)
        return self.figure

    # ------------------------------------------------------------------ widget callbacks

    def _on_change(self, change: dict) -> None:
        if not self._hold:
            self.redraw()

    def _on_toggle(self, change: dict) -> None:
        for n in MIX_FIELDS:
            self.sliders[n].disabled = not change["new"]
        self.redraw()

    def _on_redraw(self, button: W.Button | None = None) -> None:
        self.seed.value = int(self.seed.value) + 1  # the seed observer redraws

    def _ipython_display_(self):  # `explorer` as a cell's last line shows the widget
        from IPython.display import display
        display(self.widget)
