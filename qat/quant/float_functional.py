"""``FloatFunctional`` with Horizon's extra ops (``sub``, ``sum``, ``mean``) and its int8 form.

Models ported from horizon_plugin_pytorch or torchvision call ``self.ff.add(a, b)``,
``self.ff.sub(a, b)``, ``self.ff.mean(x, dim=...)`` on a ``FloatFunctional`` member. This class
keeps torch's methods (``add``, ``add_scalar``, ``mul``, ``mul_scalar``, ``cat``, ``add_relu``,
``matmul``: one output observer each, exactly as ``qat.nn.Add`` & co.) and adds Horizon's:

- ``sub(x, y)``: fake-quant of ``x - y``. int8 negates ``y`` exactly (``q' = qmin + qmax - q`` on
  the mirrored zero point: the same values with the opposite sign) and runs the int8 ``add``, so it
  rounds as ``qat.nn.Add`` does;
- ``sum`` / ``mean`` over dims: int8 sums the dequantized codes and rounds once to the observed
  output grid, the arithmetic fake-quant models (torch's quantized mean would round to the input
  grid first);
- ``matmul(x, y, x_trans=False, y_trans=False)``: Horizon's transposed operands (free reshapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qat.quant.backend import FloatFunctional as _TorchFloatFunctional
from qat.quant.fast_int8 import FastQFunctional

__all__ = ["FF_METHODS", "FloatFunctional", "QuantizedFunctional", "functional_mapping"]

#: Every op method of :class:`FloatFunctional` (torch's and Horizon's).
FF_METHODS = ("add", "add_scalar", "mul", "mul_scalar", "cat", "add_relu", "matmul", "sub", "sum", "mean")

Dims = int | Sequence[int] | None


def _transposed(x: Tensor, y: Tensor, x_trans: bool, y_trans: bool) -> tuple[Tensor, Tensor]:
    return (x.transpose(-1, -2) if x_trans else x), (y.transpose(-1, -2) if y_trans else y)


def _reduce(fn: str, x: Tensor, dim: Dims, keepdim: bool) -> Tensor:
    op = getattr(torch, fn)
    return op(x) if dim is None else op(x, dim=dim, keepdim=keepdim)


class FloatFunctional(_TorchFloatFunctional):
    """torch's ``FloatFunctional`` plus Horizon's ``sub``, ``sum``, ``mean`` and transposed ``matmul``.

    Use one instance per call site (one observer, one int8 output grid), as with ``qat.nn.Add``.
    """

    def sub(self, x: Tensor, y: Tensor) -> Tensor:
        """``x - y``, observed."""
        return self.activation_post_process(torch.sub(x, y))

    def sum(self, x: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
        """``x.sum(dim, keepdim)``, observed."""
        return self.activation_post_process(_reduce("sum", x, dim, keepdim))

    def mean(self, x: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
        """``x.mean(dim, keepdim)``, observed."""
        return self.activation_post_process(_reduce("mean", x, dim, keepdim))

    def matmul(self, x: Tensor, y: Tensor, x_trans: bool = False, y_trans: bool = False) -> Tensor:
        """``x @ y`` (each operand optionally transposed in its last two dims), observed."""
        return super().matmul(*_transposed(x, y, x_trans, y_trans))


def _negated(x: Tensor) -> Tensor:
    """``-x`` as a quantized tensor on the mirrored grid: every value exact, no rounding."""
    info = torch.iinfo(x.int_repr().dtype)
    mirror = info.min + info.max
    codes = (mirror - x.int_repr().to(torch.int32)).to(x.int_repr().dtype)
    return torch._make_per_tensor_quantized_tensor(codes, x.q_scale(), mirror - x.q_zero_point())


class QuantizedFunctional(FastQFunctional):
    """The int8 form of :class:`FloatFunctional`: torch's ``QFunctional`` ops plus ``sub``, ``sum``, ``mean``."""

    def sub(self, x: Tensor, y: Tensor) -> Tensor:
        return super().add(x, _negated(y))

    def _requantize(self, r: Tensor, dtype: torch.dtype) -> Tensor:
        return torch.quantize_per_tensor(r, self.scale, self.zero_point, dtype)

    def sum(self, x: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
        return self._requantize(_reduce("sum", x.dequantize(), dim, keepdim), x.dtype)

    def mean(self, x: Tensor, dim: Dims = None, keepdim: bool = False) -> Tensor:
        return self._requantize(_reduce("mean", x.dequantize(), dim, keepdim), x.dtype)

    def matmul(self, x: Tensor, y: Tensor, x_trans: bool = False, y_trans: bool = False) -> Tensor:
        x, y = _transposed(x, y, x_trans, y_trans)
        return super().matmul(x.contiguous(), y.contiguous())

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False) -> QuantizedFunctional:
        scale, zero_point = mod.activation_post_process.calculate_qparams()
        new = cls()
        new.scale, new.zero_point = float(scale), int(zero_point)
        return new


def functional_mapping(model: nn.Module) -> dict[type, type]:
    """``convert`` mapping entries for the :class:`FloatFunctional` (sub)classes found in ``model``."""
    return {type(m): QuantizedFunctional for m in model.modules() if isinstance(m, FloatFunctional)}
