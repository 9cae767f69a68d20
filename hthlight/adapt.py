"""Image-to-video adaptation (HTH, Hong et al. 2025, sec. 3.3 and fig. 4).

A text-to-image HTH becomes a video model without new parameters by changing scan orders
only: in every group of ``group_size`` (10) consecutive scanning (Hydra) blocks, the blocks at
``temporal_positions`` (default 2, 3, 6, 7: the second and fourth h/v pair, i.e. every other
pair) switch to temporal-major scans (``h -> th``, ``v -> tv``: all frames of a spatial
position before the next position) and the other blocks to frame-by-frame scans
(``h -> ht``, ``v -> vt``). That is 40% temporal-major, as in the paper; the paper does not
say which pairs, so the positions are an option. With one frame ``th = h`` and ``tv = v``, so
the adapted model computes exactly what the image model did on images.

``hthlight adapt-video IMAGE_CKPT OUT_CKPT [--num-frames T]`` writes an adapted checkpoint
(weights and architecture, no optimizer state) for ``predict`` or as a start for training;
the :class:`VideoAdaptation` callback does the same inside ``hthlight fit`` (config option).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hthlight.errors import ConfigError, HthlightError
from hthlight.models.layout import BlockSpec, expand_blocks
from hthlight.registry import resolve

#: any scan name -> its spatial direction
SPATIAL_DIRECTION = {"h": "h", "ht": "h", "th": "h", "v": "v", "vt": "v", "tv": "v"}
FRAME_BY_FRAME = {"h": "ht", "v": "vt"}
TEMPORAL_MAJOR = {"h": "th", "v": "tv"}
GROUP_SIZE = 10
TEMPORAL_POSITIONS = (2, 3, 6, 7)


@dataclass(frozen=True)
class ScanChange:
    """Block ``block`` (its index in the denoiser) scans ``new`` instead of ``old``."""

    block: int
    old: str
    new: str

    @property
    def temporal_major(self) -> bool:
        return self.new in ("th", "tv")


def _scan_of(mixer: Any) -> str | None:
    """The scan of a scanning mixer spec (its default ``h`` when unset); None for other mixers."""
    from hthlight.mixers.base import ScanningMixer

    target, kwargs = resolve("mixer", mixer)
    if not (isinstance(target, type) and issubclass(target, ScanningMixer)):
        return None
    scan = kwargs.get("scan", "h")
    return scan if isinstance(scan, str) else None


def _mixer_without_scan(mixer: Any) -> Any:
    if isinstance(mixer, str):
        return mixer
    spec = dict(mixer)
    if "class_path" in spec:
        init_args = {k: v for k, v in dict(spec.get("init_args") or {}).items() if k != "scan"}
        spec["init_args"] = init_args
    spec.pop("scan", None)
    return spec if set(spec) != {"name"} else spec["name"]


def plan_scans(
    layout: Sequence[Any], group_size: int = GROUP_SIZE, temporal_positions: Sequence[int] = TEMPORAL_POSITIONS
) -> tuple[list[str | None], list[ScanChange]]:
    """Each block's video scan (None for non-scanning blocks) and the blocks whose scan changes."""
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    bad = [p for p in temporal_positions if not 0 <= p < group_size]
    if bad:
        raise ConfigError(f"temporal_positions {bad} are outside a group of {group_size} blocks (0..{group_size - 1})")
    scans: list[str | None] = []
    changes: list[ScanChange] = []
    position = 0
    for i, block in enumerate(expand_blocks(layout)):
        old = _scan_of(block.mixer)
        if old is None or old not in SPATIAL_DIRECTION:
            scans.append(None if old is None else old)
            continue
        direction = SPATIAL_DIRECTION[old]
        table = TEMPORAL_MAJOR if position % group_size in temporal_positions else FRAME_BY_FRAME
        new = table[direction]
        position += 1
        scans.append(new)
        if new != old:
            changes.append(ScanChange(i, old, new))
    return scans, changes


def video_layout(
    layout: Sequence[Any], group_size: int = GROUP_SIZE, temporal_positions: Sequence[int] = TEMPORAL_POSITIONS
) -> tuple[list[Any], list[ScanChange]]:
    """The adapted layout (one entry per run of equal blocks, with explicit ``scans``) and the changes.

    The blocks, their order, mixers and options are unchanged, so parameter names and shapes
    are those of ``layout``; only scan orders differ.
    """
    scans, changes = plan_scans(layout, group_size, temporal_positions)
    entries: list[dict[str, Any]] = []
    for block, scan in zip(expand_blocks(layout), scans):
        base = _mixer_without_scan(block.mixer) if scan is not None else block.mixer
        last = entries[-1] if entries else None
        if (
            last is not None
            and last["mixer"] == base
            and last.get("block", {}) == block.options
            and (("scans" in last) == (scan is not None))
        ):
            last["repeat"] += 1
            if scan is not None:
                last["scans"].append(scan)
            continue
        entry: dict[str, Any] = {"mixer": base, "repeat": 1}
        if scan is not None:
            entry["scans"] = [scan]
        if block.options:
            entry["block"] = dict(block.options)
        entries.append(entry)
    for entry in entries:
        scans_list = entry.get("scans")
        if scans_list and len(set(scans_list)) == 1:
            entry["scans"] = scans_list[:1]
    return entries, changes


def describe_changes(changes: Sequence[ScanChange]) -> str:
    """One line per changed block, then a summary."""
    lines = [
        f"block {c.block:3d}: {c.old} -> {c.new}{'  (temporal-major)' if c.temporal_major else ''}" for c in changes
    ]
    temporal = sum(c.temporal_major for c in changes)
    lines.append(f"{len(changes)} scanning block(s) changed, {temporal} of them to temporal-major scans")
    return "\n".join(lines)


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HthlightError(f"checkpoint '{path}' does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint or "denoiser" not in checkpoint.get("hyper_parameters", {}):
        raise HthlightError(f"'{path}' is not an hthlight checkpoint (no state_dict or denoiser hyperparameters)")
    return checkpoint


def adapt_checkpoint(
    image_ckpt: str | Path,
    out_ckpt: str | Path,
    num_frames: int | None = None,
    group_size: int = GROUP_SIZE,
    temporal_positions: Sequence[int] = TEMPORAL_POSITIONS,
) -> list[ScanChange]:
    """Write ``out_ckpt``: the weights of ``image_ckpt`` with the video layout (no optimizer state)."""
    checkpoint = load_checkpoint(image_ckpt)
    hparams = dict(checkpoint["hyper_parameters"])
    denoiser = dict(hparams["denoiser"])
    denoiser["layout"], changes = video_layout(denoiser["layout"], group_size, temporal_positions)
    hparams["denoiser"] = denoiser
    if num_frames is not None:
        if num_frames < 1:
            raise ConfigError(f"--num-frames must be >= 1, got {num_frames}")
        hparams["num_frames"] = num_frames
    out = {
        "state_dict": checkpoint["state_dict"],
        "hyper_parameters": hparams,
        "hthlight_plugins": checkpoint.get("hthlight_plugins", {}),
        "hthlight_adapted_from": str(image_ckpt),
        "pytorch-lightning_version": checkpoint.get("pytorch-lightning_version", L.__version__),
    }
    Path(out_ckpt).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, out_ckpt)
    return changes


def _architecture_without_scans(denoiser: Mapping[str, Any]) -> dict[str, Any]:
    config = dict(denoiser)
    config["layout"] = [BlockSpec(_mixer_without_scan(b.mixer), b.options) for b in expand_blocks(config["layout"])]
    return config


def load_image_weights(pl_module: L.LightningModule, checkpoint: Mapping[str, Any], source: str) -> None:
    """Copy an image checkpoint's denoiser (and EMA, or the denoiser again) into ``pl_module``."""
    ours = _architecture_without_scans(pl_module.hparams["denoiser"])
    theirs = _architecture_without_scans(checkpoint["hyper_parameters"]["denoiser"])
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differing:
        raise ConfigError(
            f"the model's denoiser differs from the one in '{source}' in {', '.join(differing)}; "
            "image-to-video adaptation changes scan orders only: make the other settings equal"
        )
    state = checkpoint["state_dict"]
    denoiser = {k.removeprefix("denoiser."): v for k, v in state.items() if k.startswith("denoiser.")}
    pl_module.denoiser.load_state_dict(denoiser)
    if pl_module.ema_denoiser is not None:
        ema = {k.removeprefix("ema_denoiser."): v for k, v in state.items() if k.startswith("ema_denoiser.")}
        pl_module.ema_denoiser.load_state_dict(ema or denoiser)


class VideoAdaptation(L.Callback):
    """Config option for ``hthlight fit``: switch the model to the video scans (and load image weights).

    In ``setup`` (before the denoiser is built) the model's layout becomes :func:`video_layout`
    of it (also in the saved hyperparameters, so checkpoints rebuild the video model); at the
    start of fitting, unless resuming from ``--ckpt_path``, the weights of ``image_checkpoint``
    are loaded (the architectures must agree except for scans).

    Args:
        image_checkpoint: hthlight checkpoint of the image model (None: adapt the scans only).
        group_size: scanning blocks per group (HTH: 10).
        temporal_positions: positions in each group that become temporal-major (th/tv).
    """

    def __init__(
        self,
        image_checkpoint: str | None = None,
        group_size: int = GROUP_SIZE,
        temporal_positions: list[int] = list(TEMPORAL_POSITIONS),  # noqa: B006 (shown by --print_config)
    ) -> None:
        self.image_checkpoint = image_checkpoint
        self.group_size = group_size
        self.temporal_positions = tuple(temporal_positions)
        self.changes: list[ScanChange] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        layout, self.changes = video_layout(pl_module.denoiser_config.layout, self.group_size, self.temporal_positions)
        pl_module.denoiser_config.layout = layout
        pl_module.hparams["denoiser"]["layout"] = layout
        for model in (getattr(pl_module, "denoiser", None), getattr(pl_module, "ema_denoiser", None)):
            if model is not None:
                for change in self.changes:
                    model.blocks[change.block].mixer.set_scan(change.new)
        if trainer.is_global_zero and self.changes:
            print("hthlight: video adaptation (HTH sec. 3.3):\n" + describe_changes(self.changes))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.image_checkpoint is None or trainer.ckpt_path is not None:
            return
        load_image_weights(pl_module, load_checkpoint(self.image_checkpoint), self.image_checkpoint)


def main(argv: Sequence[str]) -> int:
    """``hthlight adapt-video IMAGE_CKPT OUT_CKPT [--num-frames T]``."""
    parser = argparse.ArgumentParser(
        prog="hthlight adapt-video", description="Initialise a video model from an image checkpoint (HTH sec. 3.3)."
    )
    parser.add_argument("image_ckpt")
    parser.add_argument("out_ckpt")
    parser.add_argument("--num-frames", type=int, default=None, help="frames the video model generates")
    parser.add_argument("--group-size", type=int, default=GROUP_SIZE, help="scanning blocks per group (HTH: 10)")
    parser.add_argument(
        "--temporal-positions",
        default=",".join(map(str, TEMPORAL_POSITIONS)),
        help="comma-separated positions in each group that become th/tv (default 2,3,6,7)",
    )
    args = parser.parse_args(list(argv))
    try:
        positions = [int(p) for p in args.temporal_positions.split(",") if p.strip()]
    except ValueError as err:
        raise ConfigError(
            f"--temporal-positions must be comma-separated integers, got {args.temporal_positions!r}"
        ) from err
    changes = adapt_checkpoint(args.image_ckpt, args.out_ckpt, args.num_frames, args.group_size, positions)
    print(describe_changes(changes))
    print(f"hthlight: wrote {args.out_ckpt} (no new parameters; optimizer state not copied)")
    return 0
