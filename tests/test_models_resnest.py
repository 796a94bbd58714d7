"""ResNeSt: parameter counts vs the official code, split attention vs its formula, stems, int8.

The full int8 contract (float/QAT/int8 at 32×32) runs for ``resnest50`` in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from contract import (
    assert_int8_contract,
    param_count,
)
from torch import Tensor, nn

import qat.nn as qnn
from qat.models import create_model
from qat.models.resnest import ResNeSt
from qat.nn.blocks.resnest import ResNeStBottleneck, SplitAttention
from qat.quant import verify_model

# Official ResNeSt (zhanghang1989/ResNeSt, PyTorch) = timm's resnest{14,26,50}d; paper: 27.5M for ResNeSt-50.
REFERENCE_PARAMS = {(1, 1, 1, 1): 10_611_688, (2, 2, 2, 2): 17_069_448, (3, 4, 6, 3): 27_483_240}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_resnest50_params_equal_reference() -> None:
    assert param_count(create_model("resnest50")) == REFERENCE_PARAMS[(3, 4, 6, 3)]
    assert param_count(create_model("resnest50", stem="cifar")) == REFERENCE_PARAMS[(3, 4, 6, 3)]
    assert abs(REFERENCE_PARAMS[(3, 4, 6, 3)] / 27.5e6 - 1) < 0.001


@pytest.mark.parametrize("layers", [(1, 1, 1, 1), (2, 2, 2, 2)], ids=["resnest14", "resnest26"])
def test_other_depths_equal_reference(layers: tuple[int, ...]) -> None:
    assert param_count(ResNeSt(layers)) == REFERENCE_PARAMS[layers]


def _splat_formula(m: SplitAttention, x: Tensor) -> Tensor:
    """The paper's split attention on the module's own layers, with plain tensor ops."""
    u = m.conv(x)
    b, rc, h, w = u.shape
    splits = u.reshape(b, m.radix, rc // m.radix, h, w)  # radix-major channel chunks
    s = splits.sum(1).mean((2, 3), keepdim=True)
    logits = m.fc2(m.act1(m.bn1(m.fc1(s))))  # cardinal-major: [cardinality][radix][C / cardinality]
    a = logits.view(b, m.cardinality, m.radix, -1).transpose(1, 2).softmax(1)
    return (splits * a.reshape(b, m.radix, rc // m.radix, 1, 1)).sum(1)


@pytest.mark.parametrize(("radix", "cardinality"), [(2, 1), (4, 2)])
def test_split_attention_matches_formula(radix: int, cardinality: int) -> None:
    m = SplitAttention(32, 32, radix=radix, cardinality=cardinality).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 32, 8, 8)
        assert torch.allclose(m(x), _splat_formula(m, x), atol=1e-5)
    with pytest.raises(ValueError):
        SplitAttention(32, radix=1)


def test_bottleneck_layout() -> None:
    """avd: the split-attention conv keeps stride 1, a 3×3 s2 average pool follows; avg-down shortcut."""
    block = ResNeStBottleneck(64, 32, stride=2)
    assert block.conv2.conv.conv.stride == (1, 1)
    assert isinstance(block.avd_last, nn.AvgPool2d) and block.avd_last.stride == 2
    assert isinstance(block.downsample[0], nn.AvgPool2d) and block.downsample[0].ceil_mode
    assert not block.downsample[0].count_include_pad
    assert isinstance(ResNeStBottleneck(128, 32).downsample, nn.Identity)
    assert block(torch.randn(2, 64, 9, 9)).shape == (2, 128, 5, 5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(stride=2), dict(stride=2, radix=4, cardinality=2, avd_first=True, avg_down=False)],
    ids=["2s1x", "4s2x_avd_first_conv_down"],
)
def test_bottleneck_verifies_int8(kwargs: dict) -> None:
    """Split sum, pool, fc1-BN-ReLU, fc2, radix softmax, weighted sum and pools: int8 == fake-quant per op."""
    torch.manual_seed(0)
    model = nn.Sequential(
        qnn.QuantStub(scale=1 / 128),
        qnn.ConvModule2d(3, 64, 3, padding=1, norm_layer="bn", act_layer="relu"),
        ResNeStBottleneck(64, 32, **kwargs),
        qnn.DeQuantStub(),
    )
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    r = verify_model(model, x, steps=2, bn="fold")
    assert_int8_contract(r, min_compared=5_000)
    assert type(r.int8_model[2].conv2.softmax).__name__ == "QuantizedSoftmax"
