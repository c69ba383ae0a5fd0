"""No training step makes the host wait for the GPU: checked on a CPU, on torch's "meta" device.

A meta tensor has a shape and a dtype but no values. Reading a value there (``.item()``,
``float(t)``, ``if t:``, ``.tolist()``, a copy to the host) raises, at exactly the places where on a
GPU the host would stop and wait for the device's queue to drain. The other kind of host sync is a
blocking copy *to* the device (``non_blocking=False``, e.g. ``torch.tensor(values, device=...)``),
which ``torch.cuda.set_sync_debug_mode`` also flags; ``HostSyncs`` records those. So running the
loop's parts on "meta" checks on a CPU what the sync debug mode checks on a GPU
(``benchmarks/gpu_check.py`` counts the real ones per epoch there).
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.config import get_preset
from helpers.data import DeviceBatches, load_cifar10
from helpers.engine import predict
from helpers.train import build_run, train_epoch

META = torch.device("meta")
aten = torch.ops.aten

# A narrow model on conftest's 100 fake images: three full batches of 32 and a last, smaller one of 4.
SMALL = ["data.batch_size=32", "data.eval_batch_size=8", "model.channels=[8,16]", "model.strides=[1,2]",
         "model.stem_channels=8", "train.num_threads=1"]


def _to_device(src: torch.Tensor, device) -> bool:
    return src.device.type == "cpu" and device is not None and torch.device(device).type != "cpu"


class HostSyncs(TorchFunctionMode):
    """Records blocking host→device copies, the syncs that a meta tensor does not raise on."""

    def __init__(self):
        super().__init__()
        self.copies: list[str] = []
        outer = self

        class Copies(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is aten._to_copy.default and _to_device(args[0], kwargs.get("device")):
                    if not kwargs.get("non_blocking", False):
                        outer.copies.append(f"{func}{tuple(args[0].shape)}")
                elif func is aten.copy_.default and _to_device(args[1], args[0].device):
                    if not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)):
                        outer.copies.append(f"{func}{tuple(args[1].shape)}")
                return func(*args, **kwargs)

        self._dispatch = Copies()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Made from Python values on the device: a host→device copy below the dispatcher's sight.
        if func in (torch.tensor, torch.as_tensor) and _to_device(torch.empty(0), kwargs.get("device")):
            self.copies.append(f"{func.__name__}(..., device={kwargs['device']})")
        return func(*args, **kwargs)

    def __enter__(self):
        self._dispatch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._dispatch.__exit__(*exc)


def _meta_run(root, preset: str, overrides: list[str]):
    """``preset`` on conftest's fake CIFAR-10 (``root``), on the meta device."""
    cfg = get_preset(preset, SMALL + overrides)
    cfg.train.device = "meta"  # not a choice users get; build_run takes it as any torch device
    return build_run(cfg, load_cifar10(root), log=lambda s: None)


def _prime(run) -> None:
    """Make the constants that are made once per device (``normalize``'s mean and std, the hue shift's
    offsets): one blocking copy each, the first time only, so not what the tests look for."""
    next(run.aug.epoch(run.batches.x, run.batches.y, None, run.cfg.data.batch_size, epoch=0))


def _epoch_on_meta(run, epoch: int) -> None:
    """One training epoch on meta: every step runs, then the epoch's one designed read raises."""
    with pytest.raises(RuntimeError, match="meta") as raised:
        train_epoch(run, epoch, progress=False)
    where = [e for e in raised.traceback if e.name == "train_epoch"][-1]
    assert "tolist()" in str(where.statement), f"a read inside the step loop: {where.statement}"


def test_meta_reads_raise_where_a_gpu_would_wait():
    """The premise: on meta, reading a value raises; blocking copies to it are recorded."""
    t = torch.zeros(3, device=META)
    for read in (lambda: t.sum().item(), lambda: float(t.sum()), lambda: bool(t.sum() > 0), lambda: t.tolist(),
                 lambda: t.nonzero(), lambda: t.cpu()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()
    with HostSyncs() as syncs:
        torch.tensor([1.0, 2.0], device=META)
        torch.ones(2).to(META)
        torch.empty(2, device=META).copy_(torch.ones(2))
        torch.ones(2).to(META, non_blocking=True)        # asynchronous: not a sync
        torch.full((), 2.0, device=META) * torch.tensor(3.0)  # a CPU scalar is a kernel argument
    assert len(syncs.copies) == 3, syncs.copies


@pytest.mark.parametrize("preset, overrides", [
    ("seed", ["data.cutmix_p=1.0"]),       # Table 1's per-image ops, then CutMix on every batch
    ("seed", ["data.cutmix_p=0.0"]),       # … MixUp on every batch
    ("seed", ["data.mix_p=0.0"]),          # unmixed: one-hot targets
    ("laptop", []),
    ("speedrun", ["model.channels=[8,8,16]", "model.strides=[2,1,2]"]),  # the whitening stem
], ids=["seed-cutmix", "seed-mixup", "seed-unmixed", "laptop", "speedrun"])
def test_no_training_step_syncs(fake_root, preset, overrides):
    run = _meta_run(fake_root, preset, overrides)
    _prime(run)
    with HostSyncs() as syncs:
        _epoch_on_meta(run, 0)
    assert syncs.copies == []
    assert run.scheduler.last_epoch == len(run.batches)  # every step ran


def test_an_ema_steps_without_syncing(fake_root):
    run = _meta_run(fake_root, "smoke", ["train.ema=0.99"])
    _prime(run)
    with HostSyncs() as syncs:
        _epoch_on_meta(run, 0)  # the first update copies the weights, the later ones average
    assert syncs.copies == [] and int(run.ema.n_averaged) == len(run.batches) > 1


def test_shuffling_and_prediction_do_not_sync(fake_root):
    batches = DeviceBatches(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), torch.zeros(10, dtype=torch.long),
                            batch_size=4, device=META)
    model = _meta_run(fake_root, "laptop", []).model
    test_x = torch.zeros(20, 3, 32, 32, dtype=torch.uint8, device=META)
    predict(model, test_x[:8], (0.5,) * 3, (0.25,) * 3, batch_size=8)  # first use of the constants
    with HostSyncs() as syncs:
        order = batches.epoch_order()
        logits = predict(model, test_x, (0.5,) * 3, (0.25,) * 3, batch_size=8, tta_flip=True, tta_translate=1)
    assert syncs.copies == []
    assert order.device == META and logits.shape == (20, 10)
