"""ODE samplers for velocity-predicting models, as plain functions (Karras et al. 2022 style).

Each sampler takes ``velocity_fn(x, t_B) -> v``, the starting noise and a decreasing time
grid, and returns the sample at the last time. On the rectified-flow path the Euler step is
DDIM (Song et al. 2021) with eta = 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from hthlight.errors import ConfigError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _time_batch(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.expand(x.shape[0]).to(x.device)


@torch.no_grad()
def sample_euler(velocity_fn: VelocityFn, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """First-order Euler integration of dx/dt = v along ``times``."""
    for t, t_next in itertools.pairwise(times):
        x = x + (t_next - t) * velocity_fn(x, _time_batch(t, x))
    return x


@torch.no_grad()
def sample_heun(velocity_fn: VelocityFn, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Second-order Heun integration (Karras et al. 2022, alg. 1); Euler on the final step to t = 0."""
    for t, t_next in itertools.pairwise(times):
        v = velocity_fn(x, _time_batch(t, x))
        x_euler = x + (t_next - t) * v
        if t_next == 0:
            x = x_euler
            continue
        v_next = velocity_fn(x_euler, _time_batch(t_next, x))
        x = x + (t_next - t) * 0.5 * (v + v_next)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": sample_euler, "heun": sample_heun}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"unknown sampler {name!r}; available samplers: {', '.join(SAMPLERS)}") from None


def guided(
    conditional_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], scale: float
) -> VelocityFn:
    """Classifier-free guidance (Ho & Salimans 2022): ``v_u + scale * (v_c - v_u)``.

    ``conditional_fn(x, t_B, drop_B)`` evaluates the model with the condition dropped where
    ``drop_B`` is True; both halves go through the model as one batch.
    """

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return conditional_fn(x, t_B, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        v_cond, v_uncond = conditional_fn(torch.cat([x, x]), torch.cat([t_B, t_B]), drop).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity
