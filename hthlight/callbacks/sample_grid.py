"""Log a grid of samples from fixed noise to TensorBoard every N steps (one row per class)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from hthlight.callbacks.video_logging import log_videos


class SampleGridLogger(L.Callback):
    """Sample ``samples_per_class`` images of each class from the same seeds every ``every_n_steps``.

    The grid goes to TensorBoard (tag ``samples``) and, as a PNG, to ``<log_dir>/samples/``.
    Fixed seeds make successive grids comparable as training goes on.

    Args:
        every_n_steps: optimizer steps between grids (also logged at the end of training).
        samples_per_class: columns of the grid.
        classes: class labels to show (default: all classes of a class-conditional model).
        seed: seed of the first sample; sample j of each row uses ``seed + j``.
        steps: sampler steps (default: the model's sampling config).
        cfg_scale: guidance scale (default: the model's sampling config).
        fps: frame rate of logged sample videos (an animated GIF under ``samples_video`` and a
            frame strip per clip under ``samples_frames``; see :mod:`hthlight.callbacks.video_logging`).
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        samples_per_class: int = 8,
        classes: list[int] | None = None,
        seed: int = 0,
        steps: int | None = None,
        cfg_scale: float | None = None,
        fps: float = 8.0,
    ) -> None:
        if every_n_steps < 1 or samples_per_class < 1:
            raise ValueError("every_n_steps and samples_per_class must be >= 1")
        self.every_n_steps = every_n_steps
        self.samples_per_class = samples_per_class
        self.classes = classes
        self.seed = seed
        self.steps = steps
        self.cfg_scale = cfg_scale
        self._last_logged_step = -1
        self.fps = fps
        self._videos: torch.Tensor | None = None

    def _rows(self, pl_module) -> list[int]:
        if self.classes is not None:
            return list(self.classes)
        conditioner = pl_module.sampling_model().conditioner
        return list(range(getattr(conditioner, "num_classes", 1)))

    def grid(self, pl_module) -> torch.Tensor:
        """The grid image ``(3, H, W)`` in [0, 1]."""
        rows = self._rows(pl_module)
        labels = torch.tensor(rows).repeat_interleave(self.samples_per_class)
        seeds = [self.seed + j for _ in rows for j in range(self.samples_per_class)]
        images = pl_module.generate(labels, seeds, steps=self.steps, cfg_scale=self.cfg_scale)
        self._videos = images.cpu() if images.ndim == 5 else None
        if images.ndim == 5:  # video: the grid shows the first frame; _write logs the clips
            images = images[:, :, 0]
        return make_grid((images.cpu() + 1) / 2, nrow=self.samples_per_class, padding=1, pad_value=1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_logged_step:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_logged_step:
            self._log(trainer, pl_module)

    def _log(self, trainer, pl_module) -> None:
        self._last_logged_step = trainer.global_step
        # every rank samples (a sharded model needs all of them); the training precision's context
        # (bf16 autocast) lets FSDP's bf16 parameters meet the float32 noise
        with trainer.precision_plugin.forward_context():
            grid = self.grid(pl_module)
        # trainer.log_dir broadcasts from rank 0: every rank must ask, not only the writing one
        self._write(trainer, grid, trainer.log_dir or trainer.default_root_dir)

    @rank_zero_only
    def _write(self, trainer, grid: torch.Tensor, log_dir: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, trainer.global_step)
                if self._videos is not None:
                    log_videos(logger.experiment, self._videos, trainer.global_step, self.fps)
        out = Path(log_dir) / "samples" / f"step_{trainer.global_step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out)
