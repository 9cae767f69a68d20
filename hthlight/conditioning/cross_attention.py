"""Cross-attention from visual tokens to conditioning tokens (text), as in HTH/PixArt blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.mixers.attention import merge_heads, resolve_heads, split_heads
from hthlight.mixers.norms import RMSNorm


class CrossAttention(nn.Module):
    """Queries from the ``dim``-wide tokens, keys/values from ``context_dim``-wide context.

    ``context_mask_BS`` (True = attend) masks padded context tokens.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int | None = None,
        head_dim: int = 64,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_heads = resolve_heads(dim, num_heads, head_dim)
        k = dim // self.num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.q_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x_BLD: torch.Tensor, context_BSC: torch.Tensor, context_mask_BS: torch.Tensor | None = None
    ) -> torch.Tensor:
        q = self.q_norm(split_heads(self.q(x_BLD), self.num_heads))
        k, v = (split_heads(part, self.num_heads) for part in self.kv(context_BSC).chunk(2, dim=-1))
        k = self.k_norm(k)
        mask = None
        if context_mask_BS is not None:
            mask = context_mask_BS.to(torch.bool)[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(merge_heads(y))
