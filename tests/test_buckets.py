"""Aspect-ratio bucket tables and the bucket batch sampler's invariants."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage, TrainerFn

from hthlight.data.buckets import (
    BucketBatchSampler,
    bucket_loader,
    bucket_table,
    nearest_bucket,
    resize_crop_size,
)
from hthlight.errors import ConfigError


@pytest.mark.parametrize(("base", "divisor"), [(256, 16), (512, 32), (1024, 64)])
def test_bucket_table_sizes_areas_and_ratios(base, divisor):
    table = bucket_table(base)
    assert (base, base) in table
    assert len(table) == len(set(table)) > 20
    for h, w in table:
        assert h % divisor == 0 and w % divisor == 0
        assert 0.25 - 1e-9 <= h / w <= 4.0 + 1e-9
        assert abs(h * w / base**2 - 1) < 0.2  # areas close to base^2
        assert (w, h) in table  # symmetric
    ratios = [h / w for h, w in table]
    assert ratios == sorted(ratios)


def test_bucket_table_matches_pixart_entries_at_1024():
    table = bucket_table(1024)
    for entry in [(1024, 1024), (512, 2048), (768, 1344), (1344, 768), (896, 1152), (960, 1088)]:
        assert entry in table


def test_bucket_table_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="multiple of the bucket divisor"):
        bucket_table(100, divisor=16)
    with pytest.raises(ConfigError, match="max aspect ratio must be >= 1"):
        bucket_table(256, max_ratio=0.5)


def test_nearest_bucket_and_cover_crop_size():
    table = [(256, 256), (192, 320), (320, 192)]
    assert table[nearest_bucket(100, 100, table)] == (256, 256)
    assert table[nearest_bucket(600, 1000, table)] == (192, 320)
    assert table[nearest_bucket(1000, 600, table)] == (320, 192)
    h, w = resize_crop_size(600, 1000, (192, 320))
    assert h >= 192 and w >= 320 and (h == 192 or w == 320)
    assert math.isclose(h / w, 0.6, rel_tol=0.01)


def _buckets(n: int = 103, buckets: int = 4) -> list[int]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, buckets, (n,), generator=generator).tolist()


def _epoch(samplers, epoch):
    out = []
    for sampler in samplers:
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_sample_once_per_epoch_over_ranks_no_mixing_equal_counts(world):
    bucket_ids = _buckets()
    samplers = [BucketBatchSampler(bucket_ids, 8, num_replicas=world, rank=r, seed=5) for r in range(world)]
    for epoch in range(2):
        per_rank = _epoch(samplers, epoch)
        assert len({len(batches) for batches in per_rank}) == 1  # equal batch counts
        assert all(len(batches) == len(samplers[0]) for batches in per_rank)
        served = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(served) == list(range(len(bucket_ids)))  # exactly once, disjoint shards
        for batches in per_rank:
            for batch in batches:
                assert 1 <= len(batch) <= 8
                assert len({bucket_ids[i] for i in batch}) == 1  # never mixes buckets


def test_drop_last_gives_full_batches_and_equal_counts():
    bucket_ids = _buckets()
    samplers = [BucketBatchSampler(bucket_ids, 8, num_replicas=3, rank=r, drop_last=True) for r in range(3)]
    per_rank = _epoch(samplers, 0)
    assert len({len(b) for b in per_rank}) == 1
    served = [i for batches in per_rank for batch in batches for i in batch]
    assert all(len(batch) == 8 for batches in per_rank for batch in batches)
    assert len(served) == len(set(served))


def test_order_is_deterministic_given_seed_and_epoch():
    bucket_ids = _buckets()
    a, b = BucketBatchSampler(bucket_ids, 8, seed=3), BucketBatchSampler(bucket_ids, 8, seed=3)
    assert _epoch([a], 0) == _epoch([b], 0)
    assert _epoch([a], 1) == _epoch([b], 1)
    assert _epoch([a], 0) != _epoch([a], 1)  # a new permutation each epoch
    assert _epoch([a], 0) != _epoch([BucketBatchSampler(bucket_ids, 8, seed=4)], 0)


def test_unshuffled_serves_buckets_in_order():
    sampler = BucketBatchSampler([1, 0, 1, 0, 0], 2, shuffle=False)
    assert list(sampler) == [[1, 3], [4], [0, 2]]


@pytest.mark.parametrize(("world", "stop"), [(1, 0), (1, 5), (2, 3), (3, 1)])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(world, stop):
    bucket_ids = _buckets()
    for rank in range(world):
        sampler = BucketBatchSampler(bucket_ids, 8, num_replicas=world, rank=rank, seed=9)
        sampler.set_epoch(2)
        full = list(sampler)
        iterator = iter(sampler)
        taken = [next(iterator) for _ in range(stop)]
        state = sampler.state_dict()
        assert state["epoch"] == 2 and state["position"] == stop
        resumed = BucketBatchSampler(bucket_ids, 8, num_replicas=world, rank=rank, seed=9)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # Lightning calls it again at the start of the resumed epoch
        rest = list(resumed)
        assert taken + rest == full
        resumed.set_epoch(3)  # the next epoch is whole again
        assert len(list(resumed)) == len(full)


def test_resume_uses_the_consumed_count_of_exact_resume():
    sampler = BucketBatchSampler(_buckets(), 8, seed=2)
    sampler.set_epoch(1)
    full = list(sampler)
    state = {**sampler.state_dict(), "position": len(full), "batches_consumed": 4, "samples_consumed": 32}
    resumed = BucketBatchSampler(_buckets(), 8, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert list(resumed) == full[4:]


def test_resume_with_another_world_size_restarts_the_epoch():
    state = {**BucketBatchSampler(_buckets(), 8, num_replicas=2, rank=0).state_dict(), "position": 3}
    sampler = BucketBatchSampler(_buckets(), 8, seed=0)
    with pytest.warns(UserWarning, match="num_replicas was 2, now 1; epoch 0 restarts"):
        sampler.load_state_dict(state)
    assert len(list(sampler)) == len(sampler)


def test_too_few_samples_for_the_ranks_is_a_config_error():
    with pytest.raises(ConfigError, match="make no batch for 4 rank"):
        BucketBatchSampler([0, 0, 1], 2, num_replicas=4, rank=0)


def test_lightning_does_not_replace_the_bucket_sampler_under_ddp():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    dataset = list(range(20))
    loader = bucket_loader(dataset, [i % 3 for i in range(20)], 4, shuffle=True, trainer=trainer)
    assert loader.batch_sampler.num_replicas == 2 and loader.batch_sampler.rank == 0
    from lightning.pytorch.trainer.connectors.data_connector import _process_dataloader

    trainer.state.fn = TrainerFn.FITTING
    processed = _process_dataloader(trainer, TrainerFn.FITTING, RunningStage.TRAINING, loader)
    assert processed.batch_sampler is loader.batch_sampler
