"""Samplers as plain functions (k-diffusion style), and :func:`run_sampler`, which picks one.

Flow samplers take ``velocity_fn(x, t_B) -> v``, the starting noise and a decreasing time grid
and integrate ``dx/dt = v``; on the rectified-flow path the Euler step is DDIM (Song et al.
2021) with eta = 0. DDPM samplers take the model function (its output is the objective's
prediction, ``epsilon`` or ``v``), the noise, the :class:`~hthlight.diffusion.ddpm.DDPM`
objective and its integer steps. ``diffusers:<SchedulerClass>`` drives a diffusers scheduler
(:mod:`hthlight.diffusion.diffusers_adapter`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from hthlight.errors import ConfigError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None

DIFFUSERS_PREFIX = "diffusers:"


def _time_batch(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.expand(x.shape[0]).to(x.device)


def randn_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``; one generator per sample keeps samples independent of batching."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator]).to(x)


# ---------------------------------------------------------------------- flow (velocity) samplers
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


# ---------------------------------------------------------------------- DDPM-objective samplers
def _step_pairs(scheduler, timesteps: Sequence[int]):
    """``(t, abar, abar_prev)`` per step; after the last step ``abar_prev = 1`` (the clean sample)."""
    abars = scheduler.alphas_cumprod
    for i, k in enumerate(timesteps):
        prev = float(abars[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        yield torch.tensor(k / scheduler.num_train_timesteps), float(abars[k]), prev


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    x: torch.Tensor,
    scheduler,
    timesteps: Sequence[int],
    eta: float = 0.0,
    generator: Generators = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): deterministic for ``eta = 0``, DDPM-like for ``eta = 1``.

    ``x_prev = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')``.
    """
    if eta < 0:
        raise ConfigError(f"ddim eta must be >= 0, got {eta}")
    for t, abar, abar_prev in _step_pairs(scheduler, timesteps):
        out = model_fn(x, _time_batch(t, x))
        x0, eps = scheduler.predict_x0_eps(out, x, torch.full((x.shape[0],), abar))
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x_next = abar_prev**0.5 * x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x_next = x_next + sigma * randn_like(x_next, generator)
        x = x_next.to(x.dtype)
    return x


@torch.no_grad()
def sample_ddpm(
    model_fn: ModelFn,
    x: torch.Tensor,
    scheduler,
    timesteps: Sequence[int],
    generator: Generators = None,
) -> torch.Tensor:
    """Ancestral sampling from the posterior ``q(x_prev | x_t, x0_hat)`` (Ho et al. 2020, eq. 6-7).

    Between non-adjacent steps (respacing, as DiT/DiM sample with 250 steps) the step's beta is
    ``1 - abar / abar'``; the variance is the posterior's (``fixed_small``), none on the last step.
    """
    for t, abar, abar_prev in _step_pairs(scheduler, timesteps):
        out = model_fn(x, _time_batch(t, x))
        x0, _ = scheduler.predict_x0_eps(out, x, torch.full((x.shape[0],), abar))
        alpha = abar / abar_prev
        beta = 1 - alpha
        mean = (abar_prev**0.5 * beta / (1 - abar)) * x0 + (alpha**0.5 * (1 - abar_prev) / (1 - abar)) * x.to(x0)
        variance = beta * (1 - abar_prev) / (1 - abar)
        if variance > 0:
            mean = mean + variance**0.5 * randn_like(mean, generator)
        x = mean.to(x.dtype)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
}

#: objective family -> our samplers that fit it
FAMILY_SAMPLERS: dict[str, tuple[str, ...]] = {"flow": ("euler", "heun"), "ddpm": ("ddim", "ddpm")}

#: positional parameters of each family's samplers (the rest are sampler kwargs)
_POSITIONAL = {"velocity_fn", "model_fn", "x", "times", "scheduler", "timesteps", "generator"}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown sampler {name!r}; available samplers: {', '.join(SAMPLERS)}, {DIFFUSERS_PREFIX}<SchedulerClass>"
        ) from None


def family(scheduler) -> str:
    """``flow`` or ``ddpm``: which samplers fit the objective (plugins without ``family`` are flows)."""
    return getattr(scheduler, "family", "flow")


def sampler_kwargs_allowed(name: str) -> list[str]:
    params = inspect.signature(get_sampler(name)).parameters
    return [p for p in params if p not in _POSITIONAL]


def check_sampler(scheduler, name: str, kwargs: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` unless sampler ``name`` with ``kwargs`` fits ``scheduler``'s objective."""
    kwargs = dict(kwargs or {})
    kind = family(scheduler)
    if name.startswith(DIFFUSERS_PREFIX):
        from hthlight.diffusion.diffusers_adapter import build_diffusers_scheduler

        build_diffusers_scheduler(name, scheduler, **kwargs)
        return
    get_sampler(name)
    allowed = FAMILY_SAMPLERS.get(kind)
    if allowed is None:
        raise ConfigError(f"scheduler family {kind!r} is unknown; families: {', '.join(FAMILY_SAMPLERS)}")
    if name not in allowed:
        raise ConfigError(
            f"sampler {name!r} does not fit the {type(scheduler).__name__} objective ({kind}); allowed samplers: "
            f"{', '.join(allowed)}, {DIFFUSERS_PREFIX}<SchedulerClass> (see docs/sampling.md)"
        )
    unknown = sorted(set(kwargs) - set(sampler_kwargs_allowed(name)))
    if unknown:
        accepted = ", ".join(sampler_kwargs_allowed(name)) or "none"
        raise ConfigError(f"sampler {name!r} got unknown sampler_kwargs {', '.join(unknown)}; it accepts: {accepted}")


@torch.no_grad()
def run_sampler(
    scheduler,
    name: str,
    model_fn: ModelFn,
    noise: torch.Tensor,
    steps: int,
    generator: Generators = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Sample from ``noise`` with sampler ``name`` in ``steps`` steps for ``scheduler``'s objective.

    ``model_fn(x, t_B)`` returns the model's raw output (velocity, epsilon or v; guidance is applied
    to it beforehand, which is equivalent in every one of these parameterisations since they are
    affine in the predicted clean sample). ``generator`` (one per sample, or one) drives the noise of
    stochastic samplers.
    """
    check_sampler(scheduler, name, kwargs)
    shape = tuple(noise.shape[1:])
    if name.startswith(DIFFUSERS_PREFIX):
        from hthlight.diffusion.diffusers_adapter import sample_diffusers

        return sample_diffusers(scheduler, name, model_fn, noise, steps, generator=generator, **kwargs)
    sampler = get_sampler(name)
    if family(scheduler) == "ddpm":
        return sampler(model_fn, noise, scheduler, scheduler.timesteps(steps), generator=generator, **kwargs)
    if "shape" in inspect.signature(scheduler.sampling_times).parameters:
        times = scheduler.sampling_times(steps, noise.device, shape=shape)
    else:  # a plugin objective without resolution-dependent times
        times = scheduler.sampling_times(steps, noise.device)
    return sampler(model_fn, noise, times, **kwargs)


def guided(
    conditional_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], scale: float
) -> VelocityFn:
    """Classifier-free guidance (Ho & Salimans 2022): ``v_u + scale * (v_c - v_u)``.

    ``conditional_fn(x, t_B, drop_B)`` evaluates the model with the condition dropped where
    ``drop_B`` is True (the unconditional branch: a null or negative prompt); both halves go
    through the model as one batch. Works for every prediction (velocity, epsilon, v).
    """

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return conditional_fn(x, t_B, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        v_cond, v_uncond = conditional_fn(torch.cat([x, x]), torch.cat([t_B, t_B]), drop).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity
