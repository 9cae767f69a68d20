"""Data modules, sampling requests and the skipping of unreadable images."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from hthlight.callbacks.skipped import SkippedSamplesReporter
from hthlight.data import DigitsDataModule, ImageFolderDataModule, SamplingRequests
from hthlight.data.digits import load_digits_images
from hthlight.data.health import SkippedSample, collate_skipping
from hthlight.data.requests import predict_loader
from hthlight.errors import ConfigError, DataError

# ---------------------------------------------------------------- sampling requests


def _collect(loader) -> dict[str, list[int]]:
    keys = ("label", "seed", "index")
    out: dict[str, list[int]] = {k: [] for k in keys}
    for batch in loader:
        for k in keys:
            assert batch[k].dtype == torch.long and batch[k].ndim == 1
            out[k] += batch[k].tolist()
    return out


def test_requests_are_class_major_with_seed_from_index():
    requests = SamplingRequests(num_classes=3, samples_per_class=2, seed=100)
    got = _collect(predict_loader(requests, batch_size=4))
    assert got["label"] == [0, 0, 1, 1, 2, 2]
    assert got["index"] == [0, 1, 2, 3, 4, 5]
    assert got["seed"] == [100 + i for i in got["index"]]


def test_requests_do_not_depend_on_batch_size():
    requests = SamplingRequests(num_classes=4, samples_per_class=3, seed=7)
    assert _collect(predict_loader(requests, 1)) == _collect(predict_loader(requests, 5))


def test_requests_for_a_class_subset_keep_their_seeds():
    everything = _collect(predict_loader(SamplingRequests(5, 2, seed=3), 10))
    subset = _collect(predict_loader(SamplingRequests(5, 2, seed=3, classes=[4, 1]), 10))
    assert subset["label"] == [1, 1, 4, 4]
    for label, seed, index in zip(subset["label"], subset["seed"], subset["index"]):
        pos = everything["index"].index(index)
        assert (everything["label"][pos], everything["seed"][pos]) == (label, seed)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": [3]}, "out of range; allowed classes are 0..2"),
        ({"classes": [1, 1]}, "duplicates"),
        ({"classes": []}, "empty"),
        ({"samples_per_class": 0}, "samples_per_class must be >= 1"),
    ],
)
def test_requests_reject_bad_arguments(kwargs, message):
    args = {"num_classes": 3, "samples_per_class": 2, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(message)):
        SamplingRequests(**args)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(image_size=16, batch_size=64, val_fraction=0.1, split_seed=0)
    dm.setup("fit")
    return dm


def test_digits_batches_have_the_declared_shape_and_range(digits):
    assert (digits.image_size, digits.channels, digits.num_classes) == (16, 1, 10)
    batch = next(iter(digits.train_dataloader()))
    assert batch["image"].shape == (64, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (64,) and batch["label"].dtype == torch.long
    images = digits.train_set.images
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() > 0.9  # background and ink both present


def test_digits_split_is_stratified_and_complete(digits):
    train, val = digits.train_set.labels, digits.val_set.labels
    assert len(train) + len(val) == 1797
    assert 170 <= len(val) <= 190
    assert set(train.tolist()) == set(val.tolist()) == set(range(10))
    counts = torch.bincount(val, minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19
    loader = digits.train_dataloader()
    assert loader.drop_last and len(loader) == len(train) // 64


def test_digits_split_is_deterministic(digits):
    again = DigitsDataModule(image_size=16, val_fraction=0.1, split_seed=0)
    again.setup("fit")
    assert torch.equal(again.val_set.images, digits.val_set.images)
    other = DigitsDataModule(image_size=16, val_fraction=0.1, split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_set.images, digits.val_set.images)


def test_load_digits_images_maps_0_16_to_unit_range():
    images8, labels = load_digits_images(8)
    assert images8.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    levels = (images8 + 1.0) / 2.0 * 16.0
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    images16, _ = load_digits_images(16)
    assert torch.equal(images16, load_digits_images(16)[0])
    # Upsampling keeps each image's mean ink (bilinear, half-pixel centres) up to border effects.
    assert torch.allclose(images16.mean(dim=(1, 2, 3)), images8.mean(dim=(1, 2, 3)), atol=0.05)


def test_digits_predict_loader_serves_requests():
    dm = DigitsDataModule(predict_samples_per_class=3, predict_seed=10, predict_classes=[5, 2], predict_batch_size=4)
    got = _collect(dm.predict_dataloader())
    assert got["label"] == [2, 2, 2, 5, 5, 5]
    assert got["index"] == [6, 7, 8, 15, 16, 17]
    assert got["seed"] == [10 + i for i in got["index"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 4}, "image_size must be an integer >= 8"),
        ({"val_fraction": 0.0}, "val_fraction must be strictly between 0 and 1"),
        ({"val_fraction": 1.0}, "val_fraction must be strictly between 0 and 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"predict_classes": [10]}, "allowed classes are 0..9"),
    ],
)
def test_digits_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DigitsDataModule(**kwargs)


# ---------------------------------------------------------------- image folder


def _write_image(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str | None = None) -> None:
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path: Path) -> dict[str, Path]:
    """root/cat: 3 good + 1 truncated PNG; root/dog: 2 good + 1 corrupt PNG; plus distractors."""
    root = tmp_path / "pets"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    _write_image(root / "cat" / "a.png", (20, 12))
    _write_image(root / "cat" / "b.JPG", (12, 20), fmt="JPEG")
    _write_image(root / "cat" / "c.bmp", (16, 16), mode="L")
    _write_image(root / "dog" / "d.webp", (10, 10), fmt="WEBP")
    _write_image(root / "dog" / "e.jpeg", (30, 14), fmt="JPEG")
    _write_image(root / "cat" / "full.png", (40, 40))
    truncated = root / "cat" / "truncated.png"
    data = (root / "cat" / "full.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (root / "cat" / "full.png").unlink()
    corrupt = root / "dog" / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(300))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return {"root": root, "truncated": truncated, "corrupt": corrupt}


def _all_items(dm: ImageFolderDataModule) -> list:
    return [ds[i] for ds in (dm.train_set, dm.val_set) for i in range(len(ds))]


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_reads_classes_and_resizes(folder, channels):
    dm = ImageFolderDataModule(root=str(folder["root"]), image_size=8, channels=channels, val_fraction=0.3)
    assert (dm.num_classes, dm.class_names, dm.channels, dm.image_size) == (2, ["cat", "dog"], channels, 8)
    assert len(dm.train_set) + len(dm.val_set) == 7 and len(dm.val_set) == 2
    items = _all_items(dm)
    good = [item for item in items if isinstance(item, dict)]
    bad = {item.path for item in items if isinstance(item, SkippedSample)}
    assert bad == {str(folder["truncated"]), str(folder["corrupt"])}
    assert len(good) == 5
    for item in good:
        assert item["image"].shape == (channels, 8, 8) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert sorted(item["label"].item() for item in good) == [0, 0, 0, 1, 1]


def test_collate_drops_bad_items_and_names_them():
    item = {"image": torch.zeros(1, 4, 4), "label": torch.tensor(1)}
    batch = collate_skipping([item, SkippedSample("x/bad.png", "broken"), None, item])
    assert batch["image"].shape == (2, 1, 4, 4) and batch["label"].tolist() == [1, 1]
    assert batch["skipped"] == ["x/bad.png", "<unknown>"]
    assert collate_skipping([item])["skipped"] == []
    assert collate_skipping([SkippedSample("x/bad.png", "broken")]) == {"skipped": ["x/bad.png"]}


def test_skipped_paths_travel_through_worker_processes(folder):
    # batch_size 5 = train size, so drop_last is off and every file is seen.
    dm = ImageFolderDataModule(root=str(folder["root"]), image_size=8, batch_size=5, val_fraction=0.3, num_workers=1)
    batches = [batch for loader in (dm.train_dataloader(), dm.val_dataloader()) for batch in loader]
    skipped = [path for batch in batches for path in batch["skipped"]]
    images = sum(len(batch["image"]) for batch in batches if "image" in batch)
    assert sorted(skipped) == sorted([str(folder["corrupt"]), str(folder["truncated"])])
    assert images == 5


class _Probe(L.LightningModule):
    """Records the keys of every batch its steps receive."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen_keys: list[set[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen_keys.append(set(batch))
        if "image" not in batch:
            return None
        return (self.weight * batch["image"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.seen_keys.append(set(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_reporter_counts_logs_and_warns_in_a_real_trainer(folder):
    dm = ImageFolderDataModule(root=str(folder["root"]), image_size=8, batch_size=5, val_fraction=0.3)
    reporter = SkippedSamplesReporter()
    module = _Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        callbacks=[reporter],
    )
    with pytest.warns(UserWarning, match=r"skipped \d unreadable (train|val) sample\(s\)"):
        trainer.fit(module, datamodule=dm)
    assert all("skipped" not in keys for keys in module.seen_keys)
    bad = {str(folder["corrupt"]), str(folder["truncated"])}
    in_train = len(bad & set(dm.train_set.files))
    in_val = len(bad & set(dm.val_set.files))
    assert in_train == in_val == 1  # the split puts one bad file on each side
    assert reporter.total_skipped_train == in_train * 2  # two epochs
    assert reporter.total_skipped_val == in_val * 2  # sanity check batches are not counted
    assert set(reporter.skipped_paths["train"] + reporter.skipped_paths["val"]) <= bad
    metrics = trainer.callback_metrics
    assert metrics["data/skipped_val"].item() == in_val
    assert metrics["data/skipped_train"].item() == in_train


def test_strict_mode_raises_naming_the_file(folder):
    dm = ImageFolderDataModule(root=str(folder["root"]), image_size=8, val_fraction=0.3, strict=True)
    for bad in (folder["corrupt"], folder["truncated"]):
        dataset = dm.train_set if str(bad) in dm.train_set.files else dm.val_set
        with pytest.raises(DataError, match=re.escape(f"cannot read image '{bad}'")):
            dataset[dataset.files.index(str(bad))]


def test_missing_root_is_a_data_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"data directory '{missing}' does not exist")):
        ImageFolderDataModule(root=str(missing))


def test_root_without_images_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"no images found under '{tmp_path}'")):
        ImageFolderDataModule(root=str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"expected root/<class>/<image>\.png\|\.jpg"):
        ImageFolderDataModule(root=str(tmp_path))


def test_empty_class_folder_is_named(folder):
    (folder["root"] / "emu").mkdir()
    with pytest.raises(DataError, match=r"class folder.* without images .*: emu"):
        ImageFolderDataModule(root=str(folder["root"]))


def test_image_folder_rejects_bad_channels(folder):
    with pytest.raises(ConfigError, match=re.escape("channels must be 1 (grayscale) or 3 (RGB), got 2")):
        ImageFolderDataModule(root=str(folder["root"]), channels=2)


@pytest.mark.parametrize("cuda", [False, True])
def test_training_loaders_pin_batches_only_when_cuda_is_present(monkeypatch, folder, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    digits = DigitsDataModule(image_size=8, batch_size=4, num_workers=0)
    images = ImageFolderDataModule(str(folder["root"]), image_size=8, batch_size=2)
    for data in (digits, images):
        data.setup("fit")
        loaders = (data.train_dataloader(), data.val_dataloader())
        assert [loader.pin_memory for loader in loaders] == [cuda, cuda]
