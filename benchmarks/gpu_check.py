"""What the course's training costs on this machine's GPU, in one command and one report.

    make gpu-check                                        # minutes on one H100/H200
    python benchmarks/gpu_check.py --full                 # + Table 1's 200 epochs, accuracy vs the report
    python benchmarks/gpu_check.py --full --skip-bench --resume   # ... continued after a time limit or Ctrl-C
    python benchmarks/gpu_check.py --speedrun --skip-bench  # only the speedrun preset: ≥ 93 % in ≤ 60 s of training?
    python benchmarks/gpu_check.py --smoke                # seconds on a CPU: checks this script itself

Measures, prints, and writes to ``--out`` (default ``runs/gpu-check``) as
``gpu_check.json`` and ``gpu_check.md``:

1. device, versions and commit;
2. ms per training step of the seed model (batch 128; forward, focal loss,
   backward, SGD) for each mixing implementation, eager and compiled (CUDA
   graphs, ``train.compile="cudagraphs"``; and on CUDA the whole step as one
   graph, ``train.compile="graph"``), with compilation time, and whether a
   compiled step computes what the eager one does;
3. each block's forward + backward time per implementation, and what ``auto`` picks;
4. augmentation throughput per chunk size (one epoch of 50,000 images: per-image
   ops per chunk, CutMix/MixUp per batch); 4b. what serialising the preset's
   checkpoint costs the main thread, ``torch.save``'s defaults against ``fit``'s way;
5. ``--epochs`` epochs of the seed preset through ``fit`` (Table 1's 200-epoch
   schedule, stopped early), with each epoch's parts: training steps,
   augmentation, evaluation, checkpoint writing; compilation apart; on CUDA the
   same again in the other CUDA-graph mode (``auto`` there is ``"graph"``, so
   ``"cudagraphs"``); the laptop preset; 5b. ``fit``'s steps under ``torch.profiler``
   (both modes): how busy the GPU is, and the host's top operations;
6. with ``--full``: the whole 200-epoch run, final and per-class test accuracy
   beside the report's 92.75 %;
7. with ``--speedrun``: the whole ``speedrun`` preset (the short-schedule recipe),
   its training time without compilation, and its accuracy beside 93 % and the report's.

Sections 1-5b keep to ``--budget`` seconds (default 420: a minute short of 8, for start-up and for
estimates that fall short; a part that overruns its estimate is not cut). The eager steps, blocks,
augmentation and checkpoint always run; each compilation, ``fit`` and profile only if its estimated
cost (from what this run has measured so far) still fits, in the order above except that the
implementations other than the preset's own are compiled after section 5 (2b). What is skipped is
printed and listed in the report; ``--budget 0`` runs everything.

Every figure is what this run measured; nothing is looked up or estimated,
except the line marked "projected" (and the budget's estimates, which only decide what runs).
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.checkpoint import measure as time_checkpoint, run_state, tensors_in  # noqa: E402
from benchmarks.model import print_blocks, time_blocks  # noqa: E402
from benchmarks.profile_steps import profile_steps, report as profile_report  # noqa: E402
from helpers.analysis import REPORT_PER_CLASS  # noqa: E402
from helpers.augment import BatchAugment  # noqa: E402
from helpers.checkpoint import FINISHED, RunFolder, provenance  # noqa: E402
from helpers.config import get_preset  # noqa: E402
from helpers.data import channel_stats, load_cifar10  # noqa: E402
from helpers.engine import (amp_dtype, compile_model, forward_backward, pick_device, resolve_compile,  # noqa: E402
                            train_step)
from helpers import graphs  # noqa: E402
from helpers.losses import build_loss  # noqa: E402
from helpers.model import MIX_IMPLS, build_model  # noqa: E402
from helpers.optim import build_optimizer  # noqa: E402
from helpers.train import fit  # noqa: E402

REPORT_ACC = 0.9275  # the seed report's final test accuracy (§5)
IMPLS = MIX_IMPLS + ("auto",)


def compile_mode(cfg, device: torch.device) -> str:
    """What ``fit`` compiles ``cfg`` as on ``device`` (``train.compile`` resolved, as ``build_run`` does)."""
    return resolve_compile(cfg.train.compile, device, amp_dtype(cfg.train.amp, device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- the time budget

# A compilation's cost until this run has measured one: the slowest cold one seen so far (60.6 s,
# the third H200 in BENCHMARKS.md; 21-43 s on the others).
COMPILE_GUESS_S = 60.0
FIRST_EPOCH_S = 15.0  # cuDNN's algorithm search and the first chunk: 14.7 s on the first H200, compilation apart
EPOCH_GUESS_S = 4.0   # a seed-preset epoch until one is measured here (2.4-3.7 s on three H200s)


class Budget:
    """The check's wall-clock budget (``--budget``): what is not essential runs only if it still fits.

    Estimates are this run's own measurements where it has them (the slowest compilation so far, the
    seed preset's epoch), else the guesses above. What does not fit is skipped, printed and listed in
    the report: it is never run half. ``seconds`` 0: no limit.
    """

    def __init__(self, seconds: float, clock=time.perf_counter):
        self.seconds, self.clock, self.start = seconds, clock, clock()
        self.skipped: list[str] = []
        self._compile: float | None = None    # the slowest compilation measured so far
        self.epoch_s: float | None = None     # the seed preset's epoch, once ``fit`` has measured it

    @property
    def compile_s(self) -> float:
        return COMPILE_GUESS_S if self._compile is None else self._compile

    def compiling(self, cfg, device: torch.device) -> float:
        """The estimated compilation of a run of ``cfg`` on ``device``: 0 where it does not compile."""
        return 0.0 if compile_mode(cfg, device) == "off" else self.compile_s

    def measured_compile(self, seconds: float) -> None:
        self._compile = max(self._compile or 0.0, seconds)

    def left(self) -> float:
        return float("inf") if not self.seconds else self.seconds - (self.clock() - self.start)

    def fits(self, what: str, cost_s: float) -> bool:
        """Whether ``what``, estimated at ``cost_s``, fits in what is left; if not, it is recorded as skipped."""
        left = self.left()
        if cost_s <= left:
            return True
        self.skipped.append(f"{what} (estimated {cost_s:.0f} s, {max(left, 0):.0f} s left)")
        print(f"  skipped, to stay within --budget {self.seconds:.0f} s: {self.skipped[-1]}", flush=True)
        return False


# ---------------------------------------------------------------------------- 2. step time

def time_step(cfg, impl: str, compile_mode: str, device: torch.device, steps: int, rounds: int,
              backend: str = "inductor") -> dict:
    """ms per training step of ``cfg``'s model under ``impl``, eager or compiled; median of ``rounds``."""
    # Without dropout, so that compiled and eager steps see the same network: inductor draws
    # its own random numbers. Dropout's cost is one element-wise op on (B, 1024).
    cfg = cfg.replace(["model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device, memory_format=torch.channels_last).set_mix_impl(impl)
    loss_fn = build_loss(cfg.loss).to(device)
    opt = build_optimizer(model, cfg.optim)
    dtype = amp_dtype(cfg.train.amp, device)
    b, k = cfg.data.batch_size, cfg.model.num_classes
    x = torch.randn(b, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.nn.functional.one_hot(torch.arange(b, device=device) % k, k).float()
    torch._dynamo.reset()  # a fresh compile per model: no earlier model's graphs count towards dynamo's limit
    net = compile_model(model, compile_mode, device, backend=backend)
    row = {"impl": impl, "compile": compile_mode}
    if net is not model:  # does the compiled step compute the eager one? (same weights, same batch)
        eager = copy.deepcopy(model)
        torch.manual_seed(1)
        ref, _ = forward_backward(eager, loss_fn, x, target, dtype)
    t = time.perf_counter()
    if compile_mode == "graph":  # compiles, warms up and records the step as one graph
        graph = graphs.StepGraph(net, model, loss_fn, x, target, dtype)
        step = lambda: graph.train_step(opt, x, target)  # noqa: E731
    else:
        step = lambda: train_step(net, loss_fn, opt, x, target, dtype)  # noqa: E731
    for _ in range(3):  # compile; CUDA graphs warm up, record, replay
        step()
    _sync(device)
    row["warmup_s"] = time.perf_counter() - t
    if net is not model:
        model.load_state_dict(eager.state_dict())
        torch.manual_seed(1)
        opt.zero_grad(set_to_none=True)
        got, _ = graph(x, target) if compile_mode == "graph" else forward_backward(net, loss_fn, x, target, dtype)
        # Largest gradient difference over the largest gradient (per-tensor ratios would blow up
        # on the ~1e-9 gradients of BatchNorm biases that another BatchNorm follows).
        pairs = [(p.grad, q.grad) for p, q in zip(model.parameters(), eager.parameters()) if q.grad is not None]
        scale = max(q.abs().max().item() for _, q in pairs)
        diff = max((p - q).abs().max().item() for p, q in pairs)
        row.update(loss_eager=ref.item(), loss_compiled=got.item(), grad_rel_diff=diff / scale,
                   grads_finite=all(bool(torch.isfinite(p).all()) for p, _ in pairs))
    times = []
    for _ in range(rounds):
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        times.append((time.perf_counter() - t) / steps)
    ms = 1000 * statistics.median(times)
    row.update(ms=ms, img_s=b / ms * 1000)
    return row


# ---------------------------------------------------------------------------- 4. augmentation

def time_augment(cfg, data, device: torch.device, chunks: list[int], rounds: int = 2) -> list[dict]:
    """Seconds for one epoch of augmentation (per-image ops per chunk, mixing per batch), per chunk size."""
    mean, std = channel_stats(data.train_x)
    x, y = data.train_x.to(device), data.train_y.to(device)
    aug = BatchAugment(cfg.data, mean, std, seed=0)
    order = torch.randperm(len(x), device=device)
    rows = []
    for chunk in chunks:
        best = float("inf")
        for r in range(rounds + 1):  # round 0 warms up
            _sync(device)
            t = time.perf_counter()
            for _ in aug.epoch(x, y, order, cfg.data.batch_size, epoch=r, chunk=chunk):
                pass
            _sync(device)
            if r:
                best = min(best, time.perf_counter() - t)
        rows.append({"chunk": chunk, "images": len(x), "epoch_s": best, "img_s": len(x) / best})
    return rows


# ---------------------------------------------------------------------------- 5./6. fit

def run_fit(cfg, data, out: Path | None, resume: bool = False) -> dict:
    """``fit`` with per-epoch wall-clock marks and host-sync counts; returns history, compile time,
    status, per-class accuracy. ``resume``: continue the unfinished run in ``out``; the history then
    holds every epoch, the wall times only this call's.

    On CUDA, torch's sync debug mode warns at every operation that makes the host wait for the GPU;
    counting them per epoch shows whether any step syncs (391 steps an epoch) or only the epoch's end.
    """
    marks, syncs, sites, t0 = [], [], collections.Counter(), time.perf_counter()
    seen = 0  # warnings already counted

    def on_epoch(history: list[dict]) -> None:
        nonlocal seen
        h = history[-1]
        # Only the warnings since the last epoch: rescanning all of them made a 200-epoch run's
        # callback quadratic.
        new = sync_sites(caught[seen:])
        syncs.append(sum(new.values()))
        if marks:  # after the first epoch: compiling's own syncs would crowd out the steady state
            sites.update(new)
        seen = len(caught)
        marks.append(time.perf_counter())
        print(f"  epoch {h['epoch']:3d}  wall {marks[-1] - (marks[-2] if len(marks) > 1 else t0):6.2f} s  "
              f"(train {h['time_train']:.2f}, aug {h['time_aug']:.2f}, eval {h['time_eval']:.2f}, "
              f"checkpoint {h['time_checkpoint']:.2f})  test acc {h['test_acc']:.4f}"
              + (f"  host syncs {syncs[-1]}" if cuda else ""), flush=True)

    torch._dynamo.reset()
    cuda = torch.cuda.is_available() and pick_device(cfg.train.device).type == "cuda"
    with warnings.catch_warnings(record=True) as caught:  # on_epoch reads it as it fills
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fit(cfg, data, out_dir=out, resume=out if resume else None, progress=False,
                         log=lambda s: None, on_epoch=on_epoch)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    compile_s = result.meta.get("compile_s", 0.0)
    # Wall time per epoch from the callbacks; the first epoch's includes the compilation.
    walls = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    if walls:
        walls[0] -= compile_s
    if result.meta.get("compile_error"):
        print(f"  COMPILING FAILED, so these epochs ran eagerly: {result.meta['compile_error']}", flush=True)
    if result.meta.get("graph_error"):
        print(f"  RECORDING THE STEP AS ONE GRAPH FAILED, so these epochs ran with train.compile=cudagraphs: "
              f"{result.meta['graph_error']}", flush=True)
    return {"status": result.status, "compile_s": compile_s, "total_s": time.perf_counter() - t0,
            "compile_error": result.meta.get("compile_error"), "graph_error": result.meta.get("graph_error"),
            "host_syncs_per_epoch": syncs if cuda else None,
            "host_sync_sites": [f"{site}: {n}" for site, n in sites.most_common(8)] if cuda else None,
            "epoch_wall_s": walls, "history": result.history, "per_class": result.per_class,
            "run_dir": str(out) if out is not None else None}


def sync_sites(caught: list) -> "collections.Counter[str]":
    """Count torch.cuda's sync-debug warnings by the file:line that triggered them."""
    return collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message))


# ---------------------------------------------------------------------------- report

def markdown(rep: dict) -> str:
    p = rep["provenance"]
    lines = [f"# GPU check: {p['device_name']} ({p['device']})", "",
             f"torch {p['torch']}, torchvision {p['torchvision']}, Python {p['python']}, "
             f"commit `{p['git_commit']}`, {rep['date']}; preset `{rep['preset']}`, batch {rep['batch']}.", ""]
    if rep["steps"]:  # sections 2-4 are absent under --skip-bench
        lines += ["## Training step of the model (forward, focal loss, backward, SGD)", "",
                  "| impl | compile | ms/step | img/s | compile + warm-up s | compiled vs eager |",
                  "|---|---|---|---|---|---|"]
    for r in rep["steps"]:
        check = (f"loss {r['loss_compiled']:.5f} vs {r['loss_eager']:.5f}; max grad diff "
                 f"{r['grad_rel_diff']:.1e} of the largest" + ("" if r["grads_finite"] else "; NON-FINITE GRADIENTS")
                 if "loss_eager" in r else "")
        lines.append(f"| {r['impl']} | {r['compile']} | {r['ms']:.2f} | {r['img_s']:,.0f} | "
                     f"{r['warmup_s']:.1f} | {check} |")
    lines += [f"- **failed**: {e}" for e in rep.get("step_errors", [])]
    if rep["blocks"]:
        impls = list(rep["blocks"][0]["ms"])
        lines += ["", "## Each block, forward + backward, eager (ms)", "",
                  "| block | input | " + " | ".join(impls) + " | auto picks | auto's is fastest or ≤ naive |",
                  "|---|---|" + "---|" * len(impls) + "---|---|"]
    for i, r in enumerate(rep["blocks"]):
        ok = r["ms"][r["auto"]] <= r["ms"]["naive"] or r["ms"][r["auto"]] == min(r["ms"].values())
        lines.append(f"| {i + 1} | {'×'.join(map(str, r['input']))} | "
                     + " | ".join(f"{r['ms'][m]:.2f}" for m in impls) + f" | {r['auto']} | {'yes' if ok else 'NO'} |")
    if rep["augment"]:
        lines += ["", "## Augmentation, one epoch (per-image ops per chunk, mixing per batch)", "",
                  "| chunk (images) | s/epoch | img/s |", "|---|---|---|"]
        lines += [f"| {r['chunk']:,} | {r['epoch_s']:.3f} | {r['img_s']:,.0f} |" for r in rep["augment"]]
    if rep.get("checkpoint"):
        c = rep["checkpoint"]
        lines += ["", "## Checkpoint: serialising the state on the main thread (ms, median)", "",
                  f"Model and optimiser state, {c['tensors']} tensors. `torch.save`: its defaults (CRC-32 on, "
                  "device tensors copied one by one); `serialise`: what `fit` does (one asynchronous copy to "
                  "the host, one wait, no CRC-32).", "", "| way | ms |", "|---|---|"]
        lines += [f"| {name} | {sec * 1000:.1f} |" for name, sec in c["median_s"].items()]
    for key, title in (("fit", "`fit`, {} preset (its own schedule), first epochs"),
                       ("fit_graph", "`fit`, {} preset with the step recorded as one CUDA graph "
                                     "(`train.compile=\"graph\"`), first epochs"),
                       ("fit_cudagraphs", "`fit`, {} preset with torch.compile's CUDA graphs "
                                          "(`train.compile=\"cudagraphs\"`), first epochs"),
                       ("fit_laptop", "`fit`, {} preset, first epochs"),
                       ("full", "`fit`, the full {} preset"), ("speedrun", "`fit`, the {} preset")):
        f = rep.get(key)
        if not f:
            continue
        lines += ["", f"## {title.format(f.get('preset', rep['preset']))}", ""]
        if f.get("compile_error"):
            lines += [f"**Compiling failed, so these epochs ran eagerly:** {f['compile_error']}", ""]
        if f.get("graph_error"):
            lines += ["**Recording the step as one CUDA graph failed, so these epochs ran with "
                      f"`train.compile=cudagraphs`:** {f['graph_error']}", ""]
        lines += [f"Compilation (apart): {f['compile_s']:.1f} s. Status: {f['status']}. "
                  f"Total wall time: {f['total_s']:.1f} s.", "",
                  "| epoch | wall s | train s | aug s | eval s | checkpoint s | test acc |", "|---|---|---|---|---|---|---|"]
        done_before = len(f["history"]) - len(f["epoch_wall_s"])  # epochs of an earlier call (--resume)
        if done_before:
            lines += [f"Resumed after epoch {done_before}: the wall times are this call's epochs only; "
                      "the history and the accuracy are the whole run's.", ""]
        rows = list(zip(f["history"][done_before:], f["epoch_wall_s"]))
        if len(rows) > 12:  # a long run: the first five and the last five epochs
            rows = rows[:5] + rows[-5:]
        lines += [f"| {h['epoch']} | {w:.2f} | {h['time_train']:.2f} | {h['time_aug']:.2f} | {h['time_eval']:.2f} | "
                  f"{h['time_checkpoint']:.2f} | {h['test_acc']:.4f} |" for h, w in rows]
        lines += ["", f"Wall time per epoch after the first: median {f['median_epoch_s']:.2f} s, "
                      f"mean {f['mean_epoch_s']:.2f} s."]
        if f["status"] not in FINISHED:
            lines += [f"**Stopped before its last epoch** ({f['status']}); continue it with the same command "
                      f"plus `--resume` (or `python -m helpers.train --resume {f.get('run_dir', 'RUN')}`)."]
        if f.get("host_syncs_per_epoch"):
            lines += [f"Host syncs per epoch (torch.cuda sync debug mode; the first includes compiling): "
                      f"{f['host_syncs_per_epoch'][:10]}."]
        if f.get("host_sync_sites"):
            lines += ["Where they came from, epochs 2 on (file:line of the call that synchronised, count): "
                      + "; ".join(f"`{s}`" for s in f["host_sync_sites"]) + "."]
        if key == "speedrun":
            train_s = sum(f["epoch_wall_s"])  # run_fit took the compilation out of the first epoch's wall
            lines += ["", f"Training time, compilation apart: {train_s:.1f} s (target ≤ 60 s); final test "
                          f"accuracy {f['history'][-1]['test_acc']:.4f} (target ≥ 0.93; report {REPORT_ACC:.4f})."]
        elif key != "full":
            lines += [f"Projected full run ({f['epochs_total']} × that + compilation): "
                      f"{f['projected_s'] / 60:.1f} min."]
        else:
            best = max(f["history"], key=lambda h: h["test_acc"])
            lines += ["", f"Final test accuracy {f['history'][-1]['test_acc']:.4f} (report: {REPORT_ACC:.4f}); "
                          f"best {best['test_acc']:.4f} at epoch {best['epoch']}.", "",
                      "| class | this run | report |", "|---|---|---|"]
            lines += [f"| {c} | {a:.2f} | {REPORT_PER_CLASS.get(c, float('nan')):.2f} |"
                      for c, a in f["per_class"].items()]
    for key, how in (("profile", ""), ("profile_graph", ", the step recorded as one CUDA graph"),
                     ("profile_cudagraphs", ", torch.compile's CUDA graphs")):
        if rep.get(key) or rep.get(f"{key}_error"):
            lines += ["", f"## Where a training step's time goes (`fit`'s steps under torch.profiler{how})", ""]
            lines += profile_report(rep[key]) if rep.get(key) else [f"**Failed:** {rep[f'{key}_error']}"]
    b = rep.get("budget")
    if b and "used_s" in b:
        lines += ["", "## Time", "", f"Sections 1-5b took {b['used_s']:.0f} s"
                  + (f" (budget `--budget {b['seconds']:.0f}`)." if b["seconds"] else " (no budget).")]
        if b["skipped"]:
            lines += ["", "Skipped to stay within the budget (`--budget 0` runs everything):", ""]
            lines += [f"- {what}" for what in b["skipped"]]
    return "\n".join(lines) + "\n"


def _resumable(folder: RunFolder) -> None:
    """Refuse (``ValueError``) --resume where there is no run, or where it has finished."""
    if not folder.holds_run():
        raise ValueError(f"{folder.path} holds no run to resume: run --full without --resume first")
    if folder.finished():
        raise ValueError(f"{folder.path} holds a finished run ({folder.status()}): nothing to resume")


def other_mode(cfg, device: torch.device) -> str | None:
    """The CUDA-graph mode ``fit`` is compared with in sections 5 and 5b: "cudagraphs" where ``cfg``
    runs "graph" (``auto`` on CUDA), "graph" where the step can be recorded and ``cfg`` runs another
    mode; None where neither applies (a CPU; fp16, which the graph does not record)."""
    if compile_mode(cfg, device) == "graph":
        return "cudagraphs"
    return "graph" if device.type in graphs.RECORDABLE and amp_dtype(cfg.train.amp, device) != torch.float16 else None


def _summarise_fit(f: dict, epochs_total: int) -> dict:
    later = f["epoch_wall_s"][1:] or f["epoch_wall_s"]
    f["mean_epoch_s"] = statistics.mean(later) if later else float("nan")
    f["median_epoch_s"] = statistics.median(later) if later else float("nan")
    f["epochs_total"] = epochs_total
    f["projected_s"] = f["compile_s"] + epochs_total * f["mean_epoch_s"]
    return f


# The speedrun preset shrunk to seconds on a CPU: only for --smoke, which checks the code path.
SMOKE_SPEEDRUN = ["model.channels=[16,16,32,32]", "model.strides=[2,1,2,1]", "model.stem_channels=16",
                  "train.epochs=1", "data.batch_size=128", "train.compile=off"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model and data: checks the script on a CPU in seconds")
    p.add_argument("--full", action="store_true", help="also train Table 1's 200 epochs and compare accuracy")
    p.add_argument("--epochs", type=int, default=5, help="seed-preset epochs timed through fit (default 5)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per round in the step benchmark")
    p.add_argument("--rounds", type=int, default=3, help="rounds per step benchmark (median reported)")
    p.add_argument("--compiled-impls", default="stacked,stacked_input,naive,kernel",
                   help="implementations timed compiled too (each compiles for 20-60 s); the first "
                        "(or the preset's own) early, the rest after section 5, as --budget allows")
    p.add_argument("--budget", type=float, default=420,
                   help="seconds for sections 1-5b (default 420, a minute short of 8); what would not fit "
                        "(estimated) is skipped and listed; 0: no limit. --full/--speedrun are not counted")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (tests use aot_eager)")
    p.add_argument("--speedrun", action="store_true", help="also train the whole speedrun preset (about a minute)")
    p.add_argument("--skip-bench", action="store_true", help="with --full / --speedrun: only those runs")
    p.add_argument("--full-dir", help="run folder of the --full run (default: <out>/full-run)")
    p.add_argument("--resume", action="store_true",
                   help="with --full: continue the unfinished run in the --full run folder (e.g. after a time limit)")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--commit", help="the commit to report, where the checkout is a copy without .git")
    p.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json / .md (and the --full run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of the timed preset")
    args = p.parse_args(argv)
    budget = Budget(args.budget)  # from here: imports and start-up are the only time it does not count

    preset = "smoke" if args.smoke else "seed"
    cfg = get_preset(preset, args.overrides)
    device = pick_device(cfg.train.device)
    if device.type != "cuda" and not args.smoke:
        print(f"No CUDA device here ({device}): the figures would not be GPU figures. "
              "Run on a GPU machine, or use --smoke to check the script.", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit sets it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = {"date": time.strftime("%Y-%m-%d %H:%M"), "preset": preset, "batch": cfg.data.batch_size,
           "overrides": args.overrides, "provenance": provenance(device)}
    prov = rep["provenance"]
    if args.commit:
        prov["git_commit"] = args.commit
    print(f"{prov['device_name']} ({device}) | torch {prov['torch']} | torchvision {prov['torchvision']} | "
          f"commit {prov['git_commit']} | preset {preset}, batch {cfg.data.batch_size}", flush=True)

    def save() -> None:  # after every section: a run cut short still leaves its figures
        (out / "gpu_check.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
        (out / "gpu_check.md").write_text(markdown(rep))

    rep["steps"], rep["blocks"], rep["augment"] = [], [], []
    data = load_cifar10(args.data_dir)
    if args.smoke:
        train_n, test_n = 1024, 512
        data = type(data)(data.train_x[:train_n], data.train_y[:train_n], data.test_x[:test_n],
                          data.test_y[:test_n], data.classes)
    if not args.skip_bench:
        rep["budget"] = {"seconds": args.budget, "skipped": budget.skipped}  # the list fills as bench goes
        bench(args, rep, cfg, data, device, save, budget)
        rep["budget"]["used_s"] = budget.clock() - budget.start
        print(f"\nsections 1-5b: {rep['budget']['used_s']:.0f} s"
              + (f" (budget {args.budget:.0f} s)" if args.budget else "")
              + (f"; skipped to stay within it: {len(budget.skipped)} (--budget 0 runs everything)"
                 if budget.skipped else ""), flush=True)
        save()
    if args.full:
        run = Path(args.full_dir) if args.full_dir else out / "full-run"
        print(f"\n6. fit: the full {preset} preset ({cfg.train.epochs} epochs) into {run}"
              + (" (resumed)" if args.resume else ""), flush=True)
        try:
            if args.resume:
                _resumable(RunFolder(run))
            else:
                RunFolder(run).ensure_free()
        except ValueError as e:
            print(f"  {e}", file=sys.stderr)
            return 2
        rep["full"] = _summarise_fit(run_fit(cfg, data, run, resume=args.resume), cfg.train.epochs)
        f = rep["full"]
        print(f"  final test accuracy {f['history'][-1]['test_acc']:.4f} (report {REPORT_ACC:.4f}) after "
              f"{len(f['history'])} epochs, {f['total_s'] / 60:.1f} min in all (compilation {f['compile_s']:.0f} s)")
        if f["status"] not in FINISHED:
            print(f"  stopped before its last epoch ({f['status']}): continue it with the same command plus "
                  f"--resume (or python -m helpers.train --resume {run})")
        save()
    if args.speedrun:
        run = out / "speedrun-run"
        try:
            RunFolder(run).ensure_free()
        except ValueError as e:
            print(f"  {e}", file=sys.stderr)
            return 2
        # --smoke shrinks it to seconds on a CPU (checks the path only); --set applies here too
        sp = get_preset("speedrun", (SMOKE_SPEEDRUN if args.smoke else []) + args.overrides)
        print(f"\n7. fit: the speedrun preset ({sp.train.epochs} epochs) into {run}", flush=True)
        rep["speedrun"] = {**_summarise_fit(run_fit(sp, data, run), sp.train.epochs), "preset": "speedrun"}
        f = rep["speedrun"]
        print(f"  final test accuracy {f['history'][-1]['test_acc']:.4f} after {sum(f['epoch_wall_s']):.1f} s "
              f"of training (compilation {f['compile_s']:.0f} s apart)")
        save()
    print(f"\nwritten: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0


def bench(args, rep: dict, cfg, data, device: torch.device, save, budget: Budget) -> None:
    """Sections 2-5b: step time, blocks, augmentation, a few epochs of fit, a profile of its steps.

    In order of what matters most, so that ``budget`` leaves out the least useful: every eager step,
    the preset's own implementation compiled (both ways), blocks, augmentation and the checkpoint
    (seconds, always); then ``fit`` (the seed preset both ways, the laptop preset); then the other
    implementations compiled (2b) and the profiles (5b).
    """
    preset = rep["preset"]
    steps, rounds = (2, 1) if args.smoke else (args.steps, args.rounds)
    compiled = ([] if device.type != "cuda" and args.backend == "inductor"
                else [i for i in args.compiled_impls.split(",") if i])
    # The preset's own implementation first, else the list's first (the default lists "stacked" first:
    # what "auto" picks for the seed model's blocks on CUDA); the rest in 2b, if the budget allows.
    first = [i for i in compiled if i == cfg.model.mix_impl] or compiled[:1]
    # The whole step as one graph: the preset's own implementation only (one more compilation, not three)
    recordable = [cfg.model.mix_impl] if compiled and device.type in graphs.RECORDABLE else []

    def step_rows(mode: str, impls: list[str]) -> None:
        for impl in impls:
            if mode != "off" and not budget.fits(f"2. {impl} step, compile={mode}", budget.compile_s + 10):
                continue
            try:
                r = time_step(cfg, impl, mode, device, steps, rounds, args.backend)
            except Exception as e:  # the new whole-step graph must not cost the sections after it
                if mode != "graph":
                    raise
                rep["step_errors"] = rep.get("step_errors", []) + [f"{impl}, {mode}: {type(e).__name__}: {e}"[:500]]
                print(f"  {impl:>8} {mode:>10}: FAILED ({rep['step_errors'][-1]}); going on", flush=True)
                save()
                continue
            if mode != "off":
                budget.measured_compile(r["warmup_s"])
            rep["steps"].append(r)
            print(f"  {impl:>8} {mode:>10}: {r['ms']:7.2f} ms/step {r['img_s']:9,.0f} img/s "
                  f"(warm-up {r['warmup_s']:.1f} s)"
                  + (f"  loss compiled {r['loss_compiled']:.5f} vs eager {r['loss_eager']:.5f}, "
                     f"grads within {r['grad_rel_diff']:.1e} of the largest"
                     + ("" if r["grads_finite"] else ", NON-FINITE GRADIENTS") if "loss_eager" in r else ""),
                  flush=True)
            save()

    print("\n2. training step per mixing implementation", flush=True)
    step_rows("off", list(IMPLS))
    step_rows("cudagraphs", first)
    step_rows("graph", recordable)

    print("\n3. each block per implementation (eager)", flush=True)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    rep["blocks"] = time_blocks(model, list(MIX_IMPLS), cfg.data.batch_size, rounds + 2,
                                device, channels_last=True, amp=amp_dtype(cfg.train.amp, device))
    print_blocks(rep["blocks"], rounds + 2)
    del model
    save()

    print("\n4. augmentation, one epoch", flush=True)
    chunks = [128, 1024, 8192] if args.smoke else [128, 1024, 8192, 50000]
    rep["augment"] = time_augment(cfg, data, device, chunks, rounds=1 if args.smoke else 2)
    for r in rep["augment"]:
        print(f"  chunk {r['chunk']:6d}: {r['epoch_s']:.3f} s/epoch  {r['img_s']:12,.0f} img/s", flush=True)
    save()

    print("\n4b. checkpoint: serialising the model's and the optimiser's state on the main thread", flush=True)
    state = run_state(preset, args.overrides, device)
    rep["checkpoint"] = {"tensors": len(tensors_in(state)),
                         "median_s": time_checkpoint(state, rounds=3 if args.smoke else 7)}
    del state
    for name, sec in rep["checkpoint"]["median_s"].items():
        print(f"  {name:10s} {sec * 1000:7.1f} ms", flush=True)
    save()

    # The preset's own schedule, stopped after a few epochs (as it is, and in the other CUDA-graph
    # mode); then the laptop preset (CPU-sized) here.
    alt = other_mode(cfg, device)
    runs = [("fit", preset, cfg)]
    if alt:
        runs.append((f"fit_{alt}", preset, cfg.replace([f"train.compile={alt}"])))
    runs.append(("fit_laptop", "smoke" if args.smoke else "laptop", None))
    for key, name, fcfg in runs:
        fcfg = fcfg or get_preset(name, args.overrides)
        epochs = min(3 if key == "fit_laptop" else args.epochs, fcfg.train.epochs)
        what = f"5. fit: {name} preset, {epochs} epochs, train.compile={fcfg.train.compile}"
        epoch_s = budget.epoch_s or EPOCH_GUESS_S  # the laptop preset's epochs are shorter: an upper bound
        if not budget.fits(what, budget.compiling(fcfg, device) + FIRST_EPOCH_S + epochs * epoch_s):
            continue
        print(f"\n{what} (of {fcfg.train.epochs})", flush=True)
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:  # checkpoints are written (and timed), then dropped
            fcfg = fcfg.replace([f"train.stop_after={epochs}"] if epochs < fcfg.train.epochs else [])
            rep[key] = _summarise_fit(run_fit(fcfg, data, Path(tmp) / "run"), fcfg.train.epochs)
            rep[key].update(preset=name, compile=fcfg.train.compile)
        f = rep[key]
        budget.measured_compile(f["compile_s"])
        if key == "fit" and f["mean_epoch_s"] == f["mean_epoch_s"]:  # not NaN (one epoch only)
            budget.epoch_s = f["mean_epoch_s"]
        print(f"  compilation {f['compile_s']:.1f} s; mean epoch after the first {f['mean_epoch_s']:.2f} s; "
              f"projected {fcfg.train.epochs} epochs: {f['projected_s'] / 60:.1f} min", flush=True)
        save()

    rest = [i for i in compiled if i not in first]
    if rest:
        print("\n2b. training step, the other implementations compiled", flush=True)
        step_rows("cudagraphs", rest)

    # fit's steps as they are, and in the other CUDA-graph mode
    profiled = [("profile", cfg)]
    if alt:
        profiled.append((f"profile_{alt}", cfg.replace([f"train.compile={alt}"])))
    for key, pcfg in profiled:
        what = f"5b. profile: fit's steps, train.compile={pcfg.train.compile}"
        if not budget.fits(what, budget.compiling(pcfg, device) + FIRST_EPOCH_S):
            continue
        print(f"\n5b. profile: fit's training steps, {preset} preset, train.compile={pcfg.train.compile}", flush=True)
        try:
            rep[key] = profile_steps(pcfg, data)
            print("\n".join("  " + line for line in profile_report(rep[key])[:2] if line), flush=True)
        except Exception as e:  # a diagnostic: its failure must not cost the sections after it
            rep[f"{key}_error"] = f"{type(e).__name__}: {e}"[:500]
            print(f"  PROFILING FAILED ({rep[f'{key}_error']}); going on", flush=True)
        save()


if __name__ == "__main__":
    raise SystemExit(main())
