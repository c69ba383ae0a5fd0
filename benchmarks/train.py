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
from helpers.engine import amp_dtype, pick_device  # noqa: E402
from helpers.train import fit  # noqa: E402

MARKS = (0.80, 0.85, 0.90, 0.92)


def variant_parser(doc: str, variants: dict, out_dir: str, set_help: str) -> argparse.ArgumentParser:
    """The command line of a sweep over ``variants`` (ablate.py, regularisation.py)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="laptop")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--only", help="comma-separated variants (default: all): " + ", ".join(variants))
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out-dir", default=out_dir)
    return p


def run_variants(p: argparse.ArgumentParser, args: argparse.Namespace, variants: dict,
                 run_one) -> dict[str, dict]:
    """Each selected variant's result, from ``<out-dir>/<variant>.json`` when it exists (so an
    interrupted sweep continues), else from ``run_one(name, data)``, then written there."""
    names = args.only.split(",") if args.only else list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(variants)}")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_cifar10(args.data_dir)
    results = {}
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
            print(f"{name}: kept {path} ({results[name]['final_acc']:.4f})")
            continue
        print(f"== {name}: {variants[name][0]}", flush=True)
        results[name] = run_one(name, data)
        path.write_text(json.dumps(results[name], indent=2) + "\n")
    return results


def run_preset(preset: str, overrides: list[str], data, out: str | None = None, echo: bool = True) -> dict:
    """Train ``preset`` with ``overrides`` through ``fit``; returns its per-epoch rows, marks and provenance."""
    cfg = get_preset(preset, overrides)
    t0 = time.perf_counter()
    rows = []

    def on_epoch(history: list[dict]) -> None:
        h = history[-1]
        rows.append({"epoch": h["epoch"], "elapsed_s": time.perf_counter() - t0,
                     "epoch_s": h["time"], "test_acc": h["test_acc"], "train_acc": h["train_acc"]})
        r = rows[-1]
        if echo:
            print(f"epoch {r['epoch']:3d}  elapsed {r['elapsed_s']:7.1f} s  epoch {r['epoch_s']:6.1f} s  "
                  f"test acc {r['test_acc']:.4f}", flush=True)

    result = fit(cfg, data, out_dir=out, progress=False, log=lambda s: None, on_epoch=on_epoch)
    total = time.perf_counter() - t0
    meta = {k: result.meta[k] for k in ("device", "device_name", "torch", "torchvision", "threads", "git_commit")}
    marks = {f"{m:.2f}": next(({"epoch": r["epoch"], "elapsed_s": r["elapsed_s"]} for r in rows
                               if r["test_acc"] >= m), None) for m in MARKS}
    return {"preset": preset, "overrides": overrides, "epochs": rows, "marks": marks, "total_s": total,
            "final_acc": rows[-1]["test_acc"] if rows else None,
            "autocast": str(amp_dtype(cfg.train.amp, pick_device(cfg.train.device))),
            "model": result.model, **meta}


def summary(r: dict) -> str:
    lines = [f"preset {r['preset']} {' '.join(r['overrides'])}".rstrip()]
    for mark, hit in r["marks"].items():
        lines.append(f"  {float(mark):.0%} reached: " + (f"epoch {hit['epoch']} at {hit['elapsed_s']:.1f} s" if hit else "no"))
    rows = r["epochs"]
    lines.append(f"  final test acc {r['final_acc']:.4f} after {len(rows)} epochs, {r['total_s']:.1f} s wall "
                 f"({r['total_s'] / 60:.2f} min); mean epoch {sum(x['epoch_s'] for x in rows) / len(rows):.2f} s")
    lines.append("  " + json.dumps({k: r[k] for k in ("device", "device_name", "torch", "torchvision", "threads",
                                                      "git_commit")}))
    return "\n".join(lines)


def to_json(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "model"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="laptop")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", help="run folder to keep (default: none)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    r = run_preset(args.preset, args.overrides, load_cifar10(args.data_dir), args.out)
    print("\n" + summary(r))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(r), indent=2))


if __name__ == "__main__":
    main()
