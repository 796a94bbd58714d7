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


@pytest.fixture
def jpeg_folder(tmp_path):
    """A tiny ImageFolder tree of JPEGs, some not at the target size (resize + centre-crop path)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                h, w = (32, 32) if i % 2 else (40, 36)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.jpg"
                )
    return tmp_path


def _as_tensors(ds) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])


def test_in_memory_images_equal_the_file_path_bit_for_bit(jpeg_folder) -> None:
    from qat.pipeline.data import ImageFolderDataModule

    kwargs = {"root": str(jpeg_folder), "num_classes": 2, "image_size": 32, "augment": "flip"}
    files = ImageFolderDataModule(**kwargs).splits
    memory = ImageFolderDataModule(in_memory=True, **kwargs).splits
    for a, b in zip(files[1:], memory[1:], strict=True):  # held-out and calibration: eval transforms
        assert torch.equal(_as_tensors(a), _as_tensors(b))
        assert [a[i][1] for i in range(len(a))] == [b[i][1] for i in range(len(b))]
    eval_x = _as_tensors(memory[2])
    train_x = _as_tensors(memory[0])
    flipped = train_x.flip(-1)
    same = (train_x == eval_x).flatten(1).all(1)
    mirrored = (flipped == eval_x).flatten(1).all(1)
    assert bool((same | mirrored).all()) and bool(mirrored.any())


def test_in_memory_small_augment_shifts_and_imagenet_is_refused(jpeg_folder) -> None:
    from qat.pipeline.data import ImageFolderDataModule

    kwargs = {"root": str(jpeg_folder), "num_classes": 2, "image_size": 32, "in_memory": True}
    train, _, calib = ImageFolderDataModule(augment="small", **kwargs).splits
    torch.manual_seed(0)
    moved = [not torch.equal(train[i][0], calib[i][0]) for i in range(len(train))]
    assert any(moved) and float(train[0][0].min()) >= -1.0
    with pytest.raises(DataError, match="in_memory=false"):
        ImageFolderDataModule(augment="imagenet", **kwargs).setup()


def test_in_memory_refuses_what_does_not_fit(jpeg_folder) -> None:
    """Images too large for half the RAM stop with the size and the fix, before any decoding."""
    from qat.pipeline.data import ImageFolderDataModule

    dm = ImageFolderDataModule(root=str(jpeg_folder), num_classes=2, image_size=200_000, augment="none", in_memory=True)
    with pytest.raises(DataError, match="data.in_memory=false"):
        dm.setup()
