"""Sampling requests: what a ``predict`` run generates, one item per image.

Every data module's ``predict_dataloader`` serves :class:`SamplingRequests`. An item is
``{"label": class, "seed": noise seed, "index": unique sample id}`` (0-d LongTensors, so a
batch holds ``(B,)`` LongTensors). ``index = label * samples_per_class + i`` for the
``i``-th sample of a class and ``seed = base_seed + index``: the noise of a sample depends
neither on the batch size nor on which classes were requested, and ``index`` is unique
(usable as a file name).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from hthlight.errors import ConfigError


class SamplingRequests(Dataset):
    """Class-major list of sampling requests (all samples of the first class, then the next, ...).

    Args:
        num_classes: Number of classes of the data set (labels are ``0 .. num_classes - 1``).
        samples_per_class: Images to generate per requested class.
        seed: Base seed; sample ``index`` uses noise seeded with ``seed + index``.
        classes: Classes to sample, each once (served in ascending order); ``None`` samples all.
    """

    def __init__(
        self, num_classes: int, samples_per_class: int, seed: int = 0, classes: list[int] | None = None
    ) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if samples_per_class < 1:
            raise ConfigError(f"predict samples_per_class must be >= 1, got {samples_per_class}")
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.classes = _check_classes(classes, num_classes)

    def __len__(self) -> int:
        return len(self.classes) * self.samples_per_class

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        if not 0 <= position < len(self):
            raise IndexError(f"request {position} out of range 0..{len(self) - 1}")
        label = self.classes[position // self.samples_per_class]
        index = label * self.samples_per_class + position % self.samples_per_class
        return {
            "label": torch.tensor(label, dtype=torch.long),
            "seed": torch.tensor(self.seed + index, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }


def _check_classes(classes: list[int] | None, num_classes: int) -> list[int]:
    """Return the requested classes sorted; reject unknown or repeated ones."""
    if classes is None:
        return list(range(num_classes))
    if len(classes) == 0:
        raise ConfigError("predict_classes is empty; give at least one class or null for all classes")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"predict_classes {bad} out of range; allowed classes are 0..{num_classes - 1}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"predict_classes {list(classes)} has duplicates; list each class once")
    return sorted(classes)


def predict_loader(requests: SamplingRequests, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Ordered (never shuffled) loader over sampling requests."""
    return DataLoader(requests, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def check_common_args(
    *,
    batch_size: int,
    num_workers: int,
    predict_batch_size: int = 1,
    val_fraction: float | None = None,
    allow_no_validation: bool = False,
) -> None:
    """Validate the loader arguments the data modules share; raise ConfigError.

    ``val_fraction`` (when given) must be in ``(0, 1)``, or ``[0, 1)`` with ``allow_no_validation``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if val_fraction is not None:
        low_ok = val_fraction >= 0.0 if allow_no_validation else val_fraction > 0.0
        if not (low_ok and val_fraction < 1.0):
            allowed = "in [0, 1)" if allow_no_validation else "strictly between 0 and 1"
            raise ConfigError(f"val_fraction must be {allowed}, got {val_fraction}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    if predict_batch_size < 1:
        raise ConfigError(f"predict_batch_size must be >= 1, got {predict_batch_size}")
