"""A batch sampler that never mixes sample shapes inside a batch, deterministic per epoch.

Images (one-frame clips) and videos, or videos of different lengths, cannot be stacked in
one tensor; HTH's "180p T2V" stage trains on a mixture of both (Hong et al. 2025, sec. 4).
:class:`GroupedBatchSampler` gives every sample a group (its shape), cuts each group into
batches of that group's size and interleaves the batches in an order drawn from
``(seed, epoch)`` only. It yields :class:`SampleKey` ``(index, epoch)`` pairs so datasets
can draw per-sample randomness (e.g. a random temporal crop) from ``(seed, epoch, index)``,
independent of worker assignment.

Resume protocol (``set_epoch`` / ``state_dict`` / ``load_state_dict``, see
:mod:`hthlight.data.resumable`): ``state_dict()`` is ``{"seed", "epoch", "position"}`` where
``position`` counts the batches this sampler has yielded in the current epoch. A DataLoader
prefetches batches, so exact-resume code passes the batches the training loop consumed as
``batches_consumed`` (``ExactResume`` does); ``load_state_dict`` makes the next ``__iter__``
start at that batch of that epoch (later epochs start at 0).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import BatchSampler, Sampler


class SampleKey(NamedTuple):
    """What a grouped batch sampler yields per sample: the dataset index and the epoch."""

    index: int
    epoch: int


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one sample in one epoch (same on every worker and after resume)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_000_007 + index)


def as_index(key: int | SampleKey | Sequence[int]) -> tuple[int, int]:
    """``(index, epoch)`` from a :class:`SampleKey` (or a plain index, epoch 0)."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), 0


class _EpochForwarder(Sampler):
    """Exposed as ``batch_sampler.sampler``: Lightning calls ``set_epoch`` there each epoch."""

    def __init__(self, owner: GroupedBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (key.index for batch in self.owner for key in batch)

    def __len__(self) -> int:
        return sum(len(b) for b in self.owner._epoch_batches(self.owner.epoch))


class GroupedBatchSampler(BatchSampler):
    """Batches of one group each, in an order fixed by ``(seed, epoch)``.

    Args:
        sampler: ignored except under distributed training, where Lightning passes a
            distributed sampler whose ``num_replicas``/``rank`` this sampler adopts.
        batch_size: default batch size of every group.
        drop_last: drop each group's last incomplete batch (kept if it is the group's only one).
        groups: group id of every dataset index (e.g. 0 for videos, 1 for images).
        group_batch_sizes: per-group batch sizes overriding ``batch_size``.
        shuffle: shuffle within groups and the order of batches; False keeps index order.
        seed: base seed of the per-epoch orders.
        num_replicas: distributed world size (default: from ``sampler`` or 1).
        rank: this process's rank (default: from ``sampler`` or 0). Rank r takes batches
            r, r + R, ...; every rank gets the same number of batches.
    """

    def __init__(
        self,
        sampler: Any = None,
        batch_size: int = 1,
        drop_last: bool = False,
        groups: Sequence[int] = (),
        group_batch_sizes: Mapping[int, int] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.groups = [int(g) for g in groups]
        self.group_batch_sizes = {int(k): int(v) for k, v in (group_batch_sizes or {}).items()}
        if any(v < 1 for v in self.group_batch_sizes.values()):
            raise ValueError(f"group batch sizes must be >= 1, got {self.group_batch_sizes}")
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas or getattr(sampler, "num_replicas", None) or 1
        self.rank = rank if rank is not None else getattr(sampler, "rank", 0)
        self.sampler = _EpochForwarder(self)
        self.epoch = 0
        self._start = 0  # first batch of the next __iter__ (set by load_state_dict)
        self._position = 0

    # ----------------------------------------------------------------- resume protocol
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = self._position = 0
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self._position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch = int(state["epoch"])
        # ExactResume (hthlight.data.resumable) passes the batches the training loop consumed
        consumed = state.get("batches_consumed")
        self._start = self._position = int(consumed if consumed is not None else state.get("position", 0))

    # ----------------------------------------------------------------- batches
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        members: dict[int, list[int]] = {}
        for index, group in enumerate(self.groups):
            members.setdefault(group, []).append(index)
        batches: list[list[int]] = []
        for group in sorted(members):
            indices = members[group]
            if self.shuffle:
                order = torch.randperm(len(indices), generator=sample_generator(self.seed, epoch, -1 - group))
                indices = [indices[i] for i in order.tolist()]
            size = self.group_batch_sizes.get(group, self.batch_size)
            chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
            if self.drop_last and len(chunks) > 1 and len(chunks[-1]) < size:
                chunks.pop()
            batches.extend(chunks)
        if self.shuffle:
            order = torch.randperm(len(batches), generator=sample_generator(self.seed, epoch, -1_000_000))
            batches = [batches[i] for i in order.tolist()]
        if self.num_replicas > 1:
            per_rank = len(batches) // self.num_replicas
            batches = batches[self.rank :: self.num_replicas][:per_rank]
        return batches

    def __iter__(self) -> Iterator[list[SampleKey]]:
        epoch = self.epoch
        batches = self._epoch_batches(epoch)
        start, self._start = self._start, 0
        for position in range(start, len(batches)):
            self._position = position + 1
            yield [SampleKey(i, epoch) for i in batches[position]]

    def __len__(self) -> int:
        return len(self._epoch_batches(self.epoch))
