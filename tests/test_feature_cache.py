"""Feature cache: resumable sharded writing, reading, the ``cache`` command, equivalence with raw training."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_ATTENTION, TINY_HYDRA
from PIL import Image
from safetensors import safe_open

from hthlight.cli import main
from hthlight.data.captions import CaptionDataModule
from hthlight.data.feature_cache import (
    CachedFeaturesDataModule,
    CachedFeaturesDataset,
    CacheInterrupted,
    FeatureCacheWriter,
    read_index,
)
from hthlight.errors import ConfigError, DataError
from hthlight.module import DiffusionModule
from hthlight.vae.identity import IdentityVAE

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "captions.yaml"


class CharEncoder:
    """A tiny deterministic text encoder: token j of a prompt is a sinusoid of its j-th character."""

    context_dim = 8
    max_length = 6

    def __call__(self, prompts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        context = torch.zeros(len(prompts), self.max_length, self.context_dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for b, prompt in enumerate(prompts):
            for j, char in enumerate(prompt[: self.max_length]):
                context[b, j] = torch.sin(ord(char) * torch.arange(1, self.context_dim + 1) / 7)
                mask[b, j] = True
        return context.to(device or "cpu"), mask.to(device or "cpu")


SIZES = [(24, 24), (16, 32), (24, 24), (32, 16), (16, 32), (24, 24), (24, 24), (16, 32), (32, 16), (24, 24), (16, 32)]


def make_captioned_folder(root: Path, sizes=SIZES, corrupt: int | None = None) -> Path:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i, (h, w) in enumerate(sizes):
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.numpy()).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "caption": f"item {i} {'abcdefgh'[i % 8]}", "label": i % 3})
    if corrupt is not None:
        (root / "img" / f"{corrupt}.png").write_bytes(b"broken")
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def caption_data(root: Path, **overrides) -> CaptionDataModule:
    kwargs = {"manifest": "captions.jsonl", "image_size": 16, "buckets": True, "bucket_divisor": 4, "batch_size": 2}
    return CaptionDataModule(str(root), **{**kwargs, **overrides})


def writer(dm: CaptionDataModule, out: Path, **overrides) -> FeatureCacheWriter:
    kwargs = {"shard_size": 2, "batch_size": 2, "meta": {"image_size": 16, "channels": 3, "num_classes": 3}}
    return FeatureCacheWriter(
        out, dm.train_set, dm.train_buckets, IdentityVAE(), CharEncoder(), **{**kwargs, **overrides}
    )


def cached_samples(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Source index -> tensors, read shard by shard (fails on a duplicate)."""
    index = read_index(folder)
    out = {}
    for record in index["shards"].values():
        if not record["count"]:
            continue
        with safe_open(str(folder / record["file"]), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        for row, source in enumerate(tensors["index"].tolist()):
            assert source not in out, f"sample {source} cached twice"
            out[source] = {k: v[row] for k, v in tensors.items()}
    return out


def test_interrupted_cache_resumes_without_duplicates_or_gaps(tmp_path):
    dm = caption_data(make_captioned_folder(tmp_path / "data", corrupt=4))
    n = len(dm.train_set)
    with pytest.raises(CacheInterrupted):
        writer(dm, tmp_path / "cache").run(fail_after=2)  # crash after shard 2's rename, before its index entry
    index = read_index(tmp_path / "cache")
    assert len(index["shards"]) == 1 and not index["complete"]
    (tmp_path / "cache" / "shard-00003.safetensors.tmp").write_bytes(b"half a shard")  # a torn write
    partial = writer(dm, tmp_path / "cache").run(max_shards=2)
    assert len(partial["shards"]) == 3 and not partial["complete"]
    with pytest.raises(DataError, match="incomplete"):
        CachedFeaturesDataset(tmp_path / "cache")
    final = writer(dm, tmp_path / "cache").run()
    assert final["complete"] and len(final["shards"]) == final["num_shards"]
    assert not list((tmp_path / "cache").glob("*.tmp"))

    samples = cached_samples(tmp_path / "cache")
    skipped = [s["index"] for r in final["shards"].values() for s in r["skipped"]]
    assert [Path(s["path"]).name for r in final["shards"].values() for s in r["skipped"]] == ["4.png"]
    assert sorted([*samples, *skipped]) == list(range(n))  # every sample exactly once

    writer(dm, tmp_path / "fresh").run()  # an uninterrupted run writes the same features
    fresh = cached_samples(tmp_path / "fresh")
    assert fresh.keys() == samples.keys()
    for i in samples:
        for key in ("latent", "context", "context_mask", "label"):
            assert torch.equal(samples[i][key], fresh[i][key])
        item = dm.train_set[i]
        assert torch.equal(samples[i]["latent"], item["image"])  # identity VAE
        context, mask = CharEncoder()([item["caption"]])
        assert torch.equal(samples[i]["context"], context[0]) and torch.equal(samples[i]["context_mask"], mask[0])


def test_cache_of_other_settings_in_the_same_folder_is_refused(tmp_path):
    dm = caption_data(make_captioned_folder(tmp_path / "data"))
    writer(dm, tmp_path / "cache").run(max_shards=1)
    with pytest.raises(ConfigError, match="holds a cache of other data or settings"):
        writer(dm, tmp_path / "cache", shard_size=3)


def test_cached_data_module_batches(tmp_path):
    dm = caption_data(make_captioned_folder(tmp_path / "data"), val_fraction=0.2)
    writer(dm, tmp_path / "cache" / "train").run()
    cached = CachedFeaturesDataModule(str(tmp_path / "cache"), batch_size=3, seed=0)
    assert cached.image_size == 16 and cached.channels == 3 and cached.num_classes == 3
    assert cached.val_set is None and cached.val_dataloader() == []
    served = 0
    for batch in cached.train_dataloader():
        assert set(batch) == {"latent", "context", "context_mask", "label"}
        assert batch["latent"].dtype == torch.float32 and batch["context_mask"].dtype == torch.bool
        assert batch["context"].shape[1:] == (6, 8) and batch["latent"].shape[1] == 3
        served += len(batch["label"])
    assert served == len(dm.train_set)


def test_missing_cache_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no feature cache at"):
        CachedFeaturesDataModule(str(tmp_path))


def test_cache_command_resumes_and_writes_both_splits(tmp_path, capsys):
    root = make_captioned_folder(tmp_path / "data")
    args = [
        "cache",
        "--config", str(CONFIG),
        "--data.init_args.root", str(root),
        "--data.init_args.image_size", "16",
        "--data.init_args.bucket_divisor", "4",
        "--data.init_args.val_fraction", "0.2",
        "--data.init_args.num_workers", "0",
        "--data.init_args.predict_prompts", "[a cat]",
        "--model.vae", "identity",
        "--model.text_encoder", "{class_path: test_feature_cache.CharEncoder}",
        "--output", str(tmp_path / "cache"),
        "--shard_size", "2",
        "--device", "cpu",
    ]  # fmt: skip
    assert main([*args, "--max_shards", "1"]) == 0
    assert "incomplete: run the same command again" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cache train:" in out and "cache val:" in out and "(complete)" in out
    train = CachedFeaturesDataset(tmp_path / "cache" / "train")
    val = CachedFeaturesDataset(tmp_path / "cache" / "val")
    assert len(train) + len(val) == len(SIZES)
    assert (tmp_path / "cache" / "train" / "empty_prompt.safetensors").exists()
    assert main([*args[:-2], "--device", "cpu", "--shard_size", "0"]) == 2  # a config error: exit 2


# ---------------------------------------------------------------------- equivalence with raw data


def save_tiny_kl_vae(path: Path) -> str:
    """A randomly initialised 2x down-sampling diffusers AutoencoderKL (4 latent channels), saved locally."""
    import diffusers

    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.7,
        shift_factor=0.1,
    ).save_pretrained(path)
    return str(path)


def _text_model(encoder_path: Path, vae: dict) -> DiffusionModule:
    denoiser = {
        "in_channels": 4,
        "patch_size": 2,
        "dim": 16,
        "layout": [{"mixer": TINY_HYDRA, "scans": ["h", "v"]}, {"mixer": TINY_ATTENTION}],
        "conditioner": {"name": "text_embedding", "context_dim": 32, "dropout": 0.3, "null": "empty_prompt"},
        "cross_attention_heads": 2,
    }
    return DiffusionModule(
        denoiser=denoiser,
        vae=vae,
        text_encoder={"name": "t5", "path": str(encoder_path), "max_length": 12},
        # eps 1e-3: parameters with no true gradient (e.g. attention key biases) get gradients of
        # float noise (1e-9), which Adam with eps 1e-8 would blow up to steps of ~lr.
        optimizer={"lr": 1e-2, "eps": 1e-3, "warmup_steps": 0, "schedule": "constant"},
        ema={"decay": 0.9},
        image_size=16,
    )


def _train(module: DiffusionModule, datamodule: L.LightningDataModule, steps: int) -> dict[str, torch.Tensor]:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_training_from_the_cache_equals_training_from_raw_data(tmp_path):
    """Same seed, same encoders (a tiny T5 and a tiny diffusers AutoencoderKL, both through their
    real loading code): 4 steps on the raw images + captions and on their cache give the same
    weights (tolerance 1e-5)."""
    from hthlight.conditioning.text_encoders import T5TextEncoder, make_tiny_t5
    from hthlight.registry import build_from_spec

    encoder_path = make_tiny_t5(tmp_path / "t5")
    vae_spec = {"name": "autoencoder_kl", "path": save_tiny_kl_vae(tmp_path / "vae")}
    root = make_captioned_folder(tmp_path / "data")
    raw = caption_data(root, batch_size=3, seed=7)
    cache = tmp_path / "cache"
    encoder = T5TextEncoder(str(encoder_path), max_length=12)
    meta = {"image_size": 16, "channels": 3}
    vae = build_from_spec("vae", vae_spec)
    FeatureCacheWriter(cache / "train", raw.train_set, raw.train_buckets, vae, encoder, meta, 4, 5).run()

    torch.manual_seed(0)
    module = _text_model(encoder_path, vae_spec)
    module.configure_model()
    twin = copy.deepcopy(module)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    from_raw = _train(module, raw, steps=4)
    from_cache = _train(twin, CachedFeaturesDataModule(str(cache), batch_size=3, seed=7), steps=4)
    moved = max((from_raw[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # training changed the weights
    for key in from_raw:
        torch.testing.assert_close(from_cache[key], from_raw[key], rtol=1e-5, atol=1e-5, msg=key)


# ---------------------------------------------------------------------- configs/captions.yaml end to end


def tiny_captions_config(tmp_path: Path, root: Path) -> Path:
    """configs/captions.yaml shrunk: identity VAE, the test's char encoder, a tiny denoiser, 2 steps."""
    config = yaml.safe_load(CONFIG.read_text())
    run = tmp_path / "run"
    config["trainer"].update(
        max_steps=2, accelerator="cpu", devices=1, precision="32-true", default_root_dir=str(run), logger=False
    )
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    callbacks["ModelCheckpoint"]["dirpath"] = str(run / "checkpoints")
    callbacks["PredictionWriter"]["output_dir"] = str(run / "samples")
    model = config["model"]
    model["vae"] = "identity"
    model["text_encoder"] = {"class_path": "test_feature_cache.CharEncoder"}
    model["denoiser"].update(
        in_channels=3,
        dim=16,
        cross_attention_heads=2,
        conditioner={"name": "text_embedding", "context_dim": 8, "dropout": 0.1},
        layout=[{"mixer": TINY_HYDRA, "scans": ["h", "v"]}, {"mixer": TINY_ATTENTION}],
    )
    model["sampling"]["steps"] = 2
    config["data"]["init_args"].update(
        root=str(root), image_size=16, bucket_divisor=4, batch_size=4, num_workers=0, predict_samples_per_class=1
    )
    path = tmp_path / "captions.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_captions_config_trains_raw_and_from_its_cache_and_samples(tmp_path):
    config = tiny_captions_config(tmp_path, make_captioned_folder(tmp_path / "data"))
    run = tmp_path / "run"
    assert main(["fit", "--config", str(config)]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["cache", "--config", str(config), "--output", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    cached = ["--data", "hthlight.data.CachedFeaturesDataModule", "--data.root", str(tmp_path / "cache")]
    assert main(["fit", "--config", str(config), *cached, "--trainer.max_steps", "4", "--ckpt_path", "last"]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 4
    assert main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint)]) == 0
    lines = (run / "samples" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the config's two prompts, one sample each


def test_several_writers_share_the_work_and_a_resume_with_another_count_finishes_it(tmp_path):
    dm = caption_data(make_captioned_folder(tmp_path / "data"))
    out = tmp_path / "cache"
    first = writer(dm, out, rank=1, world_size=2).run()  # rank 1 may start (and finish) first
    assert not first["complete"] and all(_shard_number(name) % 2 == 1 for name in first["shards"])
    assert (out / "index.rank1.json").is_file()
    with pytest.raises(CacheInterrupted):
        writer(dm, out, rank=0, world_size=2).run(fail_after=1)  # rank 0 crashes after one shard
    index = writer(dm, out, rank=2, world_size=3).run()  # resumed by 3 processes: rank 2 takes its share
    index = writer(dm, out, rank=0, world_size=3).run()
    index = writer(dm, out, rank=1, world_size=3).run()
    assert index["complete"] and len(index["shards"]) == index["num_shards"]
    samples = cached_samples(out)
    assert sorted(samples) == list(range(len(dm.train_set)))  # exactly once
    assert len(CachedFeaturesDataset(out)) == len(dm.train_set)


def _shard_number(name: str) -> int:
    return int(name.split("-")[1].split(".")[0])
