"""ResNet basic block with a fused int8 ``relu(x + shortcut)``."""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import AddReLU

__all__ = ["BasicBlock"]


class BasicBlock(nn.Module):
    """3x3 conv+BN+ReLU → 3x3 conv+BN, plus the shortcut, then ReLU as one :class:`qat.nn.AddReLU`.

    The shortcut is a 1x1 strided conv+BN when the block changes shape (torchvision's
    ``downsample``), else the identity.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvModule2d(
            in_channels, out_channels, 3, stride=stride, padding=1, norm_layer="bn", act_layer="relu"
        )
        self.conv2 = ConvModule2d(out_channels, out_channels, 3, padding=1, norm_layer="bn")
        self.downsample = (
            ConvModule2d(in_channels, out_channels, 1, stride=stride, norm_layer="bn")
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.add_relu = AddReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.add_relu(self.conv2(self.conv1(x)), self.downsample(x))
