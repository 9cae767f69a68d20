"""Patch, position and timestep embeddings (DiT, Peebles & Xie 2023; HTH sec. 3.2).

Absolute sin-cos positions (optionally interpolated to a base grid, PixArt-alpha) are added
to the tokens; axial rotary positions (RoFormer, Su et al. 2024) rotate attention's q and k.
Position tables are cached on the CPU per grid and built outside inference mode.
"""

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


def _cpu_arange(n: int) -> torch.Tensor:
    # explicit device: a surrounding ``torch.device("meta")`` context must not leak into cached tables
    return torch.arange(n, dtype=torch.float64, device="cpu")


def _axis_positions(n: int, base: int | None) -> torch.Tensor:
    """Positions of ``n`` tokens along a spatial axis: ``0..n-1``, or ``arange(n) * base / n`` (PixArt)."""
    positions = _cpu_arange(n)
    return positions if base is None else positions * (base / n)


@functools.lru_cache(maxsize=64)
def _sincos_position_table(grid: Grid, dim: int, base: int | None = None) -> torch.Tensor:
    t, h, w = grid
    if dim % 4:
        raise ValueError(f"2D sinusoidal positions need a width divisible by 4, got {dim}")
    if base is not None and base < 1:
        raise ValueError(f"position interpolation base must be a positive number of tokens, got {base}")
    with torch.inference_mode(False):  # a table first built under inference mode must still serve training
        rows = sinusoid(_axis_positions(h, base), dim // 2)  # (h, dim/2)
        cols = sinusoid(_axis_positions(w, base), dim // 2)  # (w, dim/2)
        spatial_HWD = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
        # Time enters as a full-width 1D sinusoid relative to frame 0, so a one-frame clip gets
        # exactly the image embedding and image checkpoints transfer to video unchanged.
        frames = sinusoid(_cpu_arange(t), dim)
        temporal_TD = frames - frames[:1]
        table = temporal_TD[:, None, None, :] + spatial_HWD[None]
        return table.reshape(t * h * w, dim).to(torch.float32)


def sincos_position_embedding(grid: Grid, dim: int, device=None, dtype=None, base: int | None = None) -> torch.Tensor:
    """Fixed absolute positions for the actual ``(t, h, w)`` token grid: ``(t*h*w, dim)``.

    Spatial: DiT's 2D sin-cos (half the channels for rows, half for columns); temporal: a
    1D sin-cos added on top, zero at frame 0. ``base`` (PixArt-alpha, Chen et al. 2024;
    Dimba): positional-embedding interpolation for a model fine-tuned away from its base
    resolution: an axis of ``n`` tokens gets positions ``arange(n) * base / n``, so every grid
    spans the base grid's range ``[0, base)``; a grid of ``k * base`` tokens samples the base
    table's positions at steps of ``1/k``. Without ``base`` positions are ``0..n-1``. Time is
    never interpolated.
    """
    key = tuple(int(n) for n in grid)
    device = torch.device(device if device is not None else "cpu")
    return _sincos_position_table_on(key, dim, None if base is None else int(base), device, dtype or torch.float32)


@functools.lru_cache(maxsize=16)
def _sincos_position_table_on(
    grid: Grid, dim: int, base: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # Kept on the device: a host-to-device copy of the (L, D) table at every forward would cost
    # milliseconds, block the host on the device, and make the forward impossible to capture
    # in a CUDA graph.
    with torch.inference_mode(False):
        return _sincos_position_table(grid, dim, base).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- rotary positions
def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """How many rotary pairs of a head rotate with t, h and w (axial RoPE).

    A head of width K has K/2 pairs. h and w get ``(K/2 - K/2 // 4) // 2`` pairs each (equal,
    so transposing an image is symmetric); t gets the rest, about a quarter. E.g. K=64:
    (8, 12, 12); K=128: (16, 24, 24); K=8: (2, 1, 1). For a one-frame grid the t pairs are not
    rotated (angle 0 at frame 0), so images and frame 0 of a video agree.
    """
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rotary positions need an even head width, got {head_dim}")
    pairs = head_dim // 2
    spatial = (pairs - pairs // 4) // 2
    return pairs - 2 * spatial, spatial, spatial


def _axis_angles(n: int, pairs: int, theta: float) -> torch.Tensor:
    """1D RoPE angles ``position * theta^(-j/pairs)``: ``(n, pairs)``, zero at position 0."""
    freqs = theta ** (-_cpu_arange(pairs) / max(pairs, 1))
    return _cpu_arange(n)[:, None] * freqs[None]


@functools.lru_cache(maxsize=64)
def _rope_angles(grid: Grid, head_dim: int, theta: float) -> torch.Tensor:
    t, h, w = grid
    n_t, n_h, n_w = rope_axis_pairs(head_dim)
    with torch.inference_mode(False):
        at = _axis_angles(t, n_t, theta)[:, None, None].expand(t, h, w, n_t)
        ah = _axis_angles(h, n_h, theta)[None, :, None].expand(t, h, w, n_h)
        aw = _axis_angles(w, n_w, theta)[None, None, :].expand(t, h, w, n_w)
        return torch.cat([at, ah, aw], dim=-1).reshape(t * h * w, head_dim // 2)  # float64


@functools.lru_cache(maxsize=128)
def _rope_tables(grid: Grid, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype):
    with torch.inference_mode(False):
        angles = _rope_angles(grid, head_dim, theta)
        return torch.cos(angles).to(device, dtype), torch.sin(angles).to(device, dtype)


def rope_tables(
    grid: Grid, head_dim: int, theta: float = 10000.0, device=None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial rotary tables (RoFormer, Su et al. 2024) for a ``(t, h, w)`` grid: ``cos, sin`` of ``(L, K/2)``.

    Row ``i`` is token ``i`` in canonical row-major order; columns are the head's rotary
    pairs, the first ``n_t`` rotating with the frame index, then ``n_h`` with the row and
    ``n_w`` with the column (:func:`rope_axis_pairs`), each axis with its own 1D frequency
    ladder ``theta^(-j/n_axis)``. Cached per (grid, head_dim, theta, device, dtype).
    """
    key = tuple(int(n) for n in grid)
    return _rope_tables(key, int(head_dim), float(theta), torch.device(device or "cpu"), dtype)


def apply_rope(x_BHLK: torch.Tensor, cos_LK: torch.Tensor, sin_LK: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x[..., i], x[..., i + K/2])`` by the angle of table column ``i``.

    Computed in at least float32 and returned in ``x``'s dtype; ``cos``/``sin`` are ``(L, K/2)``.
    """
    dtype = torch.promote_types(x_BHLK.dtype, torch.float32)
    x1, x2 = x_BHLK.to(dtype).chunk(2, dim=-1)
    cos, sin = cos_LK.to(dtype), sin_LK.to(dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x_BHLK.dtype)


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
    """Non-overlapping ``p x p`` patches of every frame -> tokens (a strided conv as a Linear).

    With ``temporal_patch_size`` ``pt > 1`` a token covers ``pt`` consecutive frames too
    (``pt x p x p`` tubelets, ViViT); ``pt = 1`` keeps the image layout and parameter shapes.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, temporal_patch_size: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.proj = nn.Linear(in_channels * temporal_patch_size * patch_size * patch_size, dim)

    def forward(self, x_BCTHW: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        b, c, frames, height, width = x_BCTHW.shape
        p, pt = self.patch_size, self.temporal_patch_size
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        if height % p or width % p:
            raise ValueError(f"input size {height}x{width} is not divisible by patch_size={p}")
        if frames % pt:
            raise ValueError(f"{frames} frame(s) are not divisible by temporal_patch_size={pt}")
        t, h, w = frames // pt, height // p, width // p
        patches = x_BCTHW.reshape(b, c, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return self.proj(patches.reshape(b, t * h * w, c * pt * p * p)), (t, h, w)


def unpatchify(x_BLK: torch.Tensor, grid: Grid, channels: int, patch_size: int, temporal_patch_size: int = 1):
    """Inverse of :class:`PatchEmbed`'s layout: ``(B, t*h*w, C*pt*p*p) -> (B, C, t*pt, h*p, w*p)``."""
    b = x_BLK.shape[0]
    t, h, w = grid
    p, pt = patch_size, temporal_patch_size
    x = x_BLK.reshape(b, t, h, w, channels, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, t * pt, h * p, w * p)
