"""qat.nn layers: float behaviour, and the int8 contract for each layer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import qat.nn as qnn
from qat.quant import convert, fuse_model, portable_int8, prepare_qat, verify_model
from qat.quant.backend import FixedQParamsFakeQuantize, nnq
from qat.quant.int8_ops import QuantizedLUT


class Wrap(nn.Module):
    """QuantStub → conv+BN → ``layer`` → DeQuantStub: one layer under test inside a minimal model."""

    def __init__(self, layer: nn.Module, channels: int = 8, binary: bool = False) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.conv = qnn.ConvModule2d(3, channels, 3, padding=1, norm_layer="bn")
        self.conv2 = qnn.ConvModule2d(3, channels, 1, norm_layer="bn") if binary else None
        self.layer = layer
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        q = self.quant(x)
        y = self.layer(self.conv(q), self.conv2(q)) if self.conv2 is not None else self.layer(self.conv(q))
        return self.dequant(y)


def _verify(model: nn.Module, x: Tensor, bound: float = 0.03):
    r = verify_model(model, x)
    assert not r.unconverted
    assert r.agreement["rel_l2"] <= bound, r.agreement
    return r


def test_quant_stub_fixed_scale_is_not_observed(x: Tensor) -> None:
    m = Wrap(nn.Identity())
    fq = prepare_qat(m)
    assert isinstance(fq.quant.activation_post_process, FixedQParamsFakeQuantize)
    fq(x * 50)  # huge inputs must not move a fixed grid
    q = convert(fq.eval())
    assert isinstance(q.quant, nnq.Quantize)
    assert float(q.quant.scale) == pytest.approx(1 / 128) and int(q.quant.zero_point) == 128


def test_quant_stub_observed_follows_data(x: Tensor) -> None:
    m = Wrap(nn.Identity())
    m.quant = qnn.QuantStub()
    fq = prepare_qat(m)
    fq(x * 4)
    q = convert(fq.eval())
    assert float(q.quant.scale) == pytest.approx(8 / 255, rel=0.05)


def test_quant_stub_rejects_bad_scale() -> None:
    with pytest.raises(ValueError, match="positive"):
        qnn.QuantStub(scale=0)


@pytest.mark.parametrize(
    ("layer", "binary", "reference"),
    [
        (qnn.Add(), True, torch.add),
        (qnn.AddReLU(), True, lambda a, b: torch.relu(a + b)),
        (qnn.Mul(), True, torch.mul),
        (qnn.MulScalar(0.5), False, lambda a: a * 0.5),
        (qnn.AddScalar(1.5), False, lambda a: a + 1.5),
        (qnn.MatMul(), True, torch.matmul),
    ],
)
def test_functional_ops(layer: nn.Module, binary: bool, reference, x: Tensor) -> None:
    a, b = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    got = layer(a, b) if binary else layer(a)
    torch.testing.assert_close(got, reference(a, b) if binary else reference(a))
    r = _verify(Wrap(layer, binary=binary), x)
    assert isinstance(r.int8_model.layer.op, nnq.QFunctional)


def test_cat(x: Tensor) -> None:
    class CatNet(Wrap):
        def forward(self, t: Tensor) -> Tensor:
            q = self.quant(t)
            return self.dequant(self.layer([self.conv(q), self.conv2(q)]))

    _verify(CatNet(qnn.Cat(dim=1), binary=True), x)


def test_conv_module_accepts_instance_class_and_name() -> None:
    shared_act = nn.ReLU()
    a = qnn.ConvModule2d(4, 8, 3, norm_layer=nn.BatchNorm2d(8), act_layer=shared_act)
    b = qnn.ConvModule2d(4, 8, 3, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU)
    c = qnn.ConvModule2d(4, 8, 3, norm_layer="bn", act_layer="relu")
    for m in (a, b, c):
        assert isinstance(m.norm, nn.BatchNorm2d) and isinstance(m.act, nn.ReLU)
        assert m.conv.bias is None  # BN follows: the bias would be folded away
        assert m.fuse_patterns() == [["conv", "norm", "act"]]
    assert a.act is not shared_act, "instances are copied so call sites never share an observer"
    plain = qnn.ConvModule2d(4, 8, 1)
    assert plain.conv.bias is not None and plain.fuse_patterns() == []


def test_conv_module_errors() -> None:
    with pytest.raises(ValueError, match="unknown activation 'gleu'"):
        qnn.ConvModule2d(4, 8, 3, act_layer="gleu")
    with pytest.raises(ValueError, match="16 features but the conv has 8"):
        qnn.ConvModule2d(4, 8, 3, norm_layer=nn.BatchNorm2d(16))
    with pytest.raises(ValueError, match="unknown norm_layer"):
        qnn.ConvModule2d(4, 8, 3, norm_layer="ln")


@pytest.mark.parametrize("name", ["relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "gelu", "silu", "tanh"])
def test_activation_int8_matches_fake_quant(name: str, x: Tensor) -> None:
    act = qnn.get_act(name)
    r = _verify(Wrap(act), x * 3, bound=0.02)
    if name in ("gelu", "hardswish", "sigmoid", "hardsigmoid", "tanh"):
        assert isinstance(r.int8_model.layer, QuantizedLUT)


def test_activations_by_class_and_silu_is_x_sigmoid() -> None:
    assert isinstance(qnn.get_act(nn.SiLU), qnn.SiLU)
    assert isinstance(qnn.get_act(qnn.GELU), nn.GELU)
    t = torch.randn(100)
    torch.testing.assert_close(qnn.SiLU()(t), torch.nn.functional.silu(t))


def test_softmax_int8(x: Tensor) -> None:
    r = _verify(Wrap(qnn.Softmax(dim=1)), x * 3, bound=0.05)
    assert r.int8_model.layer.scale == pytest.approx(1 / 256)


def test_relu6_fused_with_fixed_grid(x: Tensor) -> None:
    m = Wrap(nn.Identity())
    m.conv = qnn.ConvModule2d(3, 8, 3, padding=1, norm_layer="bn", act_layer="relu6")
    with torch.no_grad():
        m.conv.conv.weight.mul_(20)  # push pre-activations far beyond 6
    r = _verify(m, x, bound=0.01)
    qconv = r.int8_model.conv.conv
    assert type(qconv).__name__ == "ConvReLU2d" and qconv.scale == pytest.approx(6 / 255)
    assert r.int8_model(x).max() <= 6.0 + 1e-6


def test_channel_scale_fold_is_exact_in_float() -> None:
    m = Wrap(nn.Identity())
    m.layer = qnn.ChannelScale2d(8, 0.3)
    m.fuse_patterns = lambda: [["conv.conv", "conv.norm", "layer"]]
    with torch.no_grad():
        m.layer.weight.uniform_(0.1, 2.0)
    m.eval()
    t = torch.rand(2, 3, 8, 8)
    before = m(t)
    fuse_model(m)
    assert isinstance(m.layer, nn.Identity)
    torch.testing.assert_close(m(t), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("folded", [True, False])
def test_tiny_layer_scale_survives_int8(folded: bool, x: Tensor) -> None:
    """HENet's attention layer scales start at 1e-5: the branch must not collapse to zero in int8."""
    m = Wrap(qnn.ChannelScale2d(8, 1e-5))
    if folded:
        m.fuse_patterns = lambda: [["conv.conv", "conv.norm", "layer"]]
    r = verify_model(m, x, steps=0)
    out_fq, out_q = r.fake_quant_model(x), r.int8_model(x)
    assert out_q.abs().max() > 0
    assert out_fq.abs().max() < 1e-3  # the branch really is ~1e-5 times the conv output
    assert r.agreement["rel_l2"] <= 0.03, r.agreement
    assert isinstance(r.int8_model.layer, nn.Identity) == folded


def test_space_to_depth(x: Tensor) -> None:
    s2d = qnn.SpaceToDepth(2)
    t = torch.arange(16.0).view(1, 1, 4, 4)
    assert s2d(t).shape == (1, 4, 2, 2)
    torch.testing.assert_close(s2d(t)[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))
    with pytest.raises(ValueError, match="divisible"):
        s2d(torch.zeros(1, 1, 5, 4))
    r = _verify(Wrap(s2d), x, bound=1e-6)
    assert r.agreement["max_abs"] == 0.0


@pytest.mark.parametrize(("mode", "bound"), [("nearest", 1e-6), ("bilinear", 1e-6)])
def test_interpolate(mode: str, bound: float, x: Tensor) -> None:
    layer = qnn.Interpolate(scale_factor=2, mode=mode)
    assert layer(torch.zeros(1, 2, 4, 4)).shape == (1, 2, 8, 8)
    assert qnn.Interpolate(size=(3, 5))(torch.zeros(1, 2, 4, 4)).shape == (1, 2, 3, 5)
    _verify(Wrap(layer), x, bound=bound)
    with pytest.raises(ValueError, match="exactly one"):
        qnn.Interpolate()


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_squeeze_excite(gate: str, x: Tensor) -> None:
    se = qnn.SqueezeExcite(8, rd_ratio=0.5, gate=gate)
    assert se.reduce.conv.out_channels == 4
    _verify(Wrap(se), x)


@pytest.mark.parametrize("target", ["x86", "arm", "npu"])
def test_user_model_all_targets(target: str, user_net: nn.Module, x: Tensor) -> None:
    """A user's own model: no fusion list, fuses and converts, and int8 equals fake-quant."""
    r = verify_model(user_net, x, qconfig=target)
    assert not r.unconverted
    assert r.agreement["rel_l2"] <= 0.01, (target, r.agreement)


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(min_value=1e-3, max_value=0.2),
    zero_point=st.integers(min_value=0, max_value=255),
    fn=st.sampled_from([nn.GELU(), nn.Sigmoid(), nn.Tanh(), nn.Hardsigmoid(), nn.SiLU(), nn.Hardswish()]),
)
def test_lut_is_exact_to_fake_quant(scale: float, zero_point: int, fn: nn.Module) -> None:
    """Property: the int8 table equals fake-quant(f(dequant(code))) for every input code."""
    codes = torch.arange(256, dtype=torch.uint8)
    qx = torch._make_per_tensor_quantized_tensor(codes, scale, zero_point)
    out_scale, out_zp = 0.01, 37
    lut = QuantizedLUT(fn, out_scale, out_zp)
    expected = torch.fake_quantize_per_tensor_affine(fn(qx.dequantize()), out_scale, out_zp, 0, 255)
    torch.testing.assert_close(lut(qx).dequantize(), expected, rtol=0, atol=1e-6)
    assert torch.equal(lut(qx).int_repr(), lut.table(qx)), "forward must equal the 256-entry table"
    with portable_int8():  # the float evaluation (where the table kernel runs, the lines above used it)
        assert torch.equal(lut(qx).int_repr(), lut.table(qx))
