"""A data module with nothing but sampling requests: ``hthlight predict`` without a dataset."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from hthlight.data.requests import SamplingRequests, predict_loader
from hthlight.errors import ConfigError


class SamplingDataModule(L.LightningDataModule):
    """Requests ``samples_per_class`` samples of each class, seeded ``seed + index``.

    Use it to sample from a checkpoint without its training data, e.g. at another resolution::

        hthlight predict --config CONFIG --ckpt_path CKPT --data hthlight.data.SamplingDataModule \\
            --data.num_classes 10 --data.image_size 32 --model.sample_width 48

    Args:
        num_classes: classes of the model (1 for an unconditional model).
        samples_per_class: samples generated per class.
        seed: base noise seed.
        classes: class indices to sample (null: all).
        image_size: side of the generated images (the model's ``sample_height``/``sample_width`` override it).
        channels: image channels (checked against the model).
        batch_size: requests per predict batch.
    """

    def __init__(
        self,
        num_classes: int = 1,
        samples_per_class: int = 8,
        seed: int = 0,
        classes: list[int] | None = None,
        image_size: int = 32,
        channels: int | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1:
            raise ConfigError(f"image_size and batch_size must be >= 1, got {image_size} and {batch_size}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.predict_seed = seed
        self.predict_samples_per_class = samples_per_class
        self.predict_classes = classes
        self.requests = SamplingRequests(num_classes, samples_per_class, seed, classes)

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.requests, self.batch_size)
