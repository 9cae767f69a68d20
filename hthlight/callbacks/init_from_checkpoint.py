"""Start training from another run's weights, without its optimizer state or step count.

A fine-tuning stage (HTH's 1K stage after the 256p one, Hong et al. 2025, sec. 4) starts from the
previous stage's weights but with a fresh optimizer, learning-rate schedule and step counter,
which ``--ckpt_path`` (a resume) would restore instead.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from hthlight.errors import ConfigError


class InitFromCheckpoint(L.Callback):
    """Load the denoiser (and EMA) weights of an hthlight checkpoint when ``fit`` starts.

    Skipped when the run resumes from ``--ckpt_path`` (its own weights win). The checkpoint's
    denoiser architecture must equal the model's.

    Args:
        checkpoint: path of an hthlight ``.ckpt`` file.
        use_ema: initialise both the trained and the EMA weights from the checkpoint's EMA
            weights (when it has them); False: from its trained weights.
    """

    def __init__(self, checkpoint: str, use_ema: bool = True) -> None:
        self.checkpoint = checkpoint
        self.use_ema = use_ema

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and not Path(self.checkpoint).is_file():
            raise ConfigError(f"InitFromCheckpoint: checkpoint '{self.checkpoint}' does not exist")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return
        checkpoint = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        ours, theirs = pl_module.hparams["denoiser"], checkpoint["hyper_parameters"]["denoiser"]
        differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differing:
            raise ConfigError(
                f"InitFromCheckpoint: the model's denoiser differs from the one in '{self.checkpoint}' in "
                f"{', '.join(differing)}; make them equal"
            )
        state = checkpoint["state_dict"]
        weights = {k.removeprefix("denoiser."): v for k, v in state.items() if k.startswith("denoiser.")}
        ema = {k.removeprefix("ema_denoiser."): v for k, v in state.items() if k.startswith("ema_denoiser.")}
        source = ema if (self.use_ema and ema) else weights
        pl_module.denoiser.load_state_dict(source)
        if pl_module.ema_denoiser is not None:
            pl_module.ema_denoiser.load_state_dict(source)
