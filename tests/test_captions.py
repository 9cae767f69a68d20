"""Caption data: manifests (JSON lines, CSV), class folders, skipping and strict mode, buckets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from hthlight.callbacks.skipped import SkippedSamplesReporter
from hthlight.data.buckets import BucketBatchSampler
from hthlight.data.captions import CaptionDataModule, read_manifest
from hthlight.errors import ConfigError, DataError

SIZES = [(40, 40), (30, 60), (60, 30), (44, 48), (32, 64), (64, 32)]  # (height, width)


def write_image(path: Path, height: int, width: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.full((height, width, 3), value, dtype=torch.uint8)
    pixels[: height // 2, :, 0] = 255 - value  # not constant, so resizing/cropping is visible
    Image.fromarray(pixels.numpy()).save(path)


@pytest.fixture
def caption_root(tmp_path) -> Path:
    rows = []
    for i, (h, w) in enumerate(SIZES):
        write_image(tmp_path / "img" / f"{i}.png", h, w, 20 * i)
        rows.append({"path": f"img/{i}.png", "caption": f"picture number {i}", "label": i % 2})
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _all_batches(loader):
    return [batch for batch in loader]


def test_jsonl_manifest_batches_carry_images_captions_labels(caption_root):
    dm = CaptionDataModule(str(caption_root), manifest="captions.jsonl", image_size=16, batch_size=3, seed=1)
    assert dm.num_classes == 2 and dm.has_labels
    captions, labels = [], []
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, 16, 16) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        assert isinstance(batch["caption"], list) and all(isinstance(c, str) for c in batch["caption"])
        assert batch["skipped"] == []
        captions += batch["caption"]
        labels += batch["label"].tolist()
    assert sorted(captions) == [f"picture number {i}" for i in range(6)]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    assert dict(zip(captions, labels))["picture number 3"] == 1


def test_csv_manifest_with_named_labels_and_custom_columns(tmp_path):
    write_image(tmp_path / "a.png", 20, 20, 10)
    write_image(tmp_path / "b b.png", 20, 20, 90)
    (tmp_path / "m.csv").write_text('file,text,kind\na.png,"a red, round thing",dog\nb b.png,second,cat\n')
    dm = CaptionDataModule(
        str(tmp_path),
        manifest=str(tmp_path / "m.csv"),
        path_column="file",
        caption_column="text",
        label_column="kind",
        image_size=8,
        batch_size=4,
    )
    assert dm.class_names == ["cat", "dog"]
    (batch,) = _all_batches(dm.train_dataloader())
    assert dict(zip(batch["caption"], batch["label"].tolist())) == {"a red, round thing": 1, "second": 0}


def test_class_folders_get_captions_from_the_template(tmp_path):
    write_image(tmp_path / "golden_retriever" / "0.png", 12, 12, 1)
    write_image(tmp_path / "tabby" / "0.png", 12, 12, 2)
    dm = CaptionDataModule(str(tmp_path), caption_template="an image of a {class}", image_size=8, batch_size=2)
    (batch,) = _all_batches(dm.train_dataloader())
    assert dict(zip(batch["caption"], batch["label"].tolist())) == {
        "an image of a golden retriever": 0,
        "an image of a tabby": 1,
    }


def test_manifest_row_with_missing_file_is_skipped_counted_and_reported(caption_root):
    with (caption_root / "captions.jsonl").open("a") as f:
        f.write(json.dumps({"path": "img/missing.png", "caption": "gone", "label": 0}) + "\n")
    (caption_root / "img" / "bad.png").write_bytes(b"this is not a png")
    with (caption_root / "captions.jsonl").open("a") as f:
        f.write(json.dumps({"path": "img/bad.png", "caption": "corrupt", "label": 1}) + "\n")
    dm = CaptionDataModule(str(caption_root), manifest="captions.jsonl", image_size=8, batch_size=4)
    batches = _all_batches(dm.train_dataloader())
    skipped = sorted(p for b in batches for p in b["skipped"])
    assert [Path(p).name for p in skipped] == ["bad.png", "missing.png"]
    assert sum(len(b.get("caption", [])) for b in batches) == 6

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            if "image" not in batch:
                return None
            return (self.weight - batch["image"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    reporter = SkippedSamplesReporter()
    trainer = L.Trainer(
        max_epochs=1, callbacks=[reporter], logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable train sample\(s\)"):
        trainer.fit(Module(), datamodule=dm)
    assert reporter.total_skipped_train == 2


@pytest.mark.parametrize("buckets", [False, True])
def test_strict_mode_raises_naming_the_missing_file(caption_root, buckets):
    with (caption_root / "captions.jsonl").open("a") as f:
        f.write(json.dumps({"path": "img/missing.png", "caption": "gone", "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"missing\.png.*captions\.jsonl line 7"):
        dm = CaptionDataModule(
            str(caption_root), manifest="captions.jsonl", image_size=16, batch_size=8, strict=True, buckets=buckets
        )
        _all_batches(dm.train_dataloader())


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        (
            '{"path": "a.png", "caption": "x"}\n{"path": "b.png", "caption": \n',
            "jsonl",
            "m.jsonl line 2: not valid JSON",
        ),
        (
            '{"path": "a.png", "caption": "x"}\n\n{"path": "b.png"}\n',
            "jsonl",
            "m.jsonl line 3: missing column 'caption'",
        ),
        ("[1, 2]\n", "jsonl", "m.jsonl line 1: expected a JSON object"),
        ("path,label\na.png,1\n", "csv", "m.csv line 2: missing column 'caption'"),
        ("path,caption\na.png,x,extra\n", "csv", "m.csv line 2: more cells than header columns"),
        ("path,caption,label\na.png,x,1\nb.png,y,\n", "csv", "m.csv line 3: no 'label' while other rows have one"),
        ("path,caption,width,height\na.png,x,ten,4\n", "csv", "m.csv line 2: width and height must be integers"),
    ],
)
def test_malformed_manifest_is_a_config_error_with_the_line(tmp_path, text, suffix, message):
    (tmp_path / f"m.{suffix}").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_manifest(tmp_path / f"m.{suffix}", tmp_path)


def test_unknown_manifest_format_and_missing_manifest(tmp_path):
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ConfigError, match=re.escape("must end in one of .jsonl, .json, .csv")):
        read_manifest(tmp_path / "m.txt", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl", tmp_path)


def test_buckets_keep_aspect_ratio_and_never_mix(caption_root):
    dm = CaptionDataModule(
        str(caption_root), manifest="captions.jsonl", image_size=32, buckets=True, bucket_divisor=8, batch_size=2
    )
    seen = 0
    for batch in dm.train_dataloader():
        h, w = batch["image"].shape[-2:]
        assert (h, w) in dm.buckets and h % 8 == 0 and w % 8 == 0
        for caption in batch["caption"]:
            ih, iw = SIZES[int(caption.split()[-1])]
            ratios = [bh / bw for bh, bw in dm.buckets]
            assert min(ratios, key=lambda r: abs(torch.tensor(r / (ih / iw)).log())) == pytest.approx(h / w)
        seen += len(batch["caption"])
    assert seen == len(SIZES)
    assert isinstance(dm.train_dataloader().batch_sampler, BucketBatchSampler)


def test_manifest_width_height_avoid_opening_images(tmp_path):
    write_image(tmp_path / "a.png", 30, 60, 5)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.png", "caption": "x", "width": 20, "height": 80}) + "\n")
    dm = CaptionDataModule(str(tmp_path), manifest="m.jsonl", image_size=32, buckets=True, bucket_divisor=8)
    height, width = dm.buckets[dm.bucket_ids[0]]
    assert height > width  # the manifest's 20x80 (portrait) decided, not the file's landscape 60x30


def test_validation_split_is_disjoint_and_complete(caption_root):
    dm = CaptionDataModule(str(caption_root), manifest="captions.jsonl", image_size=8, batch_size=2, val_fraction=0.34)
    train = {c for b in dm.train_dataloader() for c in b["caption"]}
    val = {c for b in dm.val_dataloader() for c in b["caption"]}
    assert not train & val and len(train | val) == 6 and len(val) == 2


def test_predict_requests_come_from_prompts_or_class_captions(tmp_path, caption_root):
    write_image(tmp_path / "folders" / "red_fox" / "0.png", 12, 12, 1)
    write_image(tmp_path / "folders" / "owl" / "0.png", 12, 12, 2)
    folders = CaptionDataModule(str(tmp_path / "folders"), image_size=8, predict_samples_per_class=2)
    (batch,) = list(folders.predict_dataloader())
    assert batch["prompt"] == ["a photo of a owl"] * 2 + ["a photo of a red fox"] * 2
    assert batch["label"].tolist() == [0, 0, 1, 1]
    prompted = CaptionDataModule(
        str(caption_root), manifest="captions.jsonl", image_size=8, predict_prompts=["a kite", "a boat"]
    )
    assert next(iter(prompted.predict_dataloader()))["prompt"] == ["a kite"] * 8 + ["a boat"] * 8
    unprompted = CaptionDataModule(str(caption_root), manifest="captions.jsonl", image_size=8)
    with pytest.raises(ConfigError, match=r"give data\.predict_prompts or data\.predict_prompts_file"):
        unprompted.predict_dataloader()


def test_lightning_sets_the_epoch_so_each_epoch_has_its_own_seeded_order(caption_root):
    dm = CaptionDataModule(str(caption_root), manifest="captions.jsonl", image_size=8, batch_size=2, seed=3)

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[str]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(list(batch["caption"]))
            return (self.weight - batch["image"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Recorder()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    sampler = BucketBatchSampler(dm.train_buckets, 2, seed=3)
    captions = [r.caption for r in dm.train_set.records]
    expected = [[captions[i] for i in batch] for epoch in (0, 1) for batch in sampler.rank_batches(epoch)]
    assert module.seen == expected
    assert module.seen[:3] != module.seen[3:]


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["caption"]))
        return (self.weight - batch["image"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_mid_epoch_continues_with_the_remaining_batches(caption_root, tmp_path, num_workers):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from hthlight.callbacks.resume import ExactResume

    def fit(max_steps, ckpt_path=None, dirpath=None):
        dm = CaptionDataModule(
            str(caption_root), manifest="captions.jsonl", image_size=8, batch_size=2, seed=3, num_workers=num_workers
        )
        module = _Recorder()
        callbacks = [ExactResume()]
        if dirpath:
            callbacks.append(ModelCheckpoint(dirpath=dirpath, save_last=True, every_n_train_steps=1))
        trainer = L.Trainer(
            max_steps=max_steps,
            logger=False,
            enable_progress_bar=False,
            callbacks=callbacks,
            enable_checkpointing=True,
            default_root_dir=tmp_path,  # the default checkpoint callback writes here, not into the working directory
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return module.seen

    whole = fit(8)  # 3 batches per epoch: steps 1-3, 4-6, 7-8
    first = fit(4, dirpath=tmp_path / "ckpt")  # stops after the first batch of epoch 2
    rest = fit(8, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert first + rest == whole
