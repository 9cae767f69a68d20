"""Structured state-space duality (SSD) scans (Mamba-2: Dao & Gu 2024) and backend choice.

Every backend computes :func:`ssd_scan`'s contract,
``ssd_scan(x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN, chunk_size) -> y_BLHP``; the pure-PyTorch
implementation in :mod:`hthlight.ssd.torch_scan` is the reference the others are tested against.
Hydra's bidirectional mixing has its own contract and backends (``torch``, ``triton``,
``mamba_ssm``) in :mod:`hthlight.ssd.bidirectional`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hthlight.errors import ConfigError
from hthlight.ssd.torch_scan import segsum, ssd_scan

ScanFn = Callable[..., torch.Tensor]

_BACKENDS: dict[str, ScanFn] = {"torch": ssd_scan}


def scan_backends() -> list[str]:
    """Names of the scan backends available in this installation."""
    return list(_BACKENDS)


def select_backend(name: str = "auto", device: torch.device | str | None = None) -> ScanFn:
    """Return the scan function for backend ``name``; ``"auto"`` picks the best one for ``device``."""
    if name == "auto":
        return _BACKENDS["torch"]
    try:
        return _BACKENDS[name]
    except KeyError:
        allowed = ", ".join(["auto", *_BACKENDS])
        raise ConfigError(f"unknown SSD scan backend {name!r}; allowed: {allowed}") from None


__all__ = ["ScanFn", "scan_backends", "segsum", "select_backend", "ssd_scan"]
