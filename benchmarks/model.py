"""Benchmark the mixing network: parameters, FLOPs, training img/s per mix implementation.

    .venv/bin/python benchmarks/model.py                       # seed model, batch 128, ~1-3 min on 2 cores
    .venv/bin/python benchmarks/model.py --preset smoke --rounds 1 --steps 1   # seconds
    .venv/bin/python benchmarks/model.py --preset laptop --amp bf16 --no-channels-last --per-block

Prints on the current device: parameter count; forward FLOPs per image
(``torch.utils.flop_counter``; the nominal count is the naive path's, the one the
formula describes, and each implementation's executed count is shown too);
training images/s (forward + backward + SGD step) at ``--batch`` for each
implementation, channels_last; achieved GFLOP/s against an fp32 matmul peak
measured in the same run; and each implementation's speed-up over naive.

Implementations are timed round-robin (naive, fast, naive, fast, ...) and the
median round is reported, because the CPU may be shared: ratios taken this way
are more trustworthy than the absolute numbers.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from helpers.checkpoint import provenance  # noqa: E402
from helpers.config import get_preset  # noqa: E402
from helpers.engine import amp_dtype, autocast  # noqa: E402
from helpers.model import MIX_IMPLS, MixingNet, build_model, count_params, resolve_mix_impl  # noqa: E402


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 10,
                dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of an n×n ``dtype`` matmul over ``reps`` runs (max: the machine's ceiling)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def forward_flops(model: MixingNet, device: torch.device, impl: str, batch: int = 2) -> float:
    """Forward FLOPs per image under ``impl`` (eval mode, so BN statistics are untouched)."""
    model.eval().set_mix_impl(impl)
    x = torch.randn(batch, 3, 32, 32, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(model: MixingNet, impls: list[str], batch: int, steps: int, rounds: int,
                  device: torch.device, channels_last: bool, amp: torch.dtype | None = None
                  ) -> dict[str, list[float]]:
    """Images/s of ``steps`` SGD steps, per impl per round, impls interleaved within each round."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train().to(device, memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    for impl in impls:  # warm-up: first-call allocations and oneDNN kernel selection
        model.set_mix_impl(impl)
        step()
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    for r in range(rounds):
        for impl in impls:
            model.set_mix_impl(impl)
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            rates[impl].append(steps * batch / (time.perf_counter() - t))
            print(f"  round {r + 1}/{rounds} {impl:>8}: {rates[impl][-1]:7.1f} img/s", flush=True)
    return rates


def time_blocks(model: MixingNet, impls: list[str], batch: int, rounds: int, device: torch.device,
                channels_last: bool, amp: torch.dtype | None = None) -> list[dict]:
    """Each block's forward + backward ms per impl (best of ``rounds``, impls interleaved).

    One row per block: its input shape, output pixels, K·C_out, what "auto" resolves to
    on ``device``, and ``ms`` = {impl: milliseconds}.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train().to(device, memory_format=fmt)
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach())) for b in model.blocks]
    with torch.no_grad():
        model(torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt))
    for h in hooks:
        h.remove()
    rows = []
    for block, x in zip(model.blocks, inputs):
        x = x.requires_grad_()
        best = {impl: float("inf") for impl in impls}
        for r in range(rounds + 1):  # round 0 warms up
            for impl in impls:
                block.mix.impl = impl
                _sync(device)
                t = time.perf_counter()
                with autocast(device, amp):
                    y = block(x)
                y.float().sum().backward()
                _sync(device)
                if r:
                    best[impl] = min(best[impl], time.perf_counter() - t)
        h, w = block.pool(x[:1]).shape[-2:]  # what the K convolutions see ("maxpool" blocks pool first)
        out_hw = block.mix.out_size(h) * block.mix.out_size(w)
        stacked_out = block.mix.num_k * block.mix.out_channels
        rows.append({"input": list(x.shape[1:]), "out_hw": out_hw, "stacked_out": stacked_out,
                     "auto": resolve_mix_impl("auto", device.type, out_hw, stacked_out, channels_last=channels_last,
                                              stride=block.mix.stride),
                     "ms": {impl: 1000 * t for impl, t in best.items()}})
    return rows


def print_blocks(rows: list[dict], rounds: int) -> None:
    impls = list(rows[0]["ms"])
    print(f"\nper block, forward + backward, best of {rounds} (ms):")
    print(f"{'block':>6} {'input':>18} " + " ".join(f"{i:>8}" for i in impls) + f" {'auto':>8}")
    for i, r in enumerate(rows):
        shape = "×".join(map(str, r["input"]))
        print(f"{i + 1:>6} {shape:>18} " + " ".join(f"{r['ms'][impl]:8.2f}" for impl in impls)
              + f" {r['auto']:>8}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="seed", help="config preset whose model is timed (seed, laptop, smoke)")
    p.add_argument("--batch", type=int, default=128, help="images per training step")
    p.add_argument("--steps", type=int, default=1, help="timed steps per implementation per round")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds; median and best are reported")
    p.add_argument("--impls", default="naive,auto", help="comma-separated: naive, stacked, kernel, stacked_input, auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--no-channels-last", action="store_true", help="time NCHW instead of channels_last")
    p.add_argument("--per-block", action="store_true", help="also time each block alone under every impl")
    p.add_argument("--amp", default="off", choices=("off", "bf16"), help="autocast dtype of the timed steps")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = args.impls.split(",")
    amp = amp_dtype(args.amp, device)
    precision = "fp32" if amp is None else "bf16"
    torch.manual_seed(0)
    model = build_model(get_preset(args.preset).model).to(device)

    name = provenance(device)["device_name"]
    print(f"torch {torch.__version__} | {device.type}: {name} | {torch.get_num_threads()} CPU threads | "
          f"preset {args.preset} | batch {args.batch} | "
          f"{'NCHW' if args.no_channels_last else 'channels_last'} | {precision}{' autocast' if amp else ''}")
    print(f"parameters: {count_params(model):,}")
    flops = {impl: forward_flops(model, device, impl) for impl in dict.fromkeys(["naive"] + impls)}
    for impl, f in flops.items():
        print(f"forward FLOPs/image ({impl}): {f / 1e9:.3f} G" + ("  <- nominal" if impl == "naive" else ""))
    peak = matmul_peak(device, dtype=amp or torch.float32)  # the peak of the precision being timed
    print(f"{precision} matmul peak (2048², best of 10): {peak:.0f} GFLOP/s")

    rates = time_training(model, impls, args.batch, args.steps, args.rounds, device, not args.no_channels_last, amp)
    # Median: the typical round. Best: the least-disturbed round, the usual estimate of what the
    # code can do when other jobs share the CPU. Speed-ups are given for both.
    print(f"\n{'':>8} {'median':>30} | {'best round':>30}")
    print(f"{'impl':>8} {'img/s':>8} {'ms/step':>8} {'GFLOP/s':>8} {'%peak':>5} | "
          f"{'img/s':>8} {'GFLOP/s':>8} {'%peak':>5} | {'× naive (median, best)':>22}")
    for impl, r in rates.items():
        med, best = statistics.median(r), max(r)
        g_med, g_best = (3 * flops[impl] * v / 1e9 for v in (med, best))  # training ≈ 3× forward
        ratio = "-"
        if "naive" in rates:
            ratio = f"{med / statistics.median(rates['naive']):.2f}×, {best / max(rates['naive']):.2f}×"
        print(f"{impl:>8} {med:8.1f} {1000 * args.batch / med:8.0f} {g_med:8.1f} {100 * g_med / peak:4.0f}% | "
              f"{best:8.1f} {g_best:8.1f} {100 * g_best / peak:4.0f}% | {ratio:>22}")
    print("(GFLOP/s: each implementation's own executed FLOPs, 3× forward per training image)")
    if args.per_block:
        rows = time_blocks(model, list(MIX_IMPLS), args.batch, args.rounds, device,
                           not args.no_channels_last, amp)
        print_blocks(rows, args.rounds)


if __name__ == "__main__":
    main()
