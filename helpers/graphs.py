"""The training step's forward, loss and backward recorded as one CUDA graph (``train.compile="graph"``).

Why by hand: under ``train.compile="cudagraphs"`` torch.compile records the model's forward and
its backward as two CUDA graphs, and the host still runs, every step, the loss and its backward
eagerly, autograd's gradient accumulation for each of the 68 parameters, and the compiled graphs'
Python wrappers. On one H200 whose host was slow that came to 8.8 ms of host work a step against
3.4 ms of GPU work: the GPU waited 61 % of the time (BENCHMARKS.md, "third H200"). torch.compile
cannot put ``backward()`` in its graphs; ``torch.cuda.graph`` can record everything a step queues.

So here forward → loss → backward for one batch shape is recorded once, in PyTorch's pattern
for whole-network capture (CUDA semantics notes, "CUDA Graphs"), and each step replays it with one
launch. The kernels recorded are the compiled model's (inductor, ``mode="default"``). The
optimiser (fused SGD, one kernel) and OneCycle run eagerly after the replay: their lr and momentum
are Python numbers that change every step, which a graph would freeze, and the optimiser's state
and checkpoints stay exactly as without a graph.

Measured on an H200 since (BENCHMARKS.md, "The step as one CUDA graph"): 2.89 ms a step against
3.42 ms with "cudagraphs", the GPU busy 88 % of the time, and a seed-preset epoch in 1.40 s against
2.05 s; so ``train.compile="auto"`` runs this on CUDA.

What a recorded step needs, and how this class gives it:
- fixed addresses: the batch is copied into ``x``/``target`` before each replay; the gradients
  are tensors made before recording, zeroed and accumulated into inside the graph, and put back
  on the parameters whenever something (an eager step, ``zero_grad``) has replaced them;
- no host sync inside, and warm-up steps before recording (cuDNN's algorithm choices, lazy
  initialisation), on a side stream as PyTorch's notes ask;
- autocast without its weight-cast cache, which would outlive the recording.
"""
from __future__ import annotations

__all__ = ["StepGraph", "RECORDABLE", "check_recordable", "cuda_capture", "side_stream"]

import contextlib
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

from .engine import forward_backward

T = TypeVar("T")
# Records ``fn`` (running it once, or only recording it) and returns (replay, fn's outputs).
Capture = Callable[[Callable[[], T]], tuple[Callable[[], None], T]]


RECORDABLE = {"cuda"}  # device types whose steps can be recorded (tests add "cpu" with a stand-in capture)


def check_recordable(device: torch.device, dtype: torch.dtype | None) -> None:
    """Refuse (``ValueError``) a run that ``train.compile="graph"`` cannot record."""
    if device.type not in RECORDABLE:
        raise ValueError(f"train.compile='graph' records a CUDA graph, and this run is on {device.type}: "
                         "use train.compile='auto' (or 'off' / 'default')")
    if dtype == torch.float16:
        raise ValueError("train.compile='graph' runs bf16 or fp32 (fp16's loss scaling is not part of the "
                         "recorded step): use train.amp='bf16' or train.compile='cudagraphs'")


def cuda_capture(fn: Callable[[], T]) -> tuple[Callable[[], None], T]:
    """Record ``fn``'s kernels as one CUDA graph; its outputs are rewritten in place by each replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, run the block on a fresh stream ordered after and before the current one."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


class StepGraph:
    """Forward, loss and backward of ``model`` on batches shaped like ``x``/``target``, replayed as one graph.

    ``net`` runs the weights (``model`` or its compiled wrapper); ``model`` owns the parameters.
    Making one warms up (``warmup`` passes of the very step that is then recorded, which also
    compiles ``net``) and records. Call ``train_step(optimizer, x, target)`` as ``engine.train_step``
    is called. The outputs (loss, logits) are the same tensors at every step, rewritten by the
    next replay: read or accumulate them before then (queued work is enough).

    The warm-up changes BatchNorm's statistics and the gradients: callers that must not see that
    (``train.warm_up``) save and restore the model around it.
    """

    def __init__(self, net: nn.Module, model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                 target: torch.Tensor, dtype: torch.dtype | None, warmup: int = 3,
                 capture: Capture | None = None):
        model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.x, self.target = x.clone(), target.clone()  # clone keeps the memory format (channels_last)
        self.grads = [torch.zeros_like(p) for p in self.params]
        self._attach()
        self.loss = torch.zeros((), device=x.device)
        self.logits = torch.zeros(len(x), target.shape[-1], device=x.device)  # (B, K), fp32

        def step() -> None:
            # Zeroed and accumulated into: the same gradient tensors at every replay, holding the
            # values of eager's fresh gradients (0 + g = g).
            torch._foreach_zero_(self.grads)
            loss, logits = forward_backward(net, loss_fn, self.x, self.target, dtype, autocast_cache=False)
            self.loss.copy_(loss)
            self.logits.copy_(logits)

        # The warm-up runs exactly what is recorded (same autocast settings, gradients attached), so
        # torch.compile's guards hold and nothing compiles while recording.
        with side_stream(x.device):
            for _ in range(warmup):
                step()
        self._replay, _ = (capture or cuda_capture)(step)

    def _attach(self) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and backward on ``x`` (B, 3, H, W) and ``target`` (B, K); returns (loss, logits)."""
        if self.params and self.params[0].grad is not self.grads[0]:
            self._attach()  # an eager step or zero_grad(set_to_none=True) replaced them since
        self.x.copy_(x)
        self.target.copy_(target)
        self._replay()
        return self.loss, self.logits

    def train_step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step: the graph's forward and backward, then ``optimizer.step()`` eagerly."""
        loss, logits = self(x, target)
        optimizer.step()
        return loss, logits
