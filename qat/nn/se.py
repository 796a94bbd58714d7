"""Quantizable squeeze-and-excitation."""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.activations import get_act
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Mul

__all__ = ["SqueezeExcite", "make_divisible"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10 % (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class SqueezeExcite(nn.Module):
    """Global pool → 1×1 reduce + act → 1×1 expand → gate → int8 multiply with the input.

    ``gate`` is ``"sigmoid"`` (EfficientNet) or ``"hardsigmoid"`` (MobileNetV3); both have a
    fixed int8 output grid. ``squeeze_channels`` wins over ``rd_ratio``.
    """

    #: Read by ``qat.quant.convert``: the int8 form may run as one fused op (``qat.quant.channel_gate``).
    int8_fused = "channel_gate"

    def __init__(
        self,
        in_channels: int,
        squeeze_channels: int | None = None,
        rd_ratio: float = 0.25,
        act_layer: str | type[nn.Module] | nn.Module = "relu",
        gate: str | type[nn.Module] | nn.Module = "sigmoid",
        divisor: int = 1,
    ) -> None:
        super().__init__()
        if squeeze_channels is None:
            squeeze_channels = (
                make_divisible(in_channels * rd_ratio, divisor) if divisor > 1 else max(1, int(in_channels * rd_ratio))
            )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = ConvModule2d(in_channels, squeeze_channels, 1, act_layer=act_layer)
        self.expand = ConvModule2d(squeeze_channels, in_channels, 1)
        self.gate = get_act(gate)
        self.mul = Mul()

    def forward(self, x: Tensor) -> Tensor:
        return self.mul(x, self.gate(self.expand(self.reduce(self.pool(x)))))
