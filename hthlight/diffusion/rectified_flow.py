"""Rectified flow (Liu et al. 2023, InstaFlow; Esser et al. 2024, SD3 form).

``x_t = (1 - t) x_0 + t eps`` with ``t`` in [0, 1] (0: data, 1: noise); the model predicts the
velocity ``v = eps - x_0`` and sampling integrates ``dx/dt = v`` from t = 1 to 0. HTH trains
with InstaFlow's noise schedule and loss (Hong et al. 2025, sec. 4), which is this one. Training
times are uniform or logit-normal (SD3, sec. 3.1); ``shift`` applies SD3's time shift
``t' = s t / (1 + (s - 1) t)`` to both training and sampling times.

Resolution-shifted times (SD3, sec. 5.3.2): with ``shift_base_size`` set, the shift grows with
the number of tokens ``n`` of the sample relative to the ``n_base`` tokens of a square
``shift_base_size x shift_base_size`` latent (one frame): ``s(n) = shift * sqrt(n / n_base)``.
The patch size cancels in ``n / n_base``, so it is computed from the latent shape
``(C, [T,] H, W)``: ``n / n_base = T H W / shift_base_size^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from hthlight.diffusion.objective import regression_loss

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RectifiedFlow:
    """Rectified-flow objective and time grid.

    Other interpolants subclass it and override :meth:`add_noise` and :meth:`target` (the
    time sampling, shift, sampling grid and loss are shared).

    Args:
        timestep_sampling: ``uniform`` or ``logit_normal`` training times.
        logit_mean: mean of the logit-normal distribution.
        logit_std: standard deviation of the logit-normal distribution.
        shift: SD3 time shift (1: none; > 1 spends more time at high noise); with
            ``shift_base_size`` it is the shift at the base resolution.
        shift_base_size: side of the square latent grid (one frame) at which ``shift`` applies
            (e.g. 32 for 256 px images through an 8x VAE); larger samples get
            ``shift * sqrt(T H W / shift_base_size^2)``. None: the same shift at every size.
    """

    family = "flow"
    prediction = "velocity"

    def __init__(
        self,
        timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        shift_base_size: int | None = None,
    ) -> None:
        if timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"timestep_sampling must be 'uniform' or 'logit_normal', got {timestep_sampling!r}")
        if shift <= 0 or logit_std <= 0:
            raise ValueError(f"shift and logit_std must be positive, got {shift}, {logit_std}")
        if shift_base_size is not None and shift_base_size < 1:
            raise ValueError(f"shift_base_size must be a positive latent size, got {shift_base_size}")
        self.timestep_sampling = timestep_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.shift = shift
        self.shift_base_size = shift_base_size

    def effective_shift(self, shape: Sequence[int] | None = None) -> float:
        """The shift for one sample of latent ``shape`` ``(C, [T,] H, W)`` (see the module docstring)."""
        if self.shift_base_size is None or shape is None:
            return self.shift
        positions = math.prod(int(n) for n in shape[1:])
        return self.shift * math.sqrt(positions / self.shift_base_size**2)

    def shift_time(self, t: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        shift = self.effective_shift(shape)
        if shift == 1.0:
            return t
        return shift * t / (1 + (shift - 1) * t)

    def sample_time(
        self,
        batch_size: int,
        device=None,
        generator: torch.Generator | None = None,
        shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Training times in (0, 1), shape ``(batch_size,)``; ``shape`` is one sample's latent shape."""
        if self.timestep_sampling == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            z = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        return self.shift_time(t, shape)

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        t = t_B.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity ``d x_t / d t``; on the straight path it does not depend on ``t``."""
        return noise - x0

    def loss(
        self,
        velocity_fn: VelocityFn,
        x0: torch.Tensor,
        noise: torch.Tensor | None = None,
        t_B: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean squared error between predicted and true velocity at random (or given) times."""
        return regression_loss(self, velocity_fn, x0, noise, t_B, generator)

    def sampling_times(self, steps: int, device=None, shape: Sequence[int] | None = None) -> torch.Tensor:
        """``steps + 1`` decreasing times from 1 to 0 (shifted like the training times)."""
        if steps < 1:
            raise ValueError(f"the number of sampling steps must be >= 1, got {steps}")
        return self.shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shape)


def sample_time_for(scheduler, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``scheduler``'s training times for the batch ``x0`` (resolution-aware when it takes ``shape``)."""
    import inspect

    if "shape" in inspect.signature(scheduler.sample_time).parameters:
        t_B = scheduler.sample_time(x0.shape[0], generator=generator, shape=tuple(x0.shape[1:]))
    else:
        t_B = scheduler.sample_time(x0.shape[0], generator=generator)
    return t_B.to(x0.device)
