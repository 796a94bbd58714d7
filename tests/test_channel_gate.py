"""qat::channel_gate_u8: squeeze-and-excitation gates of a converted model as one int8 op."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from qat.nn import ConvModule2d, DeQuantStub, QuantStub, SqueezeExcite
from qat.quant import (
    calibrate,
    convert,
    disable_observer,
    enable_fake_quant,
    portable_int8,
    prepare_calibration,
    replay_ops,
)
from qat.quant.channel_gate import FusedChannelGate
from qat.quant.lut_kernel import lut_kernel_available, use_channel_gate_kernel

needs_kernel = pytest.mark.skipif(not lut_kernel_available(), reason="qat's kernels could not be built here")


class GateNet(nn.Module):
    def __init__(self, channels: int, squeeze: int, act: str | nn.Module, gate: str) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.conv = ConvModule2d(3, channels, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.se = SqueezeExcite(channels, squeeze, act_layer=act, gate=gate)
        self.dequant = DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.se(self.conv(self.quant(x))))


def _int8(net: nn.Module, x: Tensor, target: str = "x86") -> nn.Module:
    return convert(calibrate(prepare_calibration(net.eval(), target), [x]))


def _gate_input(q: nn.Module, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = q.se.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        q(x)
    handle.remove()
    return seen[0]


@needs_kernel
@pytest.mark.parametrize(
    "channels, squeeze, act, gate",
    [
        (20, 5, "relu", "hardsigmoid"),  # MobileNetV3; 20 and 5: partial 16-wide blocks and quads
        (96, 24, "silu", "sigmoid"),  # EfficientNet: SiLU as a table of its own int8 form
        (40, 10, "hardswish", "hardsigmoid"),
    ],
)
def test_fused_gate_equals_the_op_chain(channels: int, squeeze: int, act: str, gate: str) -> None:
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, 3, 7, 5, generator=g)  # batch 2, odd spatial sizes
    q = _int8(GateNet(channels, squeeze, act, gate), x)
    assert isinstance(q.se, FusedChannelGate), "convert() fuses a declared SqueezeExcite"
    inp = _gate_input(q, x)
    chain = q.se.chain(inp)
    simd, scalar = q.se.fused(inp, simd=True), q.se.fused(inp, simd=False)
    assert torch.equal(simd.int_repr(), scalar.int_repr()), "the SIMD and scalar loops agree exactly"
    assert (simd.q_scale(), simd.q_zero_point()) == (chain.q_scale(), chain.q_zero_point())
    diff = (simd.int_repr().int() - chain.int_repr().int()).abs()
    # the pool's mean is exact here and a float sum in torch: a tie may round the other way
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3
    assert simd.is_contiguous(memory_format=torch.channels_last)


@needs_kernel
@settings(max_examples=15, deadline=None)
@given(
    channels=st.integers(1, 70),
    squeeze=st.integers(1, 40),
    batch=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    spread=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
)
def test_fused_gate_on_any_sizes(
    channels: int, squeeze: int, batch: int, h: int, w: int, spread: float, seed: int
) -> None:
    """Any channel and squeeze count (partial blocks, quads of one), batch and map size, input range."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, h, w, generator=g) * spread
    q = _int8(GateNet(channels, squeeze, "relu", "hardsigmoid"), x)
    inp = _gate_input(q, x)
    chain, fused = q.se.chain(inp).int_repr().int(), q.se.fused(inp).int_repr().int()
    assert torch.equal(fused, q.se.fused(inp, simd=False).int_repr().int())
    diff = (fused - chain).abs()
    assert diff.max() <= 1 and int((diff > 0).sum()) <= max(1, diff.numel() // 1000)


@needs_kernel
def test_replay_ops_compares_the_fused_gate_as_one_op() -> None:
    """Its parts do not run when fused, so the per-op check replays the whole fake-quant SE on its
    int8 input: equal up to near-ties, and a wrong fused argument shows."""
    x = torch.randn(2, 3, 8, 8)
    fq = calibrate(prepare_calibration(GateNet(32, 8, "relu", "hardsigmoid").eval()), [x])
    q = convert(fq)
    enable_fake_quant(disable_observer(fq))
    assert isinstance(q.se, FusedChannelGate)
    ok = replay_ops(fq, q, x)
    assert ok["worst_steps"] <= 1.0 + 1e-3 and ok["mismatched"] <= 1e-3 * ok["compared"], ok
    args = list(q.se._args)
    args[16] = args[16].flip(0).contiguous()  # the gate table, reversed
    q.se._args = tuple(args)
    broken = replay_ops(fq, q, x)
    assert broken["worst_op"] == "se" and broken["worst_steps"] > 1, broken


@needs_kernel
def test_model_output_with_and_without_the_kernel() -> None:
    x = torch.randn(1, 3, 16, 16)
    q = _int8(GateNet(64, 16, "relu", "hardsigmoid"), x)
    with torch.no_grad():
        fast = q(x)
        with portable_int8():
            slow = q(x)
    assert torch.allclose(fast, slow, atol=1e-6)
    assert [n for n, _ in q.se.named_children()] == ["pool", "reduce", "expand", "gate", "mul"], (
        "the parts keep their names: the int8 state_dict is unchanged"
    )


@needs_kernel
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_portable_trace_has_no_gate_op() -> None:
    x = torch.randn(1, 3, 8, 8)
    q = _int8(GateNet(32, 8, "relu", "hardsigmoid"), x)
    with torch.no_grad():
        with portable_int8():
            portable = torch.jit.trace(q, x, check_trace=False)
        fast = torch.jit.trace(q, x, check_trace=False)
    assert "qat::channel_gate_u8" not in str(portable.inlined_graph)
    assert ("qat::channel_gate_u8" in str(fast.inlined_graph)) == use_channel_gate_kernel()


def test_gate_with_a_per_channel_activation_stays_unfused() -> None:
    """A reduce activation that is not one table (PReLU, a slope per channel) keeps the op chain."""
    x = torch.randn(1, 3, 8, 8)
    net = GateNet(16, 8, nn.PReLU(8), "hardsigmoid")
    with torch.no_grad():
        net.se.reduce.act.weight.copy_(torch.linspace(0.05, 0.4, 8))
    q = _int8(net, x)
    assert isinstance(q.se, SqueezeExcite) and not isinstance(q.se, FusedChannelGate)
    assert torch.isfinite(q(x)).all()


def test_arm_target_keeps_the_op_chain() -> None:
    """The op reproduces fbgemm's requantization; a model converted for qnnpack keeps its own."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("no qnnpack engine in this torch build")
    engine = torch.backends.quantized.engine
    try:
        x = torch.randn(1, 3, 8, 8)
        q = _int8(GateNet(16, 8, "relu", "hardsigmoid"), x, target="arm")
        assert type(q.se) is SqueezeExcite
        assert torch.isfinite(q(x)).all()
    finally:
        torch.backends.quantized.engine = engine


@needs_kernel
def test_bad_weights_name_the_layout() -> None:
    x = torch.randn(1, 3, 8, 8)
    q = _int8(GateNet(16, 4, "relu", "hardsigmoid"), x)
    args = list(q.se._args)
    args[2] = args[2].to(torch.int16)
    with pytest.raises(RuntimeError, match=r"w1 must be contiguous int8 \[ceil\(4/16\), ceil\(16/4\), 16, 4\]"):
        torch.ops.qat.channel_gate_u8(_gate_input(q, x), *args, True)


@needs_kernel
def test_loading_a_state_dict_refreshes_the_fused_gate() -> None:
    """An int8 state loaded into another converted model (what rebuild_int8 does) reaches the
    fused op: its arguments are re-read from the parts, not kept from the first convert."""
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(1)
    source = _int8(GateNet(32, 8, "relu", "hardsigmoid"), x)
    torch.manual_seed(2)
    target = _int8(GateNet(32, 8, "relu", "hardsigmoid"), torch.randn(1, 3, 8, 8) * 3)
    for name, m in source.named_modules():
        if isinstance(getattr(m, "scale", None), float) and not hasattr(m, "_packed_params"):
            dst = target.get_submodule(name)
            dst.scale, dst.zero_point = m.scale, m.zero_point
    inp = _gate_input(source, x)
    assert not torch.equal(target.se.fused(inp).int_repr(), source.se.fused(inp).int_repr())
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.se.fused(inp).int_repr(), source.se.fused(inp).int_repr())
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@needs_kernel
def test_fused_model_deep_copies() -> None:
    """(Whole-model pickling is not an option for any torch int8 model: its quantized convs do not
    unpickle; the pipeline exports a state_dict and TorchScript.)"""
    x = torch.randn(1, 3, 8, 8)
    q = _int8(GateNet(24, 8, "relu", "hardsigmoid"), x)
    copied = copy.deepcopy(q)
    assert copied.se._args is not q.se._args
    with torch.no_grad():
        assert torch.equal(copied(x), q(x))
