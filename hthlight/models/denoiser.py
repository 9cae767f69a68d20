"""The denoiser: patchify -> (+ positions, + time) -> blocks -> final layer -> unpatchify.

Images are one-frame clips: inputs are ``(B, C, H, W)`` or ``(B, C, T, H, W)`` and the
output has the input's shape. The token grid ``(t, h, w)`` travels with the tokens so
scanning mixers and position embeddings see the real layout at any resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from hthlight.conditioning.base import Conditioner, Conditioning
from hthlight.errors import ConfigError
from hthlight.models.blocks import DenoiserBlock, Modulation, modulate, scale_shift_table
from hthlight.models.embeddings import PatchEmbed, TimestepEmbedder, sincos_position_embedding, unpatchify
from hthlight.models.layout import expand_blocks
from hthlight.registry import build_from_spec

TIMESTEP_CONDITIONING = ("additive", "adaln", "adaln_single")
POSITION_EMBEDDINGS = ("sincos", "none")
#: timestep_conditioning -> what each block does with the conditioning
_BLOCK_MODULATION: dict[str, Modulation] = {"additive": "none", "adaln": "adaln", "adaln_single": "adaln_single"}


def _default_layout() -> list[Any]:
    return [{"mixer": "hydra", "repeat": 4, "scans": ["h", "v"]}, {"mixer": "attention"}]


@dataclass
class DenoiserConfig:
    """Everything that defines a denoiser's architecture.

    Args:
        in_channels: channels of the (latent) input.
        out_channels: channels predicted (default: ``in_channels``).
        patch_size: side of the square patches that become tokens.
        temporal_patch_size: frames per token for video (``pt x p x p`` tubelets); 1 keeps
            one token per frame patch (images and image checkpoints are unaffected). A
            one-frame input (an image) is repeated ``pt`` times and its first output frame kept.
        dim: model width.
        layout: the block stack (see :mod:`hthlight.models.layout`), e.g.
            ``[{repeat: 3, layout: [{mixer: hydra, repeat: 10, scans: [h, v]}, {mixer: attention}]}]``.
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (HTH: 2; 0: blocks without MLP).
            A layout entry's ``block: {mlp_ratio, cross_attention}`` overrides it per block.
        timestep_conditioning: ``additive`` (HTH: time + pooled condition added to the tokens
            once), ``adaln`` (DiT/DiM adaLN-Zero: a modulation MLP in every block) or
            ``adaln_single`` (PixArt-alpha/Dimba: one shared ``t_block`` and a learned
            ``scale_shift_table`` per block; far fewer parameters than adaLN-Zero).
        position_embedding: ``sincos`` (fixed absolute 2D/3D sin-cos added to the tokens) or
            ``none`` (e.g. for attention mixers with ``rope: true``).
        position_interpolation_base: PixArt positional-embedding interpolation, in tokens: an
            axis of ``n`` tokens gets sin-cos positions ``arange(n) * base / n`` so any
            resolution spans the base grid's range (set it to the pre-training grid side when
            fine-tuning at a new resolution); None for integer positions ``0..n-1``.
        conditioner: conditioning spec, e.g. ``{name: class_label, num_classes: 10}`` or
            ``{name: text_embedding, context_dim: 4096}`` (cross-attention to precomputed text
            features); None for an unconditional model.
        context_dim: width of cross-attention context (default: the conditioner's, if any).
        cross_attention_heads: heads of the cross-attention layers (default ``dim // 64``).
        cross_attention_backend: ``auto`` (Triton kernels on CUDA for captions up to 512 tokens,
            else SDPA), ``sdpa`` or ``triton`` (:mod:`hthlight.conditioning.cross_attention`).
        qk_norm: RMSNorm QK-normalisation in cross-attention.
        norm_eps: LayerNorm epsilon.
    """

    in_channels: int = 4
    out_channels: int | None = None
    patch_size: int = 2
    temporal_patch_size: int = 1
    dim: int = 384
    layout: list[Any] = field(default_factory=_default_layout)
    mlp_ratio: float = 2.0
    timestep_conditioning: Literal["additive", "adaln", "adaln_single"] = "additive"
    position_embedding: Literal["sincos", "none"] = "sincos"
    position_interpolation_base: int | None = None
    conditioner: str | dict[str, Any] | None = None
    context_dim: int | None = None
    cross_attention_heads: int | None = None
    cross_attention_backend: Literal["auto", "sdpa", "triton"] = "auto"
    qk_norm: bool = False
    norm_eps: float = 1e-6


class FinalLayer(nn.Module):
    """LayerNorm (modulated unless ``modulation="none"``) and a zero-initialised projection to patches.

    adaLN-Zero (DiT): shift/scale from ``SiLU -> Linear(dim, 2*dim)`` of ``c_BD``; adaLN-single
    (PixArt): shift/scale = own ``scale_shift_table`` (2, dim) + the embedded vector ``c_BD``.
    """

    def __init__(self, dim: int, out_dim: int, modulation: Modulation, norm_eps: float) -> None:
        super().__init__()
        self.modulation_kind = modulation
        self.norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=modulation == "none")
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.modulation: nn.Sequential | None = None
        self.scale_shift_table: nn.Parameter | None = None
        if modulation == "adaln":
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)
        elif modulation == "adaln_single":
            self.scale_shift_table = scale_shift_table(2, dim)

    def forward(self, x_BLD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        x_BLD = self.norm(x_BLD)
        if self.modulation is not None:
            shift, scale = self.modulation(c_BD).chunk(2, dim=-1)
            x_BLD = modulate(x_BLD, shift, scale)
        elif self.scale_shift_table is not None:
            shift, scale = (self.scale_shift_table[None].to(c_BD.dtype) + c_BD[:, None]).unbind(1)
            x_BLD = modulate(x_BLD, shift, scale)
        return self.linear(x_BLD)


class Denoiser(nn.Module):
    """Diffusion denoiser of HTH / DiM / Dimba / DiT form, configured by :class:`DenoiserConfig`."""

    #: its own FSDP unit, so an EMA copy is sharded exactly like the trained denoiser (hthlight.strategies)
    fsdp_unit = True

    def __init__(self, config: DenoiserConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if isinstance(config, Mapping):
            config = DenoiserConfig(**config)
        self.config = config
        c = config
        if c.dim < 1 or c.patch_size < 1 or c.in_channels < 1 or c.temporal_patch_size < 1:
            raise ValueError(
                f"dim, patch_size, temporal_patch_size and in_channels must be positive, got {c.dim}, "
                f"{c.patch_size}, {c.temporal_patch_size}, {c.in_channels}"
            )
        _check_choice("timestep_conditioning", c.timestep_conditioning, TIMESTEP_CONDITIONING)
        _check_choice("position_embedding", c.position_embedding, POSITION_EMBEDDINGS)
        if c.position_interpolation_base is not None and c.position_interpolation_base < 1:
            raise ConfigError(
                f"position_interpolation_base must be a positive number of tokens or null, "
                f"got {c.position_interpolation_base}"
            )
        self.out_channels = c.out_channels or c.in_channels
        modulation = _BLOCK_MODULATION[c.timestep_conditioning]
        self.patch_embed = PatchEmbed(c.in_channels, c.dim, c.patch_size, c.temporal_patch_size)
        self.time_embed = TimestepEmbedder(c.dim)
        self.conditioner: Conditioner | None = (
            build_from_spec("conditioner", c.conditioner, dim=c.dim) if c.conditioner is not None else None
        )
        context_dim = _context_dim(c.context_dim, getattr(self.conditioner, "context_dim", None))
        # adaLN-single (PixArt-alpha): one modulation MLP shared by all blocks
        self.t_block: nn.Sequential | None = None
        if modulation == "adaln_single":
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(
            DenoiserBlock(
                c.dim,
                spec.mixer,
                **{
                    "mlp_ratio": c.mlp_ratio,
                    "modulation": modulation,
                    "context_dim": context_dim,
                    "cross_attention_heads": c.cross_attention_heads,
                    "cross_attention_backend": c.cross_attention_backend,
                    "qk_norm": c.qk_norm,
                    "norm_eps": c.norm_eps,
                    **spec.options,  # per-block layout options (mlp_ratio, cross_attention)
                },
            )
            for spec in expand_blocks(c.layout)
        )
        patch_values = c.temporal_patch_size * c.patch_size**2
        self.final = FinalLayer(c.dim, self.out_channels * patch_values, modulation, c.norm_eps)
        self.timestep_conditioning = c.timestep_conditioning
        nn.init.xavier_uniform_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for layer in self.time_embed.mlp[0], self.time_embed.mlp[2]:
            nn.init.normal_(layer.weight, std=0.02)
        if self.t_block is not None:  # PixArt's initialisation of the shared t_block
            nn.init.normal_(self.t_block[1].weight, std=0.02)
            nn.init.zeros_(self.t_block[1].bias)

    def condition(self, batch: Mapping[str, Any] | None, batch_size: int, drop_B: torch.Tensor | None) -> Conditioning:
        if self.conditioner is None:
            return Conditioning()
        if batch is None:
            raise ValueError(f"this denoiser is conditioned on {self.conditioner.batch_keys}; pass them in batch")
        cond = self.conditioner(batch, drop_B)
        for name in ("vector_BD", "context_BSC"):
            value = getattr(cond, name)
            if value is not None and value.shape[0] != batch_size:
                raise ValueError(f"conditioning {name} has batch {value.shape[0]} != input batch {batch_size}")
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
        pt = self.config.temporal_patch_size
        one_frame = x_BCTHW.shape[2] == 1 and pt > 1
        if one_frame:  # an image in a tubelet model: repeat it to one tubelet, keep the first frame
            x_BCTHW = x_BCTHW.expand(-1, -1, pt, -1, -1)
        tokens_BLD, grid = self.patch_embed(x_BCTHW)
        tokens_BLD = self.add_positions(tokens_BLD, grid)
        t_B = torch.as_tensor(t_B, device=x.device).expand(b)
        c_BD = self.time_embed(t_B)
        cond = self.condition(batch, b, drop_B)
        if cond.vector_BD is not None:
            c_BD = c_BD + cond.vector_BD.to(c_BD.dtype)
        modulation_input: dict[str, torch.Tensor] = {}
        if self.timestep_conditioning == "additive":
            tokens_BLD = tokens_BLD + c_BD[:, None].to(tokens_BLD.dtype)
        elif self.timestep_conditioning == "adaln":
            modulation_input["c_BD"] = c_BD
        else:  # adaLN-single: computed once, shared by every block
            modulation_input["t6_B6D"] = self.t_block(c_BD).unflatten(-1, (6, -1))
        for block in self.blocks:
            tokens_BLD = block(
                tokens_BLD,
                grid,
                context_BSC=cond.context_BSC,
                context_mask_BS=cond.context_mask_BS,
                **modulation_input,
            )
        out = unpatchify(self.final(tokens_BLD, c_BD), grid, self.out_channels, self.config.patch_size, pt)
        if one_frame:
            out = out[:, :, :1]
        return out[:, :, 0] if is_image else out

    def add_positions(self, tokens_BLD: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Add the absolute sin-cos positions of ``grid`` (unless ``position_embedding="none"``)."""
        c = self.config
        if c.position_embedding == "none":
            return tokens_BLD
        table_LD = sincos_position_embedding(
            grid, c.dim, tokens_BLD.device, tokens_BLD.dtype, base=c.position_interpolation_base
        )
        return tokens_BLD + table_LD

    def describe(self) -> str:
        """One line per block: index and mixer (with scan), for logs and ``--print`` output."""
        lines = []
        for i, block in enumerate(self.blocks):
            mixer = block.mixer
            scan = getattr(mixer, "scan_name", None)
            extras = [f"scan={scan}"] if scan else []
            if getattr(mixer, "rope", False):
                extras.append("rope")
            if block.cross_attention is not None:
                extras.append("cross-attention")
            if block.mlp is None:
                extras.append("no MLP")
            lines.append(" ".join([f"{i:3d} {type(mixer).__name__}", *extras]))
        return "\n".join(lines)


def _check_choice(field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field_name} must be one of {', '.join(allowed)}; got {value!r}")


def _context_dim(configured: int | None, from_conditioner: int | None) -> int | None:
    """Cross-attention width: the config's, else the conditioner's; they must agree when both are set."""
    if configured and from_conditioner and configured != from_conditioner:
        raise ConfigError(
            f"context_dim is {configured} but the conditioner gives {from_conditioner}-wide context; "
            "leave context_dim unset (null) or make them equal"
        )
    return configured or from_conditioner
