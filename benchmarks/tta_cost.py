"""What one evaluation of the test set costs under each test-time augmentation setting.

    .venv/bin/python benchmarks/tta_cost.py                      # laptop preset, 10,000 images
    .venv/bin/python benchmarks/tta_cost.py --preset smoke --images 512

Times ``helpers.engine.predict`` (the function ``fit`` evaluates with) on ``--images``
uint8 images for no TTA, flip, and flip + translate (six views), in the preset's
precision and layout, ``--rounds`` times each (the median is printed). The weights
are the untrained model's: the cost of a forward pass does not depend on them.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.checkpoint import provenance  # noqa: E402
from helpers.config import get_preset  # noqa: E402
from helpers.engine import amp_dtype, pick_device, predict  # noqa: E402
from helpers.model import build_model  # noqa: E402

SETTINGS = (("none", False, 0), ("flip", True, 0), ("flip + translate", True, 1))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="laptop")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    cfg = get_preset(args.preset, args.overrides)
    device = pick_device(cfg.train.device)
    model = build_model(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    dtype = amp_dtype(cfg.train.amp, device)
    prov = provenance(device)
    print(f"{args.preset} preset, {args.images} images, {prov['device_name']} ({device}), "
          f"{prov['threads']} threads, autocast {dtype}, torch {prov['torch']}, commit {prov['git_commit']}")
    out = {}
    for name, flip, shift in SETTINGS:
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            predict(model, x, (0.5,) * 3, (0.25,) * 3, batch_size=cfg.data.eval_batch_size, dtype=dtype,
                    tta_flip=flip, tta_translate=shift, channels_last=cfg.train.channels_last)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
        print(f"  TTA {name:17s} {out[name]:7.2f} s  ({out[name] / out['none']:.1f}× no TTA)", flush=True)
    return out


if __name__ == "__main__":
    main()
