"""Scale-out wiring: which modules are the units of FSDP sharding and activation checkpointing.

A module class declares itself a unit with class attributes (``DenoiserBlock`` does, so every
mixer, built-in or plugin, is sharded and checkpointed with its block):

* ``fsdp_unit = True``: FSDP (Zhao et al. 2023, "PyTorch FSDP") wraps each instance as its own
  flat parameter; ``Denoiser`` is one too, so the EMA copy and the trained denoiser are
  sharded identically and the EMA update stays shard-local (:func:`hthlight.ema.ema_update`).
* ``checkpoint_unit = True``: activations inside are recomputed in backward (Chen et al. 2016).

:class:`BlockFSDPStrategy` is Lightning's ``FSDPStrategy`` with these policies as defaults,
:class:`BlockDDPStrategy` Lightning's DDP with the same per-block checkpointing and
``torch.compile`` options, and :class:`BlockOptions` a callback giving them on one device.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import lightning as L
import torch._dynamo
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn

from hthlight.errors import ConfigError


def is_fsdp_unit(module: nn.Module) -> bool:
    """Whether ``module``'s class declares ``fsdp_unit = True``."""
    return bool(getattr(type(module), "fsdp_unit", False))


def is_checkpoint_unit(module: nn.Module) -> bool:
    """Whether ``module``'s class declares ``checkpoint_unit = True``."""
    return bool(getattr(type(module), "checkpoint_unit", False))


def fsdp_wrap_policy():
    """FSDP auto-wrap policy: every module whose class declares ``fsdp_unit``."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    return CustomPolicy(is_fsdp_unit)


def checkpoint_policy():
    """Activation-checkpointing policy: every module whose class declares ``checkpoint_unit``."""
    from torch.distributed.fsdp.wrap import CustomPolicy

    return CustomPolicy(is_checkpoint_unit)


SHARDING = ("FULL_SHARD", "HYBRID_SHARD", "SHARD_GRAD_OP", "NO_SHARD")


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with the denoiser's declared units as wrap and checkpointing units.

    Args:
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3 over all ranks), ``HYBRID_SHARD`` (shard within
            a node, replicate across nodes; the device mesh is ``(num_nodes, devices)``),
            ``SHARD_GRAD_OP`` or ``NO_SHARD``.
        activation_checkpointing: recompute each block's activations in backward.
        state_dict_type: ``full`` (one gathered checkpoint file, loadable anywhere) or ``sharded``.
        compile: compile each block with ``torch.compile`` (after wrapping; ``use_orig_params``).
        compile_mode: ``torch.compile`` mode.
        **kwargs: passed to ``FSDPStrategy`` (e.g. ``cpu_offload``, ``timeout``).
    """

    def __init__(
        self,
        sharding_strategy: Literal["FULL_SHARD", "HYBRID_SHARD", "SHARD_GRAD_OP", "NO_SHARD"] = "FULL_SHARD",
        activation_checkpointing: bool = True,
        state_dict_type: Literal["full", "sharded"] = "full",
        compile: bool = False,
        compile_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.compile_blocks = compile
        self.compile_mode = compile_mode
        if str(sharding_strategy).upper() not in SHARDING:
            raise ConfigError(f"sharding_strategy {sharding_strategy!r} is not one of {', '.join(SHARDING)}")
        if kwargs.get("auto_wrap_policy") is None:  # (a config parser passes the parent's None defaults)
            kwargs["auto_wrap_policy"] = fsdp_wrap_policy()
        if activation_checkpointing and kwargs.get("activation_checkpointing_policy") is None:
            kwargs["activation_checkpointing_policy"] = checkpoint_policy()
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)

    def setup_environment(self) -> None:
        hybrid = "HYBRID" in self.sharding_strategy.name
        if hybrid and self.kwargs.get("device_mesh") is None and self.kwargs.get("process_group") is None:
            self.kwargs["device_mesh"] = (self.num_nodes, self.num_processes)  # replicate x shard
        super().setup_environment()

    def setup(self, trainer) -> None:
        super().setup(trainer)
        if self.compile_blocks:
            apply_block_options(self.lightning_module, compile=True, compile_mode=self.compile_mode)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names exempt from weight decay: biases, vectors/scalars, and ``_no_weight_decay`` ones.

    Decided on the unwrapped model (e.g. a meta-device copy): under FSDP with ``use_orig_params``
    the parameters are flattened 1-D shards and their shapes no longer tell.
    """
    return {
        name
        for name, p in model.named_parameters()
        if p.ndim < 2 or getattr(p, "_no_weight_decay", False) or name.endswith(".bias")
    }


_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter name without FSDP / checkpoint / compile wrapper prefixes."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def apply_block_options(
    pl_module: nn.Module, activation_checkpointing: bool = False, compile: bool = False, compile_mode: str | None = None
) -> None:
    """Wrap each ``checkpoint_unit`` block of ``pl_module.denoiser`` in activation checkpointing
    (non-reentrant; state-dict keys unchanged) and/or compile each block in place."""
    denoiser = getattr(pl_module, "denoiser", None)
    if denoiser is None:
        return
    if activation_checkpointing and not any("_checkpoint_wrapped_module" in n for n, _ in denoiser.named_modules()):
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        def wrapper(module: nn.Module) -> nn.Module:
            return checkpoint_wrapper(module, checkpoint_impl=CheckpointImpl.NO_REENTRANT)

        apply_activation_checkpointing(denoiser, checkpoint_wrapper_fn=wrapper, check_fn=is_checkpoint_unit)
    if compile:
        for model in (denoiser, getattr(pl_module, "ema_denoiser", None)):
            if model is not None:
                compile_blocks(model, compile_mode)


#: Grids (token-grid shapes) each kind of block may be compiled for before Dynamo runs it eagerly.
GRIDS_PER_BLOCK_KIND = 8


def compile_blocks(model: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile`` every block (``checkpoint_unit``) of ``model`` in place; returns ``model``.

    All blocks share one code object, and Dynamo keeps one compiled entry per kind of block
    (mixer class and scan order) and token grid, up to ``recompile_limit`` entries (8 by default)
    in all; past it, calls run eagerly with a warning. The limit is raised to
    :data:`GRIDS_PER_BLOCK_KIND` entries per kind of block, so an HTH model (4 scans and
    attention) keeps compiled code for up to 8 grids, e.g. aspect-ratio buckets.
    """
    blocks = [m for m in model.modules() if is_checkpoint_unit(m)]
    kinds = {(type(getattr(b, "mixer", b)), repr(getattr(getattr(b, "mixer", None), "scan", None))) for b in blocks}
    limit = GRIDS_PER_BLOCK_KIND * max(1, len(kinds))
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for module in blocks:
        if not compiled(module):
            module.compile(mode=mode)
    return model


class BlockDDPStrategy(DDPStrategy):
    """Lightning's DDP with optional per-block activation checkpointing and ``torch.compile``.

    Args:
        activation_checkpointing: recompute each block's activations in backward.
        compile: compile each block with ``torch.compile``.
        compile_mode: ``torch.compile`` mode (``None``, ``default``, ``reduce-overhead``, ``max-autotune``).
        find_unused_parameters: DDP's search for parameters without gradients (slower; not needed here).
        gradient_as_bucket_view: gradients are views into DDP's communication buckets (saves memory).
        static_graph: DDP's static-graph optimisations.
        process_group_backend: ``nccl`` (GPU default) or ``gloo`` (CPU default).
        timeout_minutes: collective timeout.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = True,
        static_graph: bool = False,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ) -> None:
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph,
        )
        self.block_options = {
            "activation_checkpointing": activation_checkpointing,
            "compile": compile,
            "compile_mode": compile_mode,
        }

    def setup(self, trainer) -> None:
        apply_block_options(self.lightning_module, **self.block_options)  # before DDP wraps the module
        super().setup(trainer)


class BlockOptions(L.Callback):
    """Per-block activation checkpointing and ``torch.compile`` on a single device (any strategy).

    Args:
        activation_checkpointing: recompute each block's activations in backward.
        compile: compile each block with ``torch.compile``.
        compile_mode: ``torch.compile`` mode.
    """

    def __init__(
        self, activation_checkpointing: bool = False, compile: bool = False, compile_mode: str | None = None
    ) -> None:
        self.options = {"activation_checkpointing": activation_checkpointing, "compile": compile}
        self.compile_mode = compile_mode

    def on_fit_start(self, trainer, pl_module) -> None:
        apply_block_options(pl_module, compile_mode=self.compile_mode, **self.options)

    def on_predict_start(self, trainer, pl_module) -> None:
        apply_block_options(pl_module, compile=self.options["compile"], compile_mode=self.compile_mode)


def compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place (``nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


__all__ = [
    "BlockDDPStrategy",
    "BlockFSDPStrategy",
    "BlockOptions",
    "apply_block_options",
    "checkpoint_policy",
    "clean_name",
    "compiled",
    "fsdp_wrap_policy",
    "is_checkpoint_unit",
    "is_fsdp_unit",
    "no_weight_decay_names",
]
