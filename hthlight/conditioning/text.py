"""Text conditioning from precomputed encoder features (T5 / FLAN-T5 token embeddings).

HTH (Hong et al. 2025) and Dimba (Fei et al. 2024) cross-attend to frozen T5 features; the
encoders run elsewhere (a text cache or a ``text_encoder`` component), so this conditioner
only reads their output from the batch:

* ``batch["context"]``: ``(B, S, context_dim)`` float tensor of token features;
* ``batch["context_mask"]`` (optional): ``(B, S)`` bool or 0/1, True = a real token
  (padding is False); without it every token is real.

Classifier-free guidance (Ho & Salimans 2022) replaces a dropped sample's tokens by a learned
null context ``null_context`` of ``N`` tokens: ``N = max_length`` when ``max_length`` is set
(PixArt's learned "empty caption", every null token attended), else ``N = 1`` (one learned
token at position 0, the rest of the row masked out), so it works for any ``S``. With
``max_length`` the context is also truncated or zero-padded (masked) to exactly
``max_length`` tokens, giving every batch the same shape. A sample whose mask has no real
token is given the null context too (attention over nothing is undefined).

With ``null="empty_prompt"`` the null context is instead the text encoder's embedding of the
empty prompt "" (Stable Diffusion / PixArt-sigma style caption dropout), installed by the
module that owns the encoder through :meth:`TextEmbeddingConditioner.set_empty_prompt`; it is
not a parameter and not saved in checkpoints (it is recomputed from the encoder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from hthlight.conditioning.base import Conditioner, Conditioning


class TextEmbeddingConditioner(Conditioner):
    """Cross-attention context from precomputed text features, with a learned CFG null context.

    Args:
        dim: model width (of the optional pooled vector).
        context_dim: width of the text features (T5-XXL: 4096); the denoiser's
            cross-attention reads context of this width.
        dropout: probability of replacing a sample's text by the null context in training (CFG).
        max_length: pad/truncate every context to this many tokens and learn a null context
            of that length; None keeps each batch's length and learns a one-token null.
        pooled: also add a projection of the masked mean of the tokens to the conditioning
            vector (added to the timestep embedding).
        null: ``learned`` (a learned null context) or ``empty_prompt`` (the encoder's
            embedding of "", see :meth:`set_empty_prompt`).
    """

    batch_keys = ("context",)

    def __init__(
        self,
        dim: int,
        context_dim: int,
        dropout: float = 0.1,
        max_length: int | None = None,
        pooled: bool = False,
        null: Literal["learned", "empty_prompt"] = "learned",
    ) -> None:
        super().__init__(dropout)
        if null not in ("learned", "empty_prompt"):
            raise ValueError(f"null must be 'learned' or 'empty_prompt', got {null!r}")
        if context_dim < 1:
            raise ValueError(f"context_dim must be positive, got {context_dim}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens or None, got {max_length}")
        self.context_dim = context_dim
        self.max_length = max_length
        null_length = max_length or 1
        self.null_kind = null
        self.null_context: nn.Parameter | None = None
        if null == "learned":
            self.null_context = nn.Parameter(torch.randn(null_length, context_dim) / context_dim**0.5)  # PixArt init
        self.register_buffer("empty_context", None, persistent=False)
        self.register_buffer("empty_mask", None, persistent=False)
        self.pooled_projection: nn.Linear | None = None
        if pooled:
            self.pooled_projection = nn.Linear(context_dim, dim)
            nn.init.normal_(self.pooled_projection.weight, std=0.02)
            nn.init.zeros_(self.pooled_projection.bias)

    def read_context(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch["context"]`` and its mask, checked, cast to this module's dtype and fitted to ``max_length``."""
        self.check_batch(batch)
        param = self._anchor()
        context_BSC = torch.as_tensor(batch["context"], device=param.device)
        if context_BSC.ndim != 3 or context_BSC.shape[-1] != self.context_dim:
            raise ValueError(
                f"batch['context'] must be (batch, tokens, {self.context_dim}): expected width "
                f"{self.context_dim}, got shape {tuple(context_BSC.shape)}"
            )
        if context_BSC.shape[1] < 1:
            raise ValueError("batch['context'] has no tokens; give at least one (e.g. the encoder's EOS token)")
        b, s, _ = context_BSC.shape
        mask_BS = batch.get("context_mask")
        if mask_BS is None:
            mask_BS = torch.ones(b, s, dtype=torch.bool, device=param.device)
        else:
            mask_BS = torch.as_tensor(mask_BS, device=param.device).to(torch.bool)
            if mask_BS.shape != (b, s):
                raise ValueError(
                    f"batch['context_mask'] must be (batch, tokens) = {(b, s)}, got {tuple(mask_BS.shape)}"
                )
        context_BSC = context_BSC.to(param.dtype)
        if self.max_length is not None:
            context_BSC, mask_BS = fit_length(context_BSC, mask_BS, self.max_length)
        return context_BSC, mask_BS

    def set_empty_prompt(self, context_SC: torch.Tensor, mask_S: torch.Tensor) -> None:
        """Install the encoder's embedding of "" (one prompt: ``(S, C)`` and mask ``(S,)``) as the null."""
        if context_SC.ndim != 2 or context_SC.shape[-1] != self.context_dim or mask_S.shape != context_SC.shape[:1]:
            raise ValueError(
                f"empty prompt must be (tokens, {self.context_dim}) with a (tokens,) mask, got "
                f"{tuple(context_SC.shape)} and {tuple(mask_S.shape)}"
            )
        device = self.pooled_projection.weight.device if self.pooled_projection is not None else context_SC.device
        dtype = self.pooled_projection.weight.dtype if self.pooled_projection is not None else context_SC.dtype
        self.empty_context = context_SC.detach().to(device=device, dtype=dtype)
        self.empty_mask = mask_S.detach().to(device=device, dtype=torch.bool)

    def _anchor(self) -> torch.Tensor:
        """A tensor on this conditioner's device and dtype (the null context)."""
        anchor = self.null_context if self.null_kind == "learned" else self.empty_context
        if anchor is None:
            raise ValueError(
                "this text conditioner uses null: empty_prompt but no empty-prompt embedding is set; "
                "set model.text_encoder (the module installs it) or call set_empty_prompt()"
            )
        return anchor

    def null(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null context ``(length, C)`` and its mask ``(length,)``."""
        if self.null_kind == "empty_prompt":
            context_1SC, mask_1S = fit_length(self._anchor()[None], self.empty_mask[None], length)
            return context_1SC[0], mask_1S[0]
        n = self.null_context.shape[0]
        if n == length:
            return self.null_context, torch.ones(length, dtype=torch.bool, device=self.null_context.device)
        # one learned token at position 0; the rest of the row is masked out
        pad = self.null_context.new_zeros(length - n, self.context_dim)
        mask = torch.arange(length, device=self.null_context.device) < n
        return torch.cat([self.null_context, pad]), mask

    def forward(self, batch: Mapping[str, Any], drop_B: torch.Tensor | None = None) -> Conditioning:
        context_BSC, mask_BS = self.read_context(batch)
        b, s, _ = context_BSC.shape
        drop_B = self.drop_mask(b, context_BSC.device, drop_B) | ~mask_BS.any(dim=1)
        null_SC, null_mask_S = self.null(s)
        context_BSC = torch.where(drop_B[:, None, None], null_SC[None].to(context_BSC.dtype), context_BSC)
        mask_BS = torch.where(drop_B[:, None], null_mask_S[None], mask_BS)
        vector_BD = None
        if self.pooled_projection is not None:
            vector_BD = self.pooled_projection(masked_mean(context_BSC, mask_BS))
        return Conditioning(vector_BD=vector_BD, context_BSC=context_BSC, context_mask_BS=mask_BS)

    def extra_repr(self) -> str:
        return (
            f"context_dim={self.context_dim}, max_length={self.max_length}, "
            f"pooled={self.pooled_projection is not None}, dropout={self.dropout}, null={self.null_kind}"
        )


def fit_length(context_BSC: torch.Tensor, mask_BS: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate, or zero-pad with masked-out tokens, to exactly ``length`` tokens."""
    s = context_BSC.shape[1]
    if s >= length:
        return context_BSC[:, :length], mask_BS[:, :length]
    pad = length - s
    context_BSC = torch.cat([context_BSC, context_BSC.new_zeros(context_BSC.shape[0], pad, context_BSC.shape[2])], 1)
    return context_BSC, torch.cat([mask_BS, mask_BS.new_zeros(mask_BS.shape[0], pad)], 1)


def masked_mean(x_BSC: torch.Tensor, mask_BS: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where ``mask_BS`` is True: ``(B, C)`` (zero for a row with none)."""
    weights_BS = mask_BS.to(x_BSC.dtype)
    total_BC = (x_BSC * weights_BS[..., None]).sum(1)
    return total_BC / weights_BS.sum(1, keepdim=True).clamp_min(1)
