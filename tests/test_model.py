"""helpers.model: shapes, the exactness of the fast mixing paths, layouts and autocast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.config import get_preset
from helpers.model import (MIX_IMPLS, MixConv, MixingBlock, MixingNet, build_model, count_params,
                           resolve_mix_impl)

FAST = tuple(i for i in MIX_IMPLS if i != "naive") + ("auto",)


def small_net(**kw) -> MixingNet:
    args = dict(channels=[8, 12, 16], strides=[1, 2, 2], stem_channels=6, num_k=3,
                reduction_factor=2, head_hidden=(), drop_rate=0.3, num_classes=5)
    args.update(kw)
    torch.manual_seed(0)
    return MixingNet(**args)


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, floor: float = 0.0) -> None:
    # fp32, tolerance scaled to the tensor's magnitude (the paths sum in different orders),
    # or to ``floor``: gradients that are zero in exact arithmetic (a bias just before a
    # train-mode BatchNorm) are rounding noise, judged against the model's largest gradient.
    scale = max(expected.abs().max().item(), floor) + 1e-12
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def run(module: torch.nn.Module, impl: str, x: torch.Tensor, *extra) -> tuple[torch.Tensor, dict]:
    """Output and every gradient (params and input) of ``module`` under ``impl``."""
    module.zero_grad(set_to_none=True)
    for m in module.modules():
        if isinstance(m, MixConv):
            m.impl = impl
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(1)  # same dropout mask for every impl
    out = module(x, *extra)
    out = out[0] if isinstance(out, tuple) else out
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # non-trivial upstream grad
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    grads["<input>"] = x.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("k,stride,bias,hw", [(1, 1, False, 8), (3, 2, True, 9), (4, 2, False, 4), (2, 1, True, 5)])
def test_mixconv_fast_equals_naive(impl, k, stride, bias, hw):
    torch.manual_seed(0)
    conv = MixConv(5, 7, k, stride, bias=bias)
    conv.kernel_chunk = 2  # 5 images: chunks of 2, 2, 1 exercise the chunked kernel path
    h = torch.randn(5, 5, hw, hw)
    a = torch.softmax(torch.randn(5, k), 1).requires_grad_()
    y_ref, g_ref = run(conv, "naive", h, a)
    a_grad_ref = a.grad.clone()
    a.grad = None
    y, g = run(conv, impl, h, a)
    close(y, y_ref, "output")
    close(a.grad, a_grad_ref, "grad of a")
    floor = max(v.abs().max().item() for v in g_ref.values())
    for name in g_ref:
        close(g[name], g_ref[name], f"grad of {name}", floor)


@pytest.mark.parametrize("impl", ["naive", "stacked", "stacked_input"])
def test_a_channels_last_input_gives_a_channels_last_output(impl):
    """A convolution given an NCHW tensor and channels_last weights converts it first: an
    activation-sized copy every step, in the next block's forward and in this one's backward.
    So `stacked` sums its K outputs in their own layout, and `stacked_input` builds its stacked
    input in the input's (`kernel` works in NCHW by design)."""
    torch.manual_seed(0)
    conv = MixConv(6, 8, 3, impl=impl).to(memory_format=torch.channels_last)
    h = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    a = torch.softmax(torch.randn(2, 3), 1)
    y = conv(h, a)
    y.backward(torch.randn_like(y))  # a gradient in y's layout, as the next layer's backward gives
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert h.grad.is_contiguous(memory_format=torch.channels_last)
    close(y, conv._naive(h, a), "output")


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["stacked", "stacked_input"])  # naive: K plain convolutions
def test_no_convolution_in_the_compiled_backward_is_handed_an_nchw_gradient(impl):
    """torch.compile's traced backward graph, as inductor hands it on: a convolution_backward given
    an NCHW gradient and channels_last weights converts the gradient itself, an activation-sized
    copy each. The seed model traced 11 such before `stacked` summed in its own layout; the third
    H200's profile showed 11 calls a step of ATen's copy kernel (BENCHMARKS.md, "third H200")."""
    from benchmarks.conv_layouts import backward_conv_gradients, layout
    net = small_net(mix_impl=impl).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    grads = backward_conv_gradients(net, x, torch.bfloat16)
    assert len(grads) >= 7  # stem, and per block its bottleneck, mixing and skip convolutions
    nchw = [tuple(g.shape) for g in grads if layout(g) != "channels_last"]
    assert not nchw, f"NCHW gradients handed to convolution_backward: {nchw}"


def test_naive_is_the_formula():
    # Σ_k a_bk · C_k(h_b), image by image, with independent nn.functional calls.
    torch.manual_seed(0)
    conv = MixConv(4, 6, 3, stride=2, bias=True, impl="naive")
    h, a = torch.randn(2, 4, 7, 7), torch.rand(2, 3)
    w, b = conv.weight.chunk(3), conv.bias
    expected = torch.stack([sum(a[i, k] * F.conv2d(h[i:i + 1], w[k], b[k], 2, 1)[0] for k in range(3))
                            for i in range(2)])
    close(conv(h, a), expected, "naive vs formula")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("impl", FAST)
def test_network_fast_equals_naive(impl, train):
    net = small_net(gate="sigmoid" if train else "softmax", head_hidden=(9,))
    net.train(train)
    for block in net.blocks[1:]:
        block.mix.kernel_chunk = 3  # 4 images: chunks of 3 and 1
    x = torch.randn(4, 3, 16, 16)
    y_ref, g_ref = run(net, "naive", x)
    y, g = run(net, impl, x)
    close(y, y_ref, "logits")
    assert g.keys() == g_ref.keys()
    floor = max(v.abs().max().item() for v in g_ref.values())
    for name in g_ref:
        close(g[name], g_ref[name], f"grad of {name}", floor)


def test_block_a_comes_from_block_input():
    torch.manual_seed(0)
    block = MixingBlock(6, 8, stride=2, num_k=3, reduction_factor=2)
    x = torch.randn(2, 6, 8, 8)
    _, a = block(x, return_mix=True)
    close(a, torch.softmax(block.fc(x.mean(dim=(2, 3))), 1), "a")
    assert isinstance(block.shortcut, torch.nn.Sequential)  # shape changes → projection + BN
    assert isinstance(MixingBlock(8, 8).shortcut, torch.nn.Identity)


def test_state_dict_interchangeable():
    naive = small_net(mix_impl="naive").eval()
    kernel = small_net(mix_impl="kernel")
    torch.manual_seed(5)
    for p in kernel.parameters():  # make sure the load really replaces something
        p.data.normal_()
    assert naive.state_dict().keys() == kernel.state_dict().keys()
    kernel.load_state_dict(naive.state_dict())
    kernel.eval()
    x = torch.randn(2, 3, 16, 16)
    close(kernel(x), naive(x), "logits after load")
    assert kernel.set_mix_impl("stacked") is kernel and kernel.mix_impl == "stacked"


def test_shapes_and_mix_weights():
    net = small_net().eval()
    x = torch.randn(2, 3, 16, 16)
    feats = net.forward_features(x)
    assert feats.shape == (2, 16, 4, 4)                  # strides 1, 2, 2: 16 → 4
    assert net.forward_head(feats).shape == (2, 5)
    assert net.forward_head(feats, pre_logits=True).shape == (2, 16)
    logits, mix = net(x, return_mix=True)
    assert logits.shape == (2, 5) and len(mix) == 3
    for a in mix:
        assert a.shape == (2, 3)
        close(a.sum(1), torch.ones(2), "softmax rows")
    _, mix = small_net(gate="sigmoid").eval()(x, return_mix=True)
    assert all(((a > 0) & (a < 1)).all() for a in mix)


def test_stem_stride_halves_resolution():
    x = torch.randn(2, 3, 16, 16)
    assert small_net().eval().forward_features(x).shape == (2, 16, 4, 4)
    net = small_net(stem_stride=2).eval()
    assert net.stem(x).shape == (2, 6, 8, 8)            # the stem alone: 16 → 8
    assert net.forward_features(x).shape == (2, 16, 2, 2)  # then strides 1, 2, 2: 8 → 2
    cfg = get_preset("smoke", {"model.stem_stride": 2}).model
    assert build_model(cfg).stem.conv.stride == (2, 2)
    with pytest.raises(ValueError, match="stem_stride"):
        get_preset("smoke", {"model.stem_stride": 3})


def test_build_model_seed_config():
    cfg = get_preset("seed").model
    net = build_model(cfg)
    assert len(net.blocks) == cfg.num_blocks == 6
    assert [b.mix.out_channels for b in net.blocks] == cfg.channels
    assert [b.mix.in_channels for b in net.blocks] == [c // cfg.reduction_factor for c in cfg.channels]
    assert net.head.fc.out_features == 10 and net.head.drop.p == cfg.dropout
    # K·9·mid·C_out per block dominates; the exact total guards against silent changes.
    assert count_params(net) == 19_601_218


@pytest.mark.parametrize("impl", ("naive",) + FAST)
def test_channels_last_and_bf16_autocast(impl):
    x = torch.randn(4, 3, 16, 16)
    net_cl = small_net(mix_impl=impl).train().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    y_cl = net_cl(x_cl)
    net = small_net(mix_impl=impl).train()
    torch.manual_seed(1)
    y_ref = net(x)
    close(y_cl, y_ref, "channels_last logits")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, mix = net_cl(x_cl, return_mix=True)
        F.cross_entropy(logits, torch.arange(4) % 5).backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net_cl.parameters())


def test_resolve_and_validate_impl():
    assert resolve_mix_impl("naive", "cuda", 1024, 4 * 64) == "naive"
    # CUDA (H200, GPU_MEASUREMENTS.md): one stacked GEMM is fastest at every size; never "kernel"
    for hw in (32 * 32, 16 * 16, 4 * 4):
        assert resolve_mix_impl("auto", "cuda", hw, 4 * 1024) == "stacked"
    # CPU, NCHW (BENCHMARKS.md, "Model: mixing the inputs"): the K scaled inputs stacked in narrow
    # stride-1 blocks (the laptop model's three); elsewhere kernel mixing at ≥ 8×8 outputs, one
    # stacked GEMM below while K·C_out ≤ 1024, the formula beyond
    assert resolve_mix_impl("auto", "cpu", 16 * 16, 2 * 64) == "stacked_input"
    assert resolve_mix_impl("auto", "cpu", 4 * 4, 2 * 256) == "stacked_input"
    assert resolve_mix_impl("auto", "cpu", 16 * 16, 2 * 64, stride=2) == "kernel"
    assert resolve_mix_impl("auto", "cpu", 32 * 32, 4 * 256) == "kernel"
    assert resolve_mix_impl("auto", "cpu", 4 * 4, 4 * 256) == "stacked"
    assert resolve_mix_impl("auto", "cpu", 4 * 4, 4 * 1024) == "naive"
    # CPU, channels_last: the formula; CUDA: one stacked GEMM, either layout
    assert resolve_mix_impl("auto", "cpu", 16 * 16, 2 * 64, channels_last=True) == "naive"
    assert resolve_mix_impl("auto", "cuda", 16 * 16, 2 * 64) == "stacked"
    assert resolve_mix_impl("auto", "mps", 32 * 32, 4 * 64) == "naive"    # unmeasured devices: the formula
    with pytest.raises(ValueError, match="mix impl"):
        small_net().set_mix_impl("fast")
    with pytest.raises(ValueError, match="gate"):
        MixingBlock(4, 4, gate="relu")


def test_notebook_02_question_7_block_2_of_the_laptop_model():
    """Notebook 02, check 7: the laptop model's block 2 mixes a 32-wide, 8×8 input (after max-pooling)
    into 128 channels with K = 2 at stride 1: 4,096 numbers per image stacked on the input side, 16,384 on the output side."""
    model = build_model(get_preset("laptop").model).eval()
    seen = {}
    hook = model.blocks[1].mix.register_forward_pre_hook(lambda m, args: seen.update(h=args[0].shape))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    hook.remove()
    mix = model.blocks[1].mix
    assert seen["h"] == (1, 32, 8, 8) and mix.num_k == 2 and mix.out_channels == 128 and mix.stride == 1
    assert mix.num_k * 32 * 8 * 8 == 4096 and mix.num_k * mix.out_channels * mix.out_size(8) ** 2 == 16384
