"""``qat.nn.FloatFunctional``: Horizon's and torch's spelling, quantized exactly as ``qat.nn.Add`` & co."""

from __future__ import annotations

import pytest
import torch
from contract import assert_int8_contract, settle_batchnorm
from torch import Tensor, nn

import qat.nn as qnn
from qat.quant import calibrate, check_model, convert, prepare_calibration, verify_model
from qat.quant.float_functional import QuantizedFunctional, _negated

# add_scalar is left to the comparison with qat.nn.AddScalar below: int8 (torch's kernel) adds the
# constant rounded to the input grid, fake-quant adds it exactly -- the same for both spellings.
_OPS = ("add", "add_relu", "sub", "mul", "mul_scalar", "cat", "matmul", "mean", "sum")


class PortedNet(nn.Module):
    """A model as ported from Horizon: one ``FloatFunctional`` per call site, called by method."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.conv1 = qnn.ConvModule2d(3, 8, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.conv2 = qnn.ConvModule2d(8, 8, 3, padding=1, norm_layer="bn")
        self.conv3 = qnn.ConvModule2d(8, 8, 1, norm_layer="bn")
        for name in (*_OPS, "join"):
            setattr(self, f"ff_{name}", qnn.FloatFunctional())
        self.head = nn.Linear(16, 10)
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.quant(x))
        a, b = self.conv2(x), self.conv3(x)
        s = self.ff_add_relu.add_relu(x, a)
        d = self.ff_sub.sub(s, b)
        m = self.ff_mul.mul(d, b)
        m = self.ff_mul_scalar.mul_scalar(m, 0.5)
        c = self.ff_cat.cat([m, self.ff_add.add(s, d)], dim=1)
        t = c.flatten(2)
        gram = self.ff_matmul.matmul(t, t, y_trans=True)
        rows = self.ff_sum.sum(gram, dim=-1, keepdim=False)  # [N, 16]
        pooled = self.ff_mean.mean(c, dim=(2, 3))  # [N, 16]
        return self.dequant(self.head(self.ff_join.add(rows, pooled)))


@pytest.fixture
def x() -> Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, 8, 8) * 2 - 1


def test_float_ops_compute_what_their_names_say(x: Tensor) -> None:
    ff = qnn.FloatFunctional()
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(ff.add(a, b), a + b)
    torch.testing.assert_close(ff.sub(a, b), a - b)
    torch.testing.assert_close(ff.add_relu(a, b), torch.relu(a + b))
    torch.testing.assert_close(ff.mul_scalar(a, 3.0), a * 3)
    torch.testing.assert_close(ff.sum(a, dim=(1, 2)), a.sum((1, 2)))
    torch.testing.assert_close(ff.mean(a, dim=1, keepdim=True), a.mean(1, keepdim=True))
    torch.testing.assert_close(ff.matmul(a, b, y_trans=True), a @ b.transpose(-1, -2))
    torch.testing.assert_close(ff.matmul(a, b, x_trans=True), a.transpose(-1, -2) @ b)


def test_check_model_accepts_every_op_and_still_flags_a_raw_subtraction(x: Tensor) -> None:
    report = check_model(PortedNet(), x)
    assert report.ok and not report.warnings, str(report)

    class RawSub(PortedNet):
        def forward(self, x: Tensor) -> Tensor:
            x = self.conv1(self.quant(x))
            return self.dequant(self.conv2(x) - self.conv3(x))

    bad = check_model(RawSub(), x)
    assert not bad.ok and "FloatFunctional" in str(bad)


def test_int8_equals_fake_quant_per_op(x: Tensor) -> None:
    torch.manual_seed(0)
    net = settle_batchnorm(PortedNet(), x)
    r = verify_model(net, x)
    assert_int8_contract(r, min_compared=1_000)
    for name in (*_OPS, "join"):
        assert isinstance(getattr(r.int8_model, f"ff_{name}"), QuantizedFunctional), name


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
def test_int8_negation_is_exact(dtype: torch.dtype) -> None:
    zp = 37 if dtype == torch.quint8 else -20
    q = torch.quantize_per_tensor(torch.randn(1000) * 3, 0.05, zp, dtype)
    neg = _negated(q)
    assert neg.dtype == dtype
    torch.testing.assert_close(neg.dequantize(), -q.dequantize(), rtol=0, atol=0)


class _Wrappers(nn.Module):
    """Residual ops through ``qat.nn.Add``, ``AddReLU``, ``Mul``, ``Cat``, ``MulScalar``."""

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.conv1 = qnn.ConvModule2d(3, 8, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.conv2 = qnn.ConvModule2d(8, 8, 3, padding=1, norm_layer="bn")
        self.ops = nn.ModuleDict(ops)
        self.ported = isinstance(ops["add"], qnn.FloatFunctional)
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.quant(x))
        a = self.conv2(x)
        o = self.ops
        if self.ported:
            y = o["add_relu"].add_relu(x, a)
            y = o["mul"].mul(o["add"].add(y, a), x)
            y = o["cat"].cat([o["mul_scalar"].mul_scalar(y, 0.5), o["add_scalar"].add_scalar(x, 0.25)], dim=1)
        else:
            y = o["add_relu"](x, a)
            y = o["mul"](o["add"](y, a), x)
            y = o["cat"]([o["mul_scalar"](y), o["add_scalar"](x)])
        return self.dequant(y)


def _int8(model: nn.Module, x: Tensor) -> tuple[nn.Module, nn.Module]:
    fq = prepare_calibration(model, "x86")
    calibrate(fq, [x])
    return fq, convert(fq)


def test_quantizes_exactly_like_the_qat_nn_wrappers(x: Tensor) -> None:
    torch.manual_seed(0)
    wrappers = _Wrappers(
        {
            "add": qnn.Add(),
            "add_relu": qnn.AddReLU(),
            "mul": qnn.Mul(),
            "cat": qnn.Cat(),
            "mul_scalar": qnn.MulScalar(0.5),
            "add_scalar": qnn.AddScalar(0.25),
        }
    )
    ported = _Wrappers(
        {k: qnn.FloatFunctional() for k in ("add", "add_relu", "mul", "cat", "mul_scalar", "add_scalar")}
    )
    ported.load_state_dict(wrappers.state_dict())
    settle_batchnorm(wrappers, x)
    ported.load_state_dict(wrappers.state_dict())
    fq_w, q_w = _int8(wrappers.eval(), x)
    fq_p, q_p = _int8(ported.eval(), x)
    with torch.no_grad():
        assert torch.equal(fq_w(x), fq_p(x))
        out_w, out_p = q_w(x), q_p(x)
    assert torch.equal(out_w, out_p)
    for key in ("add", "add_relu", "mul", "cat"):
        assert (q_p.ops[key].scale, q_p.ops[key].zero_point) == (q_w.ops[key].op.scale, q_w.ops[key].op.zero_point)
