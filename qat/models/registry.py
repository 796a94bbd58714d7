"""Model registry: ``@register_model`` on a builder, ``create_model(name)`` to build it.

Each model also carries float-training defaults (:func:`training_defaults`): the settings it
trains well with at small (≤ 64 px) and large inputs, which the pipeline's ``optim`` takes for
every value left ``null``, the way timm's model configs carry per-model defaults.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "SMALL_INPUT_MAX",
    "TrainingDefaults",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "set_training_defaults",
    "training_defaults",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder ``fn(num_classes=1000, **kwargs) -> nn.Module`` under its function name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice ({_REGISTRY[name].__module__} and {fn.__module__})")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def create_model(
    name: str, num_classes: int = 1000, pretrained: str | Path | bool | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered model; unknown names fail with the closest registered ones.

    ``pretrained``: float weights to start from (see :func:`qat.models.pretrained.load_pretrained`):
    a state-dict file (torchvision's, timm's or our own key names), ``"torchvision[:WEIGHTS]"``,
    ``"timm[:model.tag]"`` or ``True`` (the first declared reference's published weights, through
    torchvision's/timm's own downloaders; needs a network). Another class count than the file's
    re-initialises only the classifier.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}")
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    if pretrained not in (None, False, ""):
        from qat.models.pretrained import load_pretrained

        load_pretrained(model, name, pretrained)
    return model


SMALL_INPUT_MAX = 64


@dataclass(frozen=True)
class TrainingDefaults:
    """Float-training settings a model trains well with (SGD + Nesterov, warm-up then cosine).

    ``lr`` is for a batch of ``lr_batch_size`` images and scales linearly with the batch size
    (the rule timm's ``lr_base``/``lr_base_size`` applies).
    """

    lr: float
    warmup_fraction: float
    weight_decay: float
    label_smoothing: float
    bn_momentum: float
    lr_batch_size: int = 128

    def scaled_lr(self, batch_size: int) -> float:
        return self.lr * batch_size / self.lr_batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Chosen from bench/lr_defaults.py's sweep on generated digits (table in docs/pretrained.md).
# Small inputs: a long warm-up and label smoothing let depthwise-separable nets take the high
# rate without the early loss spike a short warm-up gives them; EfficientNet (SiLU, SE, depth)
# trained best at the lowest rate of the sweep.
_MOBILE_SMALL = TrainingDefaults(lr=0.1, warmup_fraction=0.15, weight_decay=5e-4, label_smoothing=0.1, bn_momentum=0.1)
_MOBILE_LARGE = TrainingDefaults(lr=0.05, warmup_fraction=0.05, weight_decay=4e-5, label_smoothing=0.1, bn_momentum=0.1)
_EFFICIENTNET_SMALL = replace(_MOBILE_SMALL, lr=0.0125)
_EFFICIENTNET_LARGE = replace(_MOBILE_LARGE, lr=0.025)
_DENSE_SMALL = TrainingDefaults(lr=0.1, warmup_fraction=0.05, weight_decay=5e-4, label_smoothing=0.1, bn_momentum=0.1)
_DENSE_LARGE = TrainingDefaults(lr=0.05, warmup_fraction=0.05, weight_decay=1e-4, label_smoothing=0.1, bn_momentum=0.1)
# Attention blocks (MobileViT, MobileNetV4 hybrid): lower rate, longer warm-up.
_ATTENTION_SMALL = replace(_MOBILE_SMALL, lr=0.03, warmup_fraction=0.2)
_ATTENTION_LARGE = replace(_MOBILE_LARGE, lr=0.03, warmup_fraction=0.1)

# Families by name prefix, first match wins; anything else is a depthwise-separable mobile net.
_FAMILIES: tuple[tuple[tuple[str, ...], TrainingDefaults, TrainingDefaults], ...] = (
    (
        ("resnet", "resnest", "googlenet", "inception", "bn_inception", "xception", "tiny_convnet"),
        _DENSE_SMALL,
        _DENSE_LARGE,
    ),
    (("mobilevit", "mobilenet_v4_hybrid"), _ATTENTION_SMALL, _ATTENTION_LARGE),
    (("efficientnet",), _EFFICIENTNET_SMALL, _EFFICIENTNET_LARGE),
)
_DEFAULTS: dict[str, tuple[TrainingDefaults, TrainingDefaults]] = {}


def set_training_defaults(name: str, small: TrainingDefaults, large: TrainingDefaults) -> None:
    """Declare (or override) the float-training defaults of registered model ``name``."""
    _DEFAULTS[name] = (small, large)


def training_defaults(name: str, image_size: int) -> TrainingDefaults:
    """The float-training defaults of model ``name`` for ``image_size`` px inputs.

    A model without its own declaration takes its family's: dense convolutional nets (ResNet,
    ResNeSt, GoogLeNet, Inception, Xception), attention hybrids (MobileViT, MobileNetV4 hybrid),
    EfficientNet, or depthwise-separable mobile nets (everything else).
    """
    small = image_size <= SMALL_INPUT_MAX
    if name in _DEFAULTS:
        return _DEFAULTS[name][0 if small else 1]
    for prefixes, small_defaults, large_defaults in _FAMILIES:
        if name.startswith(prefixes):
            return small_defaults if small else large_defaults
    return _MOBILE_SMALL if small else _MOBILE_LARGE
