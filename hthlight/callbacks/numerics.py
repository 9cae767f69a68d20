"""Numerics guard: skip optimizer steps whose loss or gradients are not finite, stop after repeats.

A bf16 run that meets one bad batch (an overflow, a corrupt sample) should not write NaN into
its weights, its Adam moments or its EMA. The guard checks the loss before backward and every
gradient before the optimizer step, agrees on the verdict across ranks (one all-reduce), and on
a bad step drops the gradients: AdamW skips parameters without gradients, so weights, moments
and (see ``DiffusionModule.on_train_batch_end``) the EMA stay as they were. The step counter and
the learning-rate schedule still advance. Checkpoints written so far hold only good weights.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch

from hthlight.errors import ConfigError, HthlightError


class NumericsError(HthlightError):
    """Training met non-finite values more often than the guard allows."""


class NumericsGuard(L.Callback):
    """Detect non-finite loss or gradients; skip (and count) or stop.

    Args:
        policy: ``skip`` drops the bad step and goes on; ``stop`` ends the run at the first one.
        max_consecutive: with ``skip``, this many bad steps in a row stop the run.
        max_total: with ``skip``, this many bad steps in all stop the run (None: no limit).
        check_gradients: also check every gradient (one fused reduction per step).
    """

    def __init__(
        self,
        policy: Literal["skip", "stop"] = "skip",
        max_consecutive: int = 5,
        max_total: int | None = None,
        check_gradients: bool = True,
    ) -> None:
        if policy not in ("skip", "stop"):
            raise ConfigError(f"NumericsGuard policy must be 'skip' or 'stop', got {policy!r}")
        if max_consecutive < 1 or (max_total is not None and max_total < 1):
            raise ConfigError("NumericsGuard max_consecutive and max_total must be >= 1")
        self.policy = policy
        self.max_consecutive = max_consecutive
        self.max_total = max_total
        self.check_gradients = check_gradients
        self.skipped_total = 0
        self.consecutive = 0
        self.skipped_this_step = False
        self._loss_bad = False
        self._last_bad: str = ""

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.skipped_this_step = False
        self._loss_bad = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._loss_bad = not bool(torch.isfinite(loss.detach()).all())
        if self._loss_bad:
            self._last_bad = f"loss {float(loss.detach().float().mean())}"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad = self._loss_bad
        if self.check_gradients and not bad:
            bad_grad = _first_non_finite_grad(pl_module)
            if bad_grad is not None:
                bad, self._last_bad = True, f"gradient of {bad_grad}"
        flag = torch.tensor(float(bad), device=pl_module.device)
        bad = bool(trainer.strategy.reduce(flag, reduce_op="sum") > 0)  # every rank skips together
        if not bad:
            self.consecutive = 0
            return
        self.skipped_this_step = True
        self.skipped_total += 1
        self.consecutive += 1
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None:  # a GradScaler skips non-finite steps itself and needs the gradients to see it
            optimizer.zero_grad(set_to_none=True)
        pl_module.log("train/skipped_steps", float(self.skipped_total), rank_zero_only=True)
        self._maybe_stop(trainer)

    def _maybe_stop(self, trainer) -> None:
        reason = None
        if self.policy == "stop":
            reason = "policy is 'stop'"
        elif self.consecutive >= self.max_consecutive:
            reason = f"{self.consecutive} bad steps in a row (max_consecutive={self.max_consecutive})"
        elif self.max_total is not None and self.skipped_total >= self.max_total:
            reason = f"{self.skipped_total} bad steps in all (max_total={self.max_total})"
        if reason is None:
            return
        raise NumericsError(
            f"non-finite values at step {trainer.global_step} ({self._last_bad or 'another rank'}); "
            f"stopping: {reason}. "
            f"{self.skipped_total} step(s) were skipped, the weights were not updated by any of them and the last "
            "checkpoint is intact; lower the learning rate, check the data, or resume from that checkpoint"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_total = int(state_dict.get("skipped_total", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


def _first_non_finite_grad(module: torch.nn.Module) -> str | None:
    """Name of the first parameter whose gradient holds inf/NaN (one fused reduction), or None."""
    named = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
    if not named:
        return None
    norms = torch._foreach_norm([g.detach() for _, g in named], math.inf)
    finite = torch.isfinite(torch.stack([n.float() for n in norms]))
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def step_was_skipped(trainer: Any) -> bool:
    """Whether a :class:`NumericsGuard` of ``trainer`` skipped the current step (no EMA update then)."""
    if trainer is None:
        return False
    return any(isinstance(cb, NumericsGuard) and cb.skipped_this_step for cb in getattr(trainer, "callbacks", []))
