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
from hthlight.data.video_io import write_clip
from hthlight.errors import ConfigError

PREDICTIONS_FILE = "predictions.jsonl"
SETTINGS_FILE = "settings.json"


class PredictionWriter(BasePredictionWriter):
    """Save samples as ``samples/<index>_class<label>.png`` under ``output_dir``.

    ``predictions.jsonl`` gets one line per sample (file, label, seed, index, and for prompt
    requests the prompt and negative prompt; a prompt without a class has no label and is saved
    as ``samples/<index>.png``) as soon as it is written; ``settings.json`` records the
    checkpoint, sampler, steps, guidance scale and seeds; ``grid_class<k>.png`` (or
    ``grid_prompt<n>.png``) and ``grid.png`` show up to ``grid_columns`` samples per class (prompt).
    Existing predictions are never overwritten unless ``overwrite`` is set.

    Args:
        output_dir: folder for the outputs.
        overwrite: replace predictions already in ``output_dir``.
        grid_columns: samples per class shown in the grids (0: no grids).
        fps: frame rate of the MP4 written for each video sample (``"video"`` in
            predictions.jsonl; ``"file"`` and the grids show its first frame).
    """

    def __init__(
        self, output_dir: str = "predictions", overwrite: bool = False, grid_columns: int = 10, fps: float = 8.0
    ) -> None:
        super().__init__(write_interval="batch")
        self.fps = fps
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self.grid_columns = grid_columns
        self._grid_images: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)  # (0, label) / (1, prompt)
        self._prompt_rows: dict[str, int] = {}
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
        self._prompt_rows.clear()
        self._count = 0
        if trainer.is_global_zero:
            self._write_settings(trainer, pl_module)

    def _write_settings(self, trainer, pl_module) -> None:
        sampling = pl_module.sampling
        settings: dict[str, Any] = {
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "sampler": sampling.sampler,
            "sampler_kwargs": dict(getattr(sampling, "sampler_kwargs", {})),
            "steps": sampling.steps,
            "cfg_scale": sampling.cfg_scale,
            "ema": pl_module.ema_denoiser is not None and pl_module.ema_config.use_for_sampling,
            "sample_shape": list(pl_module.sample_shape()),
            "num_frames": pl_module.num_frames,
            "fps": self.fps if pl_module.num_frames > 1 else None,
            "seeds": "per sample, listed in predictions.jsonl",
            "hthlight_version": hthlight.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        data = trainer.datamodule
        for key in ("predict_seed", "predict_samples_per_class", "predict_classes", "predict_samples_per_prompt"):
            if hasattr(data, key):
                settings[key] = getattr(data, key)
        (self.output_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        videos = prediction["images"] if prediction["images"].ndim == 5 else None
        images = (prediction["images"] + 1) / 2
        if images.ndim == 5:
            images = images[:, :, 0]  # first frame; videos get their own writer
        lines = []
        prompts = prediction.get("prompt", [None] * len(images))
        negatives = prediction.get("negative_prompt", [""] * len(images))
        rows = zip(images, prediction["label"], prediction["seed"], prediction["index"], prompts, negatives)
        for image, label, seed, index, prompt, negative in rows:
            label, seed, index = int(label), int(seed), int(index)
            name = f"{index:05d}_class{label}.png" if label >= 0 else f"{index:05d}.png"
            relative = Path("samples") / name
            save_image(image, self.output_dir / relative)
            record: dict[str, Any] = {"file": str(relative), "label": label, "seed": seed, "index": index}
            if label < 0:
                del record["label"]
            if prompt is not None:
                record.update(prompt=prompt, negative_prompt=negative)
            if videos is not None:  # the whole clip as H.264 MP4
                record["video"] = str(relative.with_suffix(".mp4"))
                write_clip(self.output_dir / record["video"], videos[len(lines)], self.fps)
            lines.append(json.dumps(record))
            key = (0, label)
            if label < 0 and prompt is not None:
                key = (1, self._prompt_rows.setdefault(prompt, len(self._prompt_rows)))
            if len(self._grid_images[key]) < self.grid_columns:
                self._grid_images[key].append(image)
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
            for key in sorted(self._grid_images):
                row = self._grid_images[key]
                save_image(
                    make_grid(row, nrow=self.grid_columns, padding=1, pad_value=1.0),
                    self.output_dir / (f"grid_class{key[1]}.png" if key[0] == 0 else f"grid_prompt{key[1]}.png"),
                )
                rows.extend(row + [torch.ones_like(row[0])] * (self.grid_columns - len(row)))
            save_image(make_grid(rows, nrow=self.grid_columns, padding=1, pad_value=1.0), self.output_dir / "grid.png")
        if trainer.is_global_zero:
            print(f"hthlight: wrote {self._count} sample(s) and grids to {self.output_dir.resolve()}")
