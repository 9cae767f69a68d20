"""Mixed image + video training (HTH "180p T2V": a mixture of images and videos).

Images become one-frame clips ``(C, 1, H, W)``; a :class:`GroupedBatchSampler` keeps every
batch to one source (so one shape), deterministic per epoch, with ``set_epoch`` /
``state_dict`` / ``load_state_dict`` for exact resume.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from hthlight.data.grouped_sampler import GroupedBatchSampler, SampleKey, as_index
from hthlight.data.health import SkippedSample
from hthlight.data.video import VideoDataModule, video_loader
from hthlight.errors import ConfigError

VIDEO_GROUP, IMAGE_GROUP = 0, 1


class MixedClips(Dataset):
    """Videos (group 0) followed by images as one-frame clips (group 1)."""

    def __init__(self, videos: Dataset, images: Dataset) -> None:
        self.videos, self.images = videos, images
        self.groups = [VIDEO_GROUP] * len(videos) + [IMAGE_GROUP] * len(images)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any] | SkippedSample | None:
        index, epoch = as_index(key)
        if index < len(self.videos):
            return self.videos[SampleKey(index, epoch)]
        item = self.images[index - len(self.videos)]
        if item is None or isinstance(item, SkippedSample):
            return item
        item = dict(item)
        item["image"] = item["image"].unsqueeze(1)  # (C, H, W) -> (C, 1, H, W)
        return item


class MixedDataModule(L.LightningDataModule):
    """Train on videos and images together; no batch mixes the two.

    Args:
        video: the video data module (its manifest, frames, size, workers, seed).
        images: any image data module whose loaders serve ``{"image": (C, H, W), ...}``
            (e.g. ``hthlight.data.DigitsDataModule``); its train/val datasets are used.
        image_batch_size: images per image batch (default: the video module's batch size).
    """

    def __init__(
        self, video: VideoDataModule, images: L.LightningDataModule, image_batch_size: int | None = None
    ) -> None:
        super().__init__()
        if image_batch_size is not None and image_batch_size < 1:
            raise ConfigError(f"image_batch_size must be >= 1, got {image_batch_size}")
        image_channels = getattr(images, "channels", video.channels)
        if image_channels != video.channels:
            raise ConfigError(f"the images have {image_channels} channel(s) but the videos {video.channels}")
        self.video, self.images = video, images
        self.image_batch_size = image_batch_size or video.batch_size
        self.image_size = video.image_size
        self.channels = video.channels
        self.num_frames = video.num_frames
        self.num_classes = max(video.num_classes, getattr(images, "num_classes", 1))
        self.requests = video.requests
        self.predict_seed = video.predict_seed
        self.predict_samples_per_class = video.predict_samples_per_class
        self.predict_classes = video.predict_classes

    def setup(self, stage: str | None = None) -> None:
        if stage != "predict" and hasattr(self.images, "setup"):
            self.images.setup(stage)

    def _mixed(self, train: bool) -> MixedClips | None:
        videos = self.video.train_set if train else self.video.val_set
        loader = self.images.train_dataloader() if train else self.images.val_dataloader()
        images = getattr(loader, "dataset", None)
        if videos is None and images is None:
            return None
        return MixedClips(videos if videos is not None else [], images if images is not None else [])

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._mixed(train=True), shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        dataset = self._mixed(train=False)
        return [] if dataset is None or len(dataset) == 0 else self._loader(dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.video.predict_dataloader()

    def _loader(self, dataset: MixedClips, shuffle: bool) -> DataLoader:
        sampler = GroupedBatchSampler(
            batch_size=self.video.batch_size,
            drop_last=shuffle,
            groups=dataset.groups,
            group_batch_sizes={IMAGE_GROUP: self.image_batch_size},
            shuffle=shuffle,
            seed=self.video.seed,
        )
        return video_loader(dataset, sampler, self.video.num_workers)
