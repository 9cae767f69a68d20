"""Write video files: H.264 MP4 through PyAV (FFmpeg's libx264).

Used by the moving-digits generator, the prediction writer and tests. Reading goes through
decord (:mod:`hthlight.data.video`), never through this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hthlight.errors import ConfigError


def to_uint8_frames(video_CTHW: torch.Tensor) -> np.ndarray:
    """A clip in [-1, 1] ``(C, T, H, W)`` (C = 1 or 3) -> ``(T, H, W, 3)`` uint8 RGB."""
    if video_CTHW.ndim != 4 or video_CTHW.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, T, H, W) clip with 1 or 3 channels, got shape {tuple(video_CTHW.shape)}")
    pixels = ((video_CTHW.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1, -1)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def write_mp4(path: str | Path, frames_THWC: np.ndarray, fps: float, crf: int = 12) -> Path:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` as H.264 in an MP4 file.

    Even sizes use ``yuv420p`` (what every player reads); odd widths or heights, which 4:2:0
    chroma cannot hold, use ``yuv444p``. ``crf`` is x264's constant-rate factor (0 lossless,
    lower is better). The encoder runs single-threaded so the bytes depend only on the frames.
    """
    frames = np.asarray(frames_THWC)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps}")
    t, h, w, _ = frames.shape
    if t < 1:
        raise ValueError("a video needs at least one frame")
    from fractions import Fraction

    import av  # deferred: part of the `video` extra

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_clip(path: str | Path, video_CTHW: torch.Tensor, fps: float) -> Path:
    """Write a generated clip in [-1, 1] ``(C, T, H, W)`` as an MP4 (see :func:`write_mp4`)."""
    return write_mp4(path, to_uint8_frames(video_CTHW), fps)


def frame_strip(video_CTHW: torch.Tensor, padding: int = 1) -> torch.Tensor:
    """The frames of a clip in [-1, 1] side by side: ``(C, H, T*W + (T-1)*padding)`` in [0, 1]."""
    frames = [(f + 1) / 2 for f in video_CTHW.detach().float().cpu().clamp(-1, 1).unbind(1)]
    gap = torch.ones(video_CTHW.shape[0], video_CTHW.shape[2], padding)
    pieces = [piece for frame in frames for piece in (frame, gap)][:-1]
    return torch.cat(pieces, dim=-1)
