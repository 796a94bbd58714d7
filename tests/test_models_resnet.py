"""ResNet-50 v1b / v1d (Bag of Tricks) and IC-ResNet-50: parameter counts and weights vs torchvision / timm."""

from __future__ import annotations

import pytest
import torch
import torchvision
from contract import assert_loads_by_order_and_agrees, param_count
from torch import nn

from qat.models import create_model
from qat.nn.blocks.resnet import Bottleneck

pytestmark = pytest.mark.usefixtures("one_thread")

#: timm's counts at 1000 classes: ``resnet50`` (= torchvision's) and ``resnet50d``; dilation adds nothing to IC-ResNet-50.
TIMM = {"resnet50_v1b": 25_557_032, "resnet50_v1d": 25_576_264, "ic_resnet50": 25_557_032}


@pytest.mark.parametrize("name", list(TIMM))
def test_params_equal_timm(name: str) -> None:
    with torch.device("meta"):
        assert param_count(create_model(name)) == TIMM[name]


def test_v1b_loads_torchvision_resnet50_by_order_and_agrees() -> None:
    assert_loads_by_order_and_agrees(create_model("resnet50_v1b"), torchvision.models.resnet50(), 64)


def test_v1d_deep_stem_and_average_pool_shortcuts() -> None:
    """v1d - v1b = the deep stem (3x3 convs 32, 32, 64 + BNs) minus the 7x7 conv + BN; shortcuts pool first."""
    v1b, v1d = create_model("resnet50_v1b"), create_model("resnet50_v1d")
    stem_3x3 = 3 * 9 * 32 + 2 * 32 + 32 * 9 * 32 + 2 * 32 + 32 * 9 * 64 + 2 * 64
    assert param_count(v1d) - param_count(v1b) == stem_3x3 - (3 * 49 * 64 + 2 * 64)
    first = v1d.stages[1][0]
    assert isinstance(first, Bottleneck) and first.conv2.conv.stride == (2, 2)
    assert isinstance(first.downsample[0], nn.AvgPool2d) and first.downsample[1].conv.stride == (1, 1)
    assert isinstance(v1d.stages[0][0].downsample[0], nn.Identity)  # stride-1 projection: no pool


def test_v1d_loads_timm_resnet50d_by_order_and_agrees() -> None:
    timm = pytest.importorskip("timm")
    assert_loads_by_order_and_agrees(create_model("resnet50_v1d"), timm.create_model("resnet50d"), 64)


def test_ic_resnet50_dilates_every_bottleneck_3x3() -> None:
    model = create_model("ic_resnet50")
    bottlenecks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(bottlenecks) == 16
    dilations = {b.conv2.pattern for b in bottlenecks}
    assert dilations == {((1, 1), (1, 2), (2, 1), (2, 2))}
