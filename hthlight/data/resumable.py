"""Resumable sampling: a run resumed mid-epoch sees exactly the samples the interrupted run had left.

The protocol (any sampler or batch sampler of a training ``DataLoader`` may implement it;
:class:`hthlight.callbacks.resume.ExactResume` drives it):

* ``set_epoch(epoch)``: the order of an epoch depends only on the seed and ``epoch``;
* ``state_dict() -> dict``: what defines the order (seed, epoch, ...), saved in checkpoints;
* ``load_state_dict(state)``: restore it; ``state["samples_consumed"]`` (samples of this rank)
  and ``state["batches_consumed"]`` (batches of this rank) give how far the *training loop* got
  in ``state["epoch"]``: the next ``__iter__`` for that epoch starts after them. The trainer
  counts consumption, not the sampler, because loaders prefetch ahead of the training step.

:class:`ResumableSampler` implements it for map-style data sets, shuffled per epoch and split
across ranks like ``DistributedSampler`` (which it subclasses, so Lightning does not replace it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

#: keys ExactResume adds to a sampler's state when loading it
CONSUMED_KEYS = ("samples_consumed", "batches_consumed")


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def is_resumable(sampler: Any) -> bool:
    """Whether ``sampler`` implements the protocol above."""
    return all(callable(getattr(sampler, name, None)) for name in ("set_epoch", "state_dict", "load_state_dict"))


class ResumableSampler(DistributedSampler):
    """Per-epoch shuffled indices, this rank's share, that can start mid-epoch.

    Epoch ``e``'s order is ``randperm(len(dataset), generator=seed + e)``, padded by wrapping (or
    cut with ``drop_last``) to a multiple of ``num_replicas * batch_size``; rank ``r`` of ``n``
    takes the batch-sized blocks ``r, r + n, r + 2n, ...``. So optimizer step ``k`` trains on the
    same samples (block ``k n + r`` on rank ``r``) however the global batch is split over ranks
    and gradient-accumulation micro-batches. Ranks default to the process group (1 / 0 without).

    Args:
        dataset: a sized data set.
        shuffle: shuffle per epoch (else in order).
        seed: base seed of the shuffle (default: the run's seed, :func:`run_seed`).
        batch_size: the loader's batch size (the block size of the split; 1: sample-wise like
            ``DistributedSampler``).
        drop_last: drop the tail that does not fill every rank's last block (else pad by wrapping).
        num_replicas: number of ranks (default: world size).
        rank: this rank (default: global rank).
    """

    def __init__(
        self,
        dataset: Dataset,
        shuffle: bool = True,
        seed: int | None = None,
        batch_size: int = 1,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        seed = run_seed() if seed is None else seed
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        block = num_replicas * batch_size
        n = len(dataset)  # type: ignore[arg-type]
        self.total_size = (n // block if drop_last else -(-n // block)) * block
        self.num_samples = self.total_size // num_replicas
        self._start = 0  # samples of this rank to skip in the next iteration of self.epoch

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, from the beginning."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            indices = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            indices = list(range(n))
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            pad = self.total_size - len(indices)
            indices += (indices * (pad // max(1, len(indices)) + 1))[:pad]
        blocks_BN = torch.tensor(indices, dtype=torch.long).view(-1, self.num_replicas, self.batch_size)
        return blocks_BN[:, self.rank].flatten().tolist()

    def __iter__(self) -> Iterator[int]:
        # a generator: epoch and position are read at the first next(), after Lightning (which
        # creates the iterator early) set the epoch and ExactResume restored the position
        start, self._start = self._start, 0
        yield from self.order(self.epoch)[start:]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
        split = (int(state.get("num_replicas", self.num_replicas)), int(state.get("batch_size", self.batch_size)))
        if split != (self.num_replicas, self.batch_size):
            # another world size or batch splits the epoch differently: restart the epoch rather than guess
            self._start = 0
            return
        self._start = int(state.get("samples_consumed", 0))
