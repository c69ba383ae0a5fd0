"""Optimiser groups, the OneCycle schedule and the LR range test, on tiny models."""
import math
import warnings

import pytest
import torch
from torch import nn

from helpers.config import OptimConfig
from helpers.optim import (BASE_MOMENTUM, EMA, MAX_MOMENTUM, build_optimizer, build_scheduler,
                           lr_range_test, schedule_values, suggest_lr)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 4))


def _batches(n: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)) for _ in range(n)]


def test_optimizer_matches_table1():
    opt = build_optimizer(_net(), OptimConfig())
    assert isinstance(opt, torch.optim.SGD)
    d = opt.defaults
    assert (d["lr"], d["momentum"], d["nesterov"], d["weight_decay"]) == (0.01, 0.9, True, 5e-4)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 5e-4
    assert len(opt.param_groups[0]["params"]) == 6  # every parameter decays, as the report


def test_norm_and_bias_exemption():
    net = _net()
    opt = build_optimizer(net, OptimConfig(no_decay_norm_bias=True))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["no_decay"]["weight_decay"] == 0.0
    decay_ids = {id(p) for p in groups["decay"]["params"]}
    assert decay_ids == {id(net[0].weight), id(net[4].weight)}  # Linear weights only
    no_decay_ids = {id(p) for p in groups["no_decay"]["params"]}
    assert no_decay_ids == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[4].bias)}


def test_shared_and_frozen_parameters_appear_once_or_not_at_all():
    net = _net()
    net.append(net[4])  # the same Linear twice (shapes do not matter: no forward here)
    net[0].weight.requires_grad_(False)
    opt = build_optimizer(net, OptimConfig())
    params = opt.param_groups[0]["params"]
    assert len(params) == len({id(p) for p in params}) == 5


def test_nesterov_without_momentum_is_an_error():
    with pytest.raises(ValueError, match="momentum"):
        build_optimizer(_net(), OptimConfig(momentum=0.0))


def _step_through(opt, sched, n):
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_scheduler_never_over_steps_and_hits_onecycle_values():
    cfg = OptimConfig()
    epochs, spe = 20, 13  # 260 steps; 0.15 × 260 = 39, so the peak falls on a step
    opt = build_optimizer(_net(), cfg)
    sched = build_scheduler(opt, cfg, epochs, spe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also: no "step before optimizer.step" warnings
        lrs = _step_through(opt, sched, epochs * spe)  # must not raise "Tried to step"
    initial = cfg.max_lr / cfg.div_factor
    assert lrs[0] == pytest.approx(initial)  # 0.002
    assert max(lrs) == pytest.approx(cfg.max_lr)
    assert lrs[-1] == pytest.approx(initial / cfg.final_div_factor)  # 2e-7
    peak = lrs.index(max(lrs))
    assert peak == round(cfg.pct_start * epochs * spe) - 1
    with pytest.raises(ValueError, match="Tried to step"):  # one more is exactly one too many
        opt.step()
        sched.step()


def test_momentum_cycles_inversely_to_lr():
    values = schedule_values(OptimConfig(), 4, 25)
    lrs, mom = values["lr"], values["momentum"]
    peak = lrs.index(max(lrs))
    assert mom[0] == pytest.approx(MAX_MOMENTUM) and mom[peak] == pytest.approx(BASE_MOMENTUM)
    assert mom[-1] == pytest.approx(MAX_MOMENTUM)
    assert len(lrs) == 100


def test_scheduler_state_dict_round_trip():
    cfg = OptimConfig()
    opt = build_optimizer(_net(), cfg)
    sched = build_scheduler(opt, cfg, 5, 10)
    full = _step_through(opt, sched, 50)

    opt1 = build_optimizer(_net(), cfg)
    sched1 = build_scheduler(opt1, cfg, 5, 10)
    first = _step_through(opt1, sched1, 23)
    state_o, state_s = opt1.state_dict(), sched1.state_dict()
    # "resume": rebuild from config, then load both states
    opt2 = build_optimizer(_net(), cfg)
    sched2 = build_scheduler(opt2, cfg, 5, 10)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    rest = _step_through(opt2, sched2, 27)  # exactly to the end, no "Tried to step"
    assert first + rest == pytest.approx(full, rel=1e-12)


def test_scheduler_rejects_degenerate_lengths():
    opt = build_optimizer(_net(), OptimConfig())
    with pytest.raises(ValueError):
        build_scheduler(opt, OptimConfig(), 0, 10)
    with pytest.raises(ValueError, match="warm-up"):
        build_scheduler(opt, OptimConfig(), 1, 6)


def _snapshot(net, opt):
    return ({k: v.clone() for k, v in net.state_dict().items()},
            [m.training for m in net.modules()],
            {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()}
             for k, s in opt.state_dict()["state"].items()},
            [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]])


def _assert_same(a, b):
    (ma, modes_a, sa, ga), (mb, modes_b, sb, gb) = a, b
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert modes_a == modes_b and ga == gb
    assert sa.keys() == sb.keys()
    for k in sa:
        assert all(torch.equal(sa[k][n], sb[k][n]) if torch.is_tensor(sa[k][n]) else sa[k][n] == sb[k][n]
                   for n in sa[k])


def test_lr_range_test_restores_model_optimizer_and_rng():
    net, cfg = _net(), OptimConfig()
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, cfg, 2, 6)
    for x, y in _batches(3):  # a few real steps first, so momentum buffers exist
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    net.eval()  # an unusual mode, to check it is restored
    before = _snapshot(net, opt)
    rng = torch.get_rng_state()
    result = lr_range_test(net, nn.CrossEntropyLoss(), opt, _batches(6), num_steps=15, end_lr=0.5)
    _assert_same(before, _snapshot(net, opt))
    assert torch.equal(rng, torch.get_rng_state())
    assert len(result["lr"]) == 15 and result["stopped"] == "end_lr reached"  # 6 batches re-iterated
    assert result["lr"][0] == pytest.approx(1e-5) and result["lr"][-1] == pytest.approx(0.5)
    ratios = [b / a for a, b in zip(result["lr"], result["lr"][1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # exponential ramp
    assert sched.get_last_lr()[0] == opt.param_groups[0]["lr"]  # the schedule carries on as before


def test_lr_range_test_stops_on_divergence():
    net = _net()
    opt = build_optimizer(net, OptimConfig(weight_decay=0.0))
    result = lr_range_test(net, nn.CrossEntropyLoss(), opt, _batches(4), start_lr=1e-3,
                           end_lr=1e6, num_steps=60)
    assert result["stopped"] == "diverged" and len(result["lr"]) < 60
    finite = [l for l in result["loss"][:-1] if math.isfinite(l)]
    assert result["loss"][-1] > 4.0 * min(finite) or not math.isfinite(result["loss"][-1])
    assert result["lr"][0] <= result["suggested_lr"] <= result["lr"][-1]


def test_lr_range_test_one_shot_generator_runs_out():
    net = _net()
    opt = build_optimizer(net, OptimConfig())
    result = lr_range_test(net, nn.CrossEntropyLoss(), opt, iter(_batches(4)), num_steps=10)
    assert result["stopped"] == "batches exhausted" and len(result["lr"]) == 4


def test_suggest_lr_finds_the_steepest_descent():
    lrs = [10 ** (-5 + i * 0.1) for i in range(50)]
    # loss falls fastest at lr = 1e-3 (i = 20): a tanh step centred there
    losses = [2.0 - math.tanh((i - 20) / 3) for i in range(50)]
    result = {"lr": lrs, "loss": losses, "lr_at_min_loss": lrs[-1]}
    assert suggest_lr(result) == pytest.approx(1e-3)
    short = {"lr": lrs[:5], "loss": losses[:5], "lr_at_min_loss": 1e-3}
    assert suggest_lr(short) == pytest.approx(1e-4)


def test_suggest_lr_ignores_the_fall_after_a_blow_up():
    # Falls gently around i = 20 to its minimum at i = 29, blows up, then falls back
    # much faster (i = 40): a real LR range test without divergence stop did this.
    lrs = [10 ** (-5 + i * 0.1) for i in range(50)]
    losses = [2.0 - 0.5 * math.tanh((i - 20) / 3) - 0.01 * i if i < 30 else 5.0 - 3 * math.tanh((i - 40) / 2)
              for i in range(50)]
    i_min = min(range(50), key=losses.__getitem__)
    assert i_min == 29
    result = {"lr": lrs, "loss": losses, "lr_at_min_loss": lrs[i_min]}
    assert suggest_lr(result) == pytest.approx(1e-3)


def test_ema_averages_exactly_as_torchs_averaged_model():
    """helpers' EMA only leaves out AveragedModel's per-step host→device copy: same numbers, same state dict."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    ours = EMA(net, 0.9)
    theirs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(4):  # weights and BatchNorm statistics (floats) and its step count (an integer) change
        net(torch.randn(8, 3, 32, 32)).square().mean().backward()
        opt.step()
        ours.update_parameters(net)
        theirs.update_parameters(net)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["n_averaged"]) == 4 and not torch.equal(a["module.3.weight"], net[3].weight.detach())


def test_fused_sgd_follows_the_one_cycle_schedule_as_the_default_does():
    """What CUDA runs (fused, Nesterov, the no-decay group, OneCycle cycling lr and momentum), on the CPU."""
    cfg = OptimConfig(no_decay_norm_bias=True)
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [build_optimizer(nets[0], cfg), build_optimizer(nets[1], cfg, fused=True)]
    assert [o.defaults["fused"] for o in opts] == [None, True] and len(opts[1].param_groups) == 2
    scheds = [build_scheduler(o, cfg, epochs=2, steps_per_epoch=5) for o in opts]
    x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    start = nets[1][0].weight.detach().clone()
    for _ in range(10):
        for net, opt, sched in zip(nets, opts, scheds):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (nets[1][0].weight - start).abs().max() > 1e-3  # the steps moved the weights
