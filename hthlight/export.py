"""``hthlight export CKPT OUT_DIR``: a checkpoint's denoiser as safetensors plus its resolved config.

The exported folder holds ``model.safetensors`` (the EMA weights by default, ``--raw`` for the
trained ones, keys as in ``Denoiser.state_dict()``), ``config.json`` and the same as
``config.yaml`` (architecture, scheduler, VAE and sampling settings, which weights, plugin
provenance). :func:`load_exported` (``DiffusionModule.from_exported``) rebuilds a sampling-only
module from it: no optimizer, no EMA copy, no Lightning checkpoint, no pickle.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hthlight.errors import HthlightError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CONFIG_YAML = "config.yaml"
#: DiffusionModule arguments an exported model keeps (the optimizer and EMA settings are training-only)
MODEL_KEYS = (
    "denoiser",
    "scheduler",
    "vae",
    "text_encoder",
    "sampling",
    "image_size",
    "sample_height",
    "sample_width",
    "num_frames",
)


def denoiser_weights(state_dict: dict[str, torch.Tensor], raw: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """The denoiser's tensors from a module state dict: EMA ones unless ``raw`` (or there is no EMA)."""
    ema = {k.removeprefix("ema_denoiser."): v for k, v in state_dict.items() if k.startswith("ema_denoiser.")}
    if ema and not raw:
        return ema, "ema"
    return {k.removeprefix("denoiser."): v for k, v in state_dict.items() if k.startswith("denoiser.")}, "raw"


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, raw: bool = False) -> Path:
    """Write ``out_dir/{model.safetensors,config.json,config.yaml}`` from a Lightning checkpoint."""
    import yaml
    from safetensors.torch import save_file

    from hthlight.checkpointing import load_checkpoint

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise HthlightError(f"checkpoint {str(ckpt_path)!r} does not exist")
    checkpoint = load_checkpoint(ckpt_path)
    hparams = checkpoint.get("hyper_parameters", {})
    if "denoiser" not in hparams:
        raise HthlightError(f"{ckpt_path} is not a DiffusionModule checkpoint (no denoiser hyperparameters)")
    weights, kind = denoiser_weights(checkpoint["state_dict"], raw)
    if not weights:
        raise HthlightError(f"{ckpt_path} holds no denoiser weights")
    config: dict[str, Any] = {k: hparams[k] for k in MODEL_KEYS if k in hparams}
    config = json.loads(json.dumps(config))  # plain lists and dicts (tuples become lists)
    meta = {
        "weights": kind,
        "global_step": checkpoint.get("global_step"),
        "source_checkpoint": ckpt_path.name,
        "hthlight_plugins": checkpoint.get("hthlight_plugins", {}),
    }
    document = {"model": config, "export": meta}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, str(out_dir / WEIGHTS_FILE))
    (out_dir / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    (out_dir / CONFIG_YAML).write_text(yaml.safe_dump(document, sort_keys=False))
    return out_dir


def load_exported(directory: str | Path, map_location: str | torch.device = "cpu"):
    """A sampling-ready :class:`~hthlight.module.DiffusionModule` (eval mode) from an exported folder."""
    from safetensors.torch import load_file

    from hthlight.module import DiffusionModule
    from hthlight.registry import remember_provenance

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise HthlightError(f"{directory} is not an exported model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    document = json.loads(config_path.read_text())
    remember_provenance(document.get("export", {}).get("hthlight_plugins", {}))
    module = DiffusionModule(**document["model"], ema={"decay": 0.0})
    module.configure_model()
    module.denoiser.load_state_dict(load_file(str(weights_path), device=str(map_location)), strict=True)
    return module.to(map_location).eval()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hthlight export", description="Export a checkpoint's denoiser to safetensors + its resolved config."
    )
    parser.add_argument("checkpoint", help="a .ckpt written by hthlight fit")
    parser.add_argument("out_dir", help="folder for model.safetensors, config.json and config.yaml")
    parser.add_argument("--raw", action="store_true", help="export the trained weights instead of the EMA weights")
    args = parser.parse_args(list(argv))
    out = export_checkpoint(args.checkpoint, args.out_dir, raw=args.raw)
    kind = json.loads((out / CONFIG_FILE).read_text())["export"]["weights"]
    print(f"hthlight: exported the {kind} weights of {args.checkpoint} to {out.resolve()}")
    return 0
