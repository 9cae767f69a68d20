"""Multi-head self-attention token mixer (Vaswani et al. 2017) on PyTorch SDPA.

Optional RMSNorm QK-normalisation (Henry et al. 2020), as in HTH's attention blocks, and
optional axial rotary positions (RoFormer, Su et al. 2024; the 2D/3D axial form DiT variants
use to generalise across resolutions), applied to q and k after the QK-norm.
``torch.nn.functional.scaled_dot_product_attention`` picks the fastest kernel available
(flash / memory-efficient on CUDA, the math kernel on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.mixers.base import TokenMixer
from hthlight.mixers.norms import RMSNorm
from hthlight.scans import Grid, check_grid


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
    """Global self-attention over all tokens.

    Without ``rope`` it ignores the grid (positions are in the tokens). With ``rope`` the
    queries and keys are rotated by axial RoPE of their ``(t, h, w)`` position in the grid
    given to :meth:`forward` (see :func:`hthlight.models.embeddings.rope_axis_pairs` for how
    a head's pairs are split over t, h and w), so scores depend on relative offsets.

    Args:
        dim: model width.
        num_heads: number of heads (default: ``dim // head_dim``).
        head_dim: width per head used when ``num_heads`` is not given.
        qk_norm: RMSNorm on queries and keys per head (HTH: yes).
        qkv_bias: bias on the fused qkv projection.
        norm_eps: epsilon of the QK RMSNorm.
        rope: rotate q and k by axial rotary positions.
        rope_theta: RoPE base frequency.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        head_dim: int = 64,
        qk_norm: bool = False,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        rope: bool = False,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__(dim)
        self.num_heads = resolve_heads(dim, num_heads, head_dim)
        k = dim // self.num_heads
        if rope:
            from hthlight.models.embeddings import rope_axis_pairs  # lazy: hthlight.models imports the mixers

            rope_axis_pairs(k)  # fails now, not at the first step, on an odd head width
            if rope_theta <= 1:
                raise ValueError(f"rope_theta must be > 1, got {rope_theta}")
        self.rope = rope
        self.rope_theta = float(rope_theta)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(k, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def rotate(
        self, q_BHLK: torch.Tensor, k_BHLK: torch.Tensor, grid: Grid | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply axial RoPE for ``grid`` to queries and keys (no-op without ``rope``)."""
        if not self.rope:
            return q_BHLK, k_BHLK
        from hthlight.models.embeddings import apply_rope, rope_tables  # lazy: see __init__

        if grid is None:
            raise ValueError("an attention mixer with rope=True needs the token grid (t, h, w)")
        t, h, w = check_grid(grid)
        if q_BHLK.shape[2] != t * h * w:
            raise ValueError(f"sequence length {q_BHLK.shape[2]} does not match grid {grid} ({t * h * w} tokens)")
        dtype = torch.promote_types(q_BHLK.dtype, torch.float32)
        cos, sin = rope_tables((t, h, w), q_BHLK.shape[-1], self.rope_theta, q_BHLK.device, dtype)
        return apply_rope(q_BHLK, cos, sin), apply_rope(k_BHLK, cos, sin)

    def forward(self, x_BLD: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        q, k, v = (split_heads(part, self.num_heads) for part in self.qkv(x_BLD).chunk(3, dim=-1))
        q, k = self.rotate(self.q_norm(q), self.k_norm(k), grid)
        y_BHLK = F.scaled_dot_product_attention(q, k, v)
        return self.proj(merge_heads(y_BHLK))

    def extra_repr(self) -> str:
        rope = f", rope=True, rope_theta={self.rope_theta:g}" if self.rope else ""
        return f"dim={self.dim}, num_heads={self.num_heads}{rope}"
