"""LightningCLI subclass behind ``hthlight fit|validate|test|predict``."""

from __future__ import annotations

import argparse
import difflib
import re
import warnings
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentError, DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI

import hthlight.callbacks
import hthlight.data  # noqa: F401  (makes data modules selectable by class name)
from hthlight.cli import USAGE_EXTRA
from hthlight.errors import ConfigError, HthlightError
from hthlight.module import DiffusionModule
from hthlight.registry import remember_provenance

# The EMA copy of the denoiser is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

_SPECIAL_CKPT = {"last", "best", "hpc", "registry"}
#: hyperparameters a checkpoint dictates: they must match its weights
ARCHITECTURE_HPARAMS = ("denoiser", "scheduler", "vae", "num_frames")

DESCRIPTION = (
    """Train and sample diffusion models mixing Hydra state-space mixers with attention.

Typical use:
  hthlight fit --config configs/digits.yaml
  hthlight predict --config configs/digits.yaml --ckpt_path runs/digits/checkpoints/last.ckpt
  hthlight fit --config configs/digits.yaml --print_config     (every option with its default)
"""
    + USAGE_EXTRA
)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the line breaks of the description."""


class HthlightCLI(LightningCLI):
    """LightningCLI for :class:`DiffusionModule` with any LightningDataModule.

    ``data.image_size`` is linked to ``model.image_size``; a checkpoint path that does not
    exist is reported before anything is built.
    """

    def __init__(self, args=None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # Parse errors raise (instead of printing the whole usage) so main() can print one line.
        kwargs.setdefault("auto_configure_optimizers", False)  # the optimizer lives in model.optimizer
        parser_kwargs = {"exit_on_error": False, "description": DESCRIPTION, "formatter_class": _HelpFormatter}
        parser_kwargs.update({name: {"exit_on_error": False} for name in self.subcommands()})
        kwargs.setdefault("parser_kwargs", parser_kwargs)
        super().__init__(
            DiffusionModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as exc:
            raise ConfigError(explain_parse_error(str(exc), self._subcommand_parsers)) from exc

    def _parse_ckpt_path(self) -> None:
        """Take the architecture (denoiser, scheduler, vae) from ``--ckpt_path``'s hyperparameters.

        Lightning would apply every saved hyperparameter over the command line; run-time
        settings (sampling steps, guidance, sample size, optimizer) must stay overridable.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        remember_provenance(checkpoint.get("hthlight_plugins", {}))
        hparams = checkpoint.get("hyper_parameters", {})
        architecture = {k: hparams[k] for k in ARCHITECTURE_HPARAMS if k in hparams}
        if architecture:
            self.config[subcommand]["model"]["denoiser"] = None  # replace, do not merge into a preset spec
            self.config = self.parser.parse_object({subcommand: {"model": architecture}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT and not Path(ckpt_path).is_file():
            raise HthlightError(
                f"checkpoint {ckpt_path!r} does not exist (give an existing .ckpt file, or 'last'/'best')"
            )


_UNKNOWN_KEY = re.compile(r"(?:does not accept (?:nested key|option) '?|unrecognized arguments: --)([\w.]+)")


def explain_parse_error(message: str, subcommand_parsers: dict) -> str:
    """Turn jsonargparse's message into one line; for an unknown key, list what is accepted there."""
    first_line = " ".join(message.split())
    match = _UNKNOWN_KEY.search(message)
    subcommand = re.search(r"Subcommand '(\w+)'", message)
    parser = subcommand_parsers.get(subcommand.group(1) if subcommand else "fit")
    if match is None or parser is None:
        return first_line
    key = match.group(1)
    known = list(parser.get_defaults().keys())
    prefix = key.rpartition(".")[0]
    while prefix and not any(k.startswith(prefix + ".") for k in known):
        prefix = prefix.rpartition(".")[0]
    start = len(prefix) + 1 if prefix else 0
    children = sorted({k[start:].split(".")[0] for k in known if k.startswith(prefix + ".") or not prefix})
    close = difflib.get_close_matches(key[start:].split(".")[0], children, n=1)
    hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
    where = f"'{prefix}'" if prefix else "the top level"
    return f"unknown config key '{key}'{hint}; keys accepted under {where}: {', '.join(children)}"
