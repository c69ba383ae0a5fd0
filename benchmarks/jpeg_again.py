"""How far one more JPEG round trip moves the offline CIFAR-10 copy's pixels (it went through one already).

    .venv/bin/python benchmarks/jpeg_again.py                 # the 10,000 test images, ~10 s

Re-encodes every test image with Pillow at each ``--quality`` (its defaults otherwise: 4:2:0 chroma
subsampling), decodes it, and prints the mean absolute change per pixel and the share of images that
come back bit-identical. A near-zero change at one quality says the copy was written at that quality
with the same encoder settings, and then a second round trip cannot gauge what the first one cost
(BENCHMARKS.md, "Table 1's 200 epochs").
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.data import DataError, load_cifar10  # noqa: E402


def round_trip_change(images: np.ndarray, quality: int) -> np.ndarray:
    """Mean |change| per pixel of each uint8 image (N, H, W, 3) after one JPEG round trip at ``quality``."""
    out = np.empty(len(images))
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.abs(np.asarray(Image.open(buf).convert("RGB")).astype(np.int16) - img).mean()
    return out


def main(argv: list[str] | None = None) -> dict[int, tuple[float, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quality", type=int, nargs="+", default=[75, 95, 50])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--images", type=int, default=10_000, help="the first N test images")
    args = p.parse_args(argv)
    if bad := [q for q in args.quality if not 1 <= q <= 100]:
        p.error(f"--quality must be 1-100 (Pillow's JPEG quality), got {bad}")
    try:
        images = load_cifar10(args.data_dir).test_x[:args.images].permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3)
    except DataError as e:
        p.error(str(e))
    print(f"Pillow {PIL.__version__}; {args.data_dir}")
    out = {}
    for q in args.quality:
        change = round_trip_change(images, q)
        out[q] = (float(change.mean()), float((change == 0).mean()))
        print(f"quality {q:3d}: mean |change| {out[q][0]:.2f} of 255 per pixel; "
              f"{out[q][1]:.1%} of {len(images):,} images come back bit-identical", flush=True)
    return out


if __name__ == "__main__":
    main()
