"""Sample videos in TensorBoard as animated GIFs (Pillow), plus a still strip of their frames.

TensorBoard shows a video as an image summary holding an animated GIF; its ``add_video``
encodes that GIF through ``moviepy.editor`` (moviepy < 2, which has no wheel for current
Pythons) and silently logs nothing without it. Here the GIF is encoded with Pillow (already a
dependency through torchvision) and written as the same image summary, under
``samples_video``: every clip tiled into one grid per frame, as ``add_video`` tiles them. The
frames are also logged as a still image, one clip per row (``samples_frames``), to compare
frames side by side.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image
from torchvision.utils import make_grid

from hthlight.data.video_io import frame_strip


def strips_grid(videos_BCTHW: torch.Tensor) -> torch.Tensor:
    """All clips as frame strips, one per row: ``(3, rows, cols)`` in [0, 1]."""
    strips = [frame_strip(v) for v in videos_BCTHW]
    return make_grid(strips, nrow=1, padding=1, pad_value=1.0)


def gif_bytes(videos_BCTHW: torch.Tensor, fps: float) -> tuple[bytes, int, int]:
    """Clips in [-1, 1] tiled per frame in a square-ish grid as a looping GIF: ``(bytes, height, width)``."""
    clips = ((videos_BCTHW.float().clamp(-1, 1) + 1) / 2).cpu()
    if clips.shape[1] == 1:
        clips = clips.expand(-1, 3, -1, -1, -1)
    nrow = math.ceil(clips.shape[0] ** 0.5)
    frames = []
    for t in range(clips.shape[2]):
        grid = make_grid(clips[:, :, t], nrow=nrow, padding=1, pad_value=1.0)
        pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        frames.append(Image.fromarray(pixels))
    buffer = io.BytesIO()
    duration_ms = max(10, round(100 / fps) * 10)  # GIF frame times are hundredths of a second
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return buffer.getvalue(), frames[0].height, frames[0].width


def log_videos(writer, videos_BCTHW: torch.Tensor, step: int, fps: float) -> str:
    """Log clips in [-1, 1] to a TensorBoard ``SummaryWriter`` as a GIF and a frame strip; returns the GIF's tag."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    data, height, width = gif_bytes(videos_BCTHW, fps)
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    summary = Summary(value=[Summary.Value(tag="samples_video", image=image)])
    writer._get_file_writer().add_summary(summary, step)  # what SummaryWriter.add_video writes
    writer.add_image("samples_frames", strips_grid(videos_BCTHW), step)
    return "samples_video"
