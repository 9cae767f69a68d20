"""LightningCLI subclass behind ``hthlight fit|validate|test|predict``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

import hthlight.callbacks
import hthlight.data  # noqa: F401  (makes data modules selectable by class name)
from hthlight.errors import HthlightError
from hthlight.module import DiffusionModule

_SPECIAL_CKPT = {"last", "best", "hpc", "registry"}


class HthlightCLI(LightningCLI):
    """LightningCLI for :class:`DiffusionModule` with any LightningDataModule.

    ``data.image_size`` is linked to ``model.image_size``; a checkpoint path that does not
    exist is reported before anything is built.
    """

    def __init__(self, args=None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            DiffusionModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT and not Path(ckpt_path).is_file():
            raise HthlightError(
                f"checkpoint {ckpt_path!r} does not exist (give an existing .ckpt file, or 'last'/'best')"
            )
