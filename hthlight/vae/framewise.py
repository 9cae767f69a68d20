"""Frame-wise video VAE: any image VAE applied to every frame (no temporal compression).

Video latent diffusion often starts from an image autoencoder used per frame (e.g. Align
your Latents, Blattmann et al. 2023). ``(B, C, T, H, W)`` clips are folded into
``(B*T, C, H, W)`` images, encoded or decoded ``chunk_size`` frames at a time to bound
memory, and unfolded; ``(B, C, H, W)`` images go straight through.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hthlight.registry import build_from_spec


class FrameWiseVAE(nn.Module):
    """Wrap an image VAE spec (``identity``, ``{name: autoencoder_kl, ...}``, ...) for video.

    Args:
        image_vae: registry spec (kind ``vae``) of the image autoencoder.
        chunk_size: frames per encode/decode call.
    """

    def __init__(self, image_vae: str | dict[str, Any] = "identity", chunk_size: int = 16) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.image_vae = build_from_spec("vae", image_vae)
        self.chunk_size = chunk_size
        self.scale_factor = getattr(self.image_vae, "scale_factor", 1)

    def latent_channels(self, pixel_channels: int) -> int:
        inner = getattr(self.image_vae, "latent_channels", None)
        return inner(pixel_channels) if callable(inner) else pixel_channels

    def latent_frames(self, num_frames: int) -> int:
        return num_frames

    def _per_frame(self, fn, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return fn(x)
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, T, H, W), got shape {tuple(x.shape)}")
        b, _, t = x.shape[:3]
        frames_NCHW = x.transpose(1, 2).flatten(0, 1)
        out_NCHW = torch.cat([fn(chunk) for chunk in frames_NCHW.split(self.chunk_size)])
        return out_NCHW.unflatten(0, (b, t)).transpose(1, 2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._per_frame(self.image_vae.encode, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._per_frame(self.image_vae.decode, z)
