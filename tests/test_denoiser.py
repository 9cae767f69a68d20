"""Denoiser: shapes, conditioning modes, positions, meta-device construction."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ATTENTION, TINY_HYDRA, tiny_denoiser_config

from hthlight.errors import ConfigError
from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.models.embeddings import PatchEmbed, sincos_position_embedding, unpatchify


def randomize(model):
    """Zero-initialised outputs hide bugs: give every parameter a random value."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("conditioning", ["additive", "adaln"])
def test_image_and_video_shapes(conditioning):
    model = Denoiser(tiny_denoiser_config(timestep_conditioning=conditioning))
    image = torch.randn(3, 1, 8, 12)
    labels = {"label": torch.tensor([0, 4, 9])}
    assert model(image, torch.rand(3), labels).shape == image.shape
    video = torch.randn(2, 1, 3, 8, 8)
    assert model(video, torch.rand(2), {"label": torch.tensor([1, 2])}).shape == video.shape


def test_zero_initialised_output_then_depends_on_time_label_and_input():
    model = Denoiser(tiny_denoiser_config())
    x = torch.randn(2, 1, 8, 8)
    labels = {"label": torch.tensor([3, 3])}
    assert torch.count_nonzero(model(x, torch.rand(2), labels)) == 0  # DiT zero-init final layer
    randomize(model).eval()
    t = torch.tensor([0.3, 0.3])
    out = model(x, t, labels)
    assert not torch.allclose(out, model(x, t + 0.2, labels))
    assert not torch.allclose(out, model(x, t, {"label": torch.tensor([4, 4])}))
    assert not torch.allclose(out, model(x, t, labels, drop_B=torch.tensor([True, True])))


def test_label_dropout_only_in_training():
    model = Denoiser(tiny_denoiser_config(conditioner={"name": "class_label", "num_classes": 10, "dropout": 0.5}))
    randomize(model)
    x, t = torch.randn(64, 1, 4, 4), torch.full((64,), 0.5)
    labels = {"label": torch.zeros(64, dtype=torch.long)}
    model.eval()
    reference = model(x, t, labels)
    null = model(x, t, labels, drop_B=torch.ones(64, dtype=torch.bool))
    model.train()
    trained = model(x, t, labels)
    dropped = torch.isclose(trained, null).flatten(1).all(1)
    kept = torch.isclose(trained, reference).flatten(1).all(1)
    assert torch.all(dropped ^ kept)
    assert 10 < int(dropped.sum()) < 54


def test_samples_do_not_interact_in_a_batch():
    model = randomize(Denoiser(tiny_denoiser_config())).eval()
    x, t, labels = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 3])
    full = model(x, t, {"label": labels})
    torch.testing.assert_close(model(x[1:2], t[1:2], {"label": labels[1:2]}), full[1:2], rtol=1e-4, atol=1e-5)


def test_patchify_roundtrip_and_grid():
    embed = PatchEmbed(3, 8, patch_size=2)
    x = torch.randn(2, 3, 2, 4, 6)
    tokens, grid = embed(x)
    assert grid == (2, 2, 3) and tokens.shape == (2, 12, 8)
    # unpatchify inverts the patch layout: feed raw patches through an identity projection
    embed_id = PatchEmbed(3, 12, patch_size=2)
    with torch.no_grad():
        embed_id.proj.weight.copy_(torch.eye(12))
        embed_id.proj.bias.zero_()
    patches, grid = embed_id(x)
    torch.testing.assert_close(unpatchify(patches, grid, 3, 2), x)


def test_position_embedding_frame_zero_equals_image_and_positions_differ():
    image = sincos_position_embedding((1, 3, 4), 16)
    video = sincos_position_embedding((3, 3, 4), 16)
    torch.testing.assert_close(video[:12], image)
    assert torch.unique(video, dim=0).shape[0] == 36
    # rows and columns are embedded independently: a larger grid extends a smaller one
    big = sincos_position_embedding((1, 5, 4), 16)
    torch.testing.assert_close(big[:12], image)


def test_position_table_is_kept_per_device_and_dtype_not_copied_per_forward():
    """The table lives on the model's device: no host copy per forward (CUDA graphs need that)."""
    half = sincos_position_embedding((1, 3, 4), 16, "cpu", torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half is sincos_position_embedding(
        (1, 3, 4), 16, torch.device("cpu"), torch.bfloat16
    )
    torch.testing.assert_close(half.float(), sincos_position_embedding((1, 3, 4), 16), atol=1e-2, rtol=0)
    with torch.inference_mode():  # built under inference mode, still usable for training afterwards
        table = sincos_position_embedding((1, 3, 5), 16)
    assert not table.is_inference() and table is sincos_position_embedding((1, 3, 5), 16)


def test_hth_5b_layout_builds_on_meta_device_with_about_5b_parameters():
    config = DenoiserConfig(
        in_channels=4,
        patch_size=2,
        dim=3072,
        mlp_ratio=2.0,
        context_dim=4096,
        cross_attention_heads=32,
        qk_norm=True,
        layout=[
            {
                "repeat": 3,
                "layout": [
                    {
                        "mixer": {
                            "name": "hydra",
                            "d_state": 256,
                            "headdim": 64,
                            "expand": 2,
                            "d_conv": 7,
                            "ngroups": 1,
                        },
                        "repeat": 10,
                        "scans": ["h", "v"],
                    },
                    {"mixer": {"name": "attention", "num_heads": 32, "qk_norm": True}},
                ],
            }
        ],
    )
    with torch.device("meta"):
        model = Denoiser(config)
    count = sum(p.numel() for p in model.parameters())
    assert len(model.blocks) == 33
    assert 4.5e9 < count < 5.5e9, count


def test_bad_configs_fail_at_construction():
    with pytest.raises(ConfigError, match="unknown mixer 'hydar'"):
        Denoiser(tiny_denoiser_config(layout=["hydar"]))
    with pytest.raises(ConfigError, match="unknown scan 'x'"):
        Denoiser(tiny_denoiser_config(layout=[{"mixer": TINY_HYDRA, "scans": ["x"]}]))
    with pytest.raises(ConfigError, match="unknown conditioner"):
        Denoiser(tiny_denoiser_config(conditioner="labels"))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        Denoiser(tiny_denoiser_config(layout=[{"mixer": TINY_ATTENTION}]))(
            torch.randn(1, 1, 7, 8), torch.rand(1), {"label": torch.tensor([0])}
        )
