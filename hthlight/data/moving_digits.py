"""Moving digits: real H.264 MP4 clips of bundled handwritten digits moving and bouncing.

``hthlight data moving-digits --out DIR`` writes ``DIR/videos/<i>.mp4`` and
``DIR/manifest.jsonl`` (one JSON object per clip: ``path`` relative to the manifest,
``label`` the digit class, ``caption`` such as "a handwritten seven moving left"). Each clip
shows one of scikit-learn's 1797 digits (8x8, upsampled to half the frame side) starting at a
random position and moving with a constant speed in one of four directions, bouncing off
the borders. Everything follows from ``--seed``: the same arguments give the same clips.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hthlight.data.digits import _raw_digits, resize_square
from hthlight.data.video_io import write_mp4
from hthlight.errors import ConfigError

MANIFEST = "manifest.jsonl"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: direction name -> unit velocity (dy, dx) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows: which digit, where it starts, and how it moves (pixels per frame)."""

    digit_index: int
    label: int
    direction: str
    speed: float
    y0: float
    x0: float

    @property
    def caption(self) -> str:
        return f"a handwritten {DIGIT_NAMES[self.label]} moving {self.direction}"


def bounce(position: float, low: float, high: float) -> float:
    """Fold a free 1D trajectory into ``[low, high]`` (elastic reflection at both ends)."""
    span = high - low
    if span <= 0:
        return low
    phase = (position - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def render_clip(spec: ClipSpec, frames: int, size: int) -> np.ndarray:
    """The clip as uint8 RGB frames ``(T, S, S, 3)``: a white digit on black."""
    images, _ = _raw_digits()
    side = size // 2
    glyph = (resize_square(images[spec.digit_index : spec.digit_index + 1], side)[0, 0].clamp(-1, 1) + 1) / 2
    dy, dx = DIRECTIONS[spec.direction]
    out = np.zeros((frames, size, size), dtype=np.float32)
    limit = size - side
    for t in range(frames):
        y = bounce(spec.y0 + dy * spec.speed * t, 0, limit)
        x = bounce(spec.x0 + dx * spec.speed * t, 0, limit)
        out[t] = _place(glyph, y, x, size)
    pixels = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    return np.repeat(pixels[..., None], 3, axis=-1)


def _place(glyph: torch.Tensor, y: float, x: float, size: int) -> np.ndarray:
    """Paste ``glyph`` at the sub-pixel position ``(y, x)`` with bilinear weights."""
    canvas = torch.zeros(size + 1, size + 1)
    side = glyph.shape[-1]
    iy, ix = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - iy, x - ix
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            if wy * wx > 0:
                canvas[iy + oy : iy + oy + side, ix + ox : ix + ox + side] += wy * wx * glyph
    return canvas[:size, :size].clamp(0, 1).numpy()


def clip_specs(num_videos: int, size: int, seed: int) -> list[ClipSpec]:
    """Draw every clip's digit, direction, speed and start position from one seeded generator."""
    _images, labels = _raw_digits()
    rng = np.random.default_rng(seed)
    limit = size - size // 2
    names = list(DIRECTIONS)
    specs = []
    for _ in range(num_videos):
        index = int(rng.integers(len(labels)))
        specs.append(
            ClipSpec(
                digit_index=index,
                label=int(labels[index]),
                direction=names[int(rng.integers(len(names)))],
                speed=float(rng.uniform(0.5, 1.5)) * size / 32,
                y0=float(rng.uniform(0, limit)),
                x0=float(rng.uniform(0, limit)),
            )
        )
    return specs


def write_moving_digits(
    out: str | Path, num_videos: int = 200, frames: int = 16, size: int = 32, fps: float = 8.0, seed: int = 0
) -> Path:
    """Write the clips and ``manifest.jsonl`` under ``out``; return the manifest path."""
    if num_videos < 1 or frames < 1:
        raise ConfigError(f"--num-videos and --frames must be >= 1, got {num_videos} and {frames}")
    if size < 32 or size % 2:
        raise ConfigError(
            f"--size must be an even number >= 32 (H.264 4:2:0 needs even sides; decord 0.6 cannot decode "
            f"frames narrower than about 30 pixels), got {size}"
        )
    if fps <= 0:
        raise ConfigError(f"--fps must be positive, got {fps}")
    root = Path(out)
    lines = []
    for i, spec in enumerate(clip_specs(num_videos, size, seed)):
        relative = Path("videos") / f"{i:05d}.mp4"
        write_mp4(root / relative, render_clip(spec, frames, size), fps)
        record = {"path": str(relative), "label": spec.label, "caption": spec.caption, "frames": frames, "fps": fps}
        lines.append(json.dumps(record))
    manifest = root / MANIFEST
    manifest.write_text("".join(line + "\n" for line in lines))
    return manifest


def main(argv: Sequence[str]) -> int:
    """``hthlight data moving-digits --out DIR [...]``."""
    parser = argparse.ArgumentParser(prog="hthlight data moving-digits", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (videos/ and manifest.jsonl)")
    parser.add_argument("--num-videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="frame side in pixels (even, >= 32)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    manifest = write_moving_digits(args.out, args.num_videos, args.frames, args.size, args.fps, args.seed)
    print(f"hthlight: wrote {args.num_videos} clip(s) of {args.frames} frames at {args.fps:g} fps and {manifest}")
    return 0


#: ``hthlight data NAME ...`` -> handler(argv)
DATA_COMMANDS = {"moving-digits": main}


def data_command(argv: Sequence[str]) -> int:
    """``hthlight data {moving-digits} ...``: write a data set."""
    if not argv or argv[0] not in DATA_COMMANDS:
        raise ConfigError(f"usage: hthlight data {{{','.join(DATA_COMMANDS)}}} ...")
    return DATA_COMMANDS[argv[0]](argv[1:])
