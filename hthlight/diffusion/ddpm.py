"""DDPM objective (Ho et al. 2020) with epsilon or v prediction (Salimans & Ho 2022).

``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` for integer steps ``k = 0 .. T-1`` with
``abar_k = prod_{i <= k} (1 - beta_i)``; DiM (Mo & Tian 2024, sec. 4.1, following DiT) uses
linear betas from 1e-4 to 0.02 over T = 1000 steps and predicts ``eps``. The model sees the
time ``t = k / T`` (so a ``TimestepEmbedder`` with ``time_scale=1000`` sees ``k``, as in DiT).
Samplers for this objective (``ddim``, ``ddpm``) are in :mod:`hthlight.diffusion.samplers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from hthlight.diffusion.objective import regression_loss
from hthlight.errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTIONS = ("epsilon", "v")
SPACINGS = ("linspace", "leading", "trailing")


def _expand(values_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values_B.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class DDPM:
    """Discrete-time variance-preserving diffusion.

    Args:
        num_train_timesteps: number of diffusion steps ``T``.
        beta_start: first beta.
        beta_end: last beta.
        beta_schedule: ``linear`` (DDPM/DiT) or ``scaled_linear`` (Stable Diffusion: linear in sqrt(beta)).
        prediction: what the model predicts, ``epsilon`` or ``v``.
        timestep_spacing: how ``n`` sampling steps are picked from ``0 .. T-1``: ``linspace``
            (DiT/DiM respacing, ``round(linspace(0, T-1, n))``), ``leading`` (``k * (T // n)``) or
            ``trailing`` (``round(T - k T / n) - 1``), with diffusers' meanings.
    """

    family = "ddpm"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear"] = "linear",
        prediction: Literal["epsilon", "v"] = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ConfigError(f"ddpm prediction must be one of {', '.join(PREDICTIONS)}; got {prediction!r}")
        if timestep_spacing not in SPACINGS:
            raise ConfigError(f"ddpm timestep_spacing must be one of {', '.join(SPACINGS)}; got {timestep_spacing!r}")
        if beta_schedule not in ("linear", "scaled_linear"):
            raise ConfigError(f"ddpm beta_schedule must be 'linear' or 'scaled_linear'; got {beta_schedule!r}")
        if num_train_timesteps < 2 or not 0 < beta_start <= beta_end < 1:
            raise ConfigError(
                f"ddpm needs num_train_timesteps >= 2 and 0 < beta_start <= beta_end < 1; got "
                f"{num_train_timesteps}, {beta_start}, {beta_end}"
            )
        self.num_train_timesteps = num_train_timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.beta_schedule = beta_schedule
        self.prediction = prediction
        self.timestep_spacing = timestep_spacing
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        else:
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    # ------------------------------------------------------------------ time
    def index(self, t_B: torch.Tensor) -> torch.Tensor:
        """Integer step ``k`` of model time ``t = k / T``."""
        return (t_B.double() * self.num_train_timesteps).round().long().clamp(0, self.num_train_timesteps - 1)

    def alpha_bar(self, t_B: torch.Tensor) -> torch.Tensor:
        """``abar`` at model time ``t`` (float64, on ``t``'s device)."""
        return self.alphas_cumprod.to(t_B.device)[self.index(t_B).to(t_B.device)]

    def sample_time(
        self,
        batch_size: int,
        device=None,
        generator: torch.Generator | None = None,
        shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Uniform integer steps as model times ``k / T``, shape ``(batch_size,)``."""
        k = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)
        return (k.float() / self.num_train_timesteps).to(device)

    def timesteps(self, steps: int) -> list[int]:
        """``steps`` decreasing integer steps to visit when sampling (see ``timestep_spacing``)."""
        n, total = steps, self.num_train_timesteps
        if not 1 <= n <= total:
            raise ConfigError(f"the number of sampling steps must be in 1..{total} for ddpm, got {n}")
        if self.timestep_spacing == "linspace":
            ks = np.linspace(0, total - 1, n).round()
        elif self.timestep_spacing == "leading":
            ks = np.arange(n) * (total // n)
        else:
            ks = np.round(np.arange(total, 0, -total / n)) - 1
        return sorted({int(k) for k in ks}, reverse=True)

    # ------------------------------------------------------------------ objective
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        abar = _expand(self.alpha_bar(t_B), x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        abar = _expand(self.alpha_bar(t_B), x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def loss(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        noise: torch.Tensor | None = None,
        t_B: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``|| f(x_k, k/T) - target ||^2`` at uniform (or given) steps (DDPM's L_simple)."""
        return regression_loss(self, model_fn, x0, noise, t_B, generator)

    def predict_x0_eps(
        self, output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean sample and noise implied by the model ``output`` at ``x`` with ``abar`` (per sample)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        abar = abar.view(-1, *([1] * (x.ndim - 1))).to(dtype)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        xf, out = x.to(dtype), output.to(dtype)
        if self.prediction == "epsilon":
            eps = out
            x0 = (xf - s * eps) / a
        else:
            x0 = a * xf - s * out
            eps = s * xf + a * out
        return x0, eps
