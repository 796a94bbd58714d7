"""MobileNet V1-V4, EfficientNet B0-B7 and ResNet-18: reference parity, kwargs and the int8 contract.

Parity: parameter counts equal torchvision's exactly (built on the meta device, so even B7 is
instant), and torchvision's weights load into ours *by order* and give the same float outputs
-- the layers are the same, in the same order, with the same BN settings. MobileNetV1/V4 have no
torchvision model: their counts are compared with the papers (and equal timm's layouts:
mobilenetv1_100 4,231,976; mobilenetv4_conv_small 3,774,024; conv_medium 9,715,512;
hybrid_medium 11,074,648, checked once against timm 1.0.31 by loading timm weights by order).

The int8 contract runs for every registered model in tests/test_models.py; every block is bit-exact
(tests/test_blocks_mobilenet.py).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from contract import load_by_order, randomize_batchnorm
from torch import Tensor, nn

import qat.nn as qnn
from qat.models import create_model, list_models
from qat.models.efficientnet import EFFICIENTNET_SCALING

TORCHVISION_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "resnet18": 11_689_512,
}
# paper figure (millions), our count; the difference is the paper's rounding (V1: it counts no BN parameters)
PAPER_PARAMS = {
    "mobilenet_v1": (4.2, 4_231_976),
    "mobilenet_v4_conv_small": (3.8, 3_774_024),
    "mobilenet_v4_conv_medium": (9.7, 9_715_512),
    "mobilenet_v4_hybrid_medium": (11.1, 11_074_648),
}
OURS = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v4_conv_small",
    "mobilenet_v4_conv_medium",
    "mobilenet_v4_hybrid_medium",
    *(f"efficientnet_b{i}" for i in range(8)),
    "resnet18",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _x(size: int, n: int = 2) -> Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def test_all_models_registered() -> None:
    assert set(OURS) <= set(list_models())


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_param_count_equals_torchvision(name: str) -> None:
    with torch.device("meta"):
        ours = _params(create_model(name))
        reference = _params(getattr(torchvision.models, name)())
    assert ours == reference == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_param_count_matches_paper(name: str) -> None:
    paper_millions, expected = PAPER_PARAMS[name]
    with torch.device("meta"):
        count = _params(create_model(name))
    assert count == expected
    assert round(count / 1e6, 1) == paper_millions


@pytest.mark.parametrize(
    "name", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet18"]
)
def test_torchvision_weights_load_by_order_and_agree(name: str) -> None:
    reference = randomize_batchnorm(getattr(torchvision.models, name)().eval())
    ours = create_model(name).eval()
    load_by_order(ours, reference)
    x = _x(64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_cifar_resnet_stem() -> None:
    imagenet, cifar = create_model("resnet18"), create_model("resnet18", stem="cifar")
    assert _params(imagenet) - _params(cifar) == 3 * 64 * (49 - 9)
    assert cifar.stem.conv.kernel_size == (3, 3) and cifar.stem.conv.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())


def test_kwargs() -> None:
    model = create_model("mobilenet_v3_small", num_classes=5)
    assert model.classifier[-1].out_features == 5
    assert isinstance(model.quant, qnn.QuantStub) and model.quant.fixed_qparams == (1 / 128, 128)
    assert create_model("mobilenet_v2", input_scale=None).quant.fixed_qparams is None
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", stem="tiny")
    backbone = create_model("efficientnet_b0", include_top=False)
    assert not hasattr(backbone, "classifier") and len(backbone.dequants) == 4


def test_mobilenet_v1_width_and_output_stride() -> None:
    half = create_model("mobilenet_v1", width_mult=0.5, include_top=False)
    assert half.feature_channels == [64, 128, 256, 512]
    dilated = create_model("mobilenet_v1", output_stride=16, include_top=False).eval()
    with torch.no_grad():
        feats = dilated(_x(64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 4]
    assert dilated.stages[3][1].dw.conv.dilation == (2, 2)
    with pytest.raises(ValueError, match="output_stride"):
        create_model("mobilenet_v1", output_stride=4)


def test_efficientnet_compound_scaling() -> None:
    assert EFFICIENTNET_SCALING["efficientnet_b3"] == (1.2, 1.4, 300, 0.3)
    with torch.device("meta"):
        b0, b4 = create_model("efficientnet_b0"), create_model("efficientnet_b4")
    assert b0.default_resolution == 224 and b4.default_resolution == 380
    assert b4.classifier[0].p == 0.4
    assert b4.stem[0].conv.out_channels == 48  # make_divisible(32 * 1.4, 8)
    mbconvs = [m for m in b0.modules() if isinstance(m, qnn.MBConv)]
    assert len(mbconvs) == 16
    assert len([m for m in b4.modules() if isinstance(m, qnn.MBConv)]) == 32  # ceil(n * 1.8) per stage
    rates = [m.drop_path.p for m in mbconvs if isinstance(getattr(m, "drop_path", None), qnn.StochasticDepth)]
    assert rates == sorted(rates) and max(rates) < 0.2
    with torch.device("meta"):
        b5 = create_model("efficientnet_b5", include_top=False)
    bn = next(m for m in b5.modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
