"""Table 1's regularisers on a CPU: the `laptop` preset overfitting 5,000 training images, with and without them.

    .venv/bin/python benchmarks/regularisation.py --set train.num_threads=1   # all five, 5–8 min each
    .venv/bin/python benchmarks/regularisation.py --only none,all
    .venv/bin/python benchmarks/regularisation.py --preset smoke --set data.train_subset=64   # seconds (tests)

The `laptop` preset switches rotation, colour jitter, CutMix/MixUp and dropout off because its
short schedule on 50,000 images underfits. Here the same preset trains on the first 5,000 training images for
many epochs, so that without them it overfits; each variant adds Table 1's values of one regulariser
(read from the `seed` preset, their one home), and `all` adds every one. Same seed, same data order.

Every epoch, the model is evaluated on the full test set *and* on the 5,000 training images without
augmentation ("clean" train accuracy and loss). The train accuracy that ``fit`` records is measured on
the augmented batches against the dominant label, which under CutMix/MixUp is not comparable with a
test accuracy; the train–test gap is read from the clean figures. ``fit`` has no hook that sees the
model, so this script runs ``fit``'s own parts (``build_run``, ``train_epoch``, ``evaluate_run``,
``end_epoch``) with the training images added to the run's evaluation sets: the training itself is
``fit``'s, step for step. Test-time augmentation is off: six views of 15,000 images every epoch would
cost more than the epoch's training.

Each variant writes ``<out-dir>/<variant>.json`` (per-epoch figures, overrides, provenance); a variant
whose JSON exists is not run again. ``<out-dir>/table.md`` gets the summary table.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.checkpoint import provenance  # noqa: E402
from helpers.config import get_preset  # noqa: E402
from helpers.engine import amp_dtype  # noqa: E402
from helpers.train import build_run, end_epoch, evaluate_run, train_epoch  # noqa: E402
from train import run_variants, variant_parser  # noqa: E402

# Every variant: 5,000 training images, many epochs, a test every epoch, no TTA (see the docstring).
BASE = ["data.train_subset=5000", "train.epochs=18", "train.eval_every=1", "train.tta_flip=False",
        "train.tta_translate=0"]


def table1(*keys: str) -> list[str]:
    """Overrides that set ``keys`` to their Table 1 values (the `seed` preset's)."""
    seed = get_preset("seed")
    return [f"{k}={getattr(getattr(seed, k.split('.')[0]), k.split('.')[1])!r}" for k in keys]


ROTATION_JITTER = table1("data.rotation", "data.brightness", "data.contrast", "data.saturation", "data.hue")
CUTMIX_MIXUP = table1("data.mix_p", "data.cutmix_alpha", "data.mixup_alpha", "data.cutmix_p")
DROPOUT = table1("model.dropout")

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "none": ("laptop as it is: flips + translation only", []),
    "+rotation_jitter": ("+ rotation ±10° and colour jitter (Table 1)", ROTATION_JITTER),
    "+cutmix_mixup": ("+ CutMix/MixUp on every batch (Table 1)", CUTMIX_MIXUP),
    "+dropout": ("+ dropout 0.3 before the classifier (Table 1)", DROPOUT),
    "all": ("+ all three", ROTATION_JITTER + CUTMIX_MIXUP + DROPOUT),
}


def train_variant(preset: str, overrides: list[str], data, echo: bool = True) -> dict:
    """Train ``preset`` + ``overrides`` as ``fit`` does, evaluating test and clean training images every epoch."""
    cfg = get_preset(preset, overrides)
    t0 = time.perf_counter()
    run = build_run(cfg, data, log=lambda s: None)
    run.eval_sets["train"] = (run.batches.x, run.batches.y)  # the training images, unaugmented
    rows, status = [], "completed"
    for epoch in range(cfg.train.epochs):
        acc = train_epoch(run, epoch, progress=False)
        if acc["diverged"]:
            status = "diverged"
            break
        t = time.perf_counter()
        metrics = evaluate_run(run)
        stop = end_epoch(run, epoch, acc, metrics, time.perf_counter() - t)
        h, clean = run.history[-1], metrics["train"]
        rows.append({"epoch": h["epoch"], "train_acc": clean["acc"], "train_loss": clean["loss"],
                     "test_acc": h["test_acc"], "test_loss": h["test_loss"],
                     "train_acc_augmented": h["train_acc"], "train_loss_augmented": h["train_loss"],
                     "lr": h["lr"], "epoch_s": h["time"], "eval_s": h["time_eval"],
                     "elapsed_s": time.perf_counter() - t0})
        if echo:
            r = rows[-1]
            print(f"epoch {r['epoch']:3d}  {r['epoch_s']:5.1f} s  train {r['train_acc']:.4f} "
                  f"(augmented {r['train_acc_augmented']:.4f})  test {r['test_acc']:.4f}  "
                  f"gap {(r['train_acc'] - r['test_acc']) * 100:5.1f}", flush=True)
        if stop:
            status = stop
            break
    best = max(rows, key=lambda r: r["test_acc"]) if rows else None
    return {"preset": preset, "overrides": overrides, "status": status, "epochs": rows,
            "final_train_acc": rows[-1]["train_acc"] if rows else None,
            "final_acc": rows[-1]["test_acc"] if rows else None,
            "best_acc": best["test_acc"] if best else None, "best_epoch": best["epoch"] if best else None,
            "total_s": time.perf_counter() - t0, "autocast": str(amp_dtype(cfg.train.amp, run.device)),
            "config": cfg.to_dict(), **provenance(run.device)}


def table(results: dict[str, dict]) -> str:
    lines = ["| variant | what changes | final train acc (clean) | final test acc | gap (points) | "
             "best test acc (epoch) | final train acc (augmented batches) | epochs | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not r["epochs"]:
            lines.append(f"| {name} | {VARIANTS.get(name, ('', []))[0]} | {r['status']} before epoch 1 |")
            continue
        lines.append(f"| {name} | {VARIANTS.get(name, ('', []))[0]} | {r['final_train_acc']:.4f} | "
                     f"{r['final_acc']:.4f} | {(r['final_train_acc'] - r['final_acc']) * 100:.1f} | "
                     f"{r['best_acc']:.4f} ({r['best_epoch']}) | {r['epochs'][-1]['train_acc_augmented']:.4f} | "
                     f"{len(r['epochs'])} | {r['total_s']:.0f} |")
    lines += ["", "Clean train accuracy: the training images evaluated without augmentation after each epoch. "
              "The augmented-batch figure is what `fit` logs; under CutMix/MixUp it is scored against the "
              "dominant label of mixed images, so read the train–test gap from the clean column."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = variant_parser(__doc__, VARIANTS, "benchmarks/results/regularisation_5k",
                       "applied to every variant (after the 5k-subset settings, before the variant's own)")
    args = p.parse_args(argv)

    def run_one(name: str, data) -> dict:
        r = train_variant(args.preset, BASE + args.overrides + VARIANTS[name][1], data)
        print(f"{name}: {r['total_s']:.0f} s", flush=True)
        return r

    results = run_variants(p, args, VARIANTS, run_one)
    (Path(args.out_dir) / "table.md").write_text(table(results))
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
