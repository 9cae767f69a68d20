"""The denoiser block: pre-norm residual ``[cross-attention] -> token mixer -> MLP``.

HTH (Hong et al. 2025, fig. 3): residual connections around each LayerNorm'd layer; the
timestep is added to the tokens once, outside the blocks. DiT/DiM (Peebles & Xie 2023; Mo &
Tian 2024): adaLN-Zero, a zero-initialised modulation of the mixer and MLP branches by the
conditioning vector. One block is the unit of FSDP wrapping and activation checkpointing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hthlight.conditioning.cross_attention import CrossAttention
from hthlight.registry import build_from_spec
from hthlight.scans import Grid


class MLP(nn.Module):
    """Two linear layers with a GELU (tanh) between them."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x_BLD: torch.Tensor, shift_BD: torch.Tensor, scale_BD: torch.Tensor) -> torch.Tensor:
    return x_BLD * (1 + scale_BD[:, None]) + shift_BD[:, None]


class DenoiserBlock(nn.Module):
    """One residual block around a token mixer built from a registry spec.

    Args:
        dim: model width.
        mixer: token-mixer spec (registry name, ``{name: ..., **kwargs}`` or ``{class_path: ...}``).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        adaln: adaLN-Zero modulation by the conditioning vector (else plain affine LayerNorms).
        context_dim: width of cross-attention context tokens; None for no cross-attention.
        cross_attention_heads: heads of the cross-attention (default ``dim // 64``).
        qk_norm: RMSNorm QK-normalisation in the cross-attention.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        mixer: Any,
        mlp_ratio: float = 4.0,
        adaln: bool = False,
        context_dim: int | None = None,
        cross_attention_heads: int | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        affine = not adaln
        self.cross_attention: CrossAttention | None = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=norm_eps)
            self.cross_attention = CrossAttention(dim, context_dim, cross_attention_heads, qk_norm=qk_norm)
        self.norm_mixer = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=affine)
        self.mixer = build_from_spec("mixer", mixer, dim=dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=affine)
        self.mlp = MLP(dim, round(dim * mlp_ratio))
        self.modulation: nn.Sequential | None = None
        if adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(
        self,
        x_BLD: torch.Tensor,
        grid: Grid,
        c_BD: torch.Tensor | None = None,
        context_BSC: torch.Tensor | None = None,
        context_mask_BS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cross_attention is not None:
            if context_BSC is None:
                raise ValueError("this block has cross-attention but no context tokens were given")
            x_BLD = x_BLD + self.cross_attention(self.norm_cross(x_BLD), context_BSC, context_mask_BS)
        if self.modulation is None:
            x_BLD = x_BLD + self.mixer(self.norm_mixer(x_BLD), grid)
            return x_BLD + self.mlp(self.norm_mlp(x_BLD))
        if c_BD is None:
            raise ValueError("an adaLN block needs the conditioning vector c_BD")
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c_BD).chunk(6, dim=-1)
        x_BLD = x_BLD + gate1[:, None] * self.mixer(modulate(self.norm_mixer(x_BLD), shift1, scale1), grid)
        return x_BLD + gate2[:, None] * self.mlp(modulate(self.norm_mlp(x_BLD), shift2, scale2))
