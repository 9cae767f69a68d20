"""Pixel-space "autoencoder": the identity, for models trained directly on pixels."""

from __future__ import annotations

import torch
from torch import nn


class IdentityVAE(nn.Module):
    """``encode``/``decode`` return their input; ``channels`` is the pixel channel count."""

    def __init__(self, channels: int | None = None, scale_factor: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.scale_factor = scale_factor  # spatial down-sampling (1: none)

    def latent_channels(self, pixel_channels: int) -> int:
        return pixel_channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z
