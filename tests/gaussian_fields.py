"""Exact model outputs for Gaussian data ``x0 ~ N(mu, s^2)`` (per dimension), shared by sampler tests.

For a Gaussian, ``x_t = a x0 + b eps`` is Gaussian with variance ``a^2 s^2 + b^2`` and the
posterior means are linear in ``x_t``:
``E[x0 | x_t] = mu + a s^2 (x_t - a mu) / var``, ``E[eps | x_t] = b (x_t - a mu) / var``.
"""

from __future__ import annotations

import torch


def _posterior(x, a, b, mu, s):
    var = a * a * s * s + b * b
    x0 = mu + a * s * s * (x - a * mu) / var
    eps = b * (x - a * mu) / var
    return x0, eps


def flow_velocity(mu: torch.Tensor, s: torch.Tensor):
    """Rectified flow (``a = 1 - t``, ``b = t``): ``v = E[eps - x0 | x_t]``."""

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        t = t_B.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        x0, eps = _posterior(x, 1 - t, t, mu, s)
        return eps - x0

    return velocity


def ddpm_output(scheduler, mu: torch.Tensor, s: torch.Tensor):
    """DDPM (``a = sqrt(abar)``, ``b = sqrt(1 - abar)``): ``eps`` or ``v = a eps - b x0``."""

    def output(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        abar = scheduler.alpha_bar(t_B).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        a, b = abar.sqrt(), (1 - abar).sqrt()
        x0, eps = _posterior(x, a, b, mu, s)
        return eps if scheduler.prediction == "epsilon" else a * eps - b * x0

    return output
