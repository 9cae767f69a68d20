"""Cosine (trigonometric, variance-preserving) flow: a scheduler for hthlight.

The interpolant ``x_t = cos(pi t / 2) x_0 + sin(pi t / 2) eps``, ``t`` in [0, 1] (0: data, 1:
noise), is the trigonometric stochastic interpolant of Albergo & Vanden-Eijnden (2023,
"Building Normalizing Flows with Stochastic Interpolants", ICLR; Albergo, Boffi &
Vanden-Eijnden 2023, "Stochastic Interpolants: A Unifying Framework for Flows and
Diffusions") and, up to the time variable ``s = pi t / 2``, the TrigFlow of Lu & Song
(2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models"). Since
``cos^2 + sin^2 = 1`` it preserves the variance of unit-variance data at every ``t`` (a
VP path), unlike rectified flow's straight line ``(1 - t) x_0 + t eps``.

The model predicts the velocity ``v = d x_t / d t = (pi / 2) (cos(pi t / 2) eps - sin(pi t / 2) x_0)``
and sampling integrates ``dx/dt = v`` from t = 1 to 0, so hthlight's Euler and Heun samplers
(:mod:`hthlight.diffusion.samplers`) work unchanged: the interface is
:class:`hthlight.diffusion.RectifiedFlow`'s (``loss``, ``sample_time``, ``sampling_times``,
``add_noise``, ``target``, ``prediction = "velocity"``). Unlike rectified flow, the target
depends on ``t``: ``target(x0, noise, t_B)``.
"""

from __future__ import annotations

import math

import torch

from hthlight.diffusion import RectifiedFlow

HALF_PI = math.pi / 2


def _per_sample(t_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t_B`` of shape ``(B,)`` viewed as ``(B, 1, ..., 1)`` on ``like``'s device.

    At least float32 (float64 if either is), so the trigonometric coefficients are accurate
    even for half-precision latents; callers cast the result to ``like.dtype``.
    """
    t_B = torch.as_tensor(t_B, device=like.device)
    dtype = torch.promote_types(torch.promote_types(t_B.dtype, like.dtype), torch.float32)
    return t_B.reshape(-1, *([1] * (like.ndim - 1))).to(dtype)


class CosineFlow(RectifiedFlow):
    """Trigonometric (variance-preserving) flow: :class:`hthlight.diffusion.RectifiedFlow`'s
    time sampling, shift, sampling grid and loss, on the path ``cos(pi t/2) x0 + sin(pi t/2) eps``.

    Args:
        timestep_sampling: ``uniform`` or ``logit_normal`` training times.
        logit_mean: mean of the logit-normal distribution.
        logit_std: standard deviation of the logit-normal distribution.
        shift: time shift ``t' = s t / (1 + (s - 1) t)`` applied to training and sampling
            times (1: none; > 1 spends more time at high noise).
    """

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(timestep_sampling={self.timestep_sampling!r}, logit_mean={self.logit_mean}, "
            f"logit_std={self.logit_std}, shift={self.shift})"
        )

    # ------------------------------------------------------------------ the path
    @staticmethod
    def alpha(t: torch.Tensor) -> torch.Tensor:
        """Data coefficient ``cos(pi t / 2)``."""
        return torch.cos(HALF_PI * t)

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        """Noise coefficient ``sin(pi t / 2)``."""
        return torch.sin(HALF_PI * t)

    @classmethod
    def add_noise(cls, x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """``x_t = cos(pi t / 2) x0 + sin(pi t / 2) noise`` per sample."""
        t = _per_sample(t_B, x0)
        return cls.alpha(t).to(x0.dtype) * x0 + cls.sigma(t).to(x0.dtype) * noise

    @classmethod
    def target(cls, x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity ``d x_t / d t = (pi / 2) (cos(pi t / 2) noise - sin(pi t / 2) x0)``."""
        if t_B is None:
            raise ValueError("the cosine flow's velocity depends on t: pass t_B")
        t = _per_sample(t_B, x0)
        return (HALF_PI * cls.alpha(t)).to(x0.dtype) * noise - (HALF_PI * cls.sigma(t)).to(x0.dtype) * x0
