"""`hthlight data moving-digits`: real H.264 MP4 clips read back through decord, reproducible from the seed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hthlight.cli import main
from hthlight.data.moving_digits import DIGIT_NAMES, bounce, clip_specs, render_clip

decord = pytest.importorskip("decord")


def generate(out, seed: int, num_videos: int = 3) -> list[dict]:
    argv = [
        "data",
        "moving-digits",
        "--out",
        str(out),
        "--num-videos",
        str(num_videos),
        "--frames",
        "6",
        "--size",
        "32",
        "--fps",
        "5",
        "--seed",
        str(seed),
    ]
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def decode(path) -> tuple[np.ndarray, float]:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), reader.get_avg_fps()


def test_writes_mp4_clips_with_labels_and_captions(tmp_path, capsys):
    rows = generate(tmp_path / "a", seed=1)
    assert "wrote 3 clip(s) of 6 frames at 5 fps" in capsys.readouterr().out
    specs = clip_specs(3, 32, seed=1)
    for row, spec in zip(rows, specs):
        assert re.fullmatch(r"a handwritten (\w+) moving (left|right|up|down)", row["caption"])
        assert row["caption"] == f"a handwritten {DIGIT_NAMES[row['label']]} moving {spec.direction}"
        path = tmp_path / "a" / row["path"]
        assert path.suffix == ".mp4" and path.read_bytes()[4:8] == b"ftyp"
        frames, fps = decode(path)
        assert frames.shape == (6, 32, 32, 3) and fps == pytest.approx(5.0)
        # the decoded H.264 frames are the rendered ones, up to compression error
        rendered = render_clip(spec, 6, 32).astype(np.float32)
        assert np.abs(frames.astype(np.float32) - rendered).mean() < 4.0
        # the digit moves: frame 0 and frame 5 differ
        assert np.abs(frames[0].astype(int) - frames[5].astype(int)).mean() > 1.0


def test_same_seed_same_clips_other_seed_other_clips(tmp_path):
    a, b, c = generate(tmp_path / "a", 7), generate(tmp_path / "b", 7), generate(tmp_path / "c", 8)
    assert a == b and a != c
    for row in a:
        assert np.array_equal(decode(tmp_path / "a" / row["path"])[0], decode(tmp_path / "b" / row["path"])[0])


def test_bounce_reflects_at_both_borders():
    assert [bounce(p, 0, 4) for p in (0, 3, 4, 5, 8, 9, -1)] == [0, 3, 4, 3, 0, 1, 1]


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["data", "moving-digits", "--out", str(tmp_path), "--size", "20"]) == 2
    assert "--size must be an even number >= 32" in capsys.readouterr().err
    assert main(["data", "nope"]) == 2
