"""Exponential moving average of weights (Polyak averaging), as used for sampling in DiT/HTH."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """Decay for update ``step``; with warm-up ``min(decay, (1 + step) / (10 + step))`` so short
    runs are not dominated by the random initialisation."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for floating parameters; buffers are copied.

    Operates on each rank's local tensors, so it works per shard under sharded strategies.
    """
    ema_params = [p for p in ema.parameters() if p.dtype.is_floating_point]
    model_params = [p for p in model.parameters() if p.dtype.is_floating_point]
    if len(ema_params) != len(model_params):
        raise RuntimeError("EMA and model have different parameter structures")
    if ema_params:
        torch._foreach_lerp_(ema_params, [p.detach().to(e.dtype) for p, e in zip(model_params, ema_params)], 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)
