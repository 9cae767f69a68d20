"""CLIP score (Hessel et al. 2021) of generated images against their prompts.

``hthlight eval clip SAMPLES_DIR --model LOCAL_CLIP_DIR`` reads ``SAMPLES_DIR/predictions.jsonl``
(one JSON object per line with ``file``, an image path relative to SAMPLES_DIR, and ``prompt``,
as ``hthlight predict`` writes for prompt requests), loads a CLIP model and its processor from a
local directory (``save_pretrained`` layout: ``config.json``, weights, tokenizer and image
processor files; never downloaded) and reports torchmetrics' ``CLIPScore``:
``100 * max(cos(image, text), 0)`` averaged over the samples. Prompts longer than the text
model's positions are truncated.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from hthlight.errors import ConfigError, DataError
from hthlight.eval.fid import load_rgb

PREDICTIONS_FILE = "predictions.jsonl"


def read_prompted_predictions(samples_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Image paths and their prompts from ``samples_dir/predictions.jsonl`` (rows without a prompt are skipped)."""
    root = Path(samples_dir)
    listing = root / PREDICTIONS_FILE
    if not root.is_dir():
        raise DataError(f"samples directory '{samples_dir}' does not exist")
    if not listing.is_file():
        raise DataError(f"no {PREDICTIONS_FILE} in '{samples_dir}' (expected hthlight predict's output)")
    files, prompts = [], []
    for line_no, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            file, prompt = record["file"], record.get("prompt")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{listing}:{line_no}: expected a JSON object with 'file' and 'prompt' ({err})") from err
        if prompt is None:
            continue
        files.append(root / file)
        prompts.append(str(prompt))
    if not files:
        raise DataError(f"'{listing}' lists no sample with a 'prompt'; CLIP score needs prompt requests")
    return files, prompts


def load_clip(model_dir: str | Path, device: str = "cpu"):
    """``(CLIPModel, CLIPProcessor)`` from a local directory only."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise ConfigError(
            f"no CLIP model in '{model_dir}' (expected config.json and weights from save_pretrained); "
            "give --model a local directory, nothing is downloaded"
        )
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as exc:
        raise ConfigError(f"CLIP score needs transformers: pip install 'hthlight[hf]' ({exc})") from exc
    try:
        model = CLIPModel.from_pretrained(str(root), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the CLIP model from '{model_dir}': {exc}") from exc
    try:
        processor = CLIPProcessor.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load the CLIP processor (tokenizer + image processor) from '{model_dir}': {exc}"
        ) from exc
    return model, processor


class _ProjectedFeatures(torch.nn.Module):
    """CLIPModel whose ``get_*_features`` return the projected embedding tensors.

    transformers 5 returns output objects (``pooler_output`` holds the projection), while
    torchmetrics' CLIPScore expects tensors.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


@torch.no_grad()
def clip_score(samples_dir: str, model_dir: str, batch_size: int = 32, device: str = "cpu") -> dict[str, float | int]:
    """Mean CLIP score of the prompted samples in ``samples_dir``."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if not (Path(model_dir) / "config.json").is_file():
        load_clip(model_dir)  # raises, naming what is missing
    files, prompts = read_prompted_predictions(samples_dir)
    model, processor = load_clip(model_dir, device)
    wrapped = _ProjectedFeatures(model)
    metric = CLIPScore(model_name_or_path=lambda: (wrapped, processor)).to(device)
    for start in range(0, len(files), batch_size):
        images = [load_rgb(path).to(device) for path in files[start : start + batch_size]]
        metric.update(images, prompts[start : start + batch_size])
    return {"clip_score": float(metric.compute()), "samples": len(files)}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hthlight eval clip", description="CLIP score of samples vs their prompts.")
    parser.add_argument("samples_dir", help=f"folder holding {PREDICTIONS_FILE} (with 'prompt') and the images")
    parser.add_argument("--model", required=True, help="local CLIP directory (save_pretrained layout)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(list(argv))
    result = clip_score(args.samples_dir, args.model, args.batch_size, args.device)
    print(f"CLIP score {result['clip_score']:.4f} over {result['samples']} samples")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
