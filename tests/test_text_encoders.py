"""Text encoders (t5 / clip / hf) loaded from tiny local models, and text conditioning in the module."""

from __future__ import annotations

import sys

import lightning as L
import pytest
import torch
from conftest import TINY_ATTENTION, TINY_HYDRA

import hthlight
from hthlight.conditioning.text_encoders import make_tiny_clip, make_tiny_t5
from hthlight.errors import ConfigError
from hthlight.models.denoiser import Denoiser
from hthlight.module import DiffusionModule

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return str(make_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", seed=0, d_model=32))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return str(make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0, hidden_size=24))


def text_denoiser_config(context_dim=32, **conditioner):
    return {
        "in_channels": 1,
        "patch_size": 2,
        "dim": 16,
        "layout": [{"mixer": TINY_HYDRA, "repeat": 2, "scans": ["h", "v"]}, {"mixer": TINY_ATTENTION}],
        "conditioner": {"name": "text_embedding", "context_dim": context_dim, "dropout": 0.0, **conditioner},
    }


def text_module(t5_dir, max_length=16, **conditioner) -> DiffusionModule:
    module = DiffusionModule(
        denoiser=text_denoiser_config(**conditioner),
        text_encoder={"name": "t5", "path": t5_dir, "max_length": max_length},
        image_size=8,
        sampling={"steps": 2, "cfg_scale": 3.0},
    )
    module.configure_model()
    with torch.no_grad():  # non-zero output layers, so conditioning shows in the samples
        for p in module.ema_denoiser.parameters():
            p.normal_(0, 0.2)
    return module


def test_t5_is_registered_frozen_and_masks_padding(t5_dir):
    encoder = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=16)
    assert encoder.context_dim == 32 and encoder.max_length == 16
    context, mask = encoder(["abc", "a handwritten seven"])
    assert context.shape == (2, 16, 32) and context.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [4, 16]  # 3 bytes + EOS; the long prompt is truncated to 16
    assert (context[0, 4:] == 0).all() and context[0, :4].abs().sum() > 0
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training  # always frozen
    # a prompt's features do not depend on what it is batched with
    alone, _ = encoder(["abc"])
    torch.testing.assert_close(alone[0], context[0])


def test_t5_padding_longest_dtype_and_defaults(t5_dir):
    longest = hthlight.build("text_encoder", "t5", path=t5_dir, padding="longest", dtype="bfloat16")
    assert longest.max_length == 120  # default (see the module docstring)
    context, mask = longest(["ab", "abcdef"])
    assert context.shape == (2, 7, 32) and context.dtype == torch.bfloat16 and mask.sum(1).tolist() == [3, 7]
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'; allowed: float32, bfloat16, float16"):
        hthlight.build("text_encoder", "t5", path=t5_dir, dtype="fp8")


def test_clip_and_generic_hf_encoders(t5_dir, clip_dir):
    clip = hthlight.build("text_encoder", "clip", path=clip_dir)
    context, mask = clip(["a cat", ""])
    assert clip.context_dim == 24 and context.shape == (2, 77, 24)
    assert mask.sum(1).tolist() == [6, 2]  # BOS "a</w>" c a "t</w>" EOS; BOS EOS
    # the generic encoder on a T5 folder keeps the encoder of the model; same weights, same features
    generic = hthlight.build("text_encoder", "hf", path=t5_dir, max_length=16)
    t5 = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=16)
    torch.testing.assert_close(generic(["seven"])[0], t5(["seven"])[0])


def test_offload_keeps_weights_on_cpu(t5_dir):
    encoder = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=8, offload=True)
    context, _ = encoder(["x"], device="cpu")
    assert context.device.type == "cpu" and encoder.device.type == "cpu"


@pytest.mark.gpu
def test_offload_moves_weights_per_call(t5_dir):
    encoder = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=8, offload=True)
    context, mask = encoder(["x"], device="cuda")
    assert context.is_cuda and mask.is_cuda and encoder.device.type == "cpu"
    resident = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=8)
    resident(["x"], device="cuda")
    assert resident.device.type == "cuda"


def test_bad_paths_and_missing_transformers(tmp_path, t5_dir, monkeypatch):
    with pytest.raises(ConfigError, match=r"t5 text encoder path '.*nowhere' does not exist"):
        hthlight.build("text_encoder", "t5", path=str(tmp_path / "nowhere"))
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(
        ConfigError,
        match=r"folder '.*no-weights' has no model weights: expected config.json and one of model.safetensors, "
        r"model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json; found: config.json",
    ):
        hthlight.build("text_encoder", "t5", path=str(empty))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        ConfigError, match=r"needs the 'transformers' package; install it with pip install 'hthlight\[hf\]'"
    ):
        hthlight.build("text_encoder", "t5", path=t5_dir)


def test_padding_tokens_have_no_effect_on_the_denoiser(t5_dir):
    """The mask reaches cross-attention: the same prompts padded to 20 or 40 tokens give the same output."""
    torch.manual_seed(0)
    denoiser = Denoiser(text_denoiser_config()).eval()
    with torch.no_grad():
        for p in denoiser.parameters():
            p.normal_(0, 0.2)
    short = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=20)
    long = hthlight.build("text_encoder", "t5", path=t5_dir, max_length=40)
    prompts = ["seven", "a handwritten one"]
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7])
    outputs = []
    for encoder in (short, long):
        context, mask = encoder(prompts)
        outputs.append(denoiser(x, t, {"context": context, "context_mask": mask}))
    assert short(prompts)[0].shape[1] == 20 and long(prompts)[0].shape[1] == 40
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)
    # the text does matter
    context, mask = short(["a handwritten two", "a handwritten one"])
    assert not torch.allclose(denoiser(x, t, {"context": context, "context_mask": mask})[0], outputs[0][0], atol=1e-3)


class CaptionData(L.LightningDataModule):
    image_size, channels = 8, 1

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
        data = [{"image": im, "caption": f"digit {i % 3}"} for i, im in enumerate(images)]
        return torch.utils.data.DataLoader(data, batch_size=4)


def test_captions_train_the_denoiser_not_the_encoder_which_stays_out_of_checkpoints(t5_dir, tmp_path):
    module = text_module(t5_dir)
    batch = next(iter(CaptionData().train_dataloader()))
    _, encoded = module.encode_batch(batch)
    assert encoded["context"].shape == (4, 16, 32) and encoded["context_mask"].dtype == torch.bool
    loss = module.training_step(batch, 0)
    loss.backward()
    encoder = module.text_encoder()
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert any(p.grad is not None for p in module.denoiser.parameters())
    assert {k.split(".")[0] for k in module.state_dict()} == {"denoiser", "ema_denoiser"}
    assert module.hparams["text_encoder"]["path"] == t5_dir

    trainer = L.Trainer(
        max_steps=2, logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, CaptionData())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"denoiser", "ema_denoiser"}
    loaded = DiffusionModule.load_from_checkpoint(tmp_path / "last.ckpt")  # strict: no encoder weights expected
    assert loaded.text_encoder_spec == module.text_encoder_spec and loaded._text_encoder is None
    torch.testing.assert_close(
        loaded.generate({"prompt": ["digit 1"]}, [0]), module.generate({"prompt": ["digit 1"]}, [0])
    )


def test_context_dim_mismatch_is_a_clear_error(t5_dir):
    module = DiffusionModule(
        denoiser=text_denoiser_config(context_dim=12),
        text_encoder={"name": "t5", "path": t5_dir, "max_length": 8},
        image_size=8,
    )
    module.configure_model()
    with pytest.raises(ConfigError, match=r"gives 32-wide features but .*conditioner\.context_dim is 12"):
        module.generate({"prompt": ["x"]}, [0])


def test_prompts_without_text_encoder_is_a_clear_error():
    module = DiffusionModule(denoiser=text_denoiser_config(), image_size=8, sampling={"steps": 1})
    with pytest.raises(ConfigError, match=r"model\.text_encoder is not set"):
        module.generate({"prompt": ["x"]}, [0])
    with pytest.raises(ConfigError, match="unknown text_encoder 'bert'"):
        DiffusionModule(denoiser=text_denoiser_config(), text_encoder="bert")


def test_negative_prompt_replaces_the_null_condition(t5_dir):
    module = text_module(t5_dir)
    prompts = ["digit 1", "digit 2"]
    null = module.generate({"prompt": prompts}, [0, 1])
    negative = module.generate({"prompt": prompts, "negative_prompt": ["digit 7", ""]}, [0, 1])
    assert not torch.allclose(negative[0], null[0], atol=1e-4)  # sample 0 is guided away from "digit 7"
    torch.testing.assert_close(negative[1], null[1], atol=1e-5, rtol=0)  # "" = no negative prompt: the null
    # an explicit context with the same negative gives the same sample; without guidance it has no effect
    same = module.generate({"prompt": prompts[:1], "negative_prompt": ["digit 7"]}, [0])
    torch.testing.assert_close(same[0], negative[0], atol=1e-5, rtol=0)
    plain = module.generate({"prompt": prompts}, [0, 1], cfg_scale=1.0)
    torch.testing.assert_close(
        module.generate({"prompt": prompts, "negative_prompt": ["digit 7", ""]}, [0, 1], cfg_scale=1.0), plain
    )


def test_empty_prompt_null_context(t5_dir):
    module = text_module(t5_dir, null="empty_prompt")
    conditioner = module.ema_denoiser.conditioner
    assert conditioner.null_context is None and conditioner.empty_context is None
    module.generate({"prompt": ["digit 1"]}, [0])
    empty, empty_mask = module.text_encoder()([""])
    torch.testing.assert_close(conditioner.empty_context, empty[0])
    assert module.denoiser.conditioner.empty_context is not None  # installed in both copies
    # a dropped sample is conditioned on exactly the empty prompt
    context, mask = module.encode_text(["digit 3"])
    dropped = conditioner({"context": context, "context_mask": mask}, torch.tensor([True]))
    torch.testing.assert_close(dropped.context_BSC[0], empty[0])
    assert dropped.context_mask_BS[0].tolist() == empty_mask[0].tolist()
    assert not [k for k in module.state_dict() if "empty" in k or "null_context" in k]
    # before the module installs it, the conditioner says what is missing
    fresh = text_module(t5_dir, null="empty_prompt")
    with pytest.raises(ValueError, match="no empty-prompt embedding is set"):
        fresh.ema_denoiser.conditioner({"context": context, "context_mask": mask})
