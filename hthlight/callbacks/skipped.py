"""Count and report the samples the data loaders skipped (see :mod:`hthlight.data.health`)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from hthlight.data.health import SKIPPED_KEY

STAGES = ("train", "val")


class SkippedSamplesReporter(L.Callback):
    """Pop ``batch["skipped"]`` before each train/val step, count it, log and warn per epoch.

    At the end of every train/validation epoch it logs ``data/skipped_train`` /
    ``data/skipped_val`` (summed over ranks) and, if anything was skipped, warns once with the
    count and the first few paths. Validation sanity-check batches are popped but not counted.

    Attributes:
        total_skipped: Files skipped over the whole run, by stage (``"train"``, ``"val"``).
        skipped_paths: The first ``max_paths_kept`` skipped paths, by stage.

    Args:
        max_paths_shown: Paths listed in each warning.
        max_paths_kept: Paths remembered per stage in ``skipped_paths``.
    """

    def __init__(self, max_paths_shown: int = 5, max_paths_kept: int = 1000) -> None:
        self.max_paths_shown = max_paths_shown
        self.max_paths_kept = max_paths_kept
        self.total_skipped: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.skipped_paths: dict[str, list[str]] = {stage: [] for stage in STAGES}
        self._epoch_paths: dict[str, list[str]] = {stage: [] for stage in STAGES}

    @property
    def total_skipped_train(self) -> int:
        return self.total_skipped["train"]

    @property
    def total_skipped_val(self) -> int:
        return self.total_skipped["val"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_paths["train"] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_paths["val"] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._take(batch, "train", count=True)

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._take(batch, "val", count=not trainer.sanity_checking)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(pl_module, "train", epoch=trainer.current_epoch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(pl_module, "val", epoch=trainer.current_epoch)

    def _take(self, batch: Any, stage: str, count: bool) -> None:
        """Remove the skipped paths from the batch (in place) and remember them."""
        if not isinstance(batch, dict) or SKIPPED_KEY not in batch:
            return
        paths = list(batch.pop(SKIPPED_KEY))
        if not count or not paths:
            return
        self._epoch_paths[stage].extend(paths)
        self.total_skipped[stage] += len(paths)
        room = self.max_paths_kept - len(self.skipped_paths[stage])
        self.skipped_paths[stage].extend(paths[: max(room, 0)])

    def _report(self, pl_module: L.LightningModule, stage: str, epoch: int) -> None:
        paths = self._epoch_paths[stage]
        pl_module.log(
            f"data/skipped_{stage}",
            float(len(paths)),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=1,
        )
        if paths:
            shown = ", ".join(paths[: self.max_paths_shown])
            hidden = len(paths) - self.max_paths_shown
            more = f" (+{hidden} more)" if hidden > 0 else ""
            rank_zero_warn(f"skipped {len(paths)} unreadable {stage} sample(s) in epoch {epoch}: {shown}{more}")
