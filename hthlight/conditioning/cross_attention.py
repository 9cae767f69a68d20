"""Cross-attention from visual tokens to conditioning tokens (text), as in HTH/PixArt blocks.

Backends: ``sdpa`` (PyTorch's ``scaled_dot_product_attention``, any device) and ``triton``
(:mod:`hthlight.kernels.short_attention`, CUDA: parallel over query blocks in the backward,
where SDPA's flash-style backward has one program per key block and so per (batch, head) for a
caption of <= 128 tokens). ``auto`` takes ``triton`` on CUDA for captions of up to
:data:`TRITON_AUTO_MAX_KEYS` tokens and head widths up to 128, else ``sdpa``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.errors import ConfigError
from hthlight.mixers.attention import merge_heads, resolve_heads
from hthlight.mixers.norms import RMSNorm

CROSS_ATTENTION_BACKENDS = ("auto", "sdpa", "triton")
#: longest context ``auto`` runs on the Triton kernels (beyond it each query block's work grows
#: with the keys and flash-style kernels parallelise over enough key blocks)
TRITON_AUTO_MAX_KEYS = 512
_TRITON_HEAD_DIM = 128  # hthlight.kernels.short_attention.MAX_HEAD_DIM, without importing Triton here
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def check_cross_attention_backend(name: str, head_dim: int) -> None:
    """Raise a :class:`ConfigError` for an unknown backend, or ``triton`` where it cannot run."""
    if name not in CROSS_ATTENTION_BACKENDS:
        raise ConfigError(f"unknown cross-attention backend {name!r}; allowed: {', '.join(CROSS_ATTENTION_BACKENDS)}")
    if name == "triton" and not _HAS_TRITON:
        raise ConfigError("cross-attention backend 'triton' needs the 'triton' package, which is not installed")
    if name == "triton" and head_dim > _TRITON_HEAD_DIM:
        raise ConfigError(
            f"cross-attention backend 'triton' supports head widths up to {_TRITON_HEAD_DIM}, got {head_dim}; "
            "use 'auto' or 'sdpa'"
        )


class CrossAttention(nn.Module):
    """Queries from the ``dim``-wide tokens, keys/values from ``context_dim``-wide context.

    ``context_mask_BS`` (True = attend) masks padded context tokens. ``backend``: ``auto``,
    ``sdpa`` or ``triton`` (module docstring); ``triton`` on a CPU tensor fails with a clear error.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int | None = None,
        head_dim: int = 64,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_heads = resolve_heads(dim, num_heads, head_dim)
        k = dim // self.num_heads
        check_cross_attention_backend(backend, k)
        self.backend = backend
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.q_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def resolved_backend(self, x_BLD: torch.Tensor, keys: int) -> str:
        """The backend that runs for these inputs (``auto`` resolved; see the module docstring)."""
        if self.backend == "triton" and not x_BLD.is_cuda:
            raise ValueError(f"cross-attention backend 'triton' needs CUDA tensors, got {x_BLD.device}; use 'auto'")
        if self.backend != "auto":
            return self.backend
        head_dim = x_BLD.shape[-1] // self.num_heads
        fits = keys <= TRITON_AUTO_MAX_KEYS and head_dim <= _TRITON_HEAD_DIM
        return "triton" if x_BLD.is_cuda and _HAS_TRITON and fits else "sdpa"

    def forward(
        self, x_BLD: torch.Tensor, context_BSC: torch.Tensor, context_mask_BS: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, _ = x_BLD.shape
        s = context_BSC.shape[1]
        q_BLHK = self.q_norm(self.q(x_BLD).view(b, n, self.num_heads, -1))
        k_BSHK, v_BSHK = self.kv(context_BSC).view(b, s, 2, self.num_heads, -1).unbind(2)
        k_BSHK = self.k_norm(k_BSHK)
        mask_BS = None if context_mask_BS is None else context_mask_BS.to(torch.bool)
        if self.resolved_backend(x_BLD, s) == "triton":
            from hthlight.kernels.short_attention import short_attention

            y_BLHK = short_attention(q_BLHK, k_BSHK, v_BSHK, mask_BS)
            return self.proj(y_BLHK.flatten(2))
        mask = None if mask_BS is None else mask_BS[:, None, None, :]  # (B, 1, 1, S)
        q, k, v = (t.transpose(1, 2) for t in (q_BLHK, k_BSHK, v_BSHK))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, backend={self.backend!r}"
