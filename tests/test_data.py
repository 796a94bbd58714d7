"""Image transforms of the folder/CIFAR data modules: what each ``data.augment`` choice does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qat.pipeline.data import _pil_transforms
from qat.pipeline.errors import DataError


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_flip_augment_only_mirrors(image: Image.Image) -> None:
    train_tf, eval_tf = _pil_transforms(32, "flip")
    plain = eval_tf(image)
    assert plain.shape == (3, 32, 32) and float(plain.min()) >= -1.0 and float(plain.max()) <= 1.0
    seen = set()
    for _ in range(40):
        out = train_tf(image)
        mirrored = torch.equal(out, plain.flip(-1))
        assert mirrored or torch.equal(out, plain)
        seen.add(mirrored)
    assert seen == {True, False}


def test_small_augment_translates_and_none_is_eval(image: Image.Image) -> None:
    train_tf, eval_tf = _pil_transforms(32, "small")
    plain = eval_tf(image)
    outs = [train_tf(image) for _ in range(20)]
    assert any(not torch.equal(o, plain) and not torch.equal(o, plain.flip(-1)) for o in outs)
    none_train, _ = _pil_transforms(32, "none")
    assert torch.equal(none_train(image), plain)


def test_unknown_augment_names_the_choices() -> None:
    with pytest.raises(DataError, match="flip or none"):
        _pil_transforms(32, "mixup")
