"""The video demo config end to end (fit with a bad file in the manifest, predict to MP4) and video logging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hthlight.callbacks.skipped import SkippedSamplesReporter
from hthlight.callbacks.video_logging import has_moviepy, log_videos, strips_grid
from hthlight.cli import main
from hthlight.data.moving_digits import write_moving_digits
from hthlight.lightning_cli import HthlightCLI

decord = pytest.importorskip("decord")

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "moving_digits.yaml")

TINY = [
    "--model.num_frames",
    "4",
    "--data.init_args.num_frames",
    "4",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.val_fraction",
    "0",
    "--model.denoiser.dim",
    "32",
    "--model.denoiser.layout",
    "[{mixer: {name: hydra, d_state: 8, headdim: 8, chunk_size: 16}, repeat: 2, scans: [th, tv]}, attention]",
    "--model.sampling.steps",
    "2",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    path = write_moving_digits(root, num_videos=5, frames=6, size=32, fps=8, seed=0)
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with path.open("a") as f:
        f.write(json.dumps({"path": "videos/broken.mp4", "label": 3, "caption": "broken"}) + "\n")
    return path


@pytest.mark.slow
def test_demo_config_fits_reports_skips_and_predicts_mp4(manifest, tmp_path):
    run = tmp_path / "run"
    cli = HthlightCLI(
        args=[
            "fit",
            "--config",
            CONFIG,
            "--data.init_args.manifest",
            str(manifest),
            "--trainer.max_steps",
            "3",
            "--trainer.default_root_dir",
            str(run),
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_checkpointing",
            "false",
            *TINY,
        ]
    )
    reporter = next(c for c in cli.trainer.callbacks if isinstance(c, SkippedSamplesReporter))
    assert reporter.total_skipped_train >= 1 and reporter.skipped_paths["train"][0].endswith("broken.mp4")
    ckpt = run / "last.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    out = tmp_path / "samples"
    argv = [
        "predict",
        "--config",
        CONFIG,
        "--ckpt_path",
        str(ckpt),
        "--data.init_args.manifest",
        str(manifest),
        "--data.init_args.predict_samples_per_class",
        "1",
        "--data.init_args.predict_classes",
        "[0, 7]",
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        f"[{{class_path: hthlight.callbacks.PredictionWriter, init_args: {{output_dir: {out}, fps: 4}}}}]",
        *TINY,
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [0, 7]
    for row in rows:
        reader = decord.VideoReader(str(out / row["video"]))
        assert len(reader) == 4 and reader.get_avg_fps() == pytest.approx(4.0)
        assert reader[0].shape == (16, 16, 3) or reader[0].shape[:2] == (16, 16)
        assert (out / row["file"]).is_file()  # first frame as PNG (used by the grids)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["num_frames"] == 4 and settings["fps"] == 4 and settings["sample_shape"] == [1, 4, 16, 16]


class RecordingWriter:
    def __init__(self) -> None:
        self.calls = []

    def add_image(self, tag, image, step):
        self.calls.append(("image", tag, tuple(image.shape), step))

    def add_video(self, tag, video, step, fps):
        self.calls.append(("video", tag, tuple(video.shape), step))


def test_sample_videos_logged_as_frame_strips_without_moviepy():
    videos = torch.rand(3, 1, 5, 8, 8) * 2 - 1
    writer = RecordingWriter()
    tag = log_videos(writer, videos, 7, fps=8)
    if has_moviepy():
        assert writer.calls == [("video", "samples_video", (3, 5, 3, 8, 8), 7)]
    else:
        assert tag == "samples_frames"
        kind, _, shape, step = writer.calls[0]
        assert kind == "image" and step == 7 and shape[0] == 3
    grid = strips_grid(videos)
    assert grid.shape == (3, 3 * (8 + 1) + 1, 5 * 8 + 4 + 2)  # 3 rows of 5 frames with 1-pixel gaps
    first = grid[0, 1:9, 1:9]
    assert np.allclose(first.numpy(), ((videos[0, 0, 0] + 1) / 2).numpy())
