"""Drive any diffusers scheduler with an hthlight objective: ``sampler: diffusers:<SchedulerClass>``.

Conventions are mapped as follows (``T = num_train_timesteps``):

* **Rectified flow** (``family = "flow"``): diffusers' flow sigma is our time ``t``
  (``x_t = (1 - t) x_0 + t eps``) and ``flow_prediction`` is our velocity ``eps - x_0``.
  ``FlowMatch*`` schedulers get ``shift`` = our (resolution-dependent) shift; schedulers with
  ``use_flow_sigmas`` (DPM-Solver(++), UniPC, DEIS, SA-Solver) get ``use_flow_sigmas=True``,
  ``prediction_type="flow_prediction"``, ``flow_shift`` = our shift. The model is called at
  ``t = timestep / T``. ``time_grid: hthlight`` makes a scheduler whose ``set_timesteps`` takes
  ``sigmas`` use our grid ``linspace(1, 0, steps + 1)`` (shifted by the scheduler with the same
  formula) instead of its own.
* **DDPM** (``family = "ddpm"``): the scheduler gets our ``num_train_timesteps``, ``beta_start``,
  ``beta_end``, ``beta_schedule``, ``timestep_spacing``, ``prediction_type`` (``epsilon`` or
  ``v_prediction``) and ``clip_sample=False``; inputs are scaled with ``scale_model_input``
  (sigma-parameterised schedulers such as Euler/Heun/LMS keep ``x`` in their own scale) and
  the model is called at ``t = timestep / T``.

Any keyword in ``sampler_kwargs`` is passed to the scheduler's constructor and wins over the
mapped values. ``FlowMatch*`` schedulers cannot sample a DDPM objective, nor beta-only
schedulers (DDIM, DDPM, PNDM, Euler, ...) a flow; those pairs raise :class:`ConfigError`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from hthlight.diffusion.samplers import DIFFUSERS_PREFIX, Generators, ModelFn, family
from hthlight.errors import ConfigError

#: schedulers this adapter is tested with, per objective family (others may work too)
TESTED = {
    "flow": (
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
    ),
    "ddpm": (
        "DDIMScheduler",
        "DDPMScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "EulerDiscreteScheduler",
    ),
}
TIME_GRIDS = ("scheduler", "hthlight")


def _scheduler_class(name: str):
    class_name = name[len(DIFFUSERS_PREFIX) :]
    try:
        import diffusers
        from diffusers import SchedulerMixin
    except ImportError as exc:
        raise ConfigError(f"sampler {name!r} needs diffusers: pip install 'hthlight[hf]' ({exc})") from exc
    cls = getattr(diffusers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(
            f"sampler {name!r}: diffusers has no scheduler class {class_name!r}; e.g. "
            f"{', '.join(sorted(set(TESTED['flow']) | set(TESTED['ddpm'])))}"
        )
    return cls


def _config_keys(cls) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [
        p for p in params if p != "self" and params[p].kind in (params[p].POSITIONAL_OR_KEYWORD, params[p].KEYWORD_ONLY)
    ]


def _mapped_config(cls, scheduler, shape) -> dict[str, Any]:
    """Constructor arguments that make ``cls`` follow ``scheduler``'s conventions."""
    keys = set(_config_keys(cls))
    kind = family(scheduler)
    name = cls.__name__
    if kind == "flow":
        from hthlight.diffusion.rectified_flow import RectifiedFlow

        straight = isinstance(scheduler, RectifiedFlow) and type(scheduler).add_noise is RectifiedFlow.add_noise
        if not straight:
            raise ConfigError(
                f"diffusers flow schedulers assume the straight path x_t = (1 - t) x_0 + t eps, which "
                f"{type(scheduler).__name__} does not follow; use sampler euler or heun"
            )
        shift = scheduler.effective_shift(shape) if hasattr(scheduler, "effective_shift") else 1.0
        if name.startswith("FlowMatch") and "shift" in keys:
            return {"shift": shift}
        if "use_flow_sigmas" in keys:
            config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": shift}
            return {k: v for k, v in config.items() if k in keys}
        raise ConfigError(
            f"diffusers {name} cannot sample the {type(scheduler).__name__} objective (a flow); flow-capable "
            f"schedulers: FlowMatch*, and those with use_flow_sigmas (e.g. {', '.join(TESTED['flow'][2:])}); "
            "or use sampler euler/heun"
        )
    if kind == "ddpm":
        if name.startswith("FlowMatch") or "beta_start" not in keys:
            raise ConfigError(
                f"diffusers {name} cannot sample the {type(scheduler).__name__} objective (DDPM); use a beta "
                f"schedule scheduler (e.g. {', '.join(TESTED['ddpm'])}) or sampler ddim/ddpm"
            )
        config = {
            "num_train_timesteps": scheduler.num_train_timesteps,
            "beta_start": scheduler.beta_start,
            "beta_end": scheduler.beta_end,
            "beta_schedule": scheduler.beta_schedule,
            "prediction_type": "epsilon" if scheduler.prediction == "epsilon" else "v_prediction",
            "timestep_spacing": scheduler.timestep_spacing,
            "clip_sample": False,
            "thresholding": False,
        }
        return {k: v for k, v in config.items() if k in keys}
    raise ConfigError(f"the diffusers adapter does not know objective family {kind!r}; families: flow, ddpm")


def build_diffusers_scheduler(name: str, scheduler, shape=None, time_grid: str = "scheduler", **kwargs: Any):
    """A diffusers scheduler instance for ``name`` following ``scheduler``'s conventions (see module doc)."""
    cls = _scheduler_class(name)
    if time_grid not in TIME_GRIDS:
        raise ConfigError(f"sampler_kwargs time_grid must be one of {', '.join(TIME_GRIDS)}, got {time_grid!r}")
    if time_grid == "hthlight" and family(scheduler) != "flow":
        raise ConfigError("time_grid 'hthlight' applies to flow objectives only")
    if time_grid == "hthlight" and "sigmas" not in inspect.signature(cls.set_timesteps).parameters:
        raise ConfigError(f"{cls.__name__}.set_timesteps takes no sigmas, so time_grid 'hthlight' is not possible")
    keys = _config_keys(cls)
    unknown = sorted(set(kwargs) - set(keys))
    if unknown:
        raise ConfigError(
            f"sampler {name!r} got unknown sampler_kwargs {', '.join(unknown)}; {cls.__name__} accepts: "
            f"{', '.join(keys)}, time_grid"
        )
    config = {**_mapped_config(cls, scheduler, shape), **kwargs}
    try:
        return cls(**config)
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise ConfigError(f"sampler {name!r} with {config}: {exc}") from exc


@torch.no_grad()
def sample_diffusers(
    scheduler,
    name: str,
    model_fn: ModelFn,
    noise: torch.Tensor,
    steps: int,
    generator: Generators = None,
    time_grid: str = "scheduler",
    **kwargs: Any,
) -> torch.Tensor:
    """Run the diffusers scheduler ``name`` for ``steps`` steps from ``noise`` (a fresh instance per call)."""
    shape = tuple(noise.shape[1:])
    dscheduler = build_diffusers_scheduler(name, scheduler, shape, time_grid=time_grid, **kwargs)
    if time_grid == "hthlight":
        dscheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist(), device=noise.device)
    else:
        dscheduler.set_timesteps(steps, device=noise.device)
    total = dscheduler.config.num_train_timesteps
    accepts_generator = "generator" in inspect.signature(dscheduler.step).parameters
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = list(generator)
    x = noise * getattr(dscheduler, "init_noise_sigma", 1.0)  # flow schedulers start at unit noise
    scale_input = getattr(dscheduler, "scale_model_input", lambda sample, timestep: sample)
    for timestep in dscheduler.timesteps:
        x_in = scale_input(x, timestep)
        t_B = (timestep.float() / total).expand(x.shape[0]).to(x.device)
        output = model_fn(x_in, t_B)
        step_kwargs = {"generator": generator} if accepts_generator else {}
        x = dscheduler.step(output, timestep, x, return_dict=False, **step_kwargs)[0]
    return x
