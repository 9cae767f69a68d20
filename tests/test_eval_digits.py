"""The real-digit classifier and the predictions evaluator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hthlight.data.digits import load_digits_images, stratified_split
from hthlight.eval.digits import digit_classifier, evaluate_predictions, main

PER_CLASS = 10


def _write_predictions(pred_dir: Path, label_shift: int = 0) -> list[int]:
    """Write held-out real digits as PNGs (every third one RGB) plus predictions.jsonl."""
    images, labels = load_digits_images(16)
    _, heldout = stratified_split(labels, 0.2, 0)  # the classifier never trained on these
    chosen = [i for c in range(10) for i in heldout[labels[heldout] == c][:PER_CLASS].tolist()]
    (pred_dir / "images").mkdir(parents=True)
    records, requested = [], []
    for n, i in enumerate(chosen):
        pixels = ((images[i, 0].numpy() + 1.0) / 2.0 * 255.0).round().astype(np.uint8)
        image = Image.fromarray(pixels, "L")
        if n % 3 == 0:
            image = image.convert("RGB")
        name = f"images/{n:05d}.png"
        image.save(pred_dir / name)
        label = (int(labels[i]) + label_shift) % 10
        requested.append(label)
        records.append({"file": name, "label": label, "seed": n, "index": n})
    (pred_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return requested


@pytest.mark.parametrize("image_size", [8, 16])
def test_classifier_is_accurate_on_heldout_real_digits(image_size):
    classifier = digit_classifier(image_size)
    assert classifier.heldout_accuracy >= 0.95
    assert digit_classifier(image_size) is classifier  # cached


def test_real_digits_with_correct_labels_score_high(tmp_path):
    _write_predictions(tmp_path)
    result = evaluate_predictions(str(tmp_path))
    assert result["n"] == 10 * PER_CLASS and result["image_size"] == 16
    assert result["accuracy"] >= 0.95
    assert sorted(result["per_class"]) == list(range(10))
    assert all(n == PER_CLASS for n in result["per_class_n"].values())


def test_images_are_resized_to_the_classifier_size(tmp_path):
    _write_predictions(tmp_path)
    assert evaluate_predictions(str(tmp_path), image_size=8)["accuracy"] >= 0.9


def test_wrong_labels_score_low(tmp_path):
    _write_predictions(tmp_path, label_shift=1)
    result = evaluate_predictions(str(tmp_path))
    assert result["accuracy"] <= 0.1
    assert max(result["per_class"].values()) <= 0.3


def test_cli_prints_table_and_passes(tmp_path, capsys):
    _write_predictions(tmp_path)
    assert main([str(tmp_path), "--min-accuracy", "0.9"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+3\s+10\s+\d\.\d{3}$", out, re.MULTILINE)
    assert re.search(r"^accuracy 0\.9\d+", out, re.MULTILINE)


def test_cli_fails_below_min_accuracy(tmp_path, capsys):
    _write_predictions(tmp_path, label_shift=1)
    assert main([str(tmp_path)]) == 0  # no threshold, no failure
    assert main([str(tmp_path), "--min-accuracy", "0.8"]) == 1
    assert "< --min-accuracy 0.8" in capsys.readouterr().err


def test_cli_missing_dir_or_listing_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: predictions directory '{missing}' does not exist"
    assert main([str(tmp_path)]) == 2
    assert f"no predictions.jsonl in '{tmp_path}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"file": "a.png", "label": 12}', "label 12 is not a digit class 0..9"),
        ('{"label": 1}', "expected a JSON object with 'file' and 'label'"),
        ("not json", "expected a JSON object with 'file' and 'label'"),
        ('{"file": "missing.png", "label": 1}', "cannot read predicted image"),
    ],
)
def test_cli_bad_listing_exits_2_with_one_line(tmp_path, capsys, line, message):
    (tmp_path / "predictions.jsonl").write_text(line + "\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
