"""Images with captions: a folder plus a JSON-lines or CSV manifest, or plain class folders.

Manifest rows name an image (path relative to ``root``), its caption and optionally a class
label, width and height::

    {"path": "cats/001.jpg", "caption": "a cat on a sofa", "label": 3}      # captions.jsonl
    path,caption,label                                                      # captions.csv
    cats/001.jpg,a cat on a sofa,3

Without a manifest, ``root/<class_name>/<image>`` folders are read and the caption is made
from the class name with a template (``"a photo of a {class}"``). A row whose file is
missing or unreadable is skipped, counted and reported like any unreadable image (see
:mod:`hthlight.data.health`), or raises :class:`DataError` naming the file in strict mode; a
malformed manifest (bad JSON, missing column) raises :class:`ConfigError` with its line.
Images are resized to cover their target size and centre-cropped: a square
``image_size`` or, with ``buckets=True``, the nearest aspect-ratio bucket of
:func:`hthlight.data.buckets.bucket_table` (base ``image_size``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from hthlight.data.buckets import bucket_loader, bucket_table, nearest_bucket, resize_crop_size
from hthlight.data.health import SkippedSample, collate_skipping
from hthlight.data.image_folder import PIL_MODES, READ_ERRORS, random_split_indices, scan_class_folders
from hthlight.data.prompts import PromptRequests, read_prompts_file
from hthlight.data.requests import SamplingRequests, check_common_args, predict_loader
from hthlight.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MANIFEST_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class CaptionRecord:
    """One image: its path, caption, optional label and size, and where it was declared."""

    path: str
    caption: str
    label: int | None = None
    size: tuple[int, int] | None = None  # (height, width) when the manifest gives it
    source: str = ""  # "manifest.jsonl line 7" (for error messages)


# ---------------------------------------------------------------------- manifests
def read_manifest(
    manifest: str | Path,
    root: str | Path,
    path_column: str = "path",
    caption_column: str = "caption",
    label_column: str = "label",
) -> tuple[list[CaptionRecord], list[str] | None]:
    """Records of a JSON-lines (``.jsonl``/``.json``) or CSV (``.csv``) manifest, and class names.

    Labels may be integers (class names are then None) or strings (mapped to the indices of
    their sorted unique values, which are returned as class names). ``width`` and ``height``
    columns, when present, save opening the images to find their aspect ratio.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"manifest '{manifest}' does not exist")
    fmt = MANIFEST_FORMATS.get(manifest.suffix.lower())
    if fmt is None:
        raise ConfigError(f"manifest '{manifest}' must end in one of {', '.join(MANIFEST_FORMATS)}")
    rows = _jsonl_rows(manifest) if fmt == "jsonl" else _csv_rows(manifest)
    records, raw_labels = [], []
    for line, row in rows:
        where = f"{manifest.name} line {line}"
        for column in (path_column, caption_column):
            if row.get(column) in (None, ""):
                raise ConfigError(
                    f"{where}: missing column '{column}' (each row needs '{path_column}' and '{caption_column}'; "
                    f"it has: {', '.join(row) or 'nothing'})"
                )
        size = _size(row, where)
        records.append(
            CaptionRecord(str(Path(root) / str(row[path_column])), str(row[caption_column]), None, size, where)
        )
        raw_labels.append(row.get(label_column) if row.get(label_column) != "" else None)
    if not records:
        raise DataError(f"manifest '{manifest}' has no rows")
    labels, class_names = _labels(raw_labels, [r.source for r in records], label_column)
    if labels is not None:
        records = [CaptionRecord(r.path, r.caption, label, r.size, r.source) for r, label in zip(records, labels)]
    return records, class_names


def _jsonl_rows(manifest: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with manifest.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{manifest.name} line {line}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ConfigError(f"{manifest.name} line {line}: expected a JSON object, got {type(row).__name__}")
            rows.append((line, row))
    return rows


def _csv_rows(manifest: Path) -> list[tuple[int, dict[str, Any]]]:
    with manifest.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ConfigError(f"{manifest.name} line 1: the CSV header is missing (e.g. 'path,caption,label')")
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise ConfigError(f"{manifest.name} line {reader.line_num}: more cells than header columns")
            rows.append((reader.line_num, {k: v for k, v in row.items() if v is not None}))
        return rows


def _size(row: dict[str, Any], where: str) -> tuple[int, int] | None:
    if row.get("width") in (None, "") or row.get("height") in (None, ""):
        return None
    try:
        height, width = int(row["height"]), int(row["width"])
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{where}: width and height must be integers, got {row['width']!r}, {row['height']!r}"
        ) from err
    if height < 1 or width < 1:
        raise ConfigError(f"{where}: width and height must be positive, got {width}x{height}")
    return height, width


def _labels(raw: list[Any], sources: list[str], column: str) -> tuple[list[int] | None, list[str] | None]:
    given = [value is not None for value in raw]
    if not any(given):
        return None, None
    if not all(given):
        where = sources[given.index(False)]
        raise ConfigError(f"{where}: no '{column}' while other rows have one; give every row a label or none")
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in raw):
        labels = [int(v) for v in raw]
        negative = [s for s, v in zip(sources, labels) if v < 0]
        if negative:
            raise ConfigError(f"{negative[0]}: '{column}' must be >= 0")
        return labels, None
    names = sorted({str(v) for v in raw})
    return [names.index(str(v)) for v in raw], names


def class_folder_records(root: str, template: str) -> tuple[list[CaptionRecord], list[str]]:
    """Records of ``root/<class_name>/<image>`` folders, captioned ``template`` with ``{class}`` filled in."""
    if "{class}" not in template:
        raise ConfigError(f"caption_template must contain '{{class}}', got {template!r}")
    class_names, files, labels = scan_class_folders(root)
    records = [
        CaptionRecord(path, template.replace("{class}", class_names[label].replace("_", " ")), label, None, path)
        for path, label in zip(files, labels)
    ]
    return records, class_names


# ---------------------------------------------------------------------- dataset
def image_size_of(path: str) -> tuple[int, int]:
    """``(height, width)`` from the image header (the pixels are not decoded)."""
    with Image.open(path) as image:
        return image.height, image.width


def to_model_range(pixels: Image.Image, size_HW: tuple[int, int]) -> torch.Tensor:
    """Resize to cover ``size_HW``, centre-crop to it, scale to [-1, 1]: ``(C, H, W)`` float32."""
    image_CHW = TF.to_image(pixels)
    image_CHW = TF.resize(image_CHW, list(resize_crop_size(pixels.height, pixels.width, size_HW)), antialias=True)
    image_CHW = TF.center_crop(image_CHW, list(size_HW))
    return TF.to_dtype(image_CHW, torch.float32, scale=True) * 2.0 - 1.0


class CaptionImageDataset(Dataset):
    """``{"image", "caption"[, "label"]}`` items; an unreadable file gives a :class:`SkippedSample`.

    Args:
        records: The images.
        target_sizes: ``(height, width)`` each image is resized and cropped to.
        channels: 1 (grayscale) or 3 (RGB).
        strict: Raise DataError on a bad file instead of skipping it.
    """

    def __init__(
        self, records: Sequence[CaptionRecord], target_sizes: Sequence[tuple[int, int]], channels: int, strict: bool
    ) -> None:
        self.records = list(records)
        self.target_sizes = list(target_sizes)
        self.mode = PIL_MODES[channels]
        self.strict = strict
        self.has_labels = bool(self.records) and self.records[0].label is not None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | SkippedSample:
        record = self.records[i]
        try:
            with Image.open(record.path) as image:
                image.load()
                pixels = image.convert(self.mode)
        except READ_ERRORS as err:
            if self.strict:
                raise DataError(
                    f"cannot read image '{record.path}' ({record.source}): {err} (set strict=False to skip bad files)"
                ) from err
            log.debug("skipping unreadable image %s: %s", record.path, err)
            return SkippedSample(record.path, str(err))
        item: dict[str, Any] = {"image": to_model_range(pixels, self.target_sizes[i]), "caption": record.caption}
        if self.has_labels:
            item["label"] = torch.tensor(record.label, dtype=torch.long)
        return item


# ---------------------------------------------------------------------- data module
class CaptionDataModule(L.LightningDataModule):
    """Images and captions from a manifest (JSON lines / CSV) or from class folders.

    Batches carry ``image`` ``(B, C, H, W)`` in [-1, 1], ``caption`` (list of str), ``label``
    ``(B,)`` when the data has labels, and ``skipped`` (paths of unreadable files; add
    ``SkippedSamplesReporter``, which DiffusionModule does). Batches come from
    :class:`~hthlight.data.buckets.BucketBatchSampler`: seeded per epoch, sharded over ranks
    by itself (Lightning's DistributedSampler is not inserted), resumable mid-epoch.

    Args:
        root: Folder the manifest paths are relative to (or holding the class folders).
        manifest: ``.jsonl``/``.json`` (JSON lines) or ``.csv`` file; a relative path is taken
            under ``root``. None reads class folders.
        caption_template: Caption of a class-folder image; ``{class}`` becomes the folder name
            (underscores as spaces).
        path_column: Manifest column with the image path.
        caption_column: Manifest column with the caption.
        label_column: Manifest column with the optional class label (int or name).
        image_size: Square side; with ``buckets`` the base size of the bucket table.
        buckets: Train at each image's aspect ratio (nearest bucket of the table).
        bucket_divisor: Bucket sides are multiples of this (None: ``image_size // 16``; it must
            be a multiple of patch size x VAE down-sampling).
        max_aspect_ratio: Largest bucket aspect ratio (and 1 / it the smallest).
        channels: 1 (grayscale) or 3 (RGB).
        batch_size: Training and validation batch size.
        val_fraction: Share held out for validation (0: no validation).
        split_seed: Seed of the train/val split.
        seed: Seed of the batch order, combined with the epoch (None: the run's ``seed_everything``).
        drop_last: Drop incomplete batches (else every sample is served once per epoch).
        num_workers: DataLoader worker processes.
        strict: Raise on a missing or unreadable image instead of skipping and reporting it.
        predict_prompts: Prompts ``predict`` samples (strings or ``{prompt, negative_prompt,
            label}``); None with class folders samples every class's caption.
        predict_prompts_file: A ``.txt``/``.jsonl`` prompts file instead (see :mod:`hthlight.data.prompts`).
        predict_samples_per_class: Images per prompt (per class) generated by ``predict``.
        predict_seed: Base noise seed of ``predict``.
        predict_classes: Classes to generate from class folders (None: all).
        predict_batch_size: Sampling requests per predict batch.
    """

    def __init__(
        self,
        root: str,
        manifest: str | None = None,
        caption_template: str = "a photo of a {class}",
        path_column: str = "path",
        caption_column: str = "caption",
        label_column: str = "label",
        image_size: int = 256,
        buckets: bool = False,
        bucket_divisor: int | None = None,
        max_aspect_ratio: float = 4.0,
        channels: int = 3,
        batch_size: int = 32,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        seed: int | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        strict: bool = False,
        predict_prompts: list[Any] | None = None,
        predict_prompts_file: str | None = None,
        predict_samples_per_class: int = 8,
        predict_seed: int = 0,
        predict_classes: list[int] | None = None,
        predict_batch_size: int = 64,
    ) -> None:
        super().__init__()
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        if channels not in PIL_MODES:
            raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        check_common_args(
            batch_size=batch_size,
            num_workers=num_workers,
            predict_batch_size=predict_batch_size,
            val_fraction=val_fraction,
            allow_no_validation=True,
        )
        self.save_hyperparameters()
        self.root = root
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.predict_batch_size = predict_batch_size
        if manifest is None:
            records, self.class_names = class_folder_records(root, caption_template)
        else:
            manifest_path = Path(manifest) if Path(manifest).is_absolute() else Path(root) / manifest
            records, self.class_names = read_manifest(manifest_path, root, path_column, caption_column, label_column)
        self.has_labels = records[0].label is not None
        self.num_classes = (
            (len(self.class_names) if self.class_names else max(r.label for r in records) + 1) if self.has_labels else 0
        )
        self.buckets = (
            bucket_table(image_size, bucket_divisor, max_aspect_ratio) if buckets else [(image_size, image_size)]
        )
        self.bucket_ids = assign_buckets(records, self.buckets, strict) if buckets else [0] * len(records)
        if val_fraction > 0:
            train_idx, val_idx = random_split_indices(len(records), val_fraction, split_seed, root)
        else:
            train_idx, val_idx = list(range(len(records))), []
        self.train_set, self.train_buckets = self._subset(records, train_idx, strict)
        self.val_set, self.val_buckets = self._subset(records, val_idx, strict)
        self.requests = None
        if predict_prompts is not None or predict_prompts_file is not None:
            listed = read_prompts_file(predict_prompts_file) if predict_prompts_file else list(predict_prompts or [])
            self.requests = PromptRequests(listed, predict_samples_per_class, predict_seed)
        elif manifest is None:
            captions = [caption_template.replace("{class}", c.replace("_", " ")) for c in self.class_names]
            classes = SamplingRequests(self.num_classes, predict_samples_per_class, predict_seed, predict_classes)
            self.requests = PromptRequests.for_classes(
                captions, predict_samples_per_class, predict_seed, classes.classes
            )

    def _subset(
        self, records: list[CaptionRecord], indices: list[int], strict: bool
    ) -> tuple[CaptionImageDataset, list[int]]:
        bucket_ids = [self.bucket_ids[i] for i in indices]
        sizes = [self.buckets[b] for b in bucket_ids]
        return CaptionImageDataset([records[i] for i in indices], sizes, self.channels, strict), bucket_ids

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_buckets, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, self.val_buckets, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.requests is None:
            raise ConfigError("give data.predict_prompts or data.predict_prompts_file to sample from a manifest's data")
        return predict_loader(self.requests, self.predict_batch_size, self.num_workers)

    def _loader(self, dataset: CaptionImageDataset, bucket_ids: list[int], shuffle: bool) -> DataLoader:
        return bucket_loader(
            dataset,
            bucket_ids,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=self.drop_last and shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            trainer=self._trainer_or_none(),
        )

    def _trainer_or_none(self) -> Any:
        return self.trainer if getattr(self, "trainer", None) is not None else None


def assign_buckets(records: Sequence[CaptionRecord], buckets: Sequence[tuple[int, int]], strict: bool) -> list[int]:
    """Nearest-ratio bucket of every record (from its manifest size, else its header).

    An image whose header cannot be read raises DataError in strict mode; otherwise it goes
    to the square bucket and is skipped (and reported) when loaded.
    """
    square = nearest_bucket(1, 1, buckets)
    ids, unreadable = [], []
    for record in records:
        size = record.size
        if size is None:
            try:
                size = image_size_of(record.path)
            except READ_ERRORS as err:
                if strict:
                    raise DataError(
                        f"cannot read image '{record.path}' ({record.source}): {err} "
                        "(set strict=False to skip bad files)"
                    ) from err
                unreadable.append(record.path)
                ids.append(square)
                continue
        ids.append(nearest_bucket(size[0], size[1], buckets))
    if unreadable:
        log.warning(
            "%d of %d images cannot be read and will be skipped: %s%s",
            len(unreadable),
            len(records),
            ", ".join(unreadable[:5]),
            " ..." if len(unreadable) > 5 else "",
        )
    return ids
