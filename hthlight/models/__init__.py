"""Denoisers: patchify -> blocks of token mixers -> unpatchify, configured by layouts."""

from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.models.layout import expand_layout

__all__ = ["Denoiser", "DenoiserConfig", "expand_layout"]
