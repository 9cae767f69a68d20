"""Pieces shared by the Mamba-2-style mixers (Hydra, SSM, bidirectional SSM).

Argument checks with messages that list the allowed values, and the initialisation of the
per-head SSM parameters as in the public Mamba-2 / Hydra modules (Dao & Gu 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from hthlight.errors import ConfigError
from hthlight.ssd import select_backend


def divisors(n: int) -> str:
    """``"1, 2, ..., n"``: the divisors of ``n``, for error messages."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_ssm_config(
    dim: int,
    *,
    mixer: str,
    d_conv: int,
    centered_conv: bool = False,
    expand: int,
    d_state: int,
    headdim: int,
    ngroups: int,
    chunk_size: int | None,
    dt_min: float,
    dt_max: float,
    backend: str,
    check_backend: Callable[[str], object] = select_backend,
) -> tuple[int, int]:
    """Validate the sizes shared by the SSD mixers; return ``(d_inner, nheads)``.

    ``mixer`` names the module in messages; ``centered_conv`` asks for an odd ``d_conv`` (a
    convolution centered on each token, as Hydra's) instead of any positive one (causal).
    Raises :class:`~hthlight.errors.ConfigError` naming the bad value and what is allowed.
    """
    d_inner = expand * dim
    if expand < 1 or d_state < 1 or (chunk_size is not None and chunk_size < 1):
        raise ConfigError(
            "expand, d_state and chunk_size must be positive integers (chunk_size may be null: the backend's "
            f"default), got expand={expand}, d_state={d_state}, chunk_size={chunk_size}"
        )
    if centered_conv and (d_conv < 1 or d_conv % 2 == 0):
        raise ConfigError(
            f"{mixer}'s convolution is centered, so d_conv must be odd (e.g. 3, 5, 7); got d_conv={d_conv}"
        )
    if d_conv < 1:
        raise ConfigError(
            f"{mixer}'s convolution is causal, so d_conv must be a positive integer (e.g. 2, 3, 4: it sees the "
            f"current token and the d_conv - 1 before it); got d_conv={d_conv}"
        )
    if headdim < 1 or d_inner % headdim:
        raise ConfigError(
            f"headdim must divide expand * dim = {d_inner}; got headdim={headdim}. Allowed: {divisors(d_inner)}"
        )
    nheads = d_inner // headdim
    if ngroups < 1 or nheads % ngroups:
        raise ConfigError(
            f"ngroups must divide the number of heads ({nheads} = {d_inner} // headdim {headdim}); "
            f"got ngroups={ngroups}. Allowed: {divisors(nheads)}"
        )
    if not 0 < dt_min <= dt_max:
        raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    check_backend(backend)  # fail at construction on an unknown name
    return d_inner, nheads


def no_weight_decay(*params: nn.Parameter) -> None:
    """Mark parameters to be left out of weight decay (the public modules' ``_no_weight_decay``)."""
    for param in params:
        param._no_weight_decay = True


@torch.no_grad()
def init_dt_bias_(dt_bias: torch.Tensor, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
    """``dt_bias = softplus^{-1}(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``, floored."""
    log_min, log_max = math.log(dt_min), math.log(dt_max)
    u = torch.rand(dt_bias.shape, device=dt_bias.device)
    dt = torch.exp(u * (log_max - log_min) + log_min).clamp(min=dt_init_floor)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


@torch.no_grad()
def init_A_log_(A_log: torch.Tensor, A_init_range: tuple[float, float]) -> None:
    """``A_log = log(A)`` with ``A`` uniform in ``A_init_range`` (the scan uses ``-exp(A_log)``)."""
    a = torch.empty(A_log.shape, device=A_log.device, dtype=torch.float32).uniform_(*A_init_range)
    A_log.copy_(torch.log(a))
