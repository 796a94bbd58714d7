"""PP-LCNet depthwise-separable block (Cui et al., 2021): dw conv, optional SE, pw conv, hardswish."""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.se import SqueezeExcite

__all__ = ["LCNetBlock"]


class LCNetBlock(nn.Module):
    """k×k depthwise-BN-act (stride) → [SE] → 1×1-BN-act; no residual.

    SE follows PaddleClas: ``channels // se_reduction`` squeeze channels, ReLU, hard-sigmoid gate.
    Hardswish runs as an int8 lookup table with an observed output grid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        use_se: bool = False,
        se_reduction: int = 4,
        act_layer: str | type[nn.Module] | nn.Module = "hardswish",
    ) -> None:
        super().__init__()
        self.dw = ConvModule2d(
            in_channels,
            in_channels,
            kernel_size,
            stride,
            (kernel_size - 1) // 2,
            groups=in_channels,
            norm_layer="bn",
            act_layer=act_layer,
        )
        self.se = (
            SqueezeExcite(in_channels, squeeze_channels=in_channels // se_reduction, gate="hardsigmoid")
            if use_se
            else None
        )
        self.pw = ConvModule2d(in_channels, out_channels, 1, norm_layer="bn", act_layer=act_layer)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        return self.pw(x)
