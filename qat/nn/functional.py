"""Tensor arithmetic as modules, so each op gets its own observer and a real int8 kernel.

Each wrapper owns one ``FloatFunctional``: use a separate instance for every call site
(sharing one instance shares its observer, which ``qat.quant.check_model`` reports).
:class:`FloatFunctional` itself (torch's and Horizon's spelling: ``ff.add(a, b)``, ``ff.sub``,
``ff.mean(x, dim)``...) is here for ported models; it quantizes exactly as these wrappers do.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.quant.backend import FloatFunctional as _TorchFloatFunctional
from qat.quant.float_functional import FloatFunctional

__all__ = ["Add", "AddReLU", "AddScalar", "Cat", "FloatFunctional", "MatMul", "Mul", "MulScalar"]


class _FunctionalOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.op = _TorchFloatFunctional()


class Add(_FunctionalOp):
    """``x + y`` (residual connections)."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.op.add(x, y)


class AddReLU(_FunctionalOp):
    """``relu(x + y)`` fused into one int8 op."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.op.add_relu(x, y)


class Mul(_FunctionalOp):
    """``x * y`` with broadcasting (gates, attention)."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.op.mul(x, y)


class MulScalar(_FunctionalOp):
    """``x * c`` for a Python constant; int8 rescales instead of re-observing."""

    def __init__(self, scalar: float) -> None:
        super().__init__()
        self.scalar = float(scalar)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.mul_scalar(x, self.scalar)

    def extra_repr(self) -> str:
        return f"scalar={self.scalar}"


class AddScalar(_FunctionalOp):
    """``x + c`` for a Python constant."""

    def __init__(self, scalar: float) -> None:
        super().__init__()
        self.scalar = float(scalar)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.add_scalar(x, self.scalar)

    def extra_repr(self) -> str:
        return f"scalar={self.scalar}"


class Cat(_FunctionalOp):
    """``torch.cat(tensors, dim)``; int8 requantizes every input to one shared scale."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, tensors: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        return self.op.cat(list(tensors), dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class MatMul(_FunctionalOp):
    """``x @ y`` (attention scores, value mixing)."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.op.matmul(x, y)
