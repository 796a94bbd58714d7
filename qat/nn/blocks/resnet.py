"""ResNet blocks (basic and bottleneck) with a fused int8 ``relu(x + shortcut)``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from qat.nn.blocks.ic_conv import InceptionConv2d
from qat.nn.conv import ConvModule2d
from qat.nn.functional import AddReLU

__all__ = ["BasicBlock", "Bottleneck"]


def shortcut(in_channels: int, out_channels: int, stride: int, avg_down: bool = False) -> nn.Module:
    """The residual shortcut: identity when the shape is kept, else a projection.

    The projection is a strided 1x1 conv+BN (torchvision's ``downsample``) or, with ``avg_down``
    ("ResNet-D", Bag of Tricks), a 2x2 stride-2 average pool (ceil mode, padding not counted) then a
    1x1 conv+BN, so no input pixel is skipped.
    """
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if not avg_down:
        return ConvModule2d(in_channels, out_channels, 1, stride=stride, bias=False, norm_layer="bn")
    pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, ConvModule2d(in_channels, out_channels, 1, bias=False, norm_layer="bn"))


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
        self.downsample = shortcut(in_channels, out_channels, stride)
        self.add_relu = AddReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.add_relu(self.conv2(self.conv1(x)), self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 conv+BN+ReLU → 3x3 (strided) conv+BN+ReLU → 1x1 conv+BN to ``4·planes``, + shortcut, ReLU.

    The stride sits on the 3x3 conv (ResNet v1b / v1.5, torchvision's and timm's ``resnet50``);
    ``avg_down`` selects the ResNet-D shortcut (see :func:`shortcut`); ``dilations`` makes the 3x3
    conv an :class:`~qat.nn.blocks.ic_conv.InceptionConv2d` with that per-group pattern.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        avg_down: bool = False,
        dilations: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = ConvModule2d(in_channels, planes, 1, bias=False, norm_layer="bn", act_layer="relu")
        self.conv2: nn.Module = (
            ConvModule2d(planes, planes, 3, stride, 1, bias=False, norm_layer="bn", act_layer="relu")
            if dilations is None
            else InceptionConv2d(planes, planes, stride, dilations)
        )
        self.conv3 = ConvModule2d(planes, out_channels, 1, bias=False, norm_layer="bn")
        self.downsample = shortcut(in_channels, out_channels, stride, avg_down)
        self.add_relu = AddReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.add_relu(self.conv3(self.conv2(self.conv1(x))), self.downsample(x))
