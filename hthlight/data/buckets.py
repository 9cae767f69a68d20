"""Aspect-ratio buckets (NovelAI 2022; PixArt-alpha, Chen et al. 2023) and a bucket batch sampler.

Images of many shapes are trained at their own aspect ratio: a table of bucket sizes
``(height, width)`` with areas close to ``base_size**2`` and sides multiple of ``divisor`` is
generated for a base size (PixArt's 256/512/1024 tables use ``divisor = base_size / 16``);
each image goes to the bucket of nearest aspect ratio (in log space) and is resized so it
covers the bucket, then centre-cropped to it. :class:`BucketBatchSampler` builds batches from
one bucket each, so a batch stacks into one tensor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hthlight.data.loader_options import worker_options
from hthlight.data.resumable import run_seed
from hthlight.errors import ConfigError


def bucket_table(base_size: int, divisor: int | None = None, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Bucket sizes ``(height, width)``, sorted by aspect ratio ``height / width``.

    For every height that is a multiple of ``divisor``, the width is the multiple of
    ``divisor`` closest to ``base_size**2 / height``; pairs whose ratio lies outside
    ``[1 / max_ratio, max_ratio]`` are dropped, and the table is made symmetric (the
    transpose of every bucket is a bucket). ``(base_size, base_size)`` is always present.
    """
    divisor = divisor or max(1, base_size // 16)
    if base_size < 1 or divisor < 1 or base_size % divisor:
        raise ConfigError(f"bucket base_size {base_size} must be a positive multiple of the bucket divisor {divisor}")
    if max_ratio < 1.0:
        raise ConfigError(f"max aspect ratio must be >= 1 (e.g. 4.0 for 1:4 .. 4:1), got {max_ratio}")
    area = base_size * base_size
    sizes: set[tuple[int, int]] = set()
    height = divisor
    while height <= base_size * max_ratio + divisor:
        width = max(divisor, divisor * round(area / height / divisor))
        if 1 / max_ratio - 1e-9 <= height / width <= max_ratio + 1e-9:
            sizes.update({(height, width), (width, height)})
        height += divisor
    sizes.add((base_size, base_size))
    return sorted(sizes, key=lambda hw: (hw[0] / hw[1], hw[0]))


def nearest_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest to ``height / width`` (in log space)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    ratio = math.log(height / width)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - ratio), i))


def resize_crop_size(height: int, width: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """Size to resize an image to so it covers ``bucket``; a centre crop to ``bucket`` follows."""
    scale = max(bucket[0] / height, bucket[1] / width)
    return max(bucket[0], round(height * scale)), max(bucket[1], round(width * scale))


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each from a single bucket; distributed, seeded and resumable.

    Per epoch, the indices of every bucket are shuffled (seeded by ``seed + epoch``), cut into
    batches of ``batch_size`` and the batches of all buckets are shuffled together. Every rank
    computes the same global list and takes every ``num_replicas``-th batch from ``rank`` on,
    so shards are disjoint. The number of batches is made a multiple of ``num_replicas``:
    with ``drop_last=False`` (the default) by splitting the largest batches in two, so every
    sample is served exactly once per epoch over all ranks (some batches are smaller); with
    ``drop_last=True`` by dropping each bucket's incomplete batch and then the surplus
    batches (every batch is full; a few samples wait for another epoch).

    Resuming: ``state_dict()`` holds the epoch and the number of batches this rank has
    taken from the current epoch's iterator; after ``load_state_dict`` the next iteration
    yields exactly the remaining batches of that epoch, then later epochs start from 0.
    Call ``set_epoch`` (Lightning does) before every epoch.

    Args:
        bucket_ids: Bucket of each dataset index (length = dataset size).
        batch_size: Samples per batch (the largest batch).
        num_replicas: Number of ranks (None: torch.distributed's world size, else 1).
        rank: This rank (None: torch.distributed's rank, else 0).
        shuffle: Shuffle within buckets and across batches; False serves buckets in order.
        seed: Base seed, identical on all ranks (None: the run's ``seed_everything``).
        drop_last: See above.
    """

    def __init__(
        self,
        bucket_ids: Sequence[int],
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        num_replicas, rank = _distributed_defaults(num_replicas, rank)
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in 0..{num_replicas - 1}, got {rank}")
        self.bucket_ids = [int(b) for b in bucket_ids]
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = run_seed() if seed is None else seed
        self.drop_last = drop_last
        self.epoch = 0
        self.sampler = EpochForwarder(self)  # Lightning calls set_epoch on batch_sampler.sampler only
        self._start = 0  # batches of the current epoch already taken (set by load_state_dict)
        self._taken = 0
        self._by_bucket: dict[int, list[int]] = {}
        for index, bucket in enumerate(self.bucket_ids):
            self._by_bucket.setdefault(bucket, []).append(index)
        self._num_batches = len(self.global_batches(0))  # the same for every epoch
        if self._num_batches == 0:
            raise ConfigError(
                f"{len(self.bucket_ids)} sample(s) make no batch for {num_replicas} rank(s) with batch_size "
                f"{batch_size} and drop_last={drop_last}; use fewer ranks or a smaller batch"
            )

    # ------------------------------------------------------------------ batches
    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` over all ranks, in serving order (identical on every rank)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        batches: list[list[int]] = []
        for bucket in sorted(self._by_bucket):
            indices = self._by_bucket[bucket]
            if self.shuffle:
                indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return self._balance(batches)

    def _balance(self, batches: list[list[int]]) -> list[list[int]]:
        """Make the number of batches a multiple of ``num_replicas`` (split or drop, see the class)."""
        if self.drop_last:
            return batches[: len(batches) - len(batches) % self.num_replicas]
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
            batch = batches[largest]
            if len(batch) < 2:
                return []  # fewer samples than ranks: cannot give every rank a batch
            half = (len(batch) + 1) // 2
            batches[largest : largest + 1] = [batch[:half], batch[half:]]
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``."""
        return self.global_batches(epoch)[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        self._taken = self._start  # the position now; the epoch and start are read at the first next()
        return self._serve()

    def _serve(self) -> Iterator[list[int]]:
        # Lazy: Lightning creates the iterator before it restores the position (ExactResume) and sets the epoch.
        start, self._start = self._start, 0
        self._taken = start
        for batch in self.rank_batches(self.epoch)[start:]:
            self._taken += 1
            yield batch

    def __len__(self) -> int:
        return self._num_batches // self.num_replicas

    # ------------------------------------------------------------------ epochs and resuming
    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (the same on every rank)."""
        if epoch != self.epoch:
            self._start = self._taken = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches this rank already took from it (the iterator's position)."""
        return {
            "epoch": self.epoch,
            "position": self._taken,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
            "num_samples": len(self.bucket_ids),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue ``state``'s epoch on the next iteration, after the batches already consumed.

        The position is ``state["batches_consumed"]`` (set by
        :class:`hthlight.callbacks.resume.ExactResume`, which counts what the training loop
        consumed) or else ``state["position"]``. If the number of ranks, the batch size or
        the data changed, the epoch's batches differ: it restarts from its beginning (warned).
        """
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        expected = {
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
            "num_samples": len(self.bucket_ids),
        }
        changed = {k: (state[k], v) for k, v in expected.items() if k in state and state[k] != v}
        if changed:
            what = ", ".join(f"{k} was {old}, now {new}" for k, (old, new) in changed.items())
            warnings.warn(f"bucket sampler: {what}; epoch {self.epoch} restarts from its beginning", stacklevel=2)
            self._start = self._taken = 0
            return
        consumed = state.get("batches_consumed")
        self._start = self._taken = int(state.get("position", 0) if consumed is None else consumed)


class DeferredDataLoader(DataLoader):
    """A DataLoader whose iterator starts (draws batches, starts workers) at the first ``next()``.

    Lightning calls ``iter()`` on the training loader before it restores a resumed run's data
    position (``ExactResume.on_train_start``) and before ``set_epoch``; worker processes
    would already have been handed the batches of the wrong epoch and position.
    """

    def __iter__(self) -> Iterator[Any]:
        return _Deferred(super().__iter__)


class _Deferred:
    def __init__(self, start: Callable[[], Iterator[Any]]) -> None:
        self._start = start
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> _Deferred:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = self._start()
        return next(self._iterator)


class EpochForwarder:
    """``batch_sampler.sampler`` stand-in: Lightning's ``set_epoch`` on it reaches the batch sampler."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialized else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialized else 0
    if num_replicas < 1:
        raise ConfigError(f"num_replicas must be >= 1, got {num_replicas}")
    return num_replicas, rank


def bucket_loader(
    dataset: Dataset,
    bucket_ids: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    trainer: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose batches come from a :class:`BucketBatchSampler`.

    With a Lightning ``trainer`` the ranks come from ``trainer.distributed_sampler_kwargs``,
    and the trainer is told not to put a ``DistributedSampler`` in (the bucket sampler shards
    by itself; Lightning cannot re-wrap a custom batch sampler).
    """
    num_replicas = rank = None
    if trainer is not None:
        kwargs = trainer.distributed_sampler_kwargs or {}
        num_replicas, rank = kwargs.get("num_replicas", 1), kwargs.get("rank", 0)
        connector = getattr(trainer, "_accelerator_connector", None)
        if connector is not None and hasattr(connector, "use_distributed_sampler"):
            connector.use_distributed_sampler = False
    sampler = BucketBatchSampler(
        bucket_ids, batch_size, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DeferredDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        **worker_options(num_workers),
    )
