"""RMS normalisations used by the mixers, computed in float32 (or float64) whatever the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension (Zhang & Sennrich 2019); e.g. QK-norm."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        out = _rms_normalise(x.to(dtype), self.eps) * self.weight.to(dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Gated RMSNorm over the whole last dimension (one group), Mamba-2's output norm.

    ``norm_before_gate=True`` (Hydra): ``rmsnorm(x) * weight * silu(z)``;
    ``False`` (Mamba-2's ``Mamba2Simple``): ``rmsnorm(x * silu(z)) * weight``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        gate = F.silu(z.to(dtype))
        if self.norm_before_gate:
            out = _rms_normalise(x.to(dtype), self.eps) * self.weight.to(dtype) * gate
        else:
            out = _rms_normalise(x.to(dtype) * gate, self.eps) * self.weight.to(dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, norm_before_gate={self.norm_before_gate}"
