"""Video clips from a JSON-lines manifest, decoded with decord (extra ``video``).

A manifest line is ``{"path": ..., "label": int | "caption": str, "start": s, "end": s}``
(``start``/``end`` in seconds, optional; ``path`` relative to the manifest's folder unless
absolute). A clip is ``num_frames`` frames taken every ``stride`` source frames, or at a
target ``fps`` (the source fps is read from the file: frame ``k`` is the one shown at time
``t0 + k / fps``), from a random or centred window of the segment; the frames are resized
(shorter side, antialiased) and centre-cropped to ``size`` and scaled to [-1, 1].
Batches hold ``image`` as ``(B, C, T, H, W)``: the denoiser's video layout (images are
``T = 1``). Segments shorter than the clip are skipped, looped or padded with their last
frame (``short_clips``). Unreadable, empty, truncated or non-video files are skipped, counted
and reported at the end of the epoch (:mod:`hthlight.data.health`); ``strict=True`` raises a
:class:`DataError` naming the file instead.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hthlight.data.grouped_sampler import GroupedBatchSampler, SampleKey, as_index, sample_generator
from hthlight.data.health import SkippedSample, collate_skipping
from hthlight.data.loader_options import worker_options
from hthlight.data.requests import SamplingRequests, check_common_args, predict_loader
from hthlight.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SHORT_CLIP_POLICIES = ("skip", "loop", "pad")
TEMPORAL_CROPS = ("random", "center")
#: ITU-R BT.601 luma weights, for ``channels=1``
LUMA = (0.299, 0.587, 0.114)
READ_ERRORS = (DataError, RuntimeError, OSError, ValueError, IndexError, MemoryError)


@dataclass(frozen=True)
class ClipRecord:
    """One manifest line."""

    path: str
    label: int | None = None
    caption: str | None = None
    start: float | None = None
    end: float | None = None


def read_manifest(manifest: str | Path) -> list[ClipRecord]:
    """Parse a JSON-lines manifest; raise DataError naming the line of a malformed record.

    Every record needs ``path``; ``label`` and ``caption`` must be present in all records or
    in none (so batches collate). Missing video files are not checked here: they are skipped
    (or raise in strict mode) when read, like any unreadable file.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"video manifest '{manifest}' does not exist (expected a JSON-lines file)")
    records = []
    for line_no, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise DataError(f"{where}: expected a JSON object with a string 'path'")
        label = row.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
            raise DataError(f"{where}: 'label' must be a non-negative integer, got {label!r}")
        start, end = row.get("start"), row.get("end")
        if start is not None and end is not None and end <= start:
            raise DataError(f"{where}: 'end' ({end}) must be after 'start' ({start})")
        path = Path(row["path"])
        records.append(
            ClipRecord(
                path=str(path if path.is_absolute() else manifest.parent / path),
                label=label,
                caption=row.get("caption"),
                start=None if start is None else float(start),
                end=None if end is None else float(end),
            )
        )
    if not records:
        raise DataError(f"video manifest '{manifest}' lists no videos")
    for key in ("label", "caption"):
        present = [getattr(r, key) is not None for r in records]
        if any(present) and not all(present):
            raise DataError(
                f"{manifest}: record {present.index(False) + 1} has no '{key}' but others do; give it in all"
            )
    return records


def frame_indices(
    num_source_frames: int,
    source_fps: float,
    num_frames: int,
    *,
    fps: float | None = None,
    stride: int | None = None,
    start: float | None = None,
    end: float | None = None,
    crop: str = "center",
    short: str = "pad",
    generator: torch.Generator | None = None,
) -> list[int] | None:
    """Source frame indices of one clip, or None when the segment cannot give one.

    Source frame ``i`` is shown from ``i / source_fps``; the segment holds the frames shown in
    ``[start, end)``. Clip frame ``k`` is source frame ``o + floor(k * step)`` where ``step``
    is ``source_fps / fps`` (or ``stride``) and ``o`` the window's first frame: the middle
    window (``crop="center"``) or a uniformly drawn one (``"random"``). A segment shorter than
    ``(num_frames - 1) * step + 1`` frames is ``skip``-ped (None), ``loop``-ed (indices wrap
    around the segment) or ``pad``-ded (the last frame repeats).
    """
    if fps is not None and stride is not None:
        raise ConfigError("give either fps or stride, not both")
    if fps is not None and (source_fps <= 0 or not math.isfinite(source_fps)):
        return None
    step = source_fps / fps if fps is not None else float(stride or 1)
    first = 0 if start is None else max(0, math.ceil(start * source_fps - 1e-6))
    stop = num_source_frames if end is None else min(num_source_frames, math.ceil(end * source_fps - 1e-6))
    available = stop - first
    if available < 1:
        return None
    offsets = [math.floor(k * step + 1e-6) for k in range(num_frames)]
    slack = available - 1 - offsets[-1]
    if slack >= 0:
        if crop == "random":
            o = int(torch.randint(slack + 1, (1,), generator=generator))
        else:
            o = slack // 2
        return [first + o + d for d in offsets]
    if short == "skip":
        return None
    if short == "loop":
        return [first + d % available for d in offsets]
    return [first + min(d, available - 1) for d in offsets]


def resize_center_crop(frames_TCHW: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale so the frame covers ``size`` (antialiased when shrinking), then crop the centre."""
    height, width = frames_TCHW.shape[-2:]
    target_h, target_w = size
    scale = max(target_h / height, target_w / width)
    new_h, new_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
    if (new_h, new_w) != (height, width):
        shrink = new_h < height or new_w < width
        frames_TCHW = F.interpolate(frames_TCHW, size=(new_h, new_w), mode="bilinear", antialias=shrink)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    return frames_TCHW[..., top : top + target_h, left : left + target_w]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"size must be a positive side or [height, width], got {size!r}")
    return pair  # type: ignore[return-value]


class VideoClipDataset(Dataset):
    """``{"image": (C, T, H, W) in [-1, 1], "label"?, "caption"?}`` clips; a bad file gives a SkippedSample.

    Indexed by :class:`SampleKey` ``(index, epoch)`` (or a plain index): a random temporal
    crop is drawn from ``(seed, epoch, index)``, the same on any worker and after a resume.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        num_frames: int,
        size: int | Sequence[int],
        channels: int = 3,
        fps: float | None = None,
        stride: int | None = None,
        short_clips: str = "pad",
        temporal_crop: str = "random",
        strict: bool = False,
        seed: int = 0,
        decode_threads: int = 1,
    ) -> None:
        self.records = list(records)
        self.num_frames = num_frames
        self.size = _pair(size)
        self.channels = channels
        self.fps, self.stride = fps, stride
        self.short_clips = short_clips
        self.temporal_crop = temporal_crop
        self.strict = strict
        self.seed = seed
        self.decode_threads = decode_threads

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any] | SkippedSample:
        index, epoch = as_index(key)
        record = self.records[index]
        try:
            frames_THWC = self._decode(record, sample_generator(self.seed, epoch, index))
        except Exception as err:
            if not _is_read_error(err):
                raise
            if self.strict:
                raise DataError(
                    f"cannot read video '{record.path}': {_short(err)} (set strict=False to skip bad files)"
                ) from err
            log.debug("skipping unreadable video %s: %s", record.path, err)
            return SkippedSample(record.path, _short(err))
        if frames_THWC is None:
            return SkippedSample(record.path, f"shorter than the {self.num_frames}-frame clip (short_clips: skip)")
        item: dict[str, Any] = {"image": self._to_clip(frames_THWC)}
        if record.label is not None:
            item["label"] = torch.tensor(record.label, dtype=torch.long)
        if record.caption is not None:
            item["caption"] = record.caption
        return item

    def _decode(self, record: ClipRecord, generator: torch.Generator) -> torch.Tensor | None:
        import decord  # deferred: the `video` extra

        if not Path(record.path).is_file():
            raise DataError("no such file")
        reader = decord.VideoReader(record.path, ctx=decord.cpu(0), num_threads=self.decode_threads)
        num_source = len(reader)
        if num_source < 1:
            raise DataError("the video has no frames")
        indices = frame_indices(
            num_source,
            float(reader.get_avg_fps()),
            self.num_frames,
            fps=self.fps,
            stride=self.stride,
            start=record.start,
            end=record.end,
            crop=self.temporal_crop,
            short=self.short_clips,
            generator=generator,
        )
        if indices is None:
            return None
        return torch.from_numpy(reader.get_batch(indices).asnumpy())

    def _to_clip(self, frames_THWC: torch.Tensor) -> torch.Tensor:
        frames_TCHW = frames_THWC.permute(0, 3, 1, 2).float()
        frames_TCHW = resize_center_crop(frames_TCHW, self.size)
        if self.channels == 1:
            weights = torch.tensor(LUMA).view(1, 3, 1, 1)
            frames_TCHW = (frames_TCHW * weights).sum(1, keepdim=True)
        clip_CTHW = frames_TCHW.permute(1, 0, 2, 3) / 127.5 - 1.0
        return clip_CTHW.clamp_(-1.0, 1.0).contiguous()


def _is_read_error(err: BaseException) -> bool:
    """What decoding a missing, empty, truncated or non-video file raises (decord has its own DECORDError)."""
    return isinstance(err, READ_ERRORS) or type(err).__name__ == "DECORDError"


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]


class VideoDataModule(L.LightningDataModule):
    """Video clips listed in a JSON-lines manifest, decoded with decord.

    Batches: ``image`` ``(B, C, T, H, W)`` in [-1, 1], ``label`` and/or ``caption`` as in the
    manifest, ``skipped`` (paths of unreadable files, popped and reported by
    ``SkippedSamplesReporter``). Batches come from a :class:`GroupedBatchSampler`
    (deterministic per epoch, ``state_dict``/``load_state_dict`` for exact resume).

    Args:
        manifest: JSON-lines file of training clips.
        num_frames: frames per clip.
        size: output side, or ``[height, width]``.
        fps: sample frames at this rate (the file's own rate is read from it); or
        stride: take every ``stride``-th source frame (default 1 when ``fps`` is not given).
        channels: 3 (RGB) or 1 (luma).
        short_clips: a segment shorter than the clip is ``skip``-ped, ``loop``-ed or ``pad``-ded.
        temporal_crop: training window: ``random`` or ``center`` (validation always ``center``).
        val_manifest: JSON-lines file of validation clips; or
        val_fraction: share of ``manifest`` held out for validation (0: no validation).
        batch_size: clips per batch.
        num_workers: DataLoader worker processes.
        strict: raise on an unreadable file instead of skipping and reporting it.
        seed: seed of the batch order, the split and the random temporal crops.
        decode_threads: decord threads per reader (1 suits many workers).
        num_classes: classes for labels (default: largest label + 1).
        predict_samples_per_class: clips generated per class by ``predict``.
        predict_seed: base noise seed of ``predict``.
        predict_classes: classes to generate (null: all).
        predict_batch_size: sampling requests per predict batch.
    """

    def __init__(
        self,
        manifest: str,
        num_frames: int = 16,
        size: int | tuple[int, int] = 32,
        fps: float | None = None,
        stride: int | None = None,
        channels: int = 3,
        short_clips: Literal["skip", "loop", "pad"] = "pad",
        temporal_crop: Literal["random", "center"] = "random",
        val_manifest: str | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 8,
        num_workers: int = 0,
        strict: bool = False,
        seed: int = 0,
        decode_threads: int = 1,
        num_classes: int | None = None,
        predict_samples_per_class: int = 4,
        predict_seed: int = 0,
        predict_classes: list[int] | None = None,
        predict_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        if fps is not None and stride is not None:
            raise ConfigError(f"give either fps ({fps}) or stride ({stride}), not both")
        if (fps is not None and fps <= 0) or (stride is not None and stride < 1):
            raise ConfigError(f"fps must be > 0 and stride >= 1, got fps={fps}, stride={stride}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (luma) or 3 (RGB), got {channels}")
        if short_clips not in SHORT_CLIP_POLICIES:
            raise ConfigError(f"short_clips must be one of {', '.join(SHORT_CLIP_POLICIES)}; got {short_clips!r}")
        if temporal_crop not in TEMPORAL_CROPS:
            raise ConfigError(f"temporal_crop must be one of {', '.join(TEMPORAL_CROPS)}; got {temporal_crop!r}")
        check_common_args(
            batch_size=batch_size,
            num_workers=num_workers,
            predict_batch_size=predict_batch_size,
            val_fraction=val_fraction,
            allow_no_validation=True,
        )
        self.save_hyperparameters()
        pair = _pair(size)
        self.size = pair
        self.image_size = pair[0] if pair[0] == pair[1] else None
        self.num_frames = num_frames
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.predict_batch_size = predict_batch_size
        records = read_manifest(manifest)
        train, val = records, []
        if val_manifest is not None:
            val = read_manifest(val_manifest)
        elif val_fraction > 0 and len(records) > 1:
            order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
            n_val = min(max(round(val_fraction * len(records)), 1), len(records) - 1)
            train, val = [records[i] for i in sorted(order[n_val:])], [records[i] for i in sorted(order[:n_val])]
        labels = [r.label for r in records + val if r.label is not None]
        self.num_classes = num_classes or (max(labels) + 1 if labels else 1)
        common = {
            "num_frames": num_frames,
            "size": pair,
            "channels": channels,
            "fps": fps,
            "stride": stride,
            "short_clips": short_clips,
            "strict": strict,
            "seed": seed,
            "decode_threads": decode_threads,
        }
        self.train_set = VideoClipDataset(train, temporal_crop=temporal_crop, **common)
        self.val_set = VideoClipDataset(val, temporal_crop="center", **common) if val else None
        self.predict_seed = predict_seed
        self.predict_samples_per_class = predict_samples_per_class
        self.predict_classes = predict_classes
        self.requests = SamplingRequests(self.num_classes, predict_samples_per_class, predict_seed, predict_classes)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.requests, self.predict_batch_size, 0)

    def _loader(self, dataset: VideoClipDataset, shuffle: bool) -> DataLoader:
        sampler = GroupedBatchSampler(
            batch_size=self.batch_size,
            drop_last=shuffle,
            groups=[0] * len(dataset),
            shuffle=shuffle,
            seed=self.seed,
        )
        return video_loader(dataset, sampler, self.num_workers)


def video_loader(dataset: Dataset, batch_sampler: GroupedBatchSampler, num_workers: int) -> DataLoader:
    """A DataLoader over clips that skips unreadable ones (see :func:`collate_skipping`)."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_skipping,
        **worker_options(num_workers),
    )
