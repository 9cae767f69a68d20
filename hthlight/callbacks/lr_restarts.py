"""Cosine annealing restarted at a lower peak whenever validation loss plateaus (HTH stage "180p T2V").

HTH (Hong et al. 2025, sec. 4, "180p T2V") resets the starting learning rate of its cosine
schedule each time the validation loss stops improving: 1e-4, then 5e-5, 3e-5 and 1e-5.
This callback sets every optimizer group's learning rate before each training step to
``min_lr + (peak - min_lr) * (1 + cos(pi * min(1, s / cycle_steps))) / 2`` where ``s`` counts
steps since the current cycle began; after ``patience`` validations without an improvement
of ``monitor`` by more than ``min_delta`` it starts the next cycle at the next peak (the last
peak's cycle is never restarted). Use it with ``model.optimizer.schedule: constant`` (its
per-step setting overrides the module's schedule). Its state is saved in checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from hthlight.errors import ConfigError


class CosineRestartsOnPlateau(L.Callback):
    """Args:
    peaks: starting learning rate of each cycle, in order (HTH: [1e-4, 5e-5, 3e-5, 1e-5]).
    cycle_steps: steps over which one cycle anneals from its peak to ``min_lr``.
    min_lr: floor of every cycle.
    monitor: logged metric that must keep improving (lower is better).
    patience: validations without improvement before the next cycle starts.
    min_delta: smallest decrease that counts as an improvement.
    """

    def __init__(
        self,
        peaks: list[float],
        cycle_steps: int,
        min_lr: float = 0.0,
        monitor: str = "val/loss",
        patience: int = 3,
        min_delta: float = 0.0,
    ) -> None:
        if not peaks or any(p <= 0 for p in peaks):
            raise ConfigError(f"peaks must be a non-empty list of positive learning rates, got {peaks}")
        if cycle_steps < 1 or patience < 1:
            raise ConfigError(f"cycle_steps and patience must be >= 1, got {cycle_steps} and {patience}")
        self.peaks = [float(p) for p in peaks]
        self.cycle_steps = cycle_steps
        self.min_lr = min_lr
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.cycle = 0
        self.cycle_start = 0
        self.best = math.inf
        self.bad_checks = 0

    def learning_rate(self, step: int) -> float:
        progress = min(1.0, max(0, step - self.cycle_start) / self.cycle_steps)
        peak = self.peaks[self.cycle]
        return self.min_lr + (peak - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        lr = self.learning_rate(trainer.global_step)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value < self.best - self.min_delta:
            self.best, self.bad_checks = value, 0
            return
        self.bad_checks += 1
        if self.bad_checks >= self.patience and self.cycle + 1 < len(self.peaks):
            self.cycle += 1
            self.cycle_start = trainer.global_step
            self.bad_checks = 0
            pl_module.print(f"hthlight: {self.monitor} plateaued; learning rate reset to {self.peaks[self.cycle]:g}")

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "cycle_start": self.cycle_start, "best": self.best, "bad_checks": self.bad_checks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cycle = int(state_dict["cycle"])
        self.cycle_start = int(state_dict["cycle_start"])
        self.best = float(state_dict["best"])
        self.bad_checks = int(state_dict["bad_checks"])
