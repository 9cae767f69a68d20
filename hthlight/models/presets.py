"""Named denoisers of the papers hthlight implements, built exactly from their published sizes.

``names()`` lists them; ``config(name, **overrides)`` returns the :class:`DenoiserConfig` and
``build(name, **overrides)`` the :class:`Denoiser`. Overrides are ``DenoiserConfig`` fields
(e.g. ``in_channels=1``) or the family's own knobs (e.g. Dimba's ``mamba_per_attention``).
Names with a ``/p`` suffix fix the patch size (``dit-xl/2``), as in the DiT paper.

* HTH (Hong et al. 2025): 33 blocks = 3 x (10 Hydra alternating h/v + 1 attention), additive
  timestep, cross-attention to FLAN-T5-XXL features (4096 wide), MLP 2x, QK-norm.
* DiM (Mo & Tian 2024, table 1): S/B/L/XL = 16/16/32/36 bidirectional-SSM blocks of width
  384/768/1024/1152, adaLN-Zero, class labels, patch 2/4/8.
* Dimba (Fei et al. 2024): L = 28 x 1152, G = 40 x 1408 blocks of [Mamba layer + attention
  block with cross-attention to T5 (350 tokens)], adaLN-single, patch 2.
* DiT (Peebles & Xie 2023): S/B/L/XL = 12/12/24/28 attention blocks, 384/768/1024/1152,
  6/12/16/16 heads, adaLN-Zero, MLP 4x.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hthlight.errors import ConfigError
from hthlight.models.denoiser import Denoiser, DenoiserConfig

T5_XXL_WIDTH = 4096
IMAGENET_CLASSES = 1000


def hth(
    dim: int,
    heads: int,
    hydra_per_group: int = 10,
    groups: int = 3,
    d_state: int = 256,
    headdim: int = 64,
    expand: int = 2,
    d_conv: int = 7,
    ngroups: int = 1,
    text_width: int = T5_XXL_WIDTH,
    recompute_states: bool = False,
    **fields: Any,
) -> DenoiserConfig:
    """HTH: ``groups`` x (``hydra_per_group`` Hydra blocks alternating h/v scans + 1 attention block).

    ``recompute_states``: the Hydra mixers' option of that name (memory for backward time).
    """
    hydra = {
        "name": "hydra",
        "d_state": d_state,
        "headdim": headdim,
        "expand": expand,
        "d_conv": d_conv,
        "ngroups": ngroups,
        **({"recompute_states": True} if recompute_states else {}),
    }
    layout = [
        {
            "repeat": groups,
            "layout": [
                {"mixer": hydra, "repeat": hydra_per_group, "scans": ["h", "v"]},
                {"mixer": {"name": "attention", "num_heads": heads, "qk_norm": True}},
            ],
        }
    ]
    base = {
        "dim": dim,
        "patch_size": 2,
        "in_channels": 4,
        "mlp_ratio": 2.0,
        "layout": layout,
        "timestep_conditioning": "additive",
        "cross_attention_heads": heads,
        "qk_norm": True,
        "conditioner": {"name": "text_embedding", "context_dim": text_width},
    }
    return DenoiserConfig(**{**base, **fields})


def dit(depth: int, dim: int, heads: int, num_classes: int = IMAGENET_CLASSES, **fields: Any) -> DenoiserConfig:
    """DiT: ``depth`` adaLN-Zero self-attention blocks, class-conditional."""
    base = {
        "dim": dim,
        "patch_size": 2,
        "in_channels": 4,
        "mlp_ratio": 4.0,
        "layout": [{"mixer": {"name": "attention", "num_heads": heads}, "repeat": depth}],
        "timestep_conditioning": "adaln",
        "conditioner": {"name": "class_label", "num_classes": num_classes, "dropout": 0.1},
    }
    return DenoiserConfig(**{**base, **fields})


def dim_model(
    depth: int,
    dim: int,
    num_classes: int = IMAGENET_CLASSES,
    d_state: int = 16,
    headdim: int = 64,
    expand: int = 2,
    d_conv: int = 4,
    **fields: Any,
) -> DenoiserConfig:
    """DiM: ``depth`` adaLN-Zero blocks of a bidirectional SSM (no MLP), class-conditional."""
    ssm = {"name": "bi_ssm", "d_state": d_state, "headdim": headdim, "expand": expand, "d_conv": d_conv}
    base = {
        "dim": dim,
        "patch_size": 2,
        "in_channels": 4,
        "mlp_ratio": 0.0,
        "layout": [{"mixer": ssm, "repeat": depth, "scans": ["h"]}],
        "timestep_conditioning": "adaln",
        "conditioner": {"name": "class_label", "num_classes": num_classes, "dropout": 0.1},
    }
    return DenoiserConfig(**{**base, **fields})


def dimba(
    depth: int,
    dim: int,
    heads: int,
    mamba_per_attention: int = 1,
    d_state: int = 64,
    headdim: int = 64,
    expand: int = 2,
    d_conv: int = 4,
    text_width: int = T5_XXL_WIDTH,
    **fields: Any,
) -> DenoiserConfig:
    """Dimba: ``depth`` x [``mamba_per_attention`` bare bidirectional-SSM layers + 1 attention block]."""
    if mamba_per_attention < 0:
        raise ConfigError(f"mamba_per_attention must be >= 0, got {mamba_per_attention}")
    ssm = {"name": "bi_ssm", "d_state": d_state, "headdim": headdim, "expand": expand, "d_conv": d_conv}
    group = [{"mixer": {"name": "attention", "num_heads": heads}}]
    if mamba_per_attention:
        bare = {"mlp_ratio": 0.0, "cross_attention": False}
        group.insert(0, {"mixer": ssm, "repeat": mamba_per_attention, "scans": ["h"], "block": bare})
    base = {
        "dim": dim,
        "patch_size": 2,
        "in_channels": 4,
        "mlp_ratio": 4.0,
        "layout": [{"repeat": depth, "layout": group}],
        "timestep_conditioning": "adaln_single",
        "cross_attention_heads": heads,
        "conditioner": {"name": "text_embedding", "context_dim": text_width},
    }
    return DenoiserConfig(**{**base, **fields})


@dataclass(frozen=True)
class Preset:
    """A named model: how to build its config and what its paper reports."""

    name: str
    family: str
    make: Callable[..., DenoiserConfig]
    kwargs: dict[str, Any]
    reported_params: str | None = None

    def config(self, **overrides: Any) -> DenoiserConfig:
        return self.make(**{**self.kwargs, **overrides})


def _presets() -> dict[str, Preset]:
    table: list[Preset] = [
        Preset("hth-5b", "HTH", hth, {"dim": 3072, "heads": 32}, "5B"),
        Preset("hth-xl", "HTH", hth, {"dim": 1152, "heads": 18}),
        Preset("hth-l", "HTH", hth, {"dim": 1024, "heads": 16}),
        Preset("hth-b", "HTH", hth, {"dim": 768, "heads": 12}),
        Preset("hth-s", "HTH", hth, {"dim": 384, "heads": 6}),
        Preset("dimba-l", "Dimba", dimba, {"depth": 28, "dim": 1152, "heads": 16}, "0.9B"),
        Preset("dimba-g", "Dimba", dimba, {"depth": 40, "dim": 1408, "heads": 16}, "1.8B"),
    ]
    dit_sizes = {
        "s": (12, 384, 6, "33M"),
        "b": (12, 768, 12, "130M"),
        "l": (24, 1024, 16, "458M"),
        "xl": (28, 1152, 16, "675M"),
    }
    dim_sizes = {"s": (16, 384), "b": (16, 768), "l": (32, 1024), "xl": (36, 1152)}
    for size, (depth, width, heads, reported) in dit_sizes.items():
        for patch in (2, 4, 8):
            table.append(
                Preset(
                    f"dit-{size}/{patch}",
                    "DiT",
                    dit,
                    {"depth": depth, "dim": width, "heads": heads, "patch_size": patch},
                    reported if patch == 2 else None,
                )
            )
    for size, (depth, width) in dim_sizes.items():
        for patch in (2, 4, 8):
            table.append(
                Preset(
                    f"dim-{size}/{patch}",
                    "DiM",
                    dim_model,
                    {"depth": depth, "dim": width, "patch_size": patch},
                    "comparable to DiT",
                )
            )
    return {p.name: p for p in table}


PRESETS = _presets()
_ALIASES = {name.split("/")[0]: name for name in PRESETS if name.endswith("/2")}  # dit-xl -> dit-xl/2


def names() -> list[str]:
    """Every preset name (``dit-xl`` is short for ``dit-xl/2``; ``dim-s`` for ``dim-s/2``)."""
    return list(PRESETS)


def get(name: str) -> Preset:
    key = _ALIASES.get(name, name)
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(names())}")
    return PRESETS[key]


def config(name: str, **overrides: Any) -> DenoiserConfig:
    """The :class:`DenoiserConfig` of preset ``name`` with ``overrides`` applied."""
    preset = get(name)
    known = {f.name for f in dataclasses.fields(DenoiserConfig)} | set(_family_knobs(preset))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"preset {name!r} got unknown override(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
        )
    return preset.config(**overrides)


def build(name: str, **overrides: Any) -> Denoiser:
    """The denoiser of preset ``name`` (on the current default device; use ``torch.device('meta')`` to count)."""
    return Denoiser(config(name, **overrides))


def _family_knobs(preset: Preset) -> list[str]:
    import inspect

    return [p for p in inspect.signature(preset.make).parameters if p != "fields"]


@dataclass
class PresetSpec:
    """A preset by name in a config: ``denoiser: {preset: dit-xl/2, overrides: {in_channels: 1}}``.

    Args:
        preset: a name from :func:`names` (``hthlight.models.presets``).
        overrides: ``DenoiserConfig`` fields or family knobs to change.
    """

    preset: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def resolve(self) -> DenoiserConfig:
        return config(self.preset, **self.overrides)


def parameter_count(name: str, **overrides: Any) -> int:
    """Parameters of preset ``name``, counted on the meta device (no memory is allocated)."""
    import torch

    with torch.device("meta"):
        model = build(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def _short(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def parameter_table() -> str:
    """Markdown table of every preset: family, blocks, width, patch, parameters, paper's figure."""
    rows = [
        "| preset | family | blocks | width | patch | parameters | paper reports |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, preset in PRESETS.items():
        cfg = preset.config()
        import torch

        with torch.device("meta"):
            model = Denoiser(cfg)
        count = sum(p.numel() for p in model.parameters())
        rows.append(
            f"| `{name}` | {preset.family} | {len(model.blocks)} | {cfg.dim} | {cfg.patch_size} | {_short(count)} "
            f"| {preset.reported_params or '-'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(parameter_table())
