"""Numerics guard: injected NaN loss / gradients skip the step (weights, Adam moments, EMA untouched)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_resume import digits, state_of, tiny_module, trainer

from hthlight.callbacks.numerics import NumericsError, NumericsGuard
from hthlight.checkpointing import load_checkpoint
from hthlight.errors import ConfigError


class InjectNaN(L.Callback):
    """Poisons the loss (``where="loss"``) or one gradient (``"grad"``) at the given steps."""

    def __init__(self, steps, where: str = "loss") -> None:
        self.steps, self.where = set(steps), where
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}
        self.adam_steps: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = state_of(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = state_of(pl_module)
        states = trainer.optimizers[0].state.values()
        self.adam_steps[trainer.global_step - 1] = max((float(s["step"]) for s in states), default=0.0)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step in self.steps and self.where == "loss":
            loss.data.fill_(math.nan)

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.steps and self.where == "grad":
            pl_module.denoiser.final.linear.weight.grad[0, 0] = math.inf


def _run(tmp_path, guard, inject, max_steps=3, callbacks=()):
    module = tiny_module()
    t = trainer(tmp_path, max_steps=max_steps, callbacks=[inject, guard, *callbacks])
    t.fit(module, datamodule=digits(16))
    return t, module


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_bad_step_is_skipped_and_counted(tmp_path, where):
    inject, guard = InjectNaN([1], where), NumericsGuard(policy="skip", max_consecutive=3)
    t, module = _run(tmp_path, guard, inject)
    assert t.global_step == 3  # the run went on
    assert guard.skipped_total == 1 and guard.consecutive == 0
    for key, value in inject.after[1].items():  # step 1 changed nothing, EMA included
        assert torch.equal(value, inject.before[1][key]), key
    assert inject.after[0]["denoiser.final.linear.weight"].ne(inject.after[2]["denoiser.final.linear.weight"]).any()
    assert inject.adam_steps[1] == inject.adam_steps[0] == 1.0  # Adam's moments did not see the bad step
    assert inject.adam_steps[2] == 2.0
    assert all(torch.isfinite(v).all() for v in state_of(module).values() if v.is_floating_point())


def test_repeated_failures_stop_with_clear_message_and_keep_last_good_checkpoint(tmp_path):
    inject = InjectNaN(range(2, 100))
    guard = NumericsGuard(policy="skip", max_consecutive=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    with pytest.raises(NumericsError, match=r"2 bad steps in a row \(max_consecutive=2\)"):
        _run(tmp_path, guard, inject, max_steps=6, callbacks=[ckpt])
    checkpoint = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert checkpoint["global_step"] == 3  # written after step 2 (skipped, so still the good weights of step 2)
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(value, inject.after[1][key]), key


def test_stop_policy_stops_at_first_bad_step(tmp_path):
    with pytest.raises(NumericsError, match="policy is 'stop'"):
        _run(tmp_path, NumericsGuard(policy="stop"), InjectNaN([0]), max_steps=2)


def test_bad_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="'skip' or 'stop'"):
        NumericsGuard(policy="ignore")
