"""ESPNetv2: parameter counts vs the authors' code, shapes and strides, the int8 PReLU and features.

The full-size int8 contract of the registered models runs in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from contract import (
    param_count,
)
from torch import nn

from qat.models import create_model
from qat.models.espnet import CHANNELS, ESPNetV2
from qat.nn.blocks.espnet import EESP, EESPDownsampler, eesp_dilations
from qat.quant.int8_ops import QuantizedLUT

# scale: (ours, the reference code's count, its never-called parameters, the README's figure).
# The reference (sacmehta/EdgeNets EESPNet) also builds an image shortcut for its last
# down-sampler and an output PReLU for every stride-2 EESP, and never calls them.
REFERENCE = {
    "s0_5": (1_239_722, 1_241_332, 1_610, 1.24e6),
    "s1_0": (1_666_942, 1_670_072, 3_130, 1.67e6),
    "s1_25": (1_961_542, 1_965_440, 3_898, 1.96e6),
    "s1_5": (2_310_190, 2_314_856, 4_666, 2.31e6),
    "s2_0": (3_491_934, 3_498_136, 6_202, 3.49e6),
}
NAMES = ["espnetv2_s0_5", "espnetv2_s1_0"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scale", list(REFERENCE))
def test_params_vs_reference(scale: str) -> None:
    ours, reference, never_called, readme = REFERENCE[scale]
    assert param_count(ESPNetV2(CHANNELS[scale])) == ours == reference - never_called
    assert abs(ours / readme - 1) <= 0.005
    if f"espnetv2_{scale}" in NAMES:
        assert param_count(create_model(f"espnetv2_{scale}")) == ours


def test_eesp_dilations_follow_receptive_limits() -> None:
    """Levels 2-5 use limits 13, 11, 9 → dilations 1-4; 7 → 1, 1, 2, 3; 5 → 1, 1, 1, 2."""
    assert eesp_dilations(4, 13) == eesp_dilations(4, 9) == [1, 2, 3, 4]
    assert eesp_dilations(4, 7) == [1, 1, 2, 3]
    assert eesp_dilations(4, 5) == [1, 1, 1, 2]
    block = EESP(64, 64, 1, 4, 5)
    assert [c.dilation[0] for c in block.spp_dw] == [1, 1, 1, 2]
    assert block.residual and not EESP(64, 64, 2, 4, 5).residual


def test_downsampler_needs_the_pooled_image() -> None:
    block = EESPDownsampler(16, 32, 4, 13).eval()
    x = torch.rand(1, 16, 8, 8)
    with pytest.raises(ValueError, match="pooled input image"):
        block(x)
    with pytest.raises(ValueError, match="pooled image is"):
        block(x, torch.rand(1, 3, 8, 8))
    assert block(x, torch.rand(1, 3, 4, 4)).shape == (1, 32, 4, 4)
    assert EESPDownsampler(16, 32, reinforce=False).eval()(x).shape == (1, 32, 4, 4)


def test_int8_prelu_is_a_per_channel_table() -> None:
    """Each channel's int8 output code is a function of its input code: a 256-entry table per channel,
    equal to fake-quant(prelu_c(dequant(code)))."""
    slopes = torch.tensor([0.25, -0.5, 1.5, 0.0])
    prelu = nn.PReLU(4)
    with torch.no_grad():
        prelu.weight.copy_(slopes)
    codes = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 4, 16, 16).contiguous()
    qx = torch._make_per_tensor_quantized_tensor(codes, 0.03, 120)
    out_scale, out_zp = 0.02, 90
    q = QuantizedLUT(prelu, out_scale, out_zp)(qx)
    x = qx.dequantize()
    for c, a in enumerate(slopes):
        y = torch.where(x[0, c] >= 0, x[0, c], a * x[0, c])
        expected = torch.fake_quantize_per_tensor_affine(y, out_scale, out_zp, 0, 255)
        torch.testing.assert_close(q.dequantize()[0, c], expected, rtol=0, atol=1e-6)
