"""Accuracy against wall time for a preset, through the project's one ``fit``.

    .venv/bin/python benchmarks/train.py                          # laptop preset (CPU target: ≥ 85 % in 10 min)
    .venv/bin/python benchmarks/train.py --preset seed --set train.epochs=5   # GPU: seconds/epoch at batch 128

Prints one line per epoch (elapsed wall time, epoch time, test accuracy), then
the time at which each accuracy mark was first reached, the final accuracy
and the provenance (device, versions, threads). Wall time counts everything
after the data is in memory: model build, augmentation, training, evaluation
(including flip TTA when the preset uses it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.config import get_preset  # noqa: E402
from helpers.data import load_cifar10  # noqa: E402
from helpers.train import fit  # noqa: E402

MARKS = (0.80, 0.85, 0.90, 0.92)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="laptop")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", help="run folder to keep (default: none)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()

    cfg = get_preset(args.preset, args.overrides)
    data = load_cifar10(args.data_dir)
    t0 = time.perf_counter()
    rows = []

    def on_epoch(history: list[dict]) -> None:
        h = history[-1]
        rows.append({"epoch": h["epoch"], "elapsed_s": time.perf_counter() - t0,
                     "epoch_s": h["time"], "test_acc": h["test_acc"]})
        r = rows[-1]
        print(f"epoch {r['epoch']:3d}  elapsed {r['elapsed_s']:7.1f} s  epoch {r['epoch_s']:6.1f} s  "
              f"test acc {r['test_acc']:.4f}", flush=True)

    result = fit(cfg, data, out_dir=args.out, progress=False, log=lambda s: None, on_epoch=on_epoch)
    total = time.perf_counter() - t0
    meta = {k: result.meta[k] for k in ("device", "device_name", "torch", "torchvision", "threads", "git_commit")}
    print(f"\npreset {args.preset} {' '.join(args.overrides)}".rstrip())
    for mark in MARKS:
        hit = next((r for r in rows if r["test_acc"] >= mark), None)
        print(f"  {mark:.0%} reached: " + (f"epoch {hit['epoch']} at {hit['elapsed_s']:.1f} s" if hit else "no"))
    print(f"  final test acc {rows[-1]['test_acc']:.4f} after {len(rows)} epochs, {total:.1f} s wall "
          f"({total / 60:.2f} min); mean epoch {sum(r['epoch_s'] for r in rows) / len(rows):.2f} s")
    print(f"  {json.dumps(meta)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "overrides": args.overrides,
                                               "epochs": rows, "total_s": total, **meta}, indent=2))


if __name__ == "__main__":
    main()
