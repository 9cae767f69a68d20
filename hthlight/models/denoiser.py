"""The denoiser: patchify -> (+ positions, + time) -> blocks -> final layer -> unpatchify.

Images are one-frame clips: inputs are ``(B, C, H, W)`` or ``(B, C, T, H, W)`` and the
output has the input's shape. The token grid ``(t, h, w)`` travels with the tokens so
scanning mixers and position embeddings see the real layout at any resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from hthlight.conditioning.base import Conditioner, Conditioning
from hthlight.models.blocks import DenoiserBlock, modulate
from hthlight.models.embeddings import PatchEmbed, TimestepEmbedder, sincos_position_embedding, unpatchify
from hthlight.models.layout import expand_layout
from hthlight.registry import build_from_spec


def _default_layout() -> list[Any]:
    return [{"mixer": "hydra", "repeat": 4, "scans": ["h", "v"]}, {"mixer": "attention"}]


@dataclass
class DenoiserConfig:
    """Everything that defines a denoiser's architecture.

    Args:
        in_channels: channels of the (latent) input.
        out_channels: channels predicted (default: ``in_channels``).
        patch_size: side of the square patches that become tokens.
        dim: model width.
        layout: the block stack (see :mod:`hthlight.models.layout`), e.g.
            ``[{repeat: 3, layout: [{mixer: hydra, repeat: 10, scans: [h, v]}, {mixer: attention}]}]``.
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (HTH: 2).
        timestep_conditioning: ``additive`` (HTH: time + pooled condition added to the tokens
            once) or ``adaln`` (DiT/DiM adaLN-Zero in every block).
        conditioner: conditioning spec, e.g. ``{name: class_label, num_classes: 10}``; None
            for an unconditional model.
        context_dim: width of cross-attention context (default: the conditioner's, if any).
        cross_attention_heads: heads of the cross-attention layers (default ``dim // 64``).
        qk_norm: RMSNorm QK-normalisation in cross-attention.
        norm_eps: LayerNorm epsilon.
    """

    in_channels: int = 4
    out_channels: int | None = None
    patch_size: int = 2
    dim: int = 384
    layout: list[Any] = field(default_factory=_default_layout)
    mlp_ratio: float = 2.0
    timestep_conditioning: Literal["additive", "adaln"] = "additive"
    conditioner: str | dict[str, Any] | None = None
    context_dim: int | None = None
    cross_attention_heads: int | None = None
    qk_norm: bool = False
    norm_eps: float = 1e-6


class FinalLayer(nn.Module):
    """LayerNorm (adaLN-modulated in DiT mode) and a zero-initialised projection to patches."""

    def __init__(self, dim: int, out_dim: int, adaln: bool, norm_eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=not adaln)
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.modulation: nn.Sequential | None = None
        if adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x_BLD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        x_BLD = self.norm(x_BLD)
        if self.modulation is not None:
            shift, scale = self.modulation(c_BD).chunk(2, dim=-1)
            x_BLD = modulate(x_BLD, shift, scale)
        return self.linear(x_BLD)


class Denoiser(nn.Module):
    """Diffusion denoiser of HTH / DiM / Dimba / DiT form, configured by :class:`DenoiserConfig`."""

    def __init__(self, config: DenoiserConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if isinstance(config, Mapping):
            config = DenoiserConfig(**config)
        self.config = config
        c = config
        if c.dim < 1 or c.patch_size < 1 or c.in_channels < 1:
            raise ValueError(
                f"dim, patch_size and in_channels must be positive, got {c.dim}, {c.patch_size}, {c.in_channels}"
            )
        self.out_channels = c.out_channels or c.in_channels
        adaln = c.timestep_conditioning == "adaln"
        self.patch_embed = PatchEmbed(c.in_channels, c.dim, c.patch_size)
        self.time_embed = TimestepEmbedder(c.dim)
        self.conditioner: Conditioner | None = (
            build_from_spec("conditioner", c.conditioner, dim=c.dim) if c.conditioner is not None else None
        )
        context_dim = c.context_dim or getattr(self.conditioner, "context_dim", None)
        self.blocks = nn.ModuleList(
            DenoiserBlock(
                c.dim,
                spec,
                mlp_ratio=c.mlp_ratio,
                adaln=adaln,
                context_dim=context_dim,
                cross_attention_heads=c.cross_attention_heads,
                qk_norm=c.qk_norm,
                norm_eps=c.norm_eps,
            )
            for spec in expand_layout(c.layout)
        )
        self.final = FinalLayer(c.dim, self.out_channels * c.patch_size**2, adaln, c.norm_eps)
        self.adaln = adaln
        nn.init.xavier_uniform_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for layer in self.time_embed.mlp[0], self.time_embed.mlp[2]:
            nn.init.normal_(layer.weight, std=0.02)

    def condition(self, batch: Mapping[str, Any] | None, batch_size: int, drop_B: torch.Tensor | None) -> Conditioning:
        if self.conditioner is None:
            return Conditioning()
        if batch is None:
            raise ValueError(f"this denoiser is conditioned on {self.conditioner.batch_keys}; pass them in batch")
        cond = self.conditioner(batch, drop_B)
        if cond.vector_BD is not None and cond.vector_BD.shape[0] != batch_size:
            raise ValueError(f"conditioning batch {cond.vector_BD.shape[0]} != input batch {batch_size}")
        return cond

    def forward(
        self,
        x: torch.Tensor,
        t_B: torch.Tensor,
        batch: Mapping[str, Any] | None = None,
        drop_B: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the model target (e.g. flow velocity) for ``x`` at diffusion time ``t_B``.

        ``batch`` holds what the conditioner reads (e.g. ``label``); ``drop_B`` marks samples
        to condition on the null condition (classifier-free guidance).
        """
        is_image = x.ndim == 4
        x_BCTHW = x[:, :, None] if is_image else x
        if x_BCTHW.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, T, H, W) input, got shape {tuple(x.shape)}")
        b = x_BCTHW.shape[0]
        tokens_BLD, grid = self.patch_embed(x_BCTHW)
        tokens_BLD = tokens_BLD + sincos_position_embedding(grid, self.config.dim, tokens_BLD.device, tokens_BLD.dtype)
        t_B = torch.as_tensor(t_B, device=x.device).expand(b)
        c_BD = self.time_embed(t_B)
        cond = self.condition(batch, b, drop_B)
        if cond.vector_BD is not None:
            c_BD = c_BD + cond.vector_BD.to(c_BD.dtype)
        if not self.adaln:
            tokens_BLD = tokens_BLD + c_BD[:, None].to(tokens_BLD.dtype)
        for block in self.blocks:
            tokens_BLD = block(tokens_BLD, grid, c_BD, cond.context_BSC, cond.context_mask_BS)
        out = unpatchify(self.final(tokens_BLD, c_BD), grid, self.out_channels, self.config.patch_size)
        return out[:, :, 0] if is_image else out

    def describe(self) -> str:
        """One line per block: index and mixer (with scan), for logs and ``--print`` output."""
        lines = []
        for i, block in enumerate(self.blocks):
            mixer = block.mixer
            scan = getattr(mixer, "scan_name", None)
            lines.append(f"{i:3d} {type(mixer).__name__}" + (f" scan={scan}" if scan else ""))
        return "\n".join(lines)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)
