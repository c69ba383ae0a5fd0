"""Which convolutions in torch.compile's backward graph are handed an NCHW gradient.

    python benchmarks/conv_layouts.py                       # the seed model, mix_impl=stacked
    python benchmarks/conv_layouts.py --impl stacked_input --preset laptop

With channels_last weights (as every GPU preset trains), a ``convolution_backward`` given an
NCHW gradient converts it to channels_last itself: one activation-sized copy per call, every step,
inside the compiled backward, where inductor cannot fuse it away. This traces one training step
through AOTAutograd on the CPU (no GPU needed; the traced strides are what inductor hands the
convolutions on any device) and lists each ``convolution_backward``'s gradient and its layout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.config import get_preset  # noqa: E402
from helpers.model import MIX_IMPLS, build_model  # noqa: E402


def backward_conv_gradients(model: nn.Module, x: torch.Tensor,
                            dtype: torch.dtype | None = torch.bfloat16) -> list[torch.Tensor]:
    """The gradient (a fake tensor: shape and strides) each ``convolution_backward`` of ``model``'s
    traced backward graph receives, for one forward + backward on ``x`` under autocast ``dtype``."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    grads = []

    def backward_graph(gm, example_inputs):  # records, then runs the graph as traced
        grads.extend(n.args[0].meta["val"] for n in gm.graph.nodes
                     if n.target is torch.ops.aten.convolution_backward.default)
        return make_boxed_func(gm)

    torch._dynamo.reset()
    net = torch.compile(model, backend=aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm),
                                                    bw_compiler=backward_graph))
    with torch.autocast(x.device.type, dtype or torch.float32, enabled=dtype is not None):
        logits = net(x)
    logits.float().sum().backward()
    torch._dynamo.reset()
    return grads


def layout(t: torch.Tensor) -> str:
    if t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"  # a 1×1 map counts as both
    return "NCHW" if t.is_contiguous() else f"strides {t.stride()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", help="config preset whose model is traced")
    p.add_argument("--impl", default="stacked", choices=MIX_IMPLS, help="model.mix_impl")
    p.add_argument("--batch", type=int, default=4, help="images in the traced step (strides do not depend on it)")
    args = p.parse_args(argv)
    cfg = get_preset(args.preset, [f"model.mix_impl={args.impl}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    grads = backward_conv_gradients(model, x)
    for g in grads:
        print(f"  {str(tuple(g.shape)):22s} {layout(g)}")
    nchw = sum(layout(g) != "channels_last" for g in grads)
    print(f"{args.preset} model, mix_impl={args.impl}, channels_last, bf16: {len(grads)} convolution "
          f"backwards, {nchw} handed a gradient not in channels_last (each converts it: a copy a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
