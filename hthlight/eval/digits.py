"""Score generated digits with a classifier trained on the real ones.

``python -m hthlight.eval.digits PRED_DIR [--min-accuracy 0.8] [--image-size N]`` reads
``PRED_DIR/predictions.jsonl`` (one JSON object per line with ``file``, a PNG path relative to
PRED_DIR, and ``label``, the requested class), classifies every image and prints per-class and
overall accuracy. Exit codes: 0 ok, 1 accuracy below ``--min-accuracy``, 2 unusable input.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hthlight.data.digits import DIGITS_CLASSES, load_digits_images, resize_square, stratified_split
from hthlight.errors import DataError

PREDICTIONS_FILE = "predictions.jsonl"
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitClassifier:
    """A fitted scikit-learn classifier on flattened ``image_size x image_size`` pixels in [-1, 1]."""

    model: Any
    image_size: int
    heldout_accuracy: float

    def predict(self, images: list[torch.Tensor]) -> np.ndarray:
        """Class of each ``(1, H, W)`` image in [-1, 1] (resized to ``image_size`` if needed)."""
        batch = torch.cat([resize_square(img.float().unsqueeze(0), self.image_size) for img in images])
        return self.model.predict(batch.flatten(1).numpy())


@functools.lru_cache(maxsize=8)
def digit_classifier(image_size: int = 8) -> DigitClassifier:
    """RBF-SVM trained on 80% of the real digits at ``image_size``; scored on the other 20%."""
    from sklearn.svm import SVC  # deferred: scikit-learn is slow to import

    images, labels = load_digits_images(image_size)
    train_idx, test_idx = stratified_split(labels, HELDOUT_FRACTION, SPLIT_SEED)
    pixels = images.flatten(1).numpy()
    model = SVC(C=10.0, gamma="scale").fit(pixels[train_idx], labels[train_idx].numpy())
    accuracy = float(model.score(pixels[test_idx], labels[test_idx].numpy()))
    return DigitClassifier(model=model, image_size=image_size, heldout_accuracy=accuracy)


def read_predictions(pred_dir: str) -> tuple[list[Path], list[int]]:
    """Image paths and requested labels listed in ``pred_dir/predictions.jsonl``."""
    root = Path(pred_dir)
    if not root.is_dir():
        raise DataError(f"predictions directory '{pred_dir}' does not exist")
    listing = root / PREDICTIONS_FILE
    if not listing.is_file():
        raise DataError(f"no {PREDICTIONS_FILE} in '{pred_dir}' (expected the prediction writer's output)")
    files, labels = [], []
    for line_no, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        file, label = _parse_record(line, f"{listing}:{line_no}")
        files.append(root / file)
        labels.append(label)
    if not files:
        raise DataError(f"'{listing}' lists no predictions")
    return files, labels


def _parse_record(line: str, where: str) -> tuple[str, int]:
    try:
        record = json.loads(line)
        file, label = record["file"], record["label"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{where}: expected a JSON object with 'file' and 'label' ({err})") from err
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < DIGITS_CLASSES:
        raise DataError(f"{where}: label {label!r} is not a digit class 0..{DIGITS_CLASSES - 1}")
    return str(file), label


def load_grayscale(path: Path) -> torch.Tensor:
    """A PNG as a ``(1, H, W)`` tensor, 0..255 mapped linearly to [-1, 1]."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read predicted image '{path}': {err}") from err
    return torch.from_numpy(pixels / 255.0 * 2.0 - 1.0).unsqueeze(0)


def evaluate_predictions(pred_dir: str, image_size: int | None = None) -> dict[str, Any]:
    """Classify the predicted images and compare with the requested labels.

    Args:
        pred_dir: Folder written by the prediction writer (holds ``predictions.jsonl``).
        image_size: Classifier resolution; ``None`` uses the width of the first image.

    Returns:
        ``{"n", "accuracy", "per_class": {label: accuracy}, "per_class_n": {label: count},
        "image_size", "classifier_accuracy"}``.
    """
    files, labels = read_predictions(pred_dir)
    images = [load_grayscale(path) for path in files]
    size = image_size if image_size is not None else max(images[0].shape[-1], 8)
    classifier = digit_classifier(size)
    label_array = np.asarray(labels)
    correct = classifier.predict(images) == label_array
    per_class = {c: float(correct[label_array == c].mean()) for c in sorted(set(labels))}
    return {
        "n": len(labels),
        "accuracy": float(correct.mean()),
        "per_class": per_class,
        "per_class_n": {c: labels.count(c) for c in per_class},
        "image_size": size,
        "classifier_accuracy": classifier.heldout_accuracy,
    }


def format_report(result: dict[str, Any]) -> str:
    """Per-class table plus the overall accuracy."""
    lines = ["class      n  accuracy"]
    for label, acc in result["per_class"].items():
        lines.append(f"{label:>5} {result['per_class_n'][label]:>6}  {acc:8.3f}")
    lines.append(f"{'all':>5} {result['n']:>6}  {result['accuracy']:8.3f}")
    lines.append(
        f"accuracy {result['accuracy']:.4f} (classifier at {result['image_size']}px, "
        f"{result['classifier_accuracy']:.3f} on held-out real digits)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 below --min-accuracy, 2 bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m hthlight.eval.digits", description="Classify generated digits with a real-digit SVM."
    )
    parser.add_argument("pred_dir", help=f"folder holding {PREDICTIONS_FILE} and the PNGs it lists")
    parser.add_argument("--min-accuracy", type=float, default=None, help="exit 1 if accuracy is below this")
    parser.add_argument("--image-size", type=int, default=None, help="classifier resolution (default: image width)")
    args = parser.parse_args(argv)
    if args.image_size is not None and args.image_size < 8:
        parser.error(f"--image-size must be >= 8, got {args.image_size}")
    try:
        result = evaluate_predictions(args.pred_dir, args.image_size)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.min_accuracy is not None and result["accuracy"] < args.min_accuracy:
        print(f"FAIL: accuracy {result['accuracy']:.4f} < --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
