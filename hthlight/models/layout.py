"""Block layouts: declare a denoiser's stack of token mixers compactly in config.

A layout is a list of entries, expanded in order:

* ``"attention"`` — one block with that mixer (a registry name);
* ``{mixer: SPEC, repeat: N, scans: [h, v]}`` — N blocks with mixer SPEC (a name,
  ``{name: ..., **kwargs}`` or ``{class_path: ..., init_args: ...}``); ``scans``, if given,
  is cycled over the N repeats and sets each block's ``scan``;
* ``{layout: [...], repeat: N}`` — a group, repeated N times.

A mixer entry may also carry ``block: {...}``, per-block options of
:class:`hthlight.models.blocks.DenoiserBlock` (e.g. ``{mlp_ratio: 0, cross_attention: false}``
for a bare Mamba layer between Dimba's attention blocks).

HTH-5B (Hong et al. 2025, sec. 3.2) is ``[{repeat: 3, layout: [{mixer: hydra, repeat: 10,
scans: [h, v]}, {mixer: attention}]}]``: 33 blocks, 3 x (10 Hydra alternating h/v + 1 attention).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hthlight.errors import ConfigError

_ENTRY_KEYS = {"mixer", "repeat", "scans", "layout", "block"}
BLOCK_OPTIONS = {"mlp_ratio", "cross_attention"}


@dataclass(frozen=True)
class BlockSpec:
    """One block of an expanded layout: its mixer spec and per-block options."""

    mixer: dict[str, Any] | str
    options: dict[str, Any] = field(default_factory=dict)


def expand_layout(layout: Sequence[Any]) -> list[dict[str, Any] | str]:
    """Expand a layout into one mixer spec per block (names stay names, mappings are copied)."""
    return [block.mixer for block in expand_blocks(layout)]


def expand_blocks(layout: Sequence[Any]) -> list[BlockSpec]:
    """Expand a layout into one :class:`BlockSpec` per block."""
    if isinstance(layout, (str, Mapping)) or not isinstance(layout, Sequence):
        raise ConfigError(f"layout must be a list of entries, got {layout!r}")
    blocks: list[BlockSpec] = []
    for entry in layout:
        blocks.extend(_expand_entry(entry))
    if not blocks:
        raise ConfigError("layout expands to no blocks; give at least one mixer")
    return blocks


def _expand_entry(entry: Any) -> list[BlockSpec]:
    if isinstance(entry, str):
        return [BlockSpec(entry)]
    if not isinstance(entry, Mapping):
        raise ConfigError(f"a layout entry must be a mixer name or a mapping, got {entry!r}")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"unknown layout key(s) {sorted(unknown)} in {dict(entry)!r}; allowed: {sorted(_ENTRY_KEYS)}")
    repeat = entry.get("repeat", 1)
    if not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"layout 'repeat' must be a positive integer, got {repeat!r}")
    if ("layout" in entry) == ("mixer" in entry):
        raise ConfigError(f"a layout entry needs exactly one of 'mixer' or 'layout', got {dict(entry)!r}")
    if "layout" in entry:
        for key in ("scans", "block"):
            if key in entry:
                raise ConfigError(f"'{key}' belongs on a mixer entry, not on a group")
        return [block for _ in range(repeat) for block in expand_blocks(entry["layout"])]  # fresh copies
    scans = entry.get("scans")
    if scans is not None and (isinstance(scans, str) or not scans):
        raise ConfigError(f"'scans' must be a non-empty list of scan names, got {scans!r}")
    options = dict(entry.get("block") or {})
    unknown_options = set(options) - BLOCK_OPTIONS
    if unknown_options:
        raise ConfigError(f"unknown block option(s) {sorted(unknown_options)}; allowed: {sorted(BLOCK_OPTIONS)}")
    return [
        BlockSpec(_with_scan(entry["mixer"], scans[i % len(scans)] if scans else None), options) for i in range(repeat)
    ]


def _with_scan(mixer: Any, scan: str | None) -> dict[str, Any] | str:
    if scan is None:
        return dict(mixer) if isinstance(mixer, Mapping) else mixer
    spec = {"name": mixer} if isinstance(mixer, str) else dict(mixer)
    if "class_path" in spec:
        init_args = dict(spec.get("init_args") or {})
        init_args["scan"] = scan
        spec["init_args"] = init_args
    else:
        spec["scan"] = scan
    return spec
