"""LightningDataModules for image classification: digits (default), CIFAR-10, ImageFolder.

Every module yields images normalised to [-1, 1] (what a ``QuantStub(scale=1/128)`` expects),
a held-out split for evaluation, and a calibration loader that reads the *training* split with
*evaluation* transforms in a fixed order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from qat.pipeline.errors import DataError

__all__ = [
    "CIFAR10DataModule",
    "ClassSubset",
    "ClassificationDataModule",
    "DigitsDataModule",
    "EpochLoader",
    "EpochSampler",
    "ImageFolderDataModule",
    "RandomFlip",
    "RandomShift",
    "SeededSamples",
    "TensorImageDataset",
    "ToUnitRange",
    "dataset_labels",
    "decode_image_folder",
    "load_image",
    "verify_images",
]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


class RandomShift:
    """Random crop of a ``[C, H, W]`` tensor padded by ``pad`` pixels of ``fill`` (translation augmentation)."""

    def __init__(self, pad: int, fill: float = -1.0) -> None:
        self.pad = pad
        self.fill = fill

    def __call__(self, img: Tensor) -> Tensor:
        if self.pad <= 0:
            return img
        h, w = img.shape[-2:]
        padded = F.pad(img, (self.pad,) * 4, value=self.fill)
        top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        return padded[..., top : top + h, left : left + w]


class RandomFlip:
    """Horizontal flip of a ``[C, H, W]`` tensor with probability 1/2."""

    def __call__(self, img: Tensor) -> Tensor:
        return img.flip(-1) if torch.rand(()) < 0.5 else img


class ToUnitRange:
    """uint8 ``[C, H, W]`` -> float32 in [-1, 1]: the arithmetic of ``ToTensor`` + ``Normalize(0.5, 0.5)``,
    so an in-memory image equals the one the file-reading path gives, bit for bit."""

    def __call__(self, img: Tensor) -> Tensor:
        return img.to(torch.float32).div_(255).sub_(0.5).div_(0.5)


class Compose:
    """Apply tensor transforms in order."""

    def __init__(self, *transforms: Callable[[Tensor], Tensor]) -> None:
        self.transforms = transforms

    def __call__(self, img: Tensor) -> Tensor:
        for t in self.transforms:
            img = t(img)
        return img


class TensorImageDataset(Dataset):
    """In-memory images ``[N, C, H, W]`` and labels, with an optional per-sample transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def epoch_seed(seed: int, salt: str, epoch: int) -> int:
    """A 31-bit seed that depends on (seed, salt, epoch) only."""
    digest = hashlib.sha256(f"{seed}/{salt}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _seed_all(seed: int, devices: bool = True) -> None:
    """Seed the generators transforms and layers draw from: torch's, numpy's and ``random``'s.

    ``devices=False`` seeds torch's CPU generator only (what CPU transforms draw from), a hundred
    times cheaper than ``torch.manual_seed``, which also seeds every accelerator's.
    """
    if devices:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


class EpochSampler(Sampler[tuple[int, int]]):
    """A random order of ``range(n)`` that is a function of ``(seed, salt, epoch)`` alone.

    Yields ``(epoch seed, index)`` pairs for :class:`SeededSamples`, which seeds each sample's
    augmentation from them: in the main process or in a worker, a sample's augmentation does not
    depend on what ran before it. Lightning calls :meth:`set_epoch` at every epoch start, also in a
    run resumed from a checkpoint; the order is drawn (and the main process's generators re-seeded,
    for dropout) when the epoch's first batch is fetched, so a resumed epoch restarts exactly as the
    uninterrupted run ran it.
    """

    def __init__(self, n: int, seed: int, salt: str) -> None:
        self.n = n
        self.seed = seed
        self.salt = salt
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = epoch_seed(self.seed, self.salt, self.epoch)
        _seed_all(seed)
        for index in torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist():
            yield seed, index


class SeededSamples(Dataset):
    """A dataset read with ``(seed, index)`` keys: the generators are seeded from both before ``dataset[index]``.

    A plain ``index`` (e.g. from the DistributedSampler Lightning puts in under DDP) reads unseeded.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            seed, key = key
            _seed_all((seed * 1_000_003 + key) % 2**31, devices=False)
        return self.dataset[key]


class _Deferred:
    """An iterator that creates the loader's real iterator on the first ``next``.

    Lightning creates the training iterator of a resumed run before it calls ``set_epoch``; worker
    loaders fetch ahead as soon as they are created, so without this they would prefetch the order
    of the wrong epoch.
    """

    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start = start
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> _Deferred:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class EpochLoader(DataLoader):
    """A ``DataLoader`` whose iteration starts at the first batch (see :class:`_Deferred`)."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _Deferred(super().__iter__)


def _check_int(key: str, value: Any, minimum: int, note: str = "", valid: str = "") -> None:
    """A whole-number data setting of at least ``minimum``, or a :class:`DataError` naming a valid value."""
    fix = f"set {key} to {valid}" if valid else f"set e.g. {key}={max(minimum, 1)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{key}={value!r} is not a whole number; {fix}")
    if value < minimum:
        extra = f" ({note})" if note else ""
        raise DataError(f"{key}={value} must be >= {minimum}{extra}; {fix}")


def load_image(path: str) -> Any:
    """An RGB PIL image; an unreadable file is a :class:`DataError` naming it (not a PIL traceback)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        reason = "not an image format PIL can decode" if isinstance(err, UnidentifiedImageError) else str(err)
        raise DataError(
            f"cannot read image {path} ({reason}); remove or replace it "
            "(data.verify=true checks every image once before training)"
        ) from None


def verify_images(folders: Sequence[Any]) -> int:
    """Decode every image of the ``ImageFolder`` s once; all unreadable files in one :class:`DataError`."""
    bad = []
    count = 0
    for folder in folders:
        for path, _ in folder.samples:
            count += 1
            try:
                load_image(path)
            except DataError:
                bad.append(path)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} of {count} images cannot be read: {shown}; remove or replace them")
    return count


class ClassificationDataModule(pl.LightningDataModule):
    """Shared loaders and subsetting; subclasses build ``(train, val, calib)`` datasets in :meth:`build`.

    ``num_classes`` is checked against the data; ``stem`` is the model stem suited to the image
    size (read by the model config). ``limit`` caps every split at that many samples (a fixed,
    seeded subset) for smoke runs and tests. ``classes`` keeps only those class indices of the
    data (relabelled 0..k-1 in the order given; ``num_classes`` must be k): fine-tuning on a
    subset, or two disjoint halves of one data set.
    """

    name = "classification"

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        stem: str = "cifar",
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int = 0,
        classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.classes = _check_classes(classes, num_classes)
        self.num_classes = num_classes
        self.image_size = image_size
        self.stem = stem
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        _check_int(
            "data.num_classes",
            num_classes,
            2,
            "classification needs at least 2 classes",
            "the data's class count (a one-class data set needs a second class)",
        )
        _check_int("data.image_size", image_size, 1)
        _check_int("data.batch_size", batch_size, 1)
        _check_int("data.eval_batch_size", eval_batch_size, 1)
        _check_int("data.num_workers", num_workers, 0)
        if limit is not None:
            _check_int("data.limit", limit, 1, "or data.limit=null for all images")
        self.num_workers = num_workers
        self.limit = limit
        self.seed = seed
        # the training stage being run ("float", "qat"): part of every epoch's seed
        self.epoch_salt = "train"
        self.class_names: list[str] = [str(i) for i in range(num_classes)]
        self._splits: tuple[Dataset, Dataset, Dataset] | None = None

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """The augmented training set, the held-out set and the training set with eval transforms."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        train, val, calib = self.build()
        if len(train) == 0 or len(val) == 0:
            raise DataError(f"{self.name}: empty split (train={len(train)}, held-out={len(val)}); check the data")
        if self.classes is not None:
            train, val, calib = (ClassSubset(ds, self.classes) for ds in (train, val, calib))
        if self.limit is not None:
            train, val, calib = self._subset(train, 0), self._subset(val, 1), self._subset(calib, 0)
        self._splits = (train, val, calib)

    def _subset(self, ds: Dataset, salt: int) -> Dataset:
        n = len(ds)
        if self.limit >= n:
            return ds
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + salt)).tolist()
        return Subset(ds, sorted(order[: self.limit]))

    @property
    def splits(self) -> tuple[Dataset, Dataset, Dataset]:
        self.setup()
        assert self._splits is not None
        return self._splits

    def _loader(
        self,
        ds: Dataset,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
        sampler: Sampler | None = None,
    ):
        return (EpochLoader if sampler is not None else DataLoader)(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches in an order (and with augmentations) re-derived from (seed, stage, epoch).

        ``epoch_salt`` names the training stage (set by the stage runner); see :class:`EpochSampler`.
        """
        train = self.splits[0]
        sampler = EpochSampler(len(train), self.seed, self.epoch_salt)
        return self._loader(SeededSamples(train), self.batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits[1], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def calib_dataloader(self) -> DataLoader:
        """Training images with eval transforms, shuffled in a fixed (seeded) order."""
        gen = torch.Generator().manual_seed(self.seed)
        return self._loader(self.splits[2], self.batch_size, shuffle=True, generator=gen)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A random input of the model's input shape, in [-1, 1)."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(batch_size, 3, self.image_size, self.image_size, generator=gen) * 2 - 1

    def describe(self) -> dict[str, Any]:
        train, val, _ = self.splits
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "train_samples": len(train),
            "eval_samples": len(val),
        }

    def _check_num_classes(self, found: Sequence[str], where: str) -> None:
        if self.classes is not None:
            if max(self.classes) >= len(found):
                raise DataError(
                    f"data.classes={self.classes} names class {max(self.classes)} but {where} has {len(found)} "
                    f"classes (0..{len(found) - 1}); pick indices from that range"
                )
            self.class_names = [str(found[i]) for i in self.classes]
            return
        if len(found) < 2:
            raise DataError(
                f"{where} has {len(found)} class(es) {list(found)}; classification needs at least 2: "
                "add a folder of images for each further class"
            )
        if len(found) != self.num_classes:
            raise DataError(
                f"{where} has {len(found)} classes but data.num_classes={self.num_classes}; "
                f"set data.num_classes={len(found)}"
            )
        self.class_names = list(found)


def _check_classes(classes: Sequence[int] | None, num_classes: int) -> list[int] | None:
    """``data.classes`` as a list of distinct class indices, as many as ``num_classes``."""
    if classes is None:
        return None
    chosen = list(classes)
    if not chosen or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in chosen):
        raise DataError(f"data.classes={chosen!r}: give class indices, e.g. data.classes=[0,1,2,3,4]")
    if len(set(chosen)) != len(chosen):
        raise DataError(f"data.classes={chosen} repeats a class; list each class once")
    if len(chosen) != num_classes:
        raise DataError(
            f"data.classes keeps {len(chosen)} classes but data.num_classes={num_classes}; "
            f"set data.num_classes={len(chosen)}"
        )
    return chosen


def dataset_labels(ds: Dataset) -> list[int]:
    """Every sample's label, read from the dataset's label list when it has one (no image is decoded)."""
    if isinstance(ds, Subset):
        inner = dataset_labels(ds.dataset)
        return [inner[i] for i in ds.indices]
    for attr in ("labels", "targets"):
        labels = getattr(ds, attr, None)
        if labels is not None:
            return [int(v) for v in labels]
    return [int(ds[i][1]) for i in range(len(ds))]


class ClassSubset(Dataset):
    """The samples of ``classes`` only, relabelled ``classes[k] -> k``."""

    def __init__(self, dataset: Dataset, classes: Sequence[int]) -> None:
        self.dataset = dataset
        self.relabel = {c: k for k, c in enumerate(classes)}
        self.indices = [i for i, y in enumerate(dataset_labels(dataset)) if y in self.relabel]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self.dataset[self.indices[index]]
        return x, self.relabel[int(y)]


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's bundled handwritten digits (1797 8×8 images, 10 classes; no download).

    Images are upsampled to ``image_size``, repeated to RGB and scaled to [-1, 1]; a stratified
    split with ``split_seed`` holds out ``val_fraction`` of them. Training augmentation is a random
    shift (crop from a padding of ``image_size // 8``); digits are never flipped.
    """

    name = "digits"

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        augment: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.augment = augment

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        self._check_num_classes([str(c) for c in digits.target_names], "the digits data set")
        images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
        images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        images = (images.clamp(0, 1) * 2 - 1).expand(-1, 3, -1, -1).contiguous()
        labels = torch.from_numpy(digits.target).long()
        idx = torch.arange(len(labels)).numpy()
        train_idx, val_idx = train_test_split(
            idx, test_size=self.val_fraction, random_state=self.split_seed, stratify=digits.target
        )
        train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
        shift = RandomShift(self.image_size // 8, fill=-1.0) if self.augment else None
        return (
            TensorImageDataset(images[train_idx], labels[train_idx], shift),
            TensorImageDataset(images[val_idx], labels[val_idx]),
            TensorImageDataset(images[train_idx], labels[train_idx]),
        )


def _resolve_augment(image_size: int, augment: str) -> str:
    if augment == "auto":
        augment = "small" if image_size <= 64 else "imagenet"
    if augment not in ("small", "imagenet", "flip", "none"):
        raise DataError(f"data.augment={augment!r}; use auto, small, imagenet, flip or none")
    return augment


def _pil_transforms(image_size: int, augment: str) -> tuple[Callable, Callable]:
    """(train, eval) torchvision transforms ending in a tensor scaled to [-1, 1].

    ``small`` (≤ 64 px, CIFAR-style): random crop with padding + horizontal flip; ``imagenet``:
    random-resized crop + flip, eval resize to 1/0.875 and centre crop; ``flip``: horizontal flip
    only (short schedules, where crops slow fitting more than they regularise); ``none``: eval
    transforms.
    """
    from torchvision import transforms as T

    augment = _resolve_augment(image_size, augment)
    to_tensor = [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    if augment == "imagenet":
        eval_tf = T.Compose([T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size), *to_tensor])
        train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *to_tensor])
        return train_tf, eval_tf
    resize = [T.Resize(image_size), T.CenterCrop(image_size)]
    eval_tf = T.Compose([*resize, *to_tensor])
    if augment == "none":
        return eval_tf, eval_tf
    if augment == "flip":
        return T.Compose([*resize, T.RandomHorizontalFlip(), *to_tensor]), eval_tf
    train_tf = T.Compose(
        [*resize, T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip(), *to_tensor]
    )
    return train_tf, eval_tf


def _tensor_transforms(image_size: int, augment: str) -> tuple[Callable, Callable]:
    """(train, eval) transforms for uint8 images already resized to ``image_size`` (``in_memory``)."""
    augment = _resolve_augment(image_size, augment)
    if augment == "imagenet":
        raise DataError(
            "data.in_memory=true keeps images at data.image_size, which random-resized crops "
            "(data.augment=imagenet) cannot use: set data.in_memory=false, or data.augment=small|flip|none"
        )
    eval_tf = ToUnitRange()
    if augment == "none":
        return eval_tf, eval_tf
    if augment == "flip":
        return Compose(eval_tf, RandomFlip()), eval_tf
    return Compose(eval_tf, RandomShift(max(1, image_size // 8), fill=-1.0), RandomFlip()), eval_tf


def _check_fits_in_memory(num_images: int, image_size: int) -> None:
    """Refuse ``in_memory`` when the decoded images would take more than half of the machine's RAM."""
    import os

    need = num_images * 3 * image_size * image_size
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total // 2:
        raise DataError(
            f"data.in_memory=true would hold {num_images} images of {image_size} px in {need / 2**30:.1f} GiB, "
            f"more than half of this machine's {total / 2**30:.1f} GiB: set data.in_memory=false"
        )


def decode_image_folder(folder: Any, image_size: int, desc: str = "decoding") -> tuple[Tensor, Tensor]:
    """Every image of a torchvision ``ImageFolder`` resized and centre-cropped to ``image_size`` (as the
    eval transforms do), as one uint8 ``[N, 3, S, S]`` tensor, plus the labels. A progress bar shows it."""
    import numpy as np
    from torchvision import transforms as T
    from tqdm.auto import tqdm

    resize = T.Compose([T.Resize(image_size), T.CenterCrop(image_size)])
    images = torch.empty(len(folder.samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(tqdm(folder.samples, desc=desc, unit="img", mininterval=1.0)):
        img = resize(folder.loader(path))
        images[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return images, torch.tensor(folder.targets, dtype=torch.long)


class CIFAR10DataModule(ClassificationDataModule):
    """torchvision's CIFAR-10 (python pickle format) under ``root``; downloads only with ``download=true``."""

    name = "cifar10"

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        num_classes: int = 10,
        image_size: int = 32,
        augment: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.root = root
        self.download = download
        self.augment = augment

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        from torchvision.datasets import CIFAR10

        if not self.root:
            raise DataError(
                "data.root is not set: pass data.root=/path/to/cifar10 (add data.download=true to fetch it)"
            )
        root = Path(self.root).expanduser()
        train_tf, eval_tf = _pil_transforms(self.image_size, self.augment)
        try:
            train = CIFAR10(str(root), train=True, transform=train_tf, download=self.download)
            val = CIFAR10(str(root), train=False, transform=eval_tf, download=False)
            calib = CIFAR10(str(root), train=True, transform=eval_tf, download=False)
        except RuntimeError as err:
            raise DataError(
                f"CIFAR-10 not found under {root} ({err}). Point data.root at the folder holding "
                "'cifar-10-batches-py', add data.download=true to download it, or use data=imagefolder "
                "for a folder of images"
            ) from err
        self._check_num_classes(train.classes, f"CIFAR-10 at {root}")
        return train, val, calib


class ImageFolderDataModule(ClassificationDataModule):
    """``root/train/<class>/*`` plus ``root/val/<class>/*`` (or ``root/test``), ImageNet-style.

    ``in_memory=true`` decodes every image once, at ``image_size``, into one uint8 tensor and
    augments tensors: for small images (CIFAR's 50 000 at 32 px: 150 MiB, ~15 s to decode) it
    takes JPEG decoding out of every training step; the images are bit-identical to the ones the
    file-reading path gives. ``verify=true`` decodes every image once up front and lists all the
    unreadable ones; otherwise the first unreadable image stops the run with its file name.
    """

    name = "imagefolder"

    def __init__(
        self,
        root: str | None = None,
        num_classes: int = 10,
        image_size: int = 32,
        augment: str = "auto",
        eval_split: str | None = None,
        in_memory: bool = False,
        verify: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.root = root
        self.augment = augment
        self.eval_split = eval_split
        self.in_memory = in_memory
        self.verify = verify

    def _split_dir(self, root: Path) -> tuple[Path, Path]:
        if not root.is_dir():
            raise DataError(
                f"data root {root} does not exist. Set data.root to a folder holding train/<class>/* and "
                "val/<class>/* (e.g. extract ../shared/data/cifar10-jpg.tar.gz into ~/.cache/qat/cifar10-jpg)"
            )
        train = root / "train"
        names = [self.eval_split] if self.eval_split else ["val", "test"]
        evals = [root / n for n in names if (root / n).is_dir()]
        if not train.is_dir() or not evals:
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataError(
                f"data root {root} needs a 'train' folder and a '{'/'.join(names)}' folder of class folders; "
                f"found {found or 'no folders'}"
            )
        return train, evals[0]

    @staticmethod
    def _check_nonempty(split: Path) -> list[str]:
        classes = sorted(p.name for p in split.iterdir() if p.is_dir())
        if not classes:
            raise DataError(f"{split} holds no class folders; expected {split}/<class>/<image>.jpg")
        empty = [c for c in classes if not any(f.suffix.lower() in _IMAGE_SUFFIXES for f in (split / c).iterdir())]
        if empty:
            raise DataError(f"{split}: class folders without images: {empty[:5]}; remove them or add images")
        return classes

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        from torchvision.datasets import ImageFolder

        if not self.root:
            raise DataError("data.root is not set: pass data.root=/path/with/train_and_val_folders")
        train_dir, eval_dir = self._split_dir(Path(self.root).expanduser())
        train_classes = self._check_nonempty(train_dir)
        eval_classes = self._check_nonempty(eval_dir)
        if train_classes != eval_classes:
            raise DataError(
                f"{train_dir} and {eval_dir} have different class folders "
                f"({sorted(set(train_classes) ^ set(eval_classes))[:5]}...); they must match"
            )
        self._check_num_classes(train_classes, str(train_dir))
        if self.verify:
            verify_images([ImageFolder(str(d), loader=load_image) for d in (train_dir, eval_dir)])
        if self.in_memory:
            train_tf, eval_tf = _tensor_transforms(self.image_size, self.augment)
            train_folder = ImageFolder(str(train_dir), loader=load_image)
            eval_folder = ImageFolder(str(eval_dir), loader=load_image)
            _check_fits_in_memory(len(train_folder) + len(eval_folder), self.image_size)
            train_x, train_y = decode_image_folder(train_folder, self.image_size, f"decoding {train_dir}")
            eval_x, eval_y = decode_image_folder(eval_folder, self.image_size, f"decoding {eval_dir}")
            return (
                TensorImageDataset(train_x, train_y, train_tf),
                TensorImageDataset(eval_x, eval_y, eval_tf),
                TensorImageDataset(train_x, train_y, eval_tf),
            )
        train_tf, eval_tf = _pil_transforms(self.image_size, self.augment)
        return (
            ImageFolder(str(train_dir), transform=train_tf, loader=load_image),
            ImageFolder(str(eval_dir), transform=eval_tf, loader=load_image),
            ImageFolder(str(train_dir), transform=eval_tf, loader=load_image),
        )
