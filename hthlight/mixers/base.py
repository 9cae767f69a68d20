"""Token-mixer contract (DESIGN.md): ``forward(x_BLD, grid=(t, h, w)) -> y_BLD`` in canonical order.

A mixer is built with the model width as ``dim`` plus its own keyword arguments. Mixers
that scan a 1D sequence subclass :class:`ScanningMixer`: they own a scan order, implement
:meth:`ScanningMixer.mix_sequence` on the scanned sequence, and the base class applies the
permutation and its inverse, so every scan order works with every scanning mixer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from hthlight.registry import build_from_spec
from hthlight.scans import Grid, ScanOrder, check_grid


class _PermuteTokens(torch.autograd.Function):
    """``x[:, perm]`` whose backward gathers with the inverse permutation.

    Plain indexing's backward zero-fills a gradient and scatter-adds into it (a sort, for
    determinism); a permutation's gradient is just the inverse gather.
    """

    @staticmethod
    def forward(ctx, x_BLD: torch.Tensor, perm_L: torch.Tensor, inverse_L: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse_L)
        return x_BLD.index_select(1, perm_L)

    @staticmethod
    def backward(ctx, dy_BLD: torch.Tensor):
        (inverse_L,) = ctx.saved_tensors
        return dy_BLD.index_select(1, inverse_L), None, None


def permute_tokens(x_BLD: torch.Tensor, perm_L: torch.Tensor, inverse_L: torch.Tensor) -> torch.Tensor:
    """``x_BLD[:, perm_L]`` for a permutation ``perm_L`` with inverse ``inverse_L`` (cheap backward)."""
    return _PermuteTokens.apply(x_BLD, perm_L, inverse_L)


def _is_identity(scan: ScanOrder, grid: Grid) -> bool:
    known = scan.is_identity(*grid)
    if known is not None:
        return known
    if torch.compiler.is_compiling():  # no data-dependent check in a graph; permuting is always right
        return False
    return _is_identity_cached(scan, grid)


@functools.lru_cache(maxsize=256)
def _is_identity_cached(scan: ScanOrder, grid: Grid) -> bool:
    perm = scan.permutation(*grid)
    return bool(torch.equal(perm, torch.arange(perm.numel())))


class TokenMixer(nn.Module):
    """Base class of token mixers: ``(B, L, D)`` in, ``(B, L, D)`` out, canonical token order."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim

    def forward(self, x_BLD: torch.Tensor, grid: Grid) -> torch.Tensor:
        raise NotImplementedError


class ScanningMixer(TokenMixer):
    """A mixer over a 1D scan of the token grid; ``scan`` is a registry name, spec or ScanOrder."""

    def __init__(self, dim: int, scan: str | dict[str, Any] | ScanOrder = "h") -> None:
        super().__init__(dim)
        self.scan: ScanOrder = build_from_spec("scan", scan)
        self.scan_name = scan if isinstance(scan, str) else repr(self.scan)

    def set_scan(self, scan: str | dict[str, Any] | ScanOrder) -> None:
        """Switch the scan order in place (no parameters change; HTH sec. 3.3 video adaptation)."""
        self.scan = build_from_spec("scan", scan)
        self.scan_name = scan if isinstance(scan, str) else repr(self.scan)

    def forward(self, x_BLD: torch.Tensor, grid: Grid) -> torch.Tensor:
        t, h, w = check_grid(grid)
        if x_BLD.shape[1] != t * h * w:
            raise ValueError(f"sequence length {x_BLD.shape[1]} does not match grid {grid} ({t * h * w} tokens)")
        if _is_identity(self.scan, (t, h, w)):
            return self.mix_sequence(x_BLD)
        perm = self.scan.permutation(t, h, w, x_BLD.device)
        inverse = self.scan.inverse(t, h, w, x_BLD.device)
        y_BLD = self.mix_sequence(permute_tokens(x_BLD, perm, inverse))
        return permute_tokens(y_BLD, inverse, perm)

    def mix_sequence(self, x_BLD: torch.Tensor) -> torch.Tensor:
        """Mix a sequence already in scan order."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scan={self.scan_name}"
