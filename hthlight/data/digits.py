"""Handwritten digits (scikit-learn's bundled 1797 real 8x8 images): a tiny, offline image data set.

Pixels 0..16 map linearly to [-1, 1] (background -1, ink +1). Images are upsampled to
``image_size`` with bilinear interpolation (``align_corners=False``, antialias off: a
deterministic convex blend of neighbours, so values stay in [-1, 1]).
"""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hthlight.data.loader_options import worker_options
from hthlight.data.prompts import PromptRequests
from hthlight.data.requests import SamplingRequests, check_common_args, predict_loader
from hthlight.data.resumable import ResumableSampler
from hthlight.errors import ConfigError

DIGITS_SIZE = 8
DIGITS_CLASSES = 10
DIGITS_MAX_PIXEL = 16.0
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: caption of each class for text-conditioned training (``captions=True``)
DIGIT_CAPTIONS = tuple(f"a handwritten {word}" for word in DIGIT_WORDS)


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1)
    return images / DIGITS_MAX_PIXEL * 2.0 - 1.0, torch.from_numpy(digits.target.astype(np.int64))


def resize_square(images_NCHW: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to ``size x size``; antialias only when shrinking (upsampling is unaffected)."""
    if images_NCHW.shape[-2:] == (size, size):
        return images_NCHW.clone()
    shrink = size < max(images_NCHW.shape[-2:])
    return F.interpolate(images_NCHW, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def load_digits_images(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ``(images (N, 1, S, S) in [-1, 1], labels (N,) int64)``."""
    _check_image_size(image_size)
    images, labels = _raw_digits()
    return resize_square(images, image_size).clamp_(-1.0, 1.0), labels.clone()


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split: ``round(val_fraction * n_class)`` of each class go to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten().numpy()
        members = rng.permutation(members)
        n_val = min(max(round(val_fraction * len(members)), 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.from_numpy(np.sort(np.concatenate(train))), torch.from_numpy(np.sort(np.concatenate(val)))


class ImageLabelDataset(Dataset):
    """In-memory ``{"image", "label"}`` items from aligned tensors (plus ``caption``: the
    label's entry of ``captions``, when given)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, captions: tuple[str, ...] | None = None) -> None:
        self.images, self.labels, self.captions = images, labels, captions

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i], "label": self.labels[i]}
        if self.captions is not None:
            item["caption"] = self.captions[int(self.labels[i])]
        return item


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's handwritten digits (10 classes, 1 channel), upsampled to ``image_size``.

    Args:
        image_size: Square side in pixels (>= 8); the 8x8 originals are bilinearly upsampled.
        batch_size: Training and validation batch size.
        val_fraction: Share of each class held out for validation (0 < val_fraction < 1).
        split_seed: Seed of the deterministic stratified train/val split.
        num_workers: DataLoader worker processes.
        predict_samples_per_class: Images generated per class by ``predict``.
        predict_seed: Base noise seed; sample ``index`` uses ``predict_seed + index``.
        predict_classes: Classes to generate (0..9); null generates all ten.
        predict_batch_size: Sampling requests per predict batch.
        captions: add a ``caption`` ("a handwritten seven") to every item, for text-conditioned
            training; ``predict`` then requests each class by its caption (prompt requests
            labelled with the class, so ``hthlight eval digits`` scores them).
    """

    def __init__(
        self,
        image_size: int = 16,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
        predict_samples_per_class: int = 8,
        predict_seed: int = 0,
        predict_classes: list[int] | None = None,
        predict_batch_size: int = 100,
        captions: bool = False,
    ) -> None:
        super().__init__()
        _check_image_size(image_size)
        check_common_args(
            batch_size=batch_size,
            val_fraction=val_fraction,
            num_workers=num_workers,
            predict_batch_size=predict_batch_size,
        )
        self.save_hyperparameters()
        self.image_size = image_size
        self.channels = 1
        self.num_classes = DIGITS_CLASSES
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.predict_batch_size = predict_batch_size
        self.requests = SamplingRequests(DIGITS_CLASSES, predict_samples_per_class, predict_seed, predict_classes)
        self.captions = DIGIT_CAPTIONS if captions else None
        if captions:
            self.requests = PromptRequests.for_classes(
                DIGIT_CAPTIONS, predict_samples_per_class, predict_seed, self.requests.classes
            )
        self.train_set: ImageLabelDataset | None = None
        self.val_set: ImageLabelDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" or self.train_set is not None:
            return
        images, labels = load_digits_images(self.image_size)
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.split_seed)
        self.train_set = ImageLabelDataset(images[train_idx], labels[train_idx], self.captions)
        self.val_set = ImageLabelDataset(images[val_idx], labels[val_idx], self.captions)

    def train_dataloader(self) -> DataLoader:
        train_set, _ = self._splits()
        return DataLoader(
            train_set,
            batch_size=self.batch_size,
            # per-epoch shuffle, split over ranks by batches, that resumes mid-epoch
            sampler=ResumableSampler(train_set, batch_size=self.batch_size, drop_last=len(train_set) > self.batch_size),
            drop_last=len(train_set) > self.batch_size,
            **worker_options(self.num_workers),
        )

    def val_dataloader(self) -> DataLoader:
        _, val_set = self._splits()
        return DataLoader(
            val_set,
            batch_size=self.batch_size,
            shuffle=False,
            **worker_options(self.num_workers),
        )

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.requests, self.predict_batch_size, self.num_workers)

    def _splits(self) -> tuple[ImageLabelDataset, ImageLabelDataset]:
        """The (train, val) datasets, loading them if ``setup`` was not called."""
        if self.train_set is None or self.val_set is None:
            self.setup("fit")
        assert self.train_set is not None and self.val_set is not None
        return self.train_set, self.val_set


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < DIGITS_SIZE:
        raise ConfigError(f"digits image_size must be an integer >= {DIGITS_SIZE}, got {image_size!r}")
