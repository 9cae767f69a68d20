"""Exact resume: a run stopped anywhere and resumed from its checkpoint ends with the same weights.

Lightning restores weights, EMA (a submodule), optimizer, LR schedule and loop counters. This
callback adds the two things it does not:

* **Random streams.** Before every training micro-batch the torch (CPU and CUDA), numpy and
  python generators are seeded from ``(seed, optimizer step, slot)``, where the slot is the
  micro-batch's place in the global batch (``accumulation index * world size + rank``): the
  timesteps, noise and condition dropout of a step are the same whether or not the run was
  interrupted before it, ranks draw independent streams, and 2 ranks x batch B draw what
  1 rank x 2 accumulated micro-batches of B draw (with :class:`~hthlight.data.resumable.ResumableSampler` they get
  the same samples).
* **Data position.** The training loader's sampler (see :mod:`hthlight.data.resumable`) is
  saved with the number of batches the training loop had consumed in the epoch, and resumes
  after them.

``DiffusionModule`` adds it to every run.
"""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from hthlight.data.resumable import is_resumable


def step_seed(seed: int, step: int, slot: int) -> int:
    """A 63-bit seed for micro-batch ``slot`` of optimizer step ``step`` (numpy's SeedSequence hash)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, step, slot]).generate_state(2, np.uint64)[0] >> 1)


def batch_slot(trainer, batch_idx: int) -> int:
    """Place of this rank's micro-batch in the global batch: ``accumulation index * world size + rank``."""
    micro = batch_idx % max(1, trainer.accumulate_grad_batches)
    return micro * trainer.world_size + trainer.global_rank


def seed_all(seed: int) -> None:
    """Seed torch (every device), numpy and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def training_samplers(trainer) -> list[tuple[Any, Any]]:
    """``(loader, sampler)`` for each training loader whose batch sampler or sampler is resumable."""
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    found = []
    for loader in combined.flattened if combined is not None else []:
        for candidate in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
            if candidate is not None and is_resumable(candidate):
                found.append((loader, candidate))
                break
    return found


class ExactResume(L.Callback):
    """Per-batch seeding of every random generator and resumable data position.

    Args:
        seed: base seed (default: the run's ``seed_everything`` seed, else 0).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._trainer = None
        self._pending: dict[str, Any] | None = None
        self._restored_seed: int | None = None

    @property
    def base_seed(self) -> int:
        """``seed``, else the seed of the run this one resumes, else the run's ``seed_everything`` seed."""
        if self.seed is not None:
            return self.seed
        if self._restored_seed is not None:
            return self._restored_seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        seed_all(step_seed(self.base_seed, trainer.global_step, batch_slot(trainer, batch_idx)))

    def on_train_start(self, trainer, pl_module) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        samplers = training_samplers(trainer)
        saved = state.get("samplers", [])
        if len(saved) != len(samplers):
            return  # the data changed: start the epoch from its beginning
        batches = int(state.get("batches_consumed", 0))
        for (loader, sampler), sampler_state in zip(samplers, saved):
            size = getattr(loader, "batch_size", None)
            sampler.load_state_dict(
                {**sampler_state, "batches_consumed": batches, "samples_consumed": batches * size if size else None}
            )
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None and any(getattr(loader, "num_workers", 0) > 0 for loader, _ in samplers):
            # Lightning created the iterator before this hook; workers have already drawn indices from
            # the old position, so start it again from the restored one
            iter(fetcher)

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        return {
            "seed": self.base_seed,
            "samplers": [sampler.state_dict() for _, sampler in training_samplers(trainer)],
            "batches_consumed": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        if "seed" in state_dict:
            self._restored_seed = int(state_dict["seed"])
