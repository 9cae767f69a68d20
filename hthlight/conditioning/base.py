"""Conditioner contract: read a batch, return pooled and/or token conditioning.

A conditioner is built with the model width as ``dim``. ``forward(batch, drop_B)`` returns a
:class:`Conditioning`: a pooled ``vector_BD`` added to the timestep embedding and/or
``context_BSC`` tokens for cross-attention. ``drop_B`` marks samples whose condition is
replaced by the null condition (classifier-free guidance, Ho & Salimans 2022); when it is
``None`` in training mode the conditioner draws it with its own dropout probability.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Conditioning:
    """What a conditioner hands the denoiser (any field may be None)."""

    vector_BD: torch.Tensor | None = None
    context_BSC: torch.Tensor | None = None
    context_mask_BS: torch.Tensor | None = None


class Conditioner(nn.Module):
    """Base class: subclasses set ``batch_keys`` and implement :meth:`forward`."""

    #: keys this conditioner reads from a batch
    batch_keys: tuple[str, ...] = ()
    #: width of context tokens for cross-attention, or None when it gives none
    context_dim: int | None = None

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"conditioning dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout

    def drop_mask(self, batch_size: int, device: torch.device, drop_B: torch.Tensor | None) -> torch.Tensor:
        """The samples to condition on nothing: ``drop_B`` if given, else random in training."""
        if drop_B is not None:
            return drop_B.to(device=device, dtype=torch.bool)
        if self.training and self.dropout > 0:
            return torch.rand(batch_size, device=device) < self.dropout
        return torch.zeros(batch_size, dtype=torch.bool, device=device)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch key(s) {missing}; the batch has {sorted(batch)}")

    def forward(self, batch: Mapping[str, Any], drop_B: torch.Tensor | None = None) -> Conditioning:
        raise NotImplementedError
