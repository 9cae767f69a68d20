"""Class-label conditioning with a learned null class for classifier-free guidance (DiT, DiM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hthlight.conditioning.base import Conditioner, Conditioning


class ClassLabelConditioner(Conditioner):
    """Embeds ``batch["label"]``; index ``num_classes`` is the null (unconditional) class.

    Args:
        dim: model width.
        num_classes: number of real classes.
        dropout: probability of replacing a label by the null class in training (CFG).
    """

    batch_keys = ("label",)

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(dropout)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """The label key is present and labels on the host are in ``[0, num_classes)``.

        Labels already on an accelerator are not range-checked here: reading their range back
        would block the host on the device at every step and make the forward uncapturable in a
        CUDA graph (an out-of-range index then fails in the embedding lookup). ``generate`` checks
        its labels while they are still on the host.
        """
        super().check_batch(batch)
        labels = batch["label"]
        if isinstance(labels, torch.Tensor) and labels.device.type != "cpu":
            return
        labels_B = torch.as_tensor(labels)
        if labels_B.numel() and (labels_B.min() < 0 or labels_B.max() >= self.num_classes):
            raise ValueError(
                f"class labels must be in [0, {self.num_classes - 1}], got range "
                f"[{int(labels_B.min())}, {int(labels_B.max())}]"
            )

    def forward(self, batch: Mapping[str, Any], drop_B: torch.Tensor | None = None) -> Conditioning:
        self.check_batch(batch)
        labels_B = torch.as_tensor(batch["label"], device=self.embedding.weight.device).long()
        drop = self.drop_mask(labels_B.shape[0], labels_B.device, drop_B)
        labels_B = torch.where(drop, torch.full_like(labels_B, self.null_label), labels_B)
        return Conditioning(vector_BD=self.embedding(labels_B))
