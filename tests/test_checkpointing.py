"""Checkpoints: atomic writes, weights_only loading, saving on signals, and SIGKILL (kill tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_resume import STEPS, assert_states_close, digits, state_of, tiny_module, trainer

from hthlight.checkpointing import AtomicCheckpointIO, SafeCheckpoints, atomic_torch_save, load_checkpoint
from hthlight.errors import HthlightError

REPO = Path(__file__).resolve().parents[1]


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr("hthlight.checkpointing.torch.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": torch.tensor(2)}, path)
    assert load_checkpoint(path)["step"].item() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_checkpoint_loads_weights_only_and_io_is_installed(tmp_path):
    module = tiny_module()
    t = trainer(tmp_path, max_steps=1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    t.fit(module, datamodule=digits(16))
    assert isinstance(t.strategy.checkpoint_io, AtomicCheckpointIO)
    checkpoint = load_checkpoint(tmp_path / "last.ckpt")  # weights_only=True: hparams, loops, callbacks all plain
    assert checkpoint["global_step"] == 1
    assert checkpoint["hyper_parameters"]["denoiser"]["dim"] == 32
    assert any(k.startswith("ema_denoiser.") for k in checkpoint["state_dict"])


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": Path("x")}, path)  # any non-allowlisted class needs full unpickling
    with pytest.raises(HthlightError, match="weights_only=True"):
        load_checkpoint(path)


class SendSignal(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigusr1_saves_last_and_training_goes_on(tmp_path):
    module = tiny_module()
    t = trainer(
        tmp_path, max_steps=3, callbacks=[SendSignal(1, signal.SIGUSR1), SafeCheckpoints(dirpath=str(tmp_path))]
    )
    t.fit(module, datamodule=digits(16))
    assert t.global_step == 3
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 2  # saved after the step it arrived in


def test_sigterm_saves_last_and_stops(tmp_path):
    module = tiny_module()
    t = trainer(
        tmp_path, max_steps=5, callbacks=[SendSignal(1, signal.SIGTERM), SafeCheckpoints(dirpath=str(tmp_path))]
    )
    with pytest.raises(SystemExit):  # Lightning's SIGTERM exit, after our save
        t.fit(module, datamodule=digits(16))
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 2
    assert t.global_step == 2  # stopped after the step the signal arrived in


# ------------------------------------------------------------------ kill tests
SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import lightning as L, torch
from lightning.pytorch.callbacks import ModelCheckpoint
import hthlight.checkpointing as ckpt_module
from test_resume import STEPS, digits, tiny_module, trainer

mode, root = sys.argv[1], sys.argv[2]

class Hang(L.Callback):  # stands for a long training step: the parent kills us here
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if mode == "train" and trainer.global_step == 3:
            print("READY", flush=True); time.sleep(120)

if mode == "save":  # the checkpoint of step 4 hangs halfway through its write
    real_save = ckpt_module.torch.save
    def slow_save(obj, f):
        if obj["global_step"] == 4:
            f.write(b"half a checkpoint"); f.flush(); print("READY", flush=True); time.sleep(120)
        real_save(obj, f)
    ckpt_module.torch.save = slow_save

L.seed_everything(0)
ckpt = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1, save_last=True)
trainer(root, callbacks=[ckpt, Hang()]).fit(tiny_module(), datamodule=digits())
"""


def _start(tmp_path: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(REPO / "tests"))))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = tmp_path / mode
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )


def _wait_ready_and_kill(process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if line.strip() == "READY":
            break
        if time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_during_training_and_during_saving_then_resume_exactly(tmp_path):
    processes = {mode: _start(tmp_path, mode) for mode in ("train", "save")}  # both run at once
    L.seed_everything(0)
    straight = tiny_module()
    trainer(tmp_path / "straight").fit(straight, datamodule=digits())
    for process in processes.values():
        _wait_ready_and_kill(process)

    # killed during training at step 3: the step-2 checkpoint is whole; nothing before it is lost
    train_dir = tmp_path / "train"
    assert load_checkpoint(train_dir / "last.ckpt")["global_step"] == 2
    # killed while writing step 4: last.ckpt still holds step 2, a temporary file is all that is left over
    save_dir = tmp_path / "save"
    assert load_checkpoint(save_dir / "last.ckpt")["global_step"] == 2
    assert not (save_dir / "epoch=0-step=4.ckpt").exists()
    assert any(p.name.startswith(".") and ".tmp" in p.name for p in save_dir.iterdir())

    for directory in (train_dir, save_dir):
        L.seed_everything(1)
        resumed = tiny_module()
        t = trainer(directory / "resume")
        t.fit(resumed, datamodule=digits(), ckpt_path=directory / "last.ckpt")
        assert t.global_step == STEPS
        assert_states_close(state_of(resumed), state_of(straight))
