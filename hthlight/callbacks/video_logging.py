"""Sample videos in TensorBoard: ``add_video`` when moviepy is installed, else frame strips.

TensorBoard's ``add_video`` encodes GIFs through ``moviepy.editor`` (moviepy < 2); without it
each clip is logged as an image strip of its frames (``samples_frames``), one clip per row.
"""

from __future__ import annotations

import importlib.util

import torch
from torchvision.utils import make_grid

from hthlight.data.video_io import frame_strip


def has_moviepy() -> bool:
    """Whether TensorBoard's ``add_video`` can work: it imports ``moviepy.editor`` (moviepy < 2)."""
    if importlib.util.find_spec("moviepy") is None:
        return False
    try:
        from moviepy import editor  # noqa: F401
    except Exception:  # moviepy 2 has no editor module; torch's add_video then logs nothing
        return False
    return True


def strips_grid(videos_BCTHW: torch.Tensor) -> torch.Tensor:
    """All clips as frame strips, one per row: ``(3, rows, cols)`` in [0, 1]."""
    strips = [frame_strip(v) for v in videos_BCTHW]
    return make_grid(strips, nrow=1, padding=1, pad_value=1.0)


def log_videos(writer, videos_BCTHW: torch.Tensor, step: int, fps: float) -> str:
    """Log clips in [-1, 1] to a TensorBoard ``SummaryWriter``; returns the tag used."""
    if has_moviepy():
        clips_BTCHW = ((videos_BCTHW.float().clamp(-1, 1) + 1) / 2).transpose(1, 2)
        if clips_BTCHW.shape[2] == 1:
            clips_BTCHW = clips_BTCHW.expand(-1, -1, 3, -1, -1)
        writer.add_video("samples_video", clips_BTCHW, step, fps=max(1, round(fps)))
        return "samples_video"
    writer.add_image("samples_frames", strips_grid(videos_BCTHW), step)
    return "samples_frames"
