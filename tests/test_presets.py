"""Paper presets: exact layouts and parameter counts, built on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hthlight.errors import ConfigError
from hthlight.mixers.hydra import HydraMixer
from hthlight.models import presets
from hthlight.models.denoiser import Denoiser

ROOT = Path(__file__).resolve().parents[1]


def meta(name: str, **overrides):
    with torch.device("meta"):
        return presets.build(name, **overrides)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def mixers(model) -> list[str]:
    return [type(b.mixer).__name__ for b in model.blocks]


def test_hth_5b_is_exact_and_about_five_billion():
    model = meta("hth-5b")
    assert 4.5e9 < count(model) < 5.5e9
    assert mixers(model) == (["HydraMixer"] * 10 + ["AttentionMixer"]) * 3
    hydra = model.blocks[0].mixer
    assert (hydra.d_state, hydra.headdim, hydra.expand, hydra.d_conv, hydra.ngroups) == (256, 64, 2, 7, 1)
    assert [b.mixer.scan_name for b in model.blocks[:10]] == ["h", "v"] * 5
    attention = model.blocks[10].mixer
    assert attention.num_heads == 32 and not isinstance(attention.q_norm, torch.nn.Identity)
    assert model.config.dim == 3072 and model.config.patch_size == 2 and model.config.mlp_ratio == 2.0
    assert model.blocks[0].cross_attention.kv.in_features == 4096
    assert model.config.timestep_conditioning == "additive"


@pytest.mark.parametrize(
    ("name", "reported"), [("dit-s/2", 33e6), ("dit-b/2", 130e6), ("dit-l/2", 458e6), ("dit-xl/2", 675e6)]
)
def test_dit_counts_match_the_paper_within_one_percent(name, reported):
    # DiT's own counts include a learned-sigma head (8 output channels); ours predicts 4.
    assert abs(count(meta(name)) - reported) / reported < 0.01


@pytest.mark.parametrize(
    ("size", "depth", "width"), [("s", 16, 384), ("b", 16, 768), ("l", 32, 1024), ("xl", 36, 1152)]
)
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_dim_sizes_and_patches(size, depth, width, patch):
    model = meta(f"dim-{size}/{patch}")
    assert len(model.blocks) == depth and model.config.dim == width and model.config.patch_size == patch
    assert set(mixers(model)) == {"BiSSMMixer"}
    assert model.blocks[0].mlp is None  # DiM blocks are SSM-only
    dit = meta(f"dit-{size}/{patch}")
    assert 0.6 < count(model) / count(dit) < 1.4  # "comparable parameters to DiT counterparts"


@pytest.mark.parametrize(
    ("name", "depth", "width", "reported"), [("dimba-l", 28, 1152, 0.9e9), ("dimba-g", 40, 1408, 1.8e9)]
)
def test_dimba_layout_ratio_and_size(name, depth, width, reported):
    model = meta(name)
    assert mixers(model) == ["BiSSMMixer", "AttentionMixer"] * depth
    assert model.config.dim == width and model.config.timestep_conditioning == "adaln_single"
    assert model.blocks[0].cross_attention is None and model.blocks[1].cross_attention is not None
    assert 0.75 < count(model) / reported < 1.25
    two_to_one = meta(name, mamba_per_attention=2)
    assert mixers(two_to_one)[:3] == ["BiSSMMixer", "BiSSMMixer", "AttentionMixer"]


def test_hth_recompute_states_reaches_every_hydra_mixer():
    with torch.device("meta"):
        model = Denoiser(presets.config("hth-s", recompute_states=True, groups=1, hydra_per_group=2))
    hydra = [block.mixer for block in model.blocks if isinstance(block.mixer, HydraMixer)]
    assert len(hydra) == 2 and all(m.recompute_states for m in hydra)
    assert "recompute_states" not in str(presets.config("hth-s").layout)  # the default stays implicit


def test_aliases_overrides_and_unknown_names():
    assert meta("dit-xl").config.patch_size == 2
    assert meta("dit-s/2", in_channels=1, patch_size=4).config.in_channels == 1
    with pytest.raises(ConfigError, match=r"unknown preset 'dit-xxl'; presets: hth-5b, .*dit-s/2"):
        presets.config("dit-xxl")
    with pytest.raises(ConfigError, match="unknown override"):
        presets.config("dit-s", depht=3)


def test_every_preset_builds_on_meta_and_docs_table_is_current():
    table = presets.parameter_table()
    assert table.count("\n| `") == len(presets.names())
    docs = (ROOT / "docs" / "presets.md").read_text()
    assert table in docs, "docs/presets.md is stale: regenerate with python -m hthlight.models.presets"


TEXT = {"context": torch.randn(2, 5, 16), "context_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()}
LABELS = {"label": torch.tensor([3, 7])}
SMALL = {
    "hth-s": (
        {
            "dim": 64,
            "heads": 2,
            "groups": 1,
            "hydra_per_group": 2,
            "d_state": 8,
            "headdim": 16,
            "text_width": 16,
            "in_channels": 1,
        },
        TEXT,
    ),
    "dim-s/2": ({"dim": 64, "depth": 2, "headdim": 16, "d_state": 8, "num_classes": 10, "in_channels": 1}, LABELS),
    "dimba-l": (
        {"dim": 64, "depth": 2, "heads": 2, "headdim": 16, "d_state": 8, "text_width": 16, "in_channels": 1},
        TEXT,
    ),
    "dit-s/2": ({"dim": 64, "depth": 2, "heads": 2, "num_classes": 10, "in_channels": 1}, LABELS),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_every_family_samples_at_unseen_sizes_and_aspect_ratios(name):
    overrides, condition = SMALL[name]
    model = presets.build(name, **overrides).eval()
    for height, width in [(8, 8), (12, 20), (16, 6)]:
        x = torch.randn(2, 1, height, width)
        out = model(x, torch.rand(2), condition)
        assert out.shape == x.shape and torch.isfinite(out).all()
