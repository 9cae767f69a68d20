"""Patch, position and timestep embeddings (DiT, Peebles & Xie 2023; HTH sec. 3.2)."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from hthlight.scans import Grid


def sinusoid(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal features (Vaswani et al. 2017): ``(N,) -> (N, dim)``, [cos | sin]."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding width must be even, got {dim}")
    half = dim // 2
    # float64 on CPU (cached position tables); float32 on accelerators (per-step timestep features)
    dtype = torch.float64 if positions.device.type == "cpu" else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=positions.device) / half)
    angles = positions.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@functools.lru_cache(maxsize=64)
def _sincos_position_table(grid: Grid, dim: int) -> torch.Tensor:
    t, h, w = grid
    if dim % 4:
        raise ValueError(f"2D sinusoidal positions need a width divisible by 4, got {dim}")
    rows = sinusoid(torch.arange(h), dim // 2)  # (h, dim/2)
    cols = sinusoid(torch.arange(w), dim // 2)  # (w, dim/2)
    spatial_HWD = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    # Time enters as a full-width 1D sinusoid relative to frame 0, so a one-frame clip gets
    # exactly the image embedding and image checkpoints transfer to video unchanged.
    frames = sinusoid(torch.arange(t), dim)
    temporal_TD = frames - frames[:1]
    table = temporal_TD[:, None, None, :] + spatial_HWD[None]
    return table.reshape(t * h * w, dim).to(torch.float32)


def sincos_position_embedding(grid: Grid, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed absolute positions for the actual ``(t, h, w)`` token grid: ``(t*h*w, dim)``.

    Spatial: DiT's 2D sin-cos (half the channels for rows, half for columns); temporal: a
    1D sin-cos added on top, zero at frame 0.
    """
    return _sincos_position_table(tuple(int(n) for n in grid), dim).to(device=device, dtype=dtype)


class TimestepEmbedder(nn.Module):
    """Diffusion time -> width ``dim``: sinusoid then a 2-layer MLP (DiT).

    ``time_scale`` maps the scheduler's time (rectified flow: [0, 1]) to the sinusoid's range.
    """

    def __init__(self, dim: int, frequency_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_B: torch.Tensor) -> torch.Tensor:
        features = sinusoid(t_B.flatten() * self.time_scale, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches of every frame -> tokens (a strided conv as a Linear)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)

    def forward(self, x_BCTHW: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        b, c, t, height, width = x_BCTHW.shape
        p = self.patch_size
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        if height % p or width % p:
            raise ValueError(f"input size {height}x{width} is not divisible by patch_size={p}")
        h, w = height // p, width // p
        patches = x_BCTHW.reshape(b, c, t, h, p, w, p).permute(0, 2, 3, 5, 1, 4, 6)
        return self.proj(patches.reshape(b, t * h * w, c * p * p)), (t, h, w)


def unpatchify(x_BLK: torch.Tensor, grid: Grid, channels: int, patch_size: int) -> torch.Tensor:
    """Inverse of :class:`PatchEmbed`'s layout: ``(B, t*h*w, C*p*p) -> (B, C, t, h*p, w*p)``."""
    b = x_BLK.shape[0]
    t, h, w = grid
    p = patch_size
    x = x_BLK.reshape(b, t, h, w, channels, p, p).permute(0, 4, 1, 2, 5, 3, 6)
    return x.reshape(b, channels, t, h * p, w * p)
