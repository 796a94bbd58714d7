"""MobileNet V1-V4, EfficientNet and ResNet blocks: float behaviour and the int8 contract.

Every block runs inside a minimal model (QuantStub → conv stem → block → DeQuantStub) through
``qat.quant.verify_model``. Measured int8-vs-fake-quant agreement on these 16x16 inputs is
rel_l2 = 0.0 for every block (bit-exact); the asserted bound keeps a margin for kernel changes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import qat.nn as qnn
from qat.quant import check_model, prepare_qat, verify_model
from qat.quant.backend import nnq

BLOCK_BOUND = 0.01  # measured 0.0 on every block below


pytestmark = pytest.mark.usefixtures("one_thread")


class Wrap(nn.Module):
    """QuantStub → 3x3 conv+BN+ReLU stem → ``block`` → DeQuantStub."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.stem = qnn.ConvModule2d(3, channels, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.block = block
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.block(self.stem(self.quant(x))))


def _x(size: int = 16) -> Tensor:
    return torch.rand(2, 3, size, size) * 2 - 1


BLOCKS = {
    "dsconv": lambda: (qnn.DepthwiseSeparableConv(16, 24), 16, (24, 16)),
    "dsconv_stride2": lambda: (qnn.DepthwiseSeparableConv(16, 24, stride=2), 16, (24, 8)),
    "dsconv_dilated": lambda: (qnn.DepthwiseSeparableConv(16, 16, dilation=2), 16, (16, 16)),
    "v2_residual": lambda: (qnn.InvertedResidual(16, 16, 1, 6), 16, (16, 16)),
    "v2_stride2": lambda: (qnn.InvertedResidual(16, 24, 2, 6), 16, (24, 8)),
    "v2_expand1": lambda: (qnn.InvertedResidual(16, 8, 1, 1), 16, (8, 16)),
    "v3_se_hswish": lambda: (qnn.InvertedResidualV3(16, 5, 48, 16, True, "hardswish"), 16, (16, 16)),
    "v3_relu_stride2": lambda: (qnn.InvertedResidualV3(16, 3, 64, 24, False, "relu", stride=2), 16, (24, 8)),
    "v3_se_dilated": lambda: (qnn.InvertedResidualV3(16, 3, 16, 16, True, "relu", 2, dilation=2), 16, (16, 16)),
    "v4_fused_ib": lambda: (qnn.FusedInvertedBottleneck(16, 24, 3, 2, 4), 16, (24, 8)),
    "v4_extra_dw": lambda: (qnn.UniversalInvertedBottleneck(16, 16, 3, 5, 1, 4), 16, (16, 16)),
    "v4_ib": lambda: (qnn.UniversalInvertedBottleneck(16, 24, 0, 3, 2, 4), 16, (24, 8)),
    "v4_convnext": lambda: (qnn.UniversalInvertedBottleneck(16, 16, 3, 0, 2, 4), 16, (16, 8)),
    "v4_ffn_layer_scale": lambda: (
        qnn.UniversalInvertedBottleneck(16, 16, 0, 0, 1, 2, layer_scale_init_value=1e-5),
        16,
        (16, 16),
    ),
    "v4_mqa": lambda: (qnn.MobileMQA(32, num_heads=4, key_dim=16, value_dim=16), 32, (32, 16)),
    "v4_mqa_kv_down": lambda: (
        qnn.MobileMQA(32, num_heads=4, key_dim=16, value_dim=8, kv_stride=2, layer_scale_init_value=1e-5),
        32,
        (32, 16),
    ),
    "mbconv_drop_path": lambda: (qnn.MBConv(16, 16, 5, 1, 6, drop_path=0.2), 16, (16, 16)),
    "mbconv_expand1_stride2": lambda: (qnn.MBConv(16, 24, 3, 2, 1), 16, (24, 8)),
    "basic_block": lambda: (qnn.BasicBlock(16, 16), 16, (16, 16)),
    "basic_block_down": lambda: (qnn.BasicBlock(16, 32, 2), 16, (32, 8)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_int8_contract(name: str) -> None:
    block, channels, (c_out, size) = BLOCKS[name]()
    model = Wrap(block, channels)
    x = _x()
    assert model.eval()(x).shape == (2, c_out, size, size)
    r = verify_model(model, x)
    assert r.check.ok and not r.check.warnings, str(r.check)
    assert not r.unconverted
    assert r.agreement["rel_l2"] <= BLOCK_BOUND, r.agreement


def test_blocks_are_reexported_from_qat_nn() -> None:
    for name in (
        "DepthwiseSeparableConv",
        "InvertedResidual",
        "InvertedResidualV3",
        "FusedInvertedBottleneck",
        "UniversalInvertedBottleneck",
        "MobileMQA",
        "MBConv",
        "StochasticDepth",
        "BasicBlock",
    ):
        assert hasattr(qnn, name), name


def test_dilated_depthwise_keeps_resolution() -> None:
    block = qnn.DepthwiseSeparableConv(8, 8, dilation=4)
    assert block.dw.conv.dilation == (4, 4) and block.dw.conv.padding == (4, 4)
    assert block(torch.randn(1, 8, 12, 12)).shape == (1, 8, 12, 12)


def test_residuals_only_where_shape_is_kept() -> None:
    assert qnn.InvertedResidual(16, 16, 1).add is not None
    assert qnn.InvertedResidual(16, 16, 2).add is None
    assert qnn.InvertedResidual(16, 24, 1).add is None
    assert qnn.InvertedResidualV3(16, 3, 64, 16, False, "relu").add is not None
    assert qnn.UniversalInvertedBottleneck(16, 24, 3, 3).add is None
    assert qnn.MBConv(16, 16, stride=2).use_residual is False
    assert isinstance(qnn.BasicBlock(16, 16).downsample, nn.Identity)


def test_relu6_fuses_with_fixed_grid() -> None:
    q = verify_model(Wrap(qnn.InvertedResidual(16, 16, 1, 6), 16), _x()).int8_model
    for conv in (q.block.expand.conv, q.block.dw.conv):
        assert type(conv).__name__ == "ConvReLU2d" and conv.scale == pytest.approx(6 / 255)


def test_uib_variants_select_their_depthwise_convs() -> None:
    def kinds(block: qnn.UniversalInvertedBottleneck) -> tuple[bool, bool]:
        return not isinstance(block.start_dw, nn.Identity), not isinstance(block.middle_dw, nn.Identity)

    assert kinds(qnn.UniversalInvertedBottleneck(8, 8, 3, 5)) == (True, True)  # ExtraDW
    assert kinds(qnn.UniversalInvertedBottleneck(8, 8, 0, 3)) == (False, True)  # IB
    assert kinds(qnn.UniversalInvertedBottleneck(8, 8, 3, 0)) == (True, False)  # ConvNext
    assert kinds(qnn.UniversalInvertedBottleneck(8, 8, 0, 0)) == (False, False)  # FFN
    extra_dw = qnn.UniversalInvertedBottleneck(8, 16, 3, 5, stride=2)
    assert extra_dw.start_dw.conv.stride == (1, 1) and extra_dw.middle_dw.conv.stride == (2, 2)
    assert qnn.UniversalInvertedBottleneck(8, 16, 3, 0, stride=2).start_dw.conv.stride == (2, 2)
    assert qnn.UniversalInvertedBottleneck(8, 8, 0, 0, expand_ratio=3).expand.conv.out_channels == 24
    with pytest.raises(ValueError, match="strided UIB"):
        qnn.UniversalInvertedBottleneck(8, 8, 0, 0, stride=2)


def test_layer_scale_folds_away_in_int8() -> None:
    model = Wrap(qnn.UniversalInvertedBottleneck(16, 16, 3, 3, layer_scale_init_value=1e-2), 16)
    fq = prepare_qat(model)
    assert isinstance(fq.block.layer_scale, nn.Identity)
    mqa = Wrap(qnn.MobileMQA(16, num_heads=2, key_dim=8, value_dim=8, layer_scale_init_value=1e-2), 16)
    assert isinstance(prepare_qat(mqa).block.layer_scale, nn.Identity)


def test_mqa_matches_reference_multi_query_attention() -> None:
    torch.manual_seed(0)
    heads, kd, vd = 3, 8, 4
    block = qnn.MobileMQA(12, 16, heads, kd, vd, kv_stride=2).eval()
    with torch.no_grad():
        block.norm.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(2, 12, 6, 4)
    with torch.no_grad():
        xn = block.norm(x)
        q = block.query(xn).reshape(2, heads, kd, 24)
        k = block.key(block.key_down(xn)).flatten(2)
        v = block.value(block.value_down(xn)).flatten(2)
        assert k.shape == (2, kd, 6)
        attn = torch.softmax(torch.einsum("bhdn,bdm->bhnm", q, k) / math.sqrt(kd), dim=-1)
        o = torch.einsum("bhnm,bem->bhen", attn, v).reshape(2, heads * vd, 6, 4)
        expected = block.output(o)
        got = block(x)
    assert block.add is None
    torch.testing.assert_close(got, expected)


def test_mqa_residual_and_layer_scale() -> None:
    block = qnn.MobileMQA(8, num_heads=2, key_dim=4, value_dim=4, layer_scale_init_value=1e-6).eval()
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x, atol=1e-4, rtol=0)


def test_stochastic_depth() -> None:
    sd = qnn.StochasticDepth(0.5)
    x = torch.ones(4000, 2, 1, 1)
    sd.eval()
    assert sd(x) is x
    sd.train()
    y = sd(x)
    per_sample = y[:, 0, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(y[:, 0], y[:, 1])  # one decision per sample
    assert abs(float((per_sample > 0).float().mean()) - 0.5) < 0.05
    assert qnn.StochasticDepth(0.0).train()(x) is x
    with pytest.raises(ValueError):
        qnn.StochasticDepth(1.0)


def test_mbconv_drop_path_is_train_only_and_check_clean() -> None:
    block = qnn.MBConv(16, 16, drop_path=0.5)
    assert isinstance(block.drop_path, qnn.StochasticDepth)
    model = Wrap(block, 16)
    x = _x()
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    outs = torch.stack([model(x) for _ in range(6)])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # samples were dropped at random
    assert check_model(model, x).ok
    q = verify_model(model, x).int8_model
    assert isinstance(q.block.add.op, nnq.QFunctional)


def test_mbconv_squeeze_width_follows_input_channels() -> None:
    block = qnn.MBConv(40, 80, expand_ratio=6)
    assert block.expand.conv.out_channels == 240
    assert block.se.reduce.conv.out_channels == 10  # max(1, 40 // 4), as torchvision
    assert block.se.reduce.conv.in_channels == 240
