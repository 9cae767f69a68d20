"""Diffusion objectives (schedulers) and samplers as plain functions (k-diffusion style)."""

from hthlight.diffusion.rectified_flow import RectifiedFlow
from hthlight.diffusion.samplers import SAMPLERS, get_sampler, guided, sample_euler, sample_heun

__all__ = ["SAMPLERS", "RectifiedFlow", "get_sampler", "guided", "sample_euler", "sample_heun"]
