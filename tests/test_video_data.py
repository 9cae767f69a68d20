"""VideoDataModule: frame selection, decoding through decord, bad files, grouped batches, mixing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hthlight.data import DigitsDataModule, MixedDataModule, VideoDataModule
from hthlight.data.grouped_sampler import GroupedBatchSampler, SampleKey
from hthlight.data.health import SkippedSample
from hthlight.data.video import VideoClipDataset, frame_indices, read_manifest
from hthlight.data.video_io import write_mp4
from hthlight.errors import ConfigError, DataError

decord = pytest.importorskip("decord")


def ramp_video(path: Path, frames: int, fps: float, height: int = 32, width: int = 32) -> Path:
    """Flat grey frames whose brightness encodes the frame index: frame i has value 8 * i."""
    pixels = np.zeros((frames, height, width, 3), np.uint8)
    for i in range(frames):
        pixels[i] = 8 * i
    return write_mp4(path, pixels, fps, crf=4)


def brightness(clip_CTHW: torch.Tensor) -> list[int]:
    """Per-frame mean value back on 0..255."""
    return [round(float(v)) for v in ((clip_CTHW.mean(dim=(0, 2, 3)) + 1) * 127.5)]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    ramp_video(root / "ramp30.mp4", 30, 30)  # 1 s at 30 fps
    ramp_video(root / "ramp25.mp4", 25, 25)
    ramp_video(root / "short.mp4", 3, 10)
    ramp_video(root / "odd.mp4", 6, 10, height=27, width=35)
    data = (root / "ramp30.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "notes.mp4").write_text("this is not a video\n")
    (root / "empty.mp4").write_bytes(b"")
    return root


def test_frame_indices_stride_fps_and_crops():
    assert frame_indices(30, 30.0, 4, stride=3, crop="center") == [10, 13, 16, 19]
    assert frame_indices(30, 30.0, 4, fps=10.0, crop="center") == [10, 13, 16, 19]
    # 25 fps sampled at 10 fps: the frame shown at k / 10 s is floor(2.5 k)
    assert frame_indices(25, 25.0, 4, fps=10.0, crop="center") == [8 + 0, 8 + 2, 8 + 5, 8 + 7]
    # a 0.4 s .. 0.8 s segment of a 25 fps file holds frames 10..19
    assert frame_indices(25, 25.0, 3, stride=4, start=0.4, end=0.8, crop="center") == [10, 14, 18]
    draws = {
        tuple(frame_indices(30, 30.0, 4, stride=3, crop="random", generator=torch.Generator().manual_seed(s)))
        for s in range(40)
    }
    assert len(draws) > 5 and all(d[0] >= 0 and d[-1] <= 29 for d in draws)
    # short segments
    assert frame_indices(3, 10.0, 5, stride=1, short="skip") is None
    assert frame_indices(3, 10.0, 5, stride=1, short="loop") == [0, 1, 2, 0, 1]
    assert frame_indices(3, 10.0, 5, stride=1, short="pad") == [0, 1, 2, 2, 2]
    assert frame_indices(0, 10.0, 2) is None


def test_fps_sampling_matches_known_timestamps(videos):
    dataset = VideoClipDataset(
        read_manifest(write_manifest(videos / "fps.jsonl", [{"path": "ramp30.mp4", "label": 1}])),
        num_frames=4,
        size=16,
        fps=10.0,
        temporal_crop="center",
    )
    item = dataset[0]
    assert item["image"].shape == (3, 4, 16, 16) and item["label"] == 1
    # centre window of frames 10, 13, 16, 19 = timestamps 1/3 s + k / 10 s
    reader = decord.VideoReader(str(videos / "ramp30.mp4"))
    starts = reader.get_frame_timestamp([10, 13, 16, 19])[:, 0]
    np.testing.assert_allclose(starts, 1 / 3 + np.arange(4) / 10, atol=1e-3)
    assert brightness(item["image"]) == pytest.approx([80, 104, 128, 152], abs=2)


@pytest.mark.parametrize(("policy", "expected"), [("loop", [0, 8, 16, 0, 8]), ("pad", [0, 8, 16, 16, 16])])
def test_short_clips_loop_and_pad(videos, policy, expected):
    records = read_manifest(write_manifest(videos / "short.jsonl", [{"path": "short.mp4", "caption": "c"}]))
    item = VideoClipDataset(records, num_frames=5, size=8, short_clips=policy)[0]
    assert item["image"].shape == (3, 5, 8, 8) and item["caption"] == "c"
    assert brightness(item["image"]) == pytest.approx(expected, abs=2)
    skipped = VideoClipDataset(records, num_frames=5, size=8, short_clips="skip")[0]
    assert isinstance(skipped, SkippedSample) and "shorter" in skipped.reason


def test_odd_source_sizes_resize_and_crop(videos):
    records = read_manifest(write_manifest(videos / "odd.jsonl", [{"path": "odd.mp4", "label": 0}]))
    square = VideoClipDataset(records, num_frames=6, size=9, channels=1)[0]["image"]
    assert square.shape == (1, 6, 9, 9)
    wide = VideoClipDataset(records, num_frames=2, size=(12, 20), stride=2, temporal_crop="center")[0]["image"]
    assert wide.shape == (3, 2, 12, 20)
    assert brightness(wide) == pytest.approx([8, 24], abs=3)  # frames 1 and 3 of the centred window
    assert float(square.min()) >= -1 and float(square.max()) <= 1


def bad_manifest(videos: Path) -> Path:
    rows = [
        {"path": "ramp30.mp4", "label": 0},
        {"path": "truncated.mp4", "label": 1},
        {"path": "ramp25.mp4", "label": 2},
        {"path": "notes.mp4", "label": 3},
        {"path": "empty.mp4", "label": 4},
        {"path": "missing.mp4", "label": 5},
    ]
    return write_manifest(videos / "bad.jsonl", rows)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_files_are_skipped_and_counted(videos, num_workers):
    data = VideoDataModule(
        str(bad_manifest(videos)), num_frames=4, size=8, stride=2, batch_size=3, num_workers=num_workers
    )
    loader = data.train_dataloader()
    loader.batch_sampler.drop_last = False
    batches = list(loader)
    skipped = sorted(Path(p).name for b in batches for p in b["skipped"])
    assert skipped == ["empty.mp4", "missing.mp4", "notes.mp4", "truncated.mp4"]
    labels = sorted(int(x) for b in batches if "image" in b for x in b["label"])
    assert labels == [0, 2]
    assert all(b["image"].shape[1:] == (3, 4, 8, 8) for b in batches if "image" in b)


def test_strict_mode_names_the_file(videos):
    data = VideoDataModule(str(bad_manifest(videos)), num_frames=4, size=8, batch_size=6, strict=True)
    with pytest.raises(DataError, match=r"cannot read video '.*(truncated|notes|empty|missing)\.mp4'"):
        list(data.train_dataloader())
    dataset = data.train_set
    with pytest.raises(DataError, match=r"notes\.mp4"):
        dataset[3]


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")
    bad = write_manifest(tmp_path / "m.jsonl", [{"path": "a.mp4", "label": 1}, {"path": "b.mp4"}])
    with pytest.raises(DataError, match="record 2 has no 'label'"):
        read_manifest(bad)
    (tmp_path / "x.jsonl").write_text('{"path": "a.mp4"}\n{oops\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: not valid JSON"):
        read_manifest(tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="either fps"):
        VideoDataModule(str(bad), fps=8, stride=2)


def test_grouped_sampler_deterministic_resumable_and_never_mixes():
    groups = [0] * 10 + [1] * 7
    sampler = GroupedBatchSampler(batch_size=3, groups=groups, group_batch_sizes={1: 2}, seed=5, drop_last=True)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert all(len({groups[k.index] for k in b}) == 1 for b in batches)
    assert all(k.epoch == 2 for b in batches for k in b)
    again = GroupedBatchSampler(batch_size=3, groups=groups, group_batch_sizes={1: 2}, seed=5, drop_last=True)
    again.set_epoch(2)
    assert list(again) == batches
    sampler.set_epoch(3)
    assert list(sampler) != batches  # a new order each epoch
    # resume: stop after 2 batches of epoch 2, restore into a fresh sampler, get the rest
    sampler.set_epoch(2)
    iterator = iter(sampler)
    head = [next(iterator), next(iterator)]
    state = sampler.state_dict()
    assert state == {"seed": 5, "epoch": 2, "position": 2}
    fresh = GroupedBatchSampler(batch_size=3, groups=groups, group_batch_sizes={1: 2}, seed=5, drop_last=True)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # what Lightning calls at the epoch start
    assert head + list(fresh) == batches
    assert len(list(fresh)) == len(batches)  # the next pass is a whole epoch again
    # two ranks split the batches evenly without overlap
    ranks = [list(GroupedBatchSampler(batch_size=3, groups=groups, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [k.index for r in ranks for b in r for k in b]
    assert len(seen) == len(set(seen))


def test_random_temporal_crop_depends_on_epoch_and_index_only(videos):
    records = read_manifest(write_manifest(videos / "rand.jsonl", [{"path": "ramp30.mp4", "label": 0}]))
    dataset = VideoClipDataset(records, num_frames=2, size=8, stride=1, temporal_crop="random", seed=3)
    a, b = dataset[SampleKey(0, 0)]["image"], dataset[SampleKey(0, 0)]["image"]
    assert torch.equal(a, b)
    firsts = {brightness(dataset[SampleKey(0, e)]["image"])[0] for e in range(8)}
    assert len(firsts) > 1


def test_mixed_batches_never_mix_shapes(videos):
    video = VideoDataModule(
        str(write_manifest(videos / "mix.jsonl", [{"path": "ramp30.mp4", "label": 0}] * 6)),
        num_frames=4,
        size=8,
        stride=2,
        channels=1,
        batch_size=2,
    )
    mixed = MixedDataModule(video, DigitsDataModule(image_size=8, batch_size=4, val_fraction=0.5), image_batch_size=64)
    mixed.setup("fit")
    frames = []
    for i, batch in enumerate(mixed.train_dataloader()):
        frames.append(batch["image"].shape[2])
        assert batch["image"].ndim == 5 and batch["label"].shape[0] == batch["image"].shape[0]
        if i > 20:
            break
    assert set(frames) == {1, 4}
    assert mixed.num_frames == 4 and mixed.channels == 1 and mixed.image_size == 8
