"""The denoiser block: pre-norm residual ``[cross-attention] -> token mixer -> [MLP]``.

HTH (Hong et al. 2025, fig. 3): residual connections around each LayerNorm'd layer; the
timestep is added to the tokens once, outside the blocks (``modulation="none"``).
DiT/DiM (Peebles & Xie 2023; Mo & Tian 2024): adaLN-Zero (``"adaln"``), a zero-initialised
per-block ``SiLU -> Linear(dim, 6*dim)`` of the conditioning vector ``c_BD`` gives the
shift/scale/gate of the mixer and MLP branches. PixArt-alpha / Dimba (Chen et al. 2024; Fei
et al. 2024): adaLN-single (``"adaln_single"``), one ``t_block`` shared by all blocks computes
``t6_B6D`` once per forward and each block adds its own learned ``scale_shift_table`` (6, dim).
A block without MLP (``mlp_ratio=0``, e.g. DiM or Dimba's bare Mamba layers) uses only the
first three modulation rows. One block is the unit of FSDP wrapping and activation checkpointing.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from hthlight.conditioning.cross_attention import CrossAttention
from hthlight.registry import build_from_spec
from hthlight.scans import Grid

Modulation = Literal["none", "adaln", "adaln_single"]
MODULATIONS: tuple[str, ...] = ("none", "adaln", "adaln_single")


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


def scale_shift_table(rows: int, dim: int) -> nn.Parameter:
    """PixArt's learned per-block modulation bias, ``randn(rows, dim) / sqrt(dim)``; exempt from weight decay."""
    table = nn.Parameter(torch.randn(rows, dim) / dim**0.5)
    table._no_weight_decay = True  # read by DiffusionModule.configure_optimizers
    return table


def check_modulation(modulation: str) -> str:
    if modulation not in MODULATIONS:
        raise ValueError(f"unknown block modulation {modulation!r}; allowed: {', '.join(MODULATIONS)}")
    return modulation


class DenoiserBlock(nn.Module):
    """One residual block around a token mixer built from a registry spec.

    Args:
        dim: model width.
        mixer: token-mixer spec (registry name, ``{name: ..., **kwargs}`` or ``{class_path: ...}``).
        mlp_ratio: MLP hidden width as a multiple of ``dim``; 0 for a block without MLP.
        modulation: ``none`` (plain affine LayerNorms), ``adaln`` (adaLN-Zero from ``c_BD``)
            or ``adaln_single`` (``scale_shift_table`` + the shared ``t6_B6D``).
        context_dim: width of cross-attention context tokens; None for no cross-attention.
        cross_attention: build the cross-attention when ``context_dim`` is given (a layout's
            per-block option; False for e.g. Dimba's bare Mamba layers).
        cross_attention_heads: heads of the cross-attention (default ``dim // 64``).
        cross_attention_backend: ``auto``, ``sdpa`` or ``triton`` (see :class:`CrossAttention`).
        qk_norm: RMSNorm QK-normalisation in the cross-attention.
        norm_eps: LayerNorm epsilon.
    """

    #: each block is one FSDP flat parameter and one activation-checkpointing unit, whatever its
    #: mixer (plugins included); read by :mod:`hthlight.strategies`
    fsdp_unit = True
    checkpoint_unit = True

    def __init__(
        self,
        dim: int,
        mixer: Any,
        mlp_ratio: float = 4.0,
        modulation: Modulation = "none",
        context_dim: int | None = None,
        cross_attention: bool = True,
        cross_attention_heads: int | None = None,
        cross_attention_backend: str = "auto",
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.modulation_kind = check_modulation(modulation)
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0: no MLP), got {mlp_ratio}")
        affine = modulation == "none"
        self.cross_attention: CrossAttention | None = None
        if context_dim is not None and cross_attention:
            self.norm_cross = nn.LayerNorm(dim, eps=norm_eps)
            self.cross_attention = CrossAttention(
                dim, context_dim, cross_attention_heads, qk_norm=qk_norm, backend=cross_attention_backend
            )
        self.norm_mixer = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=affine)
        self.mixer = build_from_spec("mixer", mixer, dim=dim)
        hidden = round(dim * mlp_ratio)
        self.norm_mlp = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=affine) if hidden else None
        self.mlp = MLP(dim, hidden) if hidden else None
        #: modulation rows used: shift/scale/gate of the mixer, then of the MLP if there is one
        self.modulation_rows = 6 if self.mlp is not None else 3
        self.modulation: nn.Sequential | None = None  # adaLN-Zero (checkpoint name kept)
        self.scale_shift_table: nn.Parameter | None = None  # adaLN-single
        if modulation == "adaln":
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.modulation_rows * dim))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)
        elif modulation == "adaln_single":
            self.scale_shift_table = scale_shift_table(self.modulation_rows, dim)

    def modulation_BRD(self, c_BD: torch.Tensor | None, t6_B6D: torch.Tensor | None) -> torch.Tensor | None:
        """Shift/scale/gate rows ``(B, rows, D)`` for this block's modulation, or None without one."""
        if self.modulation_kind == "none":
            return None
        if self.modulation_kind == "adaln":
            if c_BD is None:
                raise ValueError("an adaLN-Zero block needs the conditioning vector c_BD")
            return self.modulation(c_BD).unflatten(-1, (self.modulation_rows, -1))
        if t6_B6D is None:
            raise ValueError("an adaLN-single block needs the shared modulation t6_B6D (the denoiser's t_block)")
        return self.scale_shift_table[None].to(t6_B6D.dtype) + t6_B6D[:, : self.modulation_rows]

    def forward(
        self,
        x_BLD: torch.Tensor,
        grid: Grid,
        *,
        c_BD: torch.Tensor | None = None,
        t6_B6D: torch.Tensor | None = None,
        context_BSC: torch.Tensor | None = None,
        context_mask_BS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``c_BD`` feeds adaLN-Zero blocks, ``t6_B6D`` adaLN-single blocks; plain blocks take neither."""
        if self.cross_attention is not None:
            if context_BSC is None:
                raise ValueError("this block has cross-attention but no context tokens were given")
            x_BLD = x_BLD + self.cross_attention(self.norm_cross(x_BLD), context_BSC, context_mask_BS)
        mod_BRD = self.modulation_BRD(c_BD, t6_B6D)
        if mod_BRD is None:
            x_BLD = x_BLD + self.mixer(self.norm_mixer(x_BLD), grid)
            return x_BLD if self.mlp is None else x_BLD + self.mlp(self.norm_mlp(x_BLD))
        rows = mod_BRD.unbind(1)  # one stack in backward, not a zero-filled tensor per row
        shift1, scale1, gate1 = rows[:3]
        x_BLD = x_BLD + gate1[:, None] * self.mixer(modulate(self.norm_mixer(x_BLD), shift1, scale1), grid)
        if self.mlp is None:
            return x_BLD
        shift2, scale2, gate2 = rows[3:6]
        return x_BLD + gate2[:, None] * self.mlp(modulate(self.norm_mlp(x_BLD), shift2, scale2))
