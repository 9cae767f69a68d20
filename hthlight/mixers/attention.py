"""Multi-head self-attention token mixer (Vaswani et al. 2017) on PyTorch SDPA.

Optional RMSNorm QK-normalisation (Henry et al. 2020), as in HTH's attention blocks.
``torch.nn.functional.scaled_dot_product_attention`` picks the fastest kernel available
(flash / memory-efficient on CUDA, the math kernel on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.mixers.base import TokenMixer
from hthlight.mixers.norms import RMSNorm
from hthlight.scans import Grid


def split_heads(x_BLD: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H*K) -> (B, H, L, K)."""
    b, n, _ = x_BLD.shape
    return x_BLD.view(b, n, num_heads, -1).transpose(1, 2)


def merge_heads(x_BHLK: torch.Tensor) -> torch.Tensor:
    """(B, H, L, K) -> (B, L, H*K)."""
    b, h, n, k = x_BHLK.shape
    return x_BHLK.transpose(1, 2).reshape(b, n, h * k)


def resolve_heads(dim: int, num_heads: int | None, head_dim: int) -> int:
    num_heads = num_heads or max(1, dim // head_dim)
    if dim % num_heads:
        raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
    return num_heads


class AttentionMixer(TokenMixer):
    """Global self-attention over all tokens; ignores the grid (positions are in the tokens).

    Args:
        dim: model width.
        num_heads: number of heads (default: ``dim // head_dim``).
        head_dim: width per head used when ``num_heads`` is not given.
        qk_norm: RMSNorm on queries and keys per head (HTH: yes).
        qkv_bias: bias on the fused qkv projection.
        norm_eps: epsilon of the QK RMSNorm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        head_dim: int = 64,
        qk_norm: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(dim)
        self.num_heads = resolve_heads(dim, num_heads, head_dim)
        k = dim // self.num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        q, k, v = (split_heads(part, self.num_heads) for part in self.qkv(x_BLD).chunk(3, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        y_BHLK = F.scaled_dot_product_attention(q, k, v)
        return self.proj(merge_heads(y_BHLK))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"
