"""Checkpoints that survive crashes: atomic writes, safe loading, saving on SIGTERM / SIGUSR1.

* :class:`AtomicCheckpointIO` writes ``name.ckpt`` as ``.name.ckpt.tmp<pid>`` in the same folder,
  flushes and ``fsync``s it, then ``os.replace``s it over the target (atomic on POSIX) and
  ``fsync``s the folder: a crash or SIGKILL during saving leaves the previous file intact.
  It loads with ``torch.load(weights_only=True)``: a checkpoint is data, not code.
* :class:`SafeCheckpoints` (added to every run by ``DiffusionModule``) installs that IO when the
  strategy uses Lightning's default one, and saves ``last.ckpt`` when the process gets SIGTERM
  (then the run stops, as Lightning does on SIGTERM) or SIGUSR1 (training goes on). Under SLURM
  with Lightning's ``auto_requeue`` the requeue signal keeps Lightning's handler as well.
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from hthlight.errors import HthlightError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; a file that needs arbitrary unpickling is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HthlightError(
            f"{path} holds Python objects beyond tensors and plain data, and hthlight loads checkpoints with "
            f"weights_only=True (loading it could run code). If you trust the file, re-save it as plain data. "
            f"Detail: {str(exc).splitlines()[0]}"
        ) from exc


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with atomic local writes and ``weights_only`` loading."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote file systems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_checkpoint(path, map_location=map_location or "cpu")


_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGUSR1": signal.SIGUSR1}


class SafeCheckpoints(L.Callback):
    """Atomic checkpoint writes and ``last.ckpt`` on SIGTERM / SIGUSR1.

    Args:
        dirpath: where the signal checkpoint goes (default: the ModelCheckpoint's folder, else
            ``<default_root_dir>/checkpoints``), as ``last.ckpt`` so ``--ckpt_path last`` finds it.
        signals: signals that trigger a save (``SIGTERM`` also stops the run, ``SIGUSR1`` does not).
        atomic: install :class:`AtomicCheckpointIO` when the strategy has Lightning's default IO.
    """

    def __init__(self, dirpath: str | None = None, signals: list[str] | None = None, atomic: bool = True) -> None:
        names = ["SIGTERM", "SIGUSR1"] if signals is None else list(signals)
        unknown = sorted(set(names) - set(_SIGNALS))
        if unknown:
            raise HthlightError(f"SafeCheckpoints signals {unknown} unknown; allowed: {', '.join(_SIGNALS)}")
        self.dirpath = dirpath
        self.signals = names
        self.atomic = atomic
        self._received: set[str] = set()
        self._previous: dict[int, Any] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.atomic and type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning registered its own handlers (SLURM requeue), which ours call too
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = _SIGNALS[name]
            previous = signal.getsignal(signum)
            self._previous[signum] = previous
            signal.signal(signum, self._handler(name, previous))

    def _handler(self, name: str, previous: Any):
        def handle(signum, frame) -> None:
            self._received.add(name)
            if callable(previous):
                previous(signum, frame)

        return handle

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        flag = torch.tensor(float(bool(self._received)), device=pl_module.device)
        if trainer.world_size > 1:  # every rank saves together (sharded strategies gather collectively)
            flag = trainer.strategy.reduce(flag, reduce_op="sum")
        if float(flag) == 0:
            return
        received, self._received = self._received, set()
        path = self.signal_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(f"hthlight: saved {path} at step {trainer.global_step} on {', '.join(sorted(received)) or 'signal'}")
        if "SIGTERM" in received:
            trainer.should_stop = True  # Lightning's own SIGTERM handler then exits the process

    def signal_checkpoint_path(self, trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / "last.ckpt"
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return Path(callback.dirpath) / "last.ckpt"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
