"""Block layouts: declare a denoiser's stack of token mixers compactly in config.

A layout is a list of entries, expanded in order:

* ``"attention"`` — one block with that mixer (a registry name);
* ``{mixer: SPEC, repeat: N, scans: [h, v]}`` — N blocks with mixer SPEC (a name,
  ``{name: ..., **kwargs}`` or ``{class_path: ..., init_args: ...}``); ``scans``, if given,
  is cycled over the N repeats and sets each block's ``scan``;
* ``{layout: [...], repeat: N}`` — a group, repeated N times.

HTH-5B (Hong et al. 2025, sec. 3.2) is ``[{repeat: 3, layout: [{mixer: hydra, repeat: 10,
scans: [h, v]}, {mixer: attention}]}]``: 33 blocks, 3 x (10 Hydra alternating h/v + 1 attention).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hthlight.errors import ConfigError

_ENTRY_KEYS = {"mixer", "repeat", "scans", "layout"}


def expand_layout(layout: Sequence[Any]) -> list[dict[str, Any] | str]:
    """Expand a layout into one mixer spec per block (names stay names, mappings are copied)."""
    if isinstance(layout, (str, Mapping)) or not isinstance(layout, Sequence):
        raise ConfigError(f"layout must be a list of entries, got {layout!r}")
    specs: list[dict[str, Any] | str] = []
    for entry in layout:
        specs.extend(_expand_entry(entry))
    if not specs:
        raise ConfigError("layout expands to no blocks; give at least one mixer")
    return specs


def _expand_entry(entry: Any) -> list[dict[str, Any] | str]:
    if isinstance(entry, str):
        return [entry]
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
        if "scans" in entry:
            raise ConfigError("'scans' belongs on a mixer entry, not on a group")
        return expand_layout(entry["layout"]) * repeat
    scans = entry.get("scans")
    if scans is not None and (isinstance(scans, str) or not scans):
        raise ConfigError(f"'scans' must be a non-empty list of scan names, got {scans!r}")
    return [_with_scan(entry["mixer"], scans[i % len(scans)] if scans else None) for i in range(repeat)]


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
