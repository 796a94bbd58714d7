"""How ops without a faithful upstream int8 kernel become int8.

An elementwise nonlinearity on an int8 input has only 256 possible inputs, so its int8 form
is a 256-entry lookup table: ``table[code] = quantize(f(dequantize(code)))``. The table is
built from the very fake-quant the QAT model applies, so int8 and fake-quant agree bit for bit
(torch's own quantized ``gelu`` instead keeps the input's grid and silently disagrees).

Averaging ops (average pooling, bilinear resize) get an observed output grid of their own and
an int8 form that accumulates the int8 inputs and rounds once to that grid -- what the
fake-quant model computes. torch's quantized pooling instead rounds to the *input* grid, which
fake-quant does not model (measured: ~3 % relative error at a classifier's global pool).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qat.quant.backend import nnq
from qat.quant.lut_kernel import use_lut_kernel

__all__ = ["INT8_POLICIES", "Int8Policy", "QuantizedLUT", "QuantizedRequant", "QuantizedSoftmax", "policy_for"]


@dataclass(frozen=True)
class Int8Policy:
    """``kind``: ``lut`` (table), ``requant`` (accumulate, round once to an observed grid),
    ``softmax`` (torch kernel), ``passthrough`` (keeps the input grid, no observer).

    ``fixed_qparams``: the output grid ``(scale, zero_point)`` when it is fixed rather than observed.
    """

    kind: str
    fixed_qparams: tuple[float, int] | None = None


INT8_POLICIES: dict[type[nn.Module], Int8Policy] = {
    nn.GELU: Int8Policy("lut"),
    nn.SiLU: Int8Policy("lut"),
    nn.Mish: Int8Policy("lut"),
    nn.ELU: Int8Policy("lut"),
    # torch's quantized hardswish evaluates its own float expression; the table is fake-quant's own.
    nn.Hardswish: Int8Policy("lut"),
    # torch's quantized PReLU observes the 1-D slopes with the per-channel weight observer (convert
    # fails) and stores them rounded where fake-quant never did; the LUT form is exact per channel.
    nn.PReLU: Int8Policy("lut"),
    nn.Sigmoid: Int8Policy("lut", (1.0 / 256, 0)),
    nn.Hardsigmoid: Int8Policy("lut", (1.0 / 256, 0)),
    nn.Tanh: Int8Policy("lut", (1.0 / 128, 128)),
    nn.Softmax: Int8Policy("softmax", (1.0 / 256, 0)),
    nn.ReLU6: Int8Policy("passthrough"),
    nn.AdaptiveAvgPool2d: Int8Policy("requant"),
    nn.AvgPool2d: Int8Policy("requant"),
    # torch's quantized LayerNorm lands one grid step off fake-quant on ~0.1 % of outputs (measured
    # on MobileViT; the flips grew to 0.49 rel. L2 at the logits); requant rounds as fake-quant does.
    nn.LayerNorm: Int8Policy("requant"),
}


def policy_for(module: nn.Module) -> Int8Policy | None:
    """The int8 policy of a module: its ``int8_policy`` attribute or the built-in table."""
    own = getattr(module, "int8_policy", None)
    return own if isinstance(own, Int8Policy) else INT8_POLICIES.get(type(module))


def _float_fn(module: nn.Module) -> nn.Module:
    """A clean float copy of an observed module (no observer child, no hooks)."""
    fn = copy.copy(module)
    fn._modules = {k: v for k, v in module._modules.items() if k != "activation_post_process"}
    fn._forward_hooks = type(module._forward_hooks)()
    fn._forward_pre_hooks = type(module._forward_pre_hooks)()
    fn.__dict__.pop("qconfig", None)
    return fn


class _Requantized(nn.Module):
    """``quantize(fn(dequantize(x)), scale, zero_point)``: a float op between two int8 grids."""

    def __init__(self, fn: nn.Module, scale: float, zero_point: int) -> None:
        super().__init__()
        self.fn = fn
        self.scale = float(scale)
        self.zero_point = int(zero_point)

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> _Requantized:
        scale, zero_point = mod.activation_post_process.calculate_qparams()
        return cls(_float_fn(mod), float(scale), int(zero_point))

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if not x.is_quantized:
            raise TypeError(f"{type(self).__name__} expects an int8 tensor; is a QuantStub missing upstream?")
        y = self.fn(x.dequantize(), *args, **kwargs)
        return torch.quantize_per_tensor(y, self.scale, self.zero_point, torch.quint8)

    def extra_repr(self) -> str:
        return f"fn={type(self.fn).__name__}, scale={self.scale:.6g}, zero_point={self.zero_point}"


class QuantizedLUT(_Requantized):
    """An elementwise function on int8 tensors, equal to a 256-entry table per input grid.

    ``table(x)[code] = quantize(f(dequantize(code)))`` is the int8 definition (what an NPU
    runs). ``forward`` looks the codes up in that table with ``qat::lut_u8`` where the CPU has a
    fast byte lookup (:mod:`qat.quant.lut_kernel`), and otherwise evaluates the same expression
    on the dequantized tensor -- the same value for every code. Both keep the input's memory
    format (channels-last from fbgemm's convs), so the next conv needs no relayout.
    """

    def __init__(self, fn: nn.Module, scale: float, zero_point: int) -> None:
        super().__init__(fn, scale, zero_point)
        self._raw_tables: dict[tuple[torch.dtype, float, int, float, int], Tensor] = {}
        use_lut_kernel()  # build and query the kernel now, not inside a later trace

    @property
    def elementwise(self) -> bool:
        """One table for every element (PReLU with a slope per channel needs one per channel)."""
        return not (isinstance(self.fn, nn.PReLU) and self.fn.num_parameters > 1)

    @torch.no_grad()
    def table(self, x: Tensor) -> Tensor:
        """The output codes for every input code of ``x``'s grid (index ``code - dtype.min``)."""
        info = torch.iinfo(x.dtype)
        codes = torch.arange(info.min, info.max + 1, dtype=torch.float32)
        y = self.fn((codes - x.q_zero_point()) * x.q_scale())
        return torch.quantize_per_tensor(y, self.scale, self.zero_point, torch.quint8).int_repr()

    def raw_table(self, x: Tensor) -> Tensor:
        """:meth:`table` indexed by the stored byte instead (qint8 code -1 is byte 255); cached per
        input and output grid."""
        key = (x.dtype, x.q_scale(), x.q_zero_point(), self.scale, self.zero_point)
        if key not in self._raw_tables:
            table = self.table(x)
            self._raw_tables[key] = table.roll(128) if x.dtype == torch.qint8 else table
        return self._raw_tables[key]

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if (
            not args
            and not kwargs
            and x.is_quantized
            and x.qscheme() == torch.per_tensor_affine
            and self.elementwise
            and use_lut_kernel()
        ):
            return torch.ops.qat.lut_u8(x, self.raw_table(x), self.scale, self.zero_point, True)
        return super().forward(x, *args, **kwargs)


class QuantizedRequant(_Requantized):
    """A linear op (averaging, resizing) on int8 values, rounded once to its own observed grid.

    The int8 inputs are exact in float32, and so is their sum over a pooling window.
    """


class QuantizedSoftmax(nnq.Softmax):
    """torch's quantized softmax, built from a float ``nn.Softmax`` with a fixed output grid."""

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> QuantizedSoftmax:
        scale, zero_point = mod.activation_post_process.calculate_qparams()
        return cls(mod.dim, float(scale), int(zero_point))
