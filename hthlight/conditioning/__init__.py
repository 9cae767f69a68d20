"""Conditioning: what the denoiser is told besides the noisy input and the time."""

from hthlight.conditioning.base import Conditioner, Conditioning

__all__ = ["Conditioner", "Conditioning"]
