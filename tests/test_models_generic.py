"""What every registered model must do, checked once over ``list_models()``.

Arguments (``input_scale``, ``stem``), logits at 224 and 32, the backbone mode (``include_top=False``:
``feature_channels``, one ``DeQuantStub`` per feature, both stems with the same parameters) and,
for one model per distinct backbone ``forward``, the backbone's int8 contract. The full classifier's int8 contract
runs for every model in tests/test_models.py; parameter counts vs references stay in the family
files (tests/test_models_<family>.py).
"""

from __future__ import annotations

import pytest
import torch
from contract import assert_features_verify_int8, param_count

from qat.models import create_model, list_models
from qat.nn.stubs import QuantStub

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = list_models()
#: ``tiny_convnet`` is the pipeline tests' model: a classifier only, no backbone mode.
BACKBONES = [n for n in MODELS if n != "tiny_convnet"]

#: Input side for the ImageNet stem where 64 px is too small (unpadded reductions).
IMAGENET_PX = {"inception_v3": 96, "inception_v4": 96}
_STRIDES = ([16, 8, 4, 2], [32, 16, 8, 4])
#: Feature sizes (ImageNet stem at IMAGENET_PX or 64, CIFAR stem at 32) other than strides 4-32 / 1-8.
SIZES = {
    "espnet_c": ([32, 16, 8], [32, 16, 8]),  # three levels, strides 2, 4, 8 (CIFAR 1, 2, 4)
    "espnetv2_s0_5": ([16, 8, 4, 2], [16, 8, 4, 2]),  # the CIFAR stem down-samples 16x
    "espnetv2_s1_0": ([16, 8, 4, 2], [16, 8, 4, 2]),
    "xception": ([15, 8, 4, 2], [32, 16, 8, 4]),  # unpadded ImageNet stem
    "inception_v3": ([20, 9, 4, 1], [26, 12, 5, 2]),  # unpadded convs and reductions
    "inception_v4": ([22, 9, 4, 1], [26, 11, 5, 2]),
}
#: Parameters the CIFAR stem drops: resnet18's is one 3x3 conv instead of the 7x7 conv + max-pool.
CIFAR_PARAM_DELTA = {"resnet18": 3 * 64 * (49 - 9)}
#: The backbone int8 check: one model per distinct backbone ``forward`` (``shufflenet_v1_g3_x0_5``, the
#: cheapest, for every StagedClassifier), with the verify_model arguments that keep it fast. Lite-HRNet's runs in
#: tests/test_models_zoo.py on a one-module-per-stage variant (litehrnet_18 costs 3x as much).
FEATURES_INT8 = {
    "shufflenet_v1_g3_x0_5": {},
    "espnet_c": {"bn": "fold"},
    "espnetv2_s0_5": {"bn": "fold"},
    "googlenet": {},
    "henet_tinye": {},
    "inception_v3": {"steps": 1, "bn": "fold"},
    "pp_lcnet_x0_5": {},
    "shufflenet_v2_x0_5": {},
}


def _images(n: int, px: int) -> torch.Tensor:
    return torch.rand(n, 3, px, px) * 2 - 1


def _quant_stub(model: torch.nn.Module) -> QuantStub:
    return next(m for m in model.modules() if type(m) is QuantStub)


@pytest.mark.parametrize("name", MODELS)
def test_arguments_and_logits(name: str) -> None:
    """``input_scale`` fixes the QuantStub grid (``None`` observes it), an unknown ``stem`` is refused,
    and the classifier gives logits at 224x224 (ImageNet stem) and 32x32 (CIFAR stem)."""
    fixed = create_model(name, num_classes=10).eval()
    observed = create_model(name, num_classes=10, input_scale=None, stem="cifar").eval()
    assert _quant_stub(fixed).fixed_qparams == (1 / 128, 128)
    assert _quant_stub(observed).fixed_qparams is None
    with torch.no_grad():
        assert fixed(_images(1, 224)).shape == (1, 10)
        assert observed(_images(2, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem"):
        create_model(name, stem="tiny")


@pytest.mark.parametrize("name", BACKBONES)
def test_stems_and_backbone_features(name: str) -> None:
    """Both stems have the same parameters; features at strides 4, 8, 16, 32 (ImageNet stem) and 1, 2, 4, 8
    (CIFAR stem), with ``feature_channels`` channels, each through its own ``DeQuantStub``."""
    imagenet = create_model(name, num_classes=10, include_top=False).eval()
    cifar = create_model(name, num_classes=10, include_top=False, stem="cifar").eval()
    assert param_count(imagenet) - param_count(cifar) == CIFAR_PARAM_DELTA.get(name, 0)
    with torch.no_grad():
        big = imagenet(_images(1, IMAGENET_PX.get(name, 64)))
        small = cifar(_images(2, 32))
    assert ([f.shape[-1] for f in big], [f.shape[-1] for f in small]) == SIZES.get(name, _STRIDES)
    assert [f.shape[1] for f in small] == [f.shape[1] for f in big] == cifar.feature_channels
    assert len(cifar.dequants) == len(small)


@pytest.mark.parametrize("name", list(FEATURES_INT8))
def test_backbone_features_verify_int8(name: str) -> None:
    """``include_top=False`` with the CIFAR stem: each feature map leaves through its own DeQuantStub, in int8."""
    assert_features_verify_int8(name, SIZES.get(name, _STRIDES)[1], **FEATURES_INT8[name])
