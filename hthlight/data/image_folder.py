"""Class-folder image data set: ``root/<class_name>/<image>.png|jpg|...``.

Class indices follow the sorted folder names. Unreadable images are skipped and reported
(see :mod:`hthlight.data.health`) unless ``strict=True``, which raises :class:`DataError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from hthlight.data.health import SkippedSample, collate_skipping
from hthlight.data.loader_options import worker_options
from hthlight.data.requests import SamplingRequests, check_common_args, predict_loader
from hthlight.data.resumable import ResumableSampler
from hthlight.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PIL_MODES = {1: "L", 3: "RGB"}
# What PIL raises for corrupt, truncated or oversized files.
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def image_transform(image_size: int, channels: int) -> v2.Compose:
    """Resize the shorter side, centre-crop to a square and scale to [-1, 1]."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5] * channels, std=[0.5] * channels),
        ]
    )


def scan_class_folders(root: str) -> tuple[list[str], list[str], list[int]]:
    """Return ``(class_names, files, labels)``; raise DataError if the layout is unusable."""
    root_path = Path(root)
    if not root_path.is_dir():
        what = "is not a directory" if root_path.exists() else "does not exist"
        raise DataError(f"data directory '{root}' {what}")
    class_dirs = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [_images_in(d) for d in class_dirs]
    if not any(per_class):
        raise DataError(f"no images found under '{root}' (expected root/<class>/<image>{_extensions()})")
    empty = [d.name for d, images in zip(class_dirs, per_class) if not images]
    if empty:
        raise DataError(
            f"class folder(s) without images under '{root}': {', '.join(empty)} "
            f"(each class folder needs at least one {_extensions()} file)"
        )
    files = [path for images in per_class for path in images]
    labels = [label for label, images in enumerate(per_class) for _ in images]
    return [d.name for d in class_dirs], files, labels


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _extensions() -> str:
    return "|".join(IMAGE_EXTENSIONS)


class ImageFileDataset(Dataset):
    """``{"image", "label"}`` items read from files; a bad file gives a :class:`SkippedSample`.

    Args:
        files: Image paths.
        labels: Class index of each file.
        image_size: Square output side.
        channels: 1 (grayscale) or 3 (RGB).
        strict: Raise DataError on a bad file instead of skipping it.
    """

    def __init__(self, files: list[str], labels: list[int], image_size: int, channels: int, strict: bool):
        self.files, self.labels = files, labels
        self.mode = PIL_MODES[channels]
        self.strict = strict
        self.transform = image_transform(image_size, channels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | SkippedSample:
        path = self.files[i]
        try:
            with Image.open(path) as image:
                image.load()
                pixels = image.convert(self.mode)
        except READ_ERRORS as err:
            if self.strict:
                raise DataError(f"cannot read image '{path}': {err} (set strict=False to skip bad files)") from err
            log.debug("skipping unreadable image %s: %s", path, err)
            return SkippedSample(path, str(err))
        return {"image": self.transform(pixels), "label": torch.tensor(self.labels[i], dtype=torch.long)}


class ImageFolderDataModule(L.LightningDataModule):
    """Images in class folders ``root/<class_name>/*.png|jpg|jpeg|bmp|webp``.

    The folder is scanned at construction (so ``num_classes`` is known early); class indices
    follow the sorted folder names (``class_names``). Training/validation batches carry
    ``"skipped"`` (paths of unreadable files); add ``SkippedSamplesReporter`` to the trainer.

    Args:
        root: Directory holding one sub-folder per class.
        image_size: Square side: the shorter side is resized to it, then centre-cropped.
        channels: 1 (grayscale) or 3 (RGB).
        batch_size: Training and validation batch size.
        val_fraction: Share of the images held out for validation (0 < val_fraction < 1).
        split_seed: Seed of the deterministic random train/val split.
        num_workers: DataLoader worker processes.
        strict: Raise on an unreadable image instead of skipping and reporting it.
        predict_samples_per_class: Images generated per class by ``predict``.
        predict_seed: Base noise seed; sample ``index`` uses ``predict_seed + index``.
        predict_classes: Class indices to generate; null generates all classes.
        predict_batch_size: Sampling requests per predict batch.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        num_workers: int = 0,
        strict: bool = False,
        predict_samples_per_class: int = 8,
        predict_seed: int = 0,
        predict_classes: list[int] | None = None,
        predict_batch_size: int = 100,
    ) -> None:
        super().__init__()
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        if channels not in PIL_MODES:
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        check_common_args(
            batch_size=batch_size,
            val_fraction=val_fraction,
            num_workers=num_workers,
            predict_batch_size=predict_batch_size,
        )
        self.save_hyperparameters()
        self.root = root
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.predict_batch_size = predict_batch_size
        self.class_names, files, labels = scan_class_folders(root)
        self.num_classes = len(self.class_names)
        self.requests = SamplingRequests(self.num_classes, predict_samples_per_class, predict_seed, predict_classes)
        train_idx, val_idx = random_split_indices(len(files), val_fraction, split_seed, root)
        self.train_set = ImageFileDataset(
            [files[i] for i in train_idx], [labels[i] for i in train_idx], image_size, channels, strict
        )
        self.val_set = ImageFileDataset(
            [files[i] for i in val_idx], [labels[i] for i in val_idx], image_size, channels, strict
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.requests, self.predict_batch_size, self.num_workers)

    def _loader(self, dataset: ImageFileDataset, shuffle: bool) -> DataLoader:
        drop_last = shuffle and len(dataset) > self.batch_size
        # training: per-epoch shuffle split over ranks by batches that resumes mid-epoch (hthlight.data.resumable)
        sampler = ResumableSampler(dataset, batch_size=self.batch_size, drop_last=drop_last) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_skipping,
            **worker_options(self.num_workers),
        )


def random_split_indices(n: int, val_fraction: float, seed: int, root: str) -> tuple[list[int], list[int]]:
    """Deterministic random split keeping at least one image on each side."""
    if n < 2:
        raise DataError(f"found {n} image under '{root}'; need at least 2 to split into train and val")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(round(val_fraction * n), 1), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])
