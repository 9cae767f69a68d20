"""The regression loss every objective trains with (DDPM's L_simple, flow matching's velocity MSE)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def regression_loss(
    objective,
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    noise: torch.Tensor | None = None,
    t_B: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``|| model(x_t, t) - objective.target(x0, noise, t) ||^2`` with ``x_t = objective.add_noise(x0, noise, t)``.

    Noise and times are drawn (times by ``objective.sample_time``, told one sample's shape for
    resolution-dependent schedules) unless given.
    """
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if t_B is None:
        t_B = objective.sample_time(x0.shape[0], x0.device, generator, shape=x0.shape[1:])
    prediction = model_fn(objective.add_noise(x0, noise, t_B), t_B)
    return F.mse_loss(prediction.float(), objective.target(x0, noise, t_B).float())
