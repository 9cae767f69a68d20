"""Denoiser variants: adaLN-single (PixArt-alpha), positions (none + RoPE, interpolation), text conditioning."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_HYDRA, tiny_denoiser_config

import hthlight
from hthlight.conditioning.text import TextEmbeddingConditioner
from hthlight.errors import ConfigError
from hthlight.models.blocks import DenoiserBlock
from hthlight.models.denoiser import Denoiser
from hthlight.models.embeddings import sincos_position_embedding

ATTENTION = {"name": "attention", "num_heads": 2}
ROPE_ATTENTION = {"name": "attention", "num_heads": 2, "qk_norm": True, "rope": True}


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def text_config(**overrides):
    config = tiny_denoiser_config(
        conditioner={"name": "text_embedding", "context_dim": 12, "dropout": 0.0},
        layout=[{"mixer": TINY_HYDRA, "scans": ["h"]}, {"mixer": ATTENTION}],
    )
    config.update(overrides)
    return config


def text_batch(b=2, s=5, width=12):
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 3:] = False  # sample 0 has 3 real tokens and 2 padding tokens
    return {"context": torch.randn(b, s, width), "context_mask": mask}


def conditioning_parameters(model):
    names = ("modulation", "scale_shift_table", "t_block")
    return sum(p.numel() for n, p in model.named_parameters() if any(part in n for part in names))


# ----------------------------------------------------------------------------------- adaLN-single
def test_adaln_single_shapes_zero_output_and_dependence_on_time_and_label():
    model = Denoiser(tiny_denoiser_config(timestep_conditioning="adaln_single"))
    image, labels = torch.randn(3, 1, 8, 12), {"label": torch.tensor([0, 4, 9])}
    out = model(image, torch.rand(3), labels)
    assert out.shape == image.shape and torch.count_nonzero(out) == 0  # zero-initialised final projection
    video = torch.randn(2, 1, 3, 8, 8)
    assert model(video, torch.rand(2), {"label": torch.tensor([1, 2])}).shape == video.shape
    randomize(model).eval()
    t = torch.tensor([0.3, 0.3, 0.3])
    out = model(image, t, labels)
    assert not torch.allclose(out, model(image, t + 0.2, labels))
    assert not torch.allclose(out, model(image, t, {"label": torch.tensor([1, 1, 1])}))


def test_adaln_single_structure_and_parameters():
    model = Denoiser(tiny_denoiser_config(timestep_conditioning="adaln_single"))
    d = 16
    assert model.t_block[1].weight.shape == (6 * d, d)
    assert all(block.scale_shift_table.shape == (6, d) and block.modulation is None for block in model.blocks)
    assert model.final.scale_shift_table.shape == (2, d) and model.final.modulation is None
    assert all(getattr(block.scale_shift_table, "_no_weight_decay", False) for block in model.blocks)
    assert not any(block.norm_mixer.elementwise_affine for block in model.blocks)


@pytest.mark.parametrize("depth", [4, 12])
def test_adaln_single_has_far_fewer_conditioning_parameters_than_adaln_zero(depth):
    d = 32
    config = tiny_denoiser_config(dim=d, layout=[{"mixer": ATTENTION, "repeat": depth}])
    zero = Denoiser({**config, "timestep_conditioning": "adaln"})
    single = Denoiser({**config, "timestep_conditioning": "adaln_single"})
    assert conditioning_parameters(zero) == depth * 6 * d * (d + 1) + 2 * d * (d + 1)
    assert conditioning_parameters(single) == 6 * d * (d + 1) + depth * 6 * d + 2 * d
    assert conditioning_parameters(single) < conditioning_parameters(zero) / (depth / 2)
    total = lambda m: sum(p.numel() for p in m.parameters())
    assert total(zero) - total(single) == conditioning_parameters(zero) - conditioning_parameters(single)


def test_adaln_zero_blocks_start_as_identity_adaln_single_blocks_do_not():
    x, c = torch.randn(2, 6, 16), torch.randn(2, 16)
    zero = DenoiserBlock(16, ATTENTION, modulation="adaln")
    torch.testing.assert_close(zero(x, (1, 2, 3), c_BD=c), x)
    single = DenoiserBlock(16, ATTENTION, modulation="adaln_single")
    t6 = torch.randn(2, 6, 16)
    assert not torch.allclose(single(x, (1, 2, 3), t6_B6D=t6), x)  # PixArt: table ~ randn/sqrt(dim)


def test_block_modulation_inputs_are_explicit():
    x = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="needs the conditioning vector c_BD"):
        DenoiserBlock(16, ATTENTION, modulation="adaln")(x, (1, 2, 2), t6_B6D=torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match="needs the shared modulation t6_B6D"):
        DenoiserBlock(16, ATTENTION, modulation="adaln_single")(x, (1, 2, 2), c_BD=torch.randn(1, 16))
    with pytest.raises(ValueError, match="unknown block modulation 'adaLN'; allowed: none, adaln, adaln_single"):
        DenoiserBlock(16, ATTENTION, modulation="adaLN")
    with pytest.raises(ConfigError, match="timestep_conditioning must be one of additive, adaln, adaln_single"):
        Denoiser(tiny_denoiser_config(timestep_conditioning="adaln-single"))


def test_blocks_without_mlp_use_three_modulation_rows():
    single = DenoiserBlock(16, ATTENTION, mlp_ratio=0, modulation="adaln_single")
    assert single.mlp is None and single.scale_shift_table.shape == (3, 16)
    zero = DenoiserBlock(16, ATTENTION, mlp_ratio=0, modulation="adaln")
    assert zero.modulation[1].out_features == 3 * 16
    x = torch.randn(2, 4, 16)
    assert single(x, (1, 2, 2), t6_B6D=torch.randn(2, 6, 16)).shape == x.shape


def test_layout_block_options_reach_the_blocks():
    layout = [{"mixer": ATTENTION}, {"mixer": TINY_HYDRA, "block": {"mlp_ratio": 0, "cross_attention": False}}]
    model = Denoiser(text_config(layout=layout, timestep_conditioning="adaln_single"))
    full, bare = model.blocks
    assert full.cross_attention is not None and full.mlp is not None
    assert bare.cross_attention is None and bare.mlp is None
    assert "no MLP" in model.describe().splitlines()[1]
    out = model(torch.randn(2, 1, 8, 8), torch.rand(2), text_batch())
    assert out.shape == (2, 1, 8, 8)


# ----------------------------------------------------------------------------------- positions
def test_rope_model_without_absolute_positions_runs_at_two_resolutions_and_on_video():
    config = tiny_denoiser_config(
        position_embedding="none",
        timestep_conditioning="adaln_single",
        layout=[{"mixer": TINY_HYDRA, "scans": ["h", "v"], "repeat": 2}, {"mixer": ROPE_ATTENTION}],
    )
    model = randomize(Denoiser(config)).eval()
    assert "rope" in model.describe().splitlines()[2]
    for shape in [(2, 1, 8, 8), (2, 1, 12, 20), (2, 1, 3, 6, 10)]:
        x = torch.randn(*shape)
        out = model(x, torch.rand(2), {"label": torch.tensor([1, 2])})
        assert out.shape == x.shape and torch.isfinite(out).all()
    tokens = torch.randn(1, 12, 16)
    assert model.add_positions(tokens, (1, 3, 4)) is tokens
    with pytest.raises(ConfigError, match="position_embedding must be one of sincos, none"):
        Denoiser(tiny_denoiser_config(position_embedding="rope"))


def test_interpolation_with_base_equal_to_the_grid_is_the_integer_table():
    torch.testing.assert_close(
        sincos_position_embedding((1, 6, 6), 16, base=6), sincos_position_embedding((1, 6, 6), 16)
    )
    torch.testing.assert_close(
        sincos_position_embedding((3, 6, 6), 16, base=6), sincos_position_embedding((3, 6, 6), 16)
    )  # time is never interpolated


def test_interpolated_positions_span_the_base_grid():
    # dim 16: per axis 8 channels [cos(p * f) | sin(p * f)] with f = 1 first, so p = atan2(sin, cos) (p < 2 pi)
    table = sincos_position_embedding((1, 8, 6), 16, base=4).view(8, 6, 16)
    rows = torch.atan2(table[:, 0, 4], table[:, 0, 0]).remainder(2 * math.pi)
    cols = torch.atan2(table[0, :, 12], table[0, :, 8]).remainder(2 * math.pi)
    torch.testing.assert_close(rows, torch.arange(8) * 4 / 8)
    torch.testing.assert_close(cols, torch.arange(6) * 4 / 6)
    # a grid twice as fine samples the coarse grid's positions at every other token
    coarse = sincos_position_embedding((1, 4, 3), 16, base=4).view(4, 3, 16)
    torch.testing.assert_close(table[::2, ::2], coarse)
    # frame 0 of a video is the image, with or without interpolation
    video = sincos_position_embedding((2, 8, 6), 16, base=4)
    torch.testing.assert_close(video[:48], table.reshape(48, 16))


def test_denoiser_position_interpolation_base():
    config = tiny_denoiser_config(position_interpolation_base=4)
    model = randomize(Denoiser(config)).eval()
    plain = Denoiser(tiny_denoiser_config()).eval()
    plain.load_state_dict(model.state_dict())
    labels = {"label": torch.tensor([1, 2])}
    t = torch.rand(2)
    at_base = torch.randn(2, 1, 8, 8)  # patch 2: a 4 x 4 grid, the base grid
    torch.testing.assert_close(model(at_base, t, labels), plain(at_base, t, labels))
    larger = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(model(larger, t, labels), plain(larger, t, labels))
    with pytest.raises(ConfigError, match="position_interpolation_base must be a positive"):
        Denoiser(tiny_denoiser_config(position_interpolation_base=0))


# ----------------------------------------------------------------------------------- text
def test_text_conditioner_is_registered_and_checks_the_width():
    conditioner = hthlight.build("conditioner", "text_embedding", dim=16, context_dim=12)
    assert isinstance(conditioner, TextEmbeddingConditioner) and conditioner.context_dim == 12
    with pytest.raises(ValueError, match=r"expected width 12, got shape \(2, 5, 10\)"):
        conditioner({"context": torch.randn(2, 5, 10)})
    with pytest.raises(KeyError, match=r"needs batch key\(s\) \['context'\]"):
        conditioner({"label": torch.tensor([0])})
    with pytest.raises(ValueError, match="context_mask"):
        conditioner({"context": torch.randn(2, 5, 12), "context_mask": torch.ones(2, 4, dtype=torch.bool)})


def test_denoiser_builds_cross_attention_of_the_conditioner_width():
    model = Denoiser(text_config())
    assert all(block.cross_attention.kv.in_features == 12 for block in model.blocks)
    assert "cross-attention" in model.describe()
    with pytest.raises(ConfigError, match="context_dim is 8 but the conditioner gives 12-wide context"):
        Denoiser(text_config(context_dim=8))


@pytest.mark.parametrize("conditioner", [{}, {"pooled": True}, {"max_length": 7}, {"max_length": 4, "pooled": True}])
def test_padded_tokens_do_not_matter(conditioner):
    spec = {"name": "text_embedding", "context_dim": 12, "dropout": 0.0, **conditioner}
    model = randomize(Denoiser(text_config(conditioner=spec))).eval()
    x, t, batch = torch.randn(2, 1, 8, 8), torch.rand(2), text_batch()
    out = model(x, t, batch)
    changed = {"context": batch["context"].clone(), "context_mask": batch["context_mask"]}
    changed["context"][0, 3:] = 100.0
    torch.testing.assert_close(model(x, t, changed), out)
    changed["context"][0, 0] += 1.0  # a real token does matter
    assert not torch.allclose(model(x, t, changed)[0], out[0])
    int_mask = {"context": batch["context"], "context_mask": batch["context_mask"].long()}
    torch.testing.assert_close(model(x, t, int_mask), out)


def test_null_context_one_token_and_full_length():
    one = TextEmbeddingConditioner(16, 12)
    cond = one(text_batch(s=5), drop_B=torch.tensor([True, False]))
    torch.testing.assert_close(cond.context_BSC[0, :1], one.null_context)
    assert cond.context_mask_BS[0].tolist() == [True, False, False, False, False]
    assert cond.context_mask_BS[1].all() and cond.vector_BD is None
    full = TextEmbeddingConditioner(16, 12, max_length=8, pooled=True)
    cond = full(text_batch(s=5), drop_B=torch.tensor([True, False]))
    assert cond.context_BSC.shape == (2, 8, 12) and cond.vector_BD.shape == (2, 16)
    torch.testing.assert_close(cond.context_BSC[0], full.null_context)
    assert cond.context_mask_BS[0].all()
    assert cond.context_mask_BS[1].tolist() == [True] * 5 + [False] * 3  # zero-padded to max_length
    assert full(text_batch(s=11)).context_BSC.shape == (2, 8, 12)  # truncated
    # a caption with no real token gets the null context instead of attending to nothing
    empty = {"context": torch.randn(1, 3, 12), "context_mask": torch.zeros(1, 3, dtype=torch.bool)}
    torch.testing.assert_close(one(empty).context_BSC[0, 0], one.null_context[0])


def test_text_dropout_to_null_in_training_only():
    spec = {"name": "text_embedding", "context_dim": 12, "dropout": 0.5}
    model = randomize(Denoiser(text_config(conditioner=spec)))
    b = 64
    x, t = torch.randn(b, 1, 4, 4), torch.full((b,), 0.5)
    batch = {"context": torch.randn(1, 4, 12).expand(b, 4, 12)}
    model.eval()
    reference = model(x, t, batch)
    null = model(x, t, batch, drop_B=torch.ones(b, dtype=torch.bool))
    other_text = {"context": torch.randn(b, 4, 12)}
    torch.testing.assert_close(model(x, t, other_text, drop_B=torch.ones(b, dtype=torch.bool)), null)
    torch.testing.assert_close(model(x, t, batch), reference)  # eval: never dropped
    model.train()
    trained = model(x, t, batch)
    dropped = torch.isclose(trained, null).flatten(1).all(1)
    kept = torch.isclose(trained, reference).flatten(1).all(1)
    assert torch.all(dropped ^ kept)
    assert 10 < int(dropped.sum()) < 54


def test_text_conditioning_trains_end_to_end():
    spec = {"name": "text_embedding", "context_dim": 12, "pooled": True, "max_length": 6}
    model = Denoiser(text_config(conditioner=spec, timestep_conditioning="adaln_single"))
    randomize(model.final)
    batch = text_batch()
    batch["context"] = batch["context"].bfloat16()  # cached features may be stored in low precision
    drop = torch.tensor([True, False])
    model(torch.randn(2, 1, 8, 8), torch.rand(2), batch, drop_B=drop).square().mean().backward()
    assert model.conditioner.null_context.grad.abs().sum() > 0  # the null context is learned
    assert model.conditioner.pooled_projection.weight.grad is not None
    assert all(block.cross_attention.kv.weight.grad is not None for block in model.blocks)
    assert math.isfinite(float(model.t_block[1].weight.grad.norm()))


def test_out_of_range_labels_are_rejected_on_the_host_before_sampling():
    from test_resume import tiny_module

    from hthlight.conditioning.labels import ClassLabelConditioner

    conditioner = ClassLabelConditioner(dim=8, num_classes=10)
    for labels in ([3, 10], torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match=r"class labels must be in \[0, 9\], got range"):
            conditioner({"label": labels})
    assert conditioner({"label": torch.tensor([0, 9])}).vector_BD.shape == (2, 8)
    module = tiny_module()
    module.configure_model()
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 9\], got range \[0, 12\]"):
        module.generate(torch.tensor([0, 12]), [0, 1])
