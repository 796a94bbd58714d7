"""ESPNet v1: parameter counts vs the authors' code, shapes, features, the up-sampling layer and int8.

The registered classifier (``espnet_c``) also runs the zoo-wide int8 contract in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from contract import (
    assert_int8_contract,
    param_count,
    settle_batchnorm,
)
from torch import nn

from qat.models import create_model
from qat.models.espnet_v1 import ESPNet, ESPNetC
from qat.nn import PixelShuffleUp
from qat.nn.blocks.espnet import ESP
from qat.quant import verify_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Counted from the authors' code (sacmehta/ESPNet, train/Model.py): ESPNet_Encoder(1000, p, q)
# and ESPNet(20, p, q) -- the three (p, q) of their released checkpoints. The paper: ESPNet 0.364M.
ENCODER_1000 = {(2, 3): 438_409, (2, 5): 503_177, (2, 8): 600_329}
SEGMENTER_20 = {(2, 3): 203_189, (2, 5): 267_957, (2, 8): 365_109}


@pytest.mark.parametrize("pq", list(ENCODER_1000))
def test_params_equal_the_reference(pq: tuple[int, int]) -> None:
    p, q = pq
    assert param_count(ESPNetC(1000, p, q)) == ENCODER_1000[pq]
    assert param_count(ESPNet(20, p, q)) == SEGMENTER_20[pq]
    assert param_count(create_model("espnet_c", p=p, q=q)) == ENCODER_1000[pq]
    assert abs(SEGMENTER_20[2, 8] / 0.364e6 - 1) < 0.005


def test_needs_esp_modules() -> None:
    with pytest.raises(ValueError, match="at least one ESP module"):
        ESPNetC(p=0)


def test_pooled_classifier_equals_the_pooled_class_map() -> None:
    """The classifier runs after the global pool: the same logits as the reference's class map averaged."""
    torch.manual_seed(0)
    model = ESPNetC(10).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        class_map = model.classifier(model.encoder(model.quant(x))[-1])
        torch.testing.assert_close(model(x), class_map.mean((2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scale", "bias"), [(2, False), (2, True), (3, True)])
def test_pixel_shuffle_up_equals_the_transposed_conv(scale: int, bias: bool) -> None:
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(6, 5, scale, stride=scale, bias=bias)
    up = PixelShuffleUp.from_conv_transpose(ct)
    # The same weights; a bias is stored once per output pixel of the s x s patch.
    assert param_count(up) == param_count(ct) + (5 * (scale * scale - 1) if bias else 0)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(up(x), ct(x), rtol=1e-5, atol=1e-6)


def test_pixel_shuffle_up_refuses_overlapping_transposed_convs() -> None:
    with pytest.raises(ValueError, match="kernel_size == stride"):
        PixelShuffleUp.from_conv_transpose(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1))


def test_esp_module_layout_and_errors() -> None:
    """Five branches, dilations 1-16, the first takes the remainder channels; a residual needs equal channels."""
    block = ESP(64, 64)
    assert [c.dilation[0] for c in block.branches] == [1, 2, 4, 8, 16]
    assert [c.out_channels for c in block.branches] == [16, 12, 12, 12, 12]
    assert block.residual and not ESP(19, 64, stride=2).residual
    assert ESP(19, 64, stride=2).eval()(torch.rand(1, 19, 8, 8)).shape == (1, 64, 4, 4)
    with pytest.raises(ValueError, match="residual=False"):
        ESP(40, 20)
    with pytest.raises(ValueError, match="at least 5"):
        ESP(4, 4)
    assert ESP(40, 20, residual=False).eval()(torch.rand(1, 40, 8, 8)).shape == (1, 20, 8, 8)


def test_segmenter_shapes_and_errors() -> None:
    model = ESPNet(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96) * 2 - 1).shape == (1, 7, 64, 96)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 3, 60, 64))


def test_segmenter_verifies_in_int8() -> None:
    """The full segmenter (decoder, pixel-shuffle up-sampling, per-pixel logits) meets the int8 contract."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    r = verify_model(settle_batchnorm(ESPNet(num_classes=10), x), x, steps=2, bn="fold")
    assert_int8_contract(r)
    assert r.int8_model(x).shape == (2, 10, 32, 32)
