"""A tiny residual convnet: the fast model of the training-pipeline tests and smoke runs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import qat.nn as qnn
from qat.models.base import check_stem, stem_conv
from qat.models.registry import register_model

__all__ = ["TinyConvNet", "tiny_convnet"]


class _ResidualBlock(nn.Module):
    """conv3x3+BN+act → conv3x3+BN → add the input → act (AddReLU when the act is ReLU)."""

    def __init__(self, channels: int, act_layer: str) -> None:
        super().__init__()
        self.conv1 = qnn.ConvModule2d(channels, channels, 3, padding=1, norm_layer="bn", act_layer=act_layer)
        self.conv2 = qnn.ConvModule2d(channels, channels, 3, padding=1, norm_layer="bn")
        fused = act_layer == "relu"
        self.add: nn.Module = qnn.AddReLU() if fused else qnn.Add()
        self.act: nn.Module = nn.Identity() if fused else qnn.get_act(act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.add(x, self.conv2(self.conv1(x))))


class TinyConvNet(nn.Module):
    """QuantStub → stem → residual block → stride-2 conv → residual block → pool → linear → DeQuantStub.

    ``stem="cifar"`` keeps full resolution (small images); ``"imagenet"`` downsamples by 4 first.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        stem: str = "cifar",
        input_scale: float = 1 / 128,
        width: int = 16,
        act_layer: str = "relu",
    ) -> None:
        super().__init__()
        cifar = check_stem(stem)
        self.quant = qnn.QuantStub(scale=input_scale)
        layers: list[nn.Module] = [stem_conv(width, cifar, act_layer)]
        if not cifar:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*layers)
        self.block1 = _ResidualBlock(width, act_layer)
        self.down = qnn.ConvModule2d(width, 2 * width, 3, stride=2, padding=1, norm_layer="bn", act_layer=act_layer)
        self.block2 = _ResidualBlock(2 * width, act_layer)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.down(self.block1(self.stem(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


@register_model
def tiny_convnet(
    num_classes: int = 1000, stem: str = "cifar", input_scale: float = 1 / 128, **kwargs: Any
) -> TinyConvNet:
    """Tiny residual convnet (~29k parameters at width 16); ``width`` and ``act_layer`` are optional kwargs."""
    allowed = {"width", "act_layer"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"tiny_convnet got unexpected arguments {unknown}; it accepts {sorted(allowed)}")
    return TinyConvNet(num_classes=num_classes, stem=stem, input_scale=input_scale, **kwargs)
