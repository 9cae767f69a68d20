"""Write ``predict`` outputs: one PNG per sample, a grid per class, and the settings used."""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.utils import make_grid, save_image

import hthlight
from hthlight.errors import ConfigError

PREDICTIONS_FILE = "predictions.jsonl"
SETTINGS_FILE = "settings.json"


class PredictionWriter(BasePredictionWriter):
    """Save samples as ``samples/<index>_class<label>.png`` under ``output_dir``.

    ``predictions.jsonl`` gets one line per sample (file, label, seed, index) as soon as it is
    written; ``settings.json`` records the checkpoint, sampler, steps, guidance scale and
    seeds; ``grid_class<k>.png`` and ``grid.png`` show up to ``grid_columns`` samples per class.
    Existing predictions are never overwritten unless ``overwrite`` is set.

    Args:
        output_dir: folder for the outputs.
        overwrite: replace predictions already in ``output_dir``.
        grid_columns: samples per class shown in the grids (0: no grids).
    """

    def __init__(self, output_dir: str = "predictions", overwrite: bool = False, grid_columns: int = 10) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.grid_columns = grid_columns
        self._grid_images: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._count = 0

    def _predictions_path(self, trainer) -> Path:
        if trainer.world_size == 1:
            return self.output_dir / PREDICTIONS_FILE
        return self.output_dir / f"predictions.rank{trainer.global_rank}.jsonl"

    def on_predict_start(self, trainer, pl_module) -> None:
        existing = self.output_dir / PREDICTIONS_FILE
        if existing.exists() and not self.overwrite:
            raise ConfigError(
                f"{existing} already exists; choose another PredictionWriter output_dir or set overwrite: true"
            )
        trainer.strategy.barrier()
        (self.output_dir / "samples").mkdir(parents=True, exist_ok=True)
        self._predictions_path(trainer).write_text("")
        self._grid_images.clear()
        self._count = 0
        if trainer.is_global_zero:
            self._write_settings(trainer, pl_module)

    def _write_settings(self, trainer, pl_module) -> None:
        sampling = pl_module.sampling
        settings: dict[str, Any] = {
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "sampler": sampling.sampler,
            "steps": sampling.steps,
            "cfg_scale": sampling.cfg_scale,
            "ema": pl_module.ema_denoiser is not None and pl_module.ema_config.use_for_sampling,
            "sample_shape": list(pl_module.sample_shape()),
            "num_frames": pl_module.num_frames,
            "seeds": "per sample, listed in predictions.jsonl",
            "hthlight_version": hthlight.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        data = trainer.datamodule
        for key in ("predict_seed", "predict_samples_per_class", "predict_classes"):
            if hasattr(data, key):
                settings[key] = getattr(data, key)
        (self.output_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        images = (prediction["images"] + 1) / 2
        if images.ndim == 5:
            images = images[:, :, 0]  # first frame; videos get their own writer
        lines = []
        for image, label, seed, index in zip(images, prediction["label"], prediction["seed"], prediction["index"]):
            label, seed, index = int(label), int(seed), int(index)
            relative = Path("samples") / f"{index:05d}_class{label}.png"
            save_image(image, self.output_dir / relative)
            lines.append(json.dumps({"file": str(relative), "label": label, "seed": seed, "index": index}))
            if len(self._grid_images[label]) < self.grid_columns:
                self._grid_images[label].append(image)
        with self._predictions_path(trainer).open("a") as f:
            f.write("".join(line + "\n" for line in lines))
        self._count += len(lines)

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.world_size > 1 and trainer.is_global_zero:
            merged = self.output_dir / PREDICTIONS_FILE
            parts = sorted(self.output_dir.glob("predictions.rank*.jsonl"))
            merged.write_text("".join(p.read_text() for p in parts))
            for part in parts:
                part.unlink()
        if trainer.is_global_zero and self.grid_columns and self._grid_images:
            rows = []
            for label in sorted(self._grid_images):
                row = self._grid_images[label]
                save_image(
                    make_grid(row, nrow=self.grid_columns, padding=1, pad_value=1.0),
                    self.output_dir / f"grid_class{label}.png",
                )
                rows.extend(row + [torch.ones_like(row[0])] * (self.grid_columns - len(row)))
            save_image(make_grid(rows, nrow=self.grid_columns, padding=1, pad_value=1.0), self.output_dir / "grid.png")
        if trainer.is_global_zero:
            print(f"hthlight: wrote {self._count} sample(s) and grids to {self.output_dir.resolve()}")
