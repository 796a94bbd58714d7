"""Activations that run in int8 after ``qat.quant.convert``.

How each one becomes int8 (decided in ``qat.quant.int8_ops``, documented here for users):

- ``ReLU``: fused into the preceding conv/linear, or runs on the int8 tensor as is.
- ``ReLU6``: fused as conv+bn+relu whose output grid is fixed to [0, 6]; the grid's saturation
  *is* the clamp at 6, so int8 and fake-quant agree exactly. Standalone it keeps its input's grid.
- ``Sigmoid`` / ``Hardsigmoid``: fixed output grid 1/256 (as torch's int8 kernels), int8 lookup table.
- ``GELU`` / ``Hardswish`` / ``Tanh`` / ``Mish``: a 256-entry int8 lookup table built from the
  observed input and output grids -- bit-exact to the fake-quant model (NPUs implement
  nonlinearities the same way); on CPUs with AVX-512 VBMI it runs as a byte lookup
  (``qat.quant.lut_kernel``).
- ``SiLU`` (Swish): ``x * sigmoid(x)`` with a ``FloatFunctional`` multiply, as upstream has no
  int8 SiLU kernel.
- ``Softmax``: torch's quantized softmax with a fixed 1/256 output grid.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from qat.nn.functional import Mul

__all__ = [
    "GELU",
    "Hardsigmoid",
    "Hardswish",
    "ReLU",
    "ReLU6",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Swish",
    "Tanh",
    "get_act",
]

ReLU = nn.ReLU
ReLU6 = nn.ReLU6
Hardswish = nn.Hardswish
Hardsigmoid = nn.Hardsigmoid
Sigmoid = nn.Sigmoid
GELU = nn.GELU
Tanh = nn.Tanh
Softmax = nn.Softmax


class SiLU(nn.Module):
    """SiLU / Swish as ``x * sigmoid(x)``: a fixed-grid sigmoid and an int8 multiply."""

    #: Each output depends on its own input only, so the int8 form is a 256-entry table
    #: (read by ``qat.quant.channel_gate`` to fold it into a fused op).
    elementwise = True

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.sigmoid = nn.Sigmoid()
        self.mul = Mul()

    def forward(self, x: Tensor) -> Tensor:
        return self.mul(x, self.sigmoid(x))


Swish = SiLU

_BY_NAME: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "hswish": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "hsigmoid": nn.Hardsigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": SiLU,
    "swish": SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def get_act(spec: str | type[nn.Module] | nn.Module | None) -> nn.Module | None:
    """Build an activation from a name (``"gelu"``), a class (``nn.GELU``) or an instance.

    Instances are deep-copied so that a module passed once and used in many places (as
    reference code often does: ``act_layer=nn.GELU()``) never shares one observer. A plain
    ``nn.SiLU`` becomes :class:`SiLU`, whose int8 form is exact.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown activation {spec!r}; choose one of {sorted(_BY_NAME)}")
        return _BY_NAME[key]()
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return SiLU() if spec is nn.SiLU else spec()
    if isinstance(spec, nn.Module):
        return SiLU() if type(spec) is nn.SiLU else copy.deepcopy(spec)
    raise TypeError(f"act_layer must be a name, an nn.Module class or instance, got {type(spec).__name__}")
