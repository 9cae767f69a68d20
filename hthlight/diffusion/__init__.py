"""Diffusion objectives (schedulers) and samplers as plain functions (k-diffusion style)."""

from hthlight.diffusion.ddpm import DDPM
from hthlight.diffusion.rectified_flow import RectifiedFlow
from hthlight.diffusion.samplers import (
    SAMPLERS,
    check_sampler,
    get_sampler,
    guided,
    run_sampler,
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_heun,
)

__all__ = [
    "DDPM",
    "SAMPLERS",
    "RectifiedFlow",
    "check_sampler",
    "get_sampler",
    "guided",
    "run_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_euler",
    "sample_heun",
]
