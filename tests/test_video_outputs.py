"""The video demo config end to end (fit with a bad file in the manifest, predict to MP4) and video logging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hthlight.callbacks.skipped import SkippedSamplesReporter
from hthlight.callbacks.video_logging import log_videos, strips_grid
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
        "--trainer.default_root_dir",
        str(tmp_path / "predict"),  # the resolved config goes here, not into the repository's runs/
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


def test_sample_videos_logged_as_animated_gif_and_frame_strip(tmp_path):
    """TensorBoard gets a looping GIF (all clips tiled per frame) and a still strip, without moviepy."""
    import io

    from PIL import Image, ImageSequence
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    videos = torch.rand(3, 1, 5, 8, 8) * 2 - 1
    writer = SummaryWriter(tmp_path)
    assert log_videos(writer, videos, 7, fps=8) == "samples_video"
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"samples_video", "samples_frames"}
    (video,) = events.Images("samples_video")
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    assert video.step == 7 and gif.format == "GIF"
    frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 5 and gif.info["duration"] == 120 and gif.info["loop"] == 0  # 8 fps in 1/100 s
    assert (video.width, video.height) == (2 * 9 + 1, 2 * 9 + 1)  # 3 clips in a 2 x 2 grid, 1-pixel gaps
    first = np.asarray(frames[0])[1:9, 1:9, 0] / 255  # clip 0, frame 0 (GIF palette: ~1/32 steps)
    assert np.abs(first - ((videos[0, 0, 0] + 1) / 2).numpy()).max() < 0.05
    grid = strips_grid(videos)
    assert grid.shape == (3, 3 * (8 + 1) + 1, 5 * 8 + 4 + 2)  # 3 rows of 5 frames with 1-pixel gaps
    first = grid[0, 1:9, 1:9]
    assert np.allclose(first.numpy(), ((videos[0, 0, 0] + 1) / 2).numpy())
