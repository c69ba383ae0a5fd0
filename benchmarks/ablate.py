"""Ablation of a preset's short-schedule techniques: each one switched off (or changed) alone.

    .venv/bin/python benchmarks/ablate.py                         # laptop: every variant, ~10 min each
    .venv/bin/python benchmarks/ablate.py --only full,no_translate
    .venv/bin/python benchmarks/ablate.py --preset smoke --set train.epochs=1   # seconds (tests)

Each variant is one ``fit`` of the preset plus the variant's overrides, timed as
``benchmarks/train.py`` times it, and written to ``<out-dir>/<variant>.json``; a
variant whose JSON exists is not run again, so an interrupted ablation continues.
Test-time augmentation changes no weight, so its rows re-evaluate the ``full``
run's model (no TTA, flip, flip + translate) instead of training again.
``<out-dir>/ablation.md`` gets the table: final accuracy, wall time, and the
difference to ``full``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.config import get_preset  # noqa: E402
from helpers.engine import amp_dtype, pick_device, predict  # noqa: E402
from train import run_preset, run_variants, summary, to_json, variant_parser  # noqa: E402

# Each variant changes one thing: a technique of the laptop preset back to Table 1 (or off), or
# ("+") a technique the preset does not use, added.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "full": ("the preset as it is", []),
    "no_translate": ("no random translation (flips only)", ["data.translate=0"]),
    "strided": ("strided convolutions instead of max-pool downsampling", ["model.downsample=stride"]),
    "label_smoothing_0.1": ("label smoothing 0.1 (Table 1) instead of 0.2", ["loss.label_smoothing=0.1"]),
    "batch_128": ("batch 128 (Table 1) with the peak lr scaled by 1/2", ["data.batch_size=128", "optim.max_lr=0.2"]),
    "ema": ("+ an EMA of the weights (decay 0.99), evaluated instead of the weights", ["train.ema=0.99"]),
    "whiten": ("+ a frozen whitening stem instead of a trained one", ["model.stem_whiten=True"]),
    "two_blocks_per_stage": ("+ a second block (stride 1) in each stage",
                             ["model.channels=[64,64,128,128,256,256]", "model.strides=[1,1,2,1,2,1]"]),
    "avg_head": ("global average pooling in the head instead of max", ["model.head_pool=avg"]),
    "one_kernel": ("K = 1: one convolution per block, so no mixing (Table 1: K = 4)", ["model.num_k=1"]),
}


def tta_rows(full: dict, preset: str, overrides: list[str], data) -> dict[str, float]:
    """Test accuracy of the full run's final model under each TTA setting."""
    cfg = get_preset(preset, overrides)
    device = pick_device(cfg.train.device)
    model, dtype = full["model"], amp_dtype(cfg.train.amp, device)
    x, y = data.test_x, data.test_y
    if cfg.data.test_subset:
        x, y = x[:cfg.data.test_subset], y[:cfg.data.test_subset]
    from helpers.data import channel_stats, subset
    mean, std = channel_stats(subset(data, cfg.data)[0].train_x)
    out = {}
    for name, flip, shift in (("tta_none", False, 0), ("tta_flip", True, 0), ("tta_flip_translate", True, 1)):
        logits = predict(model, x.to(device), mean, std, batch_size=cfg.data.eval_batch_size, dtype=dtype,
                         tta_flip=flip, tta_translate=shift, channels_last=cfg.train.channels_last)
        out[name] = float((logits.argmax(1).cpu() == y).float().mean())
    return out


def table(results: dict[str, dict], tta: dict[str, float] | None) -> str:
    full = results.get("full")
    lines = ["| variant | what changes | final test acc | Δ vs full | epochs | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        delta = "" if full is None or name == "full" else f"{(r['final_acc'] - full['final_acc']) * 100:+.2f}"
        lines.append(f"| {name} | {VARIANTS.get(name, ('', []))[0]} | {r['final_acc']:.4f} | {delta} | "
                     f"{len(r['epochs'])} | {r['total_s']:.0f} |")
    if tta:
        lines += ["", "| TTA on the full run's final model | test acc |", "|---|---|"]
        lines += [f"| {k.removeprefix('tta_').replace('_', ' + ')} | {v:.4f} |" for k, v in tta.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = variant_parser(__doc__, VARIANTS, "benchmarks/results/ablation_laptop",
                       "applied to every variant (before the variant's own)")
    p.add_argument("--full-run", help="keep the full variant's run folder here (e.g. runs/laptop, which "
                                      "notebooks 05 and 06 read)")
    args = p.parse_args(argv)

    def run_one(name: str, data) -> dict:
        r = run_preset(args.preset, args.overrides + VARIANTS[name][1], data,
                       out=args.full_run if name == "full" else None)
        if name == "full":
            r["tta"] = tta_rows(r, args.preset, args.overrides, data)
        print(summary(r), flush=True)
        return to_json(r)

    results = run_variants(p, args, VARIANTS, run_one)
    tta = results.get("full", {}).get("tta")
    (Path(args.out_dir) / "ablation.md").write_text(table(results, tta))
    print("\n" + table(results, tta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
