"""Skipping bad samples: datasets mark them, the collate drops them and names them in the batch.

A dataset that cannot read a sample returns :class:`SkippedSample` (its path and why) instead
of a ``{"image", "label"}`` dict; a bare ``None`` is accepted too (reported as ``"<unknown>"``).
:func:`collate_skipping` collates the good items and stores the paths of the bad ones in
``batch["skipped"]``. The information travels inside the batch, so it survives
``num_workers > 0``. :class:`hthlight.callbacks.skipped.SkippedSamplesReporter` pops that key
before the LightningModule sees the batch, counts and reports it.

If every item of a batch is bad the batch is ``{"skipped": [...]}`` only: after the reporter
popped the key it is an empty dict, so a training/validation step must skip a batch that has
no ``"image"`` (e.g. ``if "image" not in batch: return None``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch.utils.data import default_collate

SKIPPED_KEY = "skipped"
UNKNOWN_PATH = "<unknown>"


class SkippedSample(NamedTuple):
    """Marker a dataset returns for a sample it could not load."""

    path: str
    reason: str


def collate_skipping(items: list[Any]) -> dict[str, Any]:
    """``default_collate`` of the readable items plus ``"skipped"``: the paths of the others.

    Items that are :class:`SkippedSample` or ``None`` are dropped. The result always has the
    ``"skipped"`` key (an empty list when nothing was skipped); when nothing readable is left
    it has only that key.
    """
    good = [item for item in items if item is not None and not isinstance(item, SkippedSample)]
    skipped = [_skipped_path(item) for item in items if item is None or isinstance(item, SkippedSample)]
    batch: dict[str, Any] = default_collate(good) if good else {}
    if not isinstance(batch, dict):
        raise TypeError(f"collate_skipping expects dict samples, got {type(good[0]).__name__}")
    batch[SKIPPED_KEY] = skipped
    return batch


def _skipped_path(item: SkippedSample | None) -> str:
    return UNKNOWN_PATH if item is None else item.path
