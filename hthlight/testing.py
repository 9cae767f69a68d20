"""Conformance kit: check that a token mixer or scan order honours hthlight's contracts.

Plugin authors call these from their own tests; every check runs on CPU with tiny sizes::

    from hthlight.testing import check_mixer, check_scan

    def test_my_mixer_conforms():
        check_mixer(MyMixer, dim=16, my_arg=3)          # a class or factory, called as MyMixer(dim=16, my_arg=3)

    def test_my_registered_mixer_conforms():
        check_mixer("my_mixer", dim=16, my_arg=3)       # a registry name (or a spec mapping)

    def test_my_scan_conforms():
        check_scan(MyScan)                              # a registry name, spec, class or instance

A failure raises :class:`AssertionError` whose message starts with the component's name,
then the check that failed and what was expected, e.g.
``"my_mixer: canonical order: output tokens [1, 2] do not depend on their own input token ..."``.

:func:`check_mixer` runs, in this order (the contracts are in CONTRIBUTING.md and DESIGN.md):

1. **construction** -- ``factory(dim=dim, **kwargs)`` gives an ``nn.Module``; it can also be
   built under ``with torch.device("meta")`` (every parameter on the meta device), and after
   ``to_empty(device="cpu")`` plus ``reset_parameters()`` on every submodule that has one
   (torch's meta-device initialisation recipe, used for FSDP), every parameter is initialised
   again and a forward gives finite outputs. So: give any parameter (or floating-point buffer)
   you create directly a ``reset_parameters()`` that (re)initialises it; ``nn.Linear`` and
   the other torch layers have their own.
2. **shapes** -- ``forward(x_BLD, grid)`` returns ``(B, L, D)`` of the input dtype for every
   grid (``L = t*h*w``), in float32 and, after ``.double()``, in float64.
3. **determinism** -- two forwards in eval mode are identical, and two constructions under
   one seed give identical state dicts. (Run before the checks below, which compare forwards.)
4. **grid handling** -- a grid that does not match ``L`` raises, unless the mixer provably
   ignores the grid (same output as with the right grid); another grid with the same ``L``
   is accepted.
5. **canonical order** -- samples of a batch are independent; for a
   :class:`~hthlight.mixers.base.ScanningMixer`, under its own scan and the ``v`` and ``th``
   scans (set with ``set_scan`` on a copy), ``forward(x, grid)`` equals
   ``mix_sequence(x[:, perm])[:, inverse]``; for any mixer, output token ``i`` depends on input
   token ``i`` (a mixer that returns tokens in scan order fails this).
6. **gradient flow** -- after a backward, the input and every trainable parameter get finite
   gradients (none missing), and at least 90% of the parameter tensors a non-zero one.
7. **state dict** -- a fresh instance built under another seed, after ``load_state_dict``,
   gives the same float64 outputs.
8. **block** -- the mixer works inside :class:`~hthlight.models.blocks.DenoiserBlock` (the
   unit of FSDP wrapping and activation checkpointing): forward and backward; a
   ``copy.deepcopy`` (as EMA makes) gives equal outputs; and
   ``torch.utils.checkpoint.checkpoint(block, x, grid, use_reentrant=False)`` gives the same
   output and gradients as a plain forward.

:func:`check_scan` checks a scan order: it is a :class:`~hthlight.scans.ScanOrder`; two fresh
instances are equal and hash alike (the permutation cache relies on it); ``permutation`` is a
CPU LongTensor permutation of ``t*h*w`` indices; ``inverse`` composes with it to the identity
both ways; results are cached (the same object twice, also with ``device="cpu"``); fresh
instances give the same permutation.

:func:`check_builtins` runs both over hthlight's built-in mixers (with :data:`TINY_KWARGS`)
and scan orders. The kit restores the caller's random state when it returns.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hthlight.registry import BUILT_IN, build_from_spec, call_with_checked_kwargs, registry, resolve, spec_name
from hthlight.scans import Grid, ScanOrder, TemporalHorizontalScan, VerticalScan, check_grid

__all__ = ["TINY_KWARGS", "check_builtins", "check_mixer", "check_scan"]

#: Small keyword arguments per built-in mixer, so each one's checks take well under 2 s on CPU.
TINY_KWARGS: dict[str, dict[str, Any]] = {
    "attention": {"num_heads": 2, "qk_norm": True},
    "hydra": {"d_state": 4, "d_conv": 3, "expand": 2, "headdim": 8, "chunk_size": 4},
    "ssm": {"d_state": 4, "d_conv": 3, "expand": 2, "headdim": 8, "chunk_size": 4},
    "bi_ssm": {"d_state": 4, "d_conv": 3, "expand": 2, "headdim": 8, "chunk_size": 4},
}

_MIN_NONZERO_GRAD_FRACTION = 0.9
_MAX_OWN_TOKEN_COPIES = 64  # tokens whose own-token dependence is checked, one batch copy each
# Scans a scanning mixer is also run under: non-identity on any grid with h, w > 1 (v) or t > 1 (th).
_EXTRA_SCANS: tuple[ScanOrder, ...] = (VerticalScan(), TemporalHorizontalScan())


class _Failure(Exception):
    """A check's finding; the runner prefixes the component's name and the check's title."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _Failure(message)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the body under ``torch.manual_seed(seed)`` and restore the caller's CPU random state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def _numel(grid: Grid) -> int:
    return grid[0] * grid[1] * grid[2]


def _max_abs(x: torch.Tensor) -> float:
    return float(x.detach().abs().max()) if x.numel() else 0.0


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """``|a - b| <= rtol * (1 + max|b|)`` everywhere, with matching shapes."""
    return a.shape == b.shape and _max_abs(a - b) <= rtol * (1.0 + _max_abs(b))


def _run(name: str, checks: Sequence[tuple[str, Callable[[Any], None]]], subject: Any) -> None:
    for title, check in checks:
        try:
            check(subject)
        except _Failure as failure:
            raise AssertionError(f"{name}: {title}: {failure}") from None
        except Exception as exc:
            raise AssertionError(f"{name}: {title}: raised {type(exc).__name__}: {exc}") from exc


# ===================================================================== mixers
@dataclass
class _Mixer:
    """What the mixer checks need: how to build the mixer, and how DenoiserBlock should."""

    name: str
    factory: Callable[..., Any]
    kwargs: dict[str, Any]
    dim: int
    grids: tuple[Grid, ...]
    batch: int
    seed: int
    block_spec: Any
    _instance: nn.Module | None = field(default=None, repr=False)

    def build(self, seed: int | None = None) -> nn.Module:
        """A new instance built under ``seed`` (default: the check's seed)."""
        with _seeded(self.seed if seed is None else seed):
            return call_with_checked_kwargs(self.factory, {"dim": self.dim, **self.kwargs}, what=self.name)

    @property
    def instance(self) -> nn.Module:
        """One instance shared by the read-only checks (built by the construction check)."""
        if self._instance is None:
            self._instance = self.build()
        return self._instance

    def input(self, grid: Grid, seed: int = 0, batch: int | None = None, dtype=torch.float32) -> torch.Tensor:
        return _randn(batch or self.batch, _numel(grid), self.dim, seed=self.seed + 1000 + seed, dtype=dtype)


def _class_path(target: Any) -> str | None:
    """``module.Qualname`` when it imports back to ``target`` (not for classes defined in functions)."""
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module not in sys.modules:
        return None
    obj: Any = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return f"{module}.{qualname}" if obj is target else None


def _mixer_subject(mixer: Any, dim: int, kwargs: dict[str, Any], grids, batch: int, seed: int) -> _Mixer:
    """Resolve a registry name, spec mapping or class/factory into a :class:`_Mixer`."""
    grids = tuple(check_grid(g) for g in grids)
    if not grids:
        raise ValueError("check_mixer needs at least one (t, h, w) grid")
    if isinstance(mixer, str):
        factory, merged = registry("mixer").get(mixer), dict(kwargs)
        name, block_spec = mixer, {"name": mixer, **merged}
    elif isinstance(mixer, Mapping):
        factory, spec_kwargs = resolve("mixer", mixer)
        merged = {**spec_kwargs, **kwargs}
        name = spec_name(mixer)
        if "class_path" in mixer:
            block_spec = {"class_path": mixer["class_path"], "init_args": merged}
        else:
            block_spec = {"name": mixer["name"], **merged}
    elif callable(mixer):
        factory, merged = mixer, dict(kwargs)
        name = getattr(mixer, "__qualname__", None) or getattr(mixer, "__name__", None) or repr(mixer)
        class_path = _class_path(mixer)
        if class_path is not None:
            block_spec = {"class_path": class_path, "init_args": merged}
        else:  # build_from_spec calls a callable spec with dim=...
            block_spec = functools.partial(mixer, **merged)
    else:
        raise TypeError(f"check_mixer takes a registry name, a spec mapping or a class/factory, got {mixer!r}")
    return _Mixer(name, factory, merged, dim, grids, batch, seed, block_spec)


def _meta_init(subject: _Mixer) -> nn.Module:
    """Build on the meta device, materialise on CPU and re-initialise as torch's meta-init recipe does."""
    with torch.device("meta"):
        module = subject.build()
    left = [n for n, p in module.named_parameters() if p.device.type != "meta"]
    _expect(
        not left,
        f"built under `with torch.device('meta')`, parameters {left} were not on the meta device; "
        "expected every parameter to be created on the current default device (no explicit device=)",
    )
    module.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))  # anything not re-initialised stays NaN
        with _seeded(subject.seed):
            for submodule in module.modules():
                if callable(getattr(submodule, "reset_parameters", None)):
                    submodule.reset_parameters()
    stale = [n for n, p in module.named_parameters() if p.is_floating_point() and bool(p.isnan().any())]
    _expect(
        not stale,
        f"after to_empty(device='cpu') and reset_parameters() on every submodule that has it, parameters {stale} "
        "were not re-initialised; expected a reset_parameters() (on the mixer or the submodule owning them) "
        "that initialises every parameter, so meta-device (FSDP) initialisation works",
    )
    return module


def _check_construction(subject: _Mixer) -> None:
    """Builds with dim as an nn.Module, also on the meta device followed by to_empty + reset_parameters."""
    module = subject.instance
    _expect(isinstance(module, nn.Module), f"expected an nn.Module, got {type(module).__name__}")
    module = _meta_init(subject).eval()
    grid = subject.grids[0]
    with torch.no_grad():
        y = module(subject.input(grid), grid)
    _expect(isinstance(y, torch.Tensor), f"forward after meta-device init returned {type(y).__name__}, not a tensor")
    stale = [n for n, b in module.named_buffers() if b.is_floating_point() and bool(b.isnan().any())]
    _expect(
        bool(torch.isfinite(y).all()),
        "forward after meta-device init gave non-finite outputs; expected finite"
        + (f" (buffers {stale} were not re-initialised by any reset_parameters())" if stale else ""),
    )


def _check_shapes(subject: _Mixer) -> None:
    """forward(x_BLD, grid) returns (B, L, D) in the input dtype, float32 and float64."""
    float32 = subject.instance.eval()
    float64 = copy.deepcopy(float32).double()
    with torch.no_grad():
        for module, dtype in ((float32, torch.float32), (float64, torch.float64)):
            for grid in subject.grids:
                x = subject.input(grid, dtype=dtype)
                y = module(x, grid)
                _expect(isinstance(y, torch.Tensor), f"forward returned {type(y).__name__}; expected a tensor")
                _expect(
                    y.shape == x.shape,
                    f"grid {grid}: output shape {tuple(y.shape)}; expected the input's (B, L, D) = {tuple(x.shape)}",
                )
                _expect(y.dtype == dtype, f"grid {grid}: output dtype {y.dtype}; expected the input's {dtype}")


def _check_determinism(subject: _Mixer) -> None:
    """Two eval forwards are identical; two constructions under one seed give identical state dicts."""
    module = subject.instance.eval()
    with torch.no_grad():
        for grid in subject.grids:
            x = subject.input(grid)
            first, second = module(x, grid), module(x, grid)
            _expect(
                torch.equal(first, second),
                f"grid {grid}: two forwards in eval mode differ by up to {_max_abs(first - second):.3g}; "
                "expected identical outputs (no randomness in eval mode)",
            )
    a, b = subject.build().state_dict(), subject.build().state_dict()
    _expect(a.keys() == b.keys(), f"two constructions have different state_dict keys: {sorted(a)} vs {sorted(b)}")
    differ = [k for k in a if not (a[k].shape == b[k].shape and torch.equal(a[k], b[k]))]
    _expect(not differ, f"two constructions under seed {subject.seed} differ in {differ}; expected identical")


def _check_grid_handling(subject: _Mixer) -> None:
    """A grid that does not match L raises (or is provably ignored); another grid with the same L works."""
    module = subject.instance.eval()
    t, h, w = grid = subject.grids[0]
    wrong = (t, h, w + 1)
    x = subject.input(grid)
    with torch.no_grad():
        right_y = module(x, grid)
        try:
            wrong_y = module(x, wrong)
        except Exception:
            wrong_y = None  # the expected behaviour
        if wrong_y is not None:
            ignored = isinstance(wrong_y, torch.Tensor) and torch.equal(wrong_y, right_y)
            _expect(
                ignored,
                f"{x.shape[1]} tokens with grid {wrong} ({_numel(wrong)} tokens) gave an output that differs from "
                f"the one with grid {grid}; expected an exception (e.g. ValueError) for a grid that does not match "
                "the sequence length",
            )
        alternative = (t, w, h) if (t, w, h) != grid else (1, 1, _numel(grid))
        if alternative != grid:
            y = module(x, alternative)
            _expect(
                isinstance(y, torch.Tensor) and y.shape == x.shape and bool(torch.isfinite(y).all()),
                f"the same {x.shape[1]} tokens with grid {alternative} instead of {grid}: expected a finite "
                f"output of shape {tuple(x.shape)}",
            )


def _scan_variants(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The mixer itself, plus float64 copies switched to the extra scans if it is a scanning mixer."""
    from hthlight.mixers.base import ScanningMixer  # lazy: hthlight.mixers is imported on demand

    variants = [("its own scan", module)]
    if isinstance(module, ScanningMixer):
        for scan in _EXTRA_SCANS:
            if scan != module.scan:
                other = copy.deepcopy(module)
                other.set_scan(scan)
                variants.append((f"scan {scan!r}", other))
    return variants


def _check_batch_independence(subject: _Mixer, module: nn.Module, grid: Grid) -> None:
    """Sample 0's output neither changes with, nor has a gradient from, the other samples."""
    batch = max(subject.batch, 2)
    x = subject.input(grid, batch=batch, dtype=torch.float64).requires_grad_(True)
    y = module(x, grid)
    (grad,) = torch.autograd.grad(y[0].sum(), x)
    leak = _max_abs(grad[1:])
    _expect(
        leak == 0,
        f"grid {grid}: sample 0's output has a gradient of up to {leak:.3g} from other samples of the batch; "
        "expected samples to be mixed independently",
    )
    with torch.no_grad():
        perturbed = x.detach().clone()
        perturbed[1:] = subject.input(grid, seed=1, batch=batch - 1, dtype=torch.float64)
        y0 = module(perturbed, grid)[0]
    _expect(
        _close(y0, y[0].detach(), 1e-10),
        f"grid {grid}: changing the other samples of the batch changed sample 0's output by up to "
        f"{_max_abs(y0 - y[0]):.3g}; expected samples to be mixed independently",
    )


def _check_scan_consistency(module: nn.Module, label: str, x: torch.Tensor, grid: Grid) -> None:
    """A scanning mixer's forward equals inverse(mix_sequence(x[:, perm]))."""
    from hthlight.mixers.base import ScanningMixer

    if not isinstance(module, ScanningMixer):
        return
    perm, inverse = module.scan.permutation(*grid), module.scan.inverse(*grid)
    with torch.no_grad():
        y, expected = module(x, grid), module.mix_sequence(x[:, perm])[:, inverse]
    _expect(
        _close(y, expected, 1e-10),
        f"{label}, grid {grid}: forward(x, grid) differs from mix_sequence(x[:, perm])[:, inverse] by up to "
        f"{_max_abs(y - expected):.3g}; expected tokens scanned by the scan's permutation and returned in "
        "canonical (t, h, w) order",
    )


def _check_own_token(subject: _Mixer, module: nn.Module, label: str, grid: Grid) -> None:
    """Output token i depends on input token i (its diagonal Jacobian block is non-zero)."""
    length = _numel(grid)
    tokens = torch.arange(length)
    if length > _MAX_OWN_TOKEN_COPIES:  # a deterministic sample of the tokens on larger grids
        generator = torch.Generator().manual_seed(subject.seed)
        tokens = torch.randperm(length, generator=generator)[:_MAX_OWN_TOKEN_COPIES].sort().values
    # One copy of the sample per token; copy k's loss reads only its output token tokens[k] (samples are independent).
    copies = torch.arange(len(tokens))
    x = subject.input(grid, batch=1, dtype=torch.float64).expand(len(tokens), -1, -1).clone().requires_grad_(True)
    y = module(x, grid)
    probe = _randn(len(tokens), subject.dim, seed=subject.seed + 7, dtype=torch.float64)
    (grad,) = torch.autograd.grad((y[copies, tokens] * probe).sum(), x)
    own = grad[copies, tokens].abs().amax(-1)
    blind = tokens[own == 0].tolist()
    _expect(
        not blind,
        f"{label}, grid {grid}: output tokens {blind} do not depend on their own input token; expected output "
        "token i to depend on input token i (tokens out in canonical order; a mixer that returns tokens in scan "
        "order fails this)",
    )


def _check_canonical_order(subject: _Mixer) -> None:
    """Samples are independent and tokens come out in canonical (t, h, w) order under every scan."""
    module = copy.deepcopy(subject.instance).double().eval()
    for grid in subject.grids:
        _check_batch_independence(subject, module, grid)
    for label, variant in _scan_variants(module):
        for grid in subject.grids:
            _check_scan_consistency(variant, label, subject.input(grid, dtype=torch.float64), grid)
            _check_own_token(subject, variant, label, grid)


def _check_gradient_flow(subject: _Mixer) -> None:
    """The input and every trainable parameter get finite gradients, >= 90% of the parameters non-zero."""
    module = subject.build().train()
    grid = subject.grids[-1]
    x = subject.input(grid).requires_grad_(True)
    with _seeded(subject.seed):
        y = module(x, grid)
    (y * _randn(*y.shape, seed=subject.seed + 11)).sum().backward()
    _expect(x.grad is not None and bool(torch.isfinite(x.grad).all()), "the input's gradient is missing or not finite")
    _expect(_max_abs(x.grad) > 0, "the input's gradient is all zero; expected the output to depend on the input")
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    _expect(
        not missing,
        f"parameters {missing} got no gradient; expected every trainable parameter to take part in forward "
        "(remove unused ones, or set requires_grad=False)",
    )
    bad = [n for n, p in params if not bool(torch.isfinite(p.grad).all())]
    _expect(not bad, f"parameters {bad} got non-finite gradients; expected finite")
    zero = [n for n, p in params if _max_abs(p.grad) == 0]
    _expect(
        len(zero) <= (1 - _MIN_NONZERO_GRAD_FRACTION) * len(params),
        f"{len(zero)} of {len(params)} parameter tensors got all-zero gradients: {zero}; expected at least "
        f"{_MIN_NONZERO_GRAD_FRACTION:.0%} of them to get a non-zero one",
    )


def _check_state_dict(subject: _Mixer) -> None:
    """A fresh instance built under another seed gives the same outputs after load_state_dict."""
    source = subject.build().double().eval()
    fresh = subject.build(seed=subject.seed + 1).double()
    fresh.load_state_dict(source.state_dict())
    fresh.eval()
    with torch.no_grad():
        for grid in subject.grids:
            x = subject.input(grid, dtype=torch.float64)
            y, expected = fresh(x, grid), source(x, grid)
            _expect(
                _close(y, expected, 1e-12),
                f"grid {grid}: after load_state_dict, a fresh instance's float64 output differs by up to "
                f"{_max_abs(y - expected):.3g}; expected the same output (all state in the state_dict)",
            )


def _block_forward_backward(block: nn.Module, x: torch.Tensor, grid: Grid, seed: int, checkpointed: bool):
    """Output, input gradient and parameter gradients of one seeded training step of ``block``."""
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with _seeded(seed):
        y = checkpoint(block, x, grid, use_reentrant=False) if checkpointed else block(x, grid)
        (y * _randn(*y.shape, seed=seed + 13)).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def _check_block(subject: _Mixer) -> None:
    """Works inside DenoiserBlock: forward/backward, deepcopy (EMA) and activation checkpointing."""
    from hthlight.models.blocks import DenoiserBlock  # lazy: hthlight.models imports the mixers

    with _seeded(subject.seed):
        block = DenoiserBlock(subject.dim, subject.block_spec, mlp_ratio=2.0)
    expected_type = type(subject.instance)
    _expect(
        type(block.mixer) is expected_type,
        f"DenoiserBlock built a {type(block.mixer).__name__} from {subject.block_spec!r}; expected "
        f"{expected_type.__name__}",
    )
    grid = subject.grids[-1]
    x = subject.input(grid)
    y, x_grad, grads = _block_forward_backward(block.train(), x, grid, subject.seed, checkpointed=False)
    _expect(y.shape == x.shape, f"block output shape {tuple(y.shape)}; expected {tuple(x.shape)}")
    _expect(bool(torch.isfinite(y).all()) and bool(torch.isfinite(x_grad).all()), "non-finite block output/gradient")
    missing = [n for n, p in block.mixer.named_parameters(prefix="mixer") if p.requires_grad and n not in grads]
    _expect(not missing, f"inside the block, parameters {missing} got no gradient")

    y_c, x_grad_c, grads_c = _block_forward_backward(block, x, grid, subject.seed, checkpointed=True)
    _expect(
        _close(y_c, y, 1e-5) and _close(x_grad_c, x_grad, 1e-5),
        f"with activation checkpointing (checkpoint(block, x, grid, use_reentrant=False)) the output differs by "
        f"{_max_abs(y_c - y):.3g} and the input gradient by {_max_abs(x_grad_c - x_grad):.3g}; expected the same "
        "as a plain forward (the recomputed forward must match the first one)",
    )
    differ = [n for n in grads if n not in grads_c or not _close(grads_c[n], grads[n], 1e-5)]
    _expect(not differ, f"with activation checkpointing, gradients of {differ} differ from a plain backward")

    block.eval()
    twin = copy.deepcopy(block)
    shared = {p.data_ptr() for p in block.parameters()} & {p.data_ptr() for p in twin.parameters()}
    _expect(not shared, "copy.deepcopy(block) shares parameter storage with the original; expected an independent copy")
    with torch.no_grad():
        y, y_twin = block(x, grid), twin(x, grid)
    _expect(
        torch.equal(y, y_twin),
        f"copy.deepcopy(block) gives outputs differing by up to {_max_abs(y - y_twin):.3g}; expected equal (EMA)",
    )


_MIXER_CHECKS: tuple[tuple[str, Callable[[_Mixer], None]], ...] = (
    ("construction", _check_construction),
    ("shapes", _check_shapes),
    ("determinism", _check_determinism),
    ("grid handling", _check_grid_handling),
    ("canonical order", _check_canonical_order),
    ("gradient flow", _check_gradient_flow),
    ("state dict", _check_state_dict),
    ("block", _check_block),
)


def check_mixer(
    mixer: Any,
    dim: int = 16,
    *,
    grids: Sequence[Grid] = ((1, 3, 5), (2, 2, 3)),
    batch: int = 2,
    seed: int = 0,
    **kwargs: Any,
) -> None:
    """Check that a token mixer honours the mixer contract; raise AssertionError naming the first failed check.

    Args:
        mixer: a registry name (``"hydra"``), a spec mapping (``{"name": ...}`` or
            ``{"class_path": ..., "init_args": ...}``) or a class/factory called as
            ``mixer(dim=dim, **kwargs)``.
        dim: model width the mixer is built with.
        grids: ``(t, h, w)`` token grids to run on (keep them tiny).
        batch: batch size of the inputs.
        seed: seed of construction and inputs.
        **kwargs: the mixer's own keyword arguments (merged over a spec's).
    """
    subject = _mixer_subject(mixer, dim, kwargs, grids, batch, seed)
    with _seeded(seed), torch.enable_grad():
        _run(subject.name, _MIXER_CHECKS, subject)


# ===================================================================== scans
@dataclass
class _Scan:
    """The scan order under test and a way to make fresh, independently built instances of it."""

    name: str
    fresh: Callable[[], Any]
    grids: tuple[Grid, ...]
    scan: Any = None  # built by the first check


def _scan_subject(scan: Any, grids) -> _Scan:
    grids = tuple(check_grid(g) for g in grids)
    if isinstance(scan, type):
        make, name = scan, scan.__qualname__
    elif isinstance(scan, (str, Mapping)) or (callable(scan) and not isinstance(scan, ScanOrder)):
        make, name = functools.partial(build_from_spec, "scan", scan), spec_name(scan)
    else:  # an instance: fresh instances are deep copies (its constructor's arguments are unknown)
        make, name = functools.partial(copy.deepcopy, scan), repr(scan)
    return _Scan(name, make, grids)


def _check_scan_type(subject: _Scan) -> None:
    """Builds, and is a ScanOrder instance."""
    subject.scan = subject.fresh()
    _expect(
        isinstance(subject.scan, ScanOrder),
        f"got a {type(subject.scan).__name__}; expected a subclass of hthlight.scans.ScanOrder",
    )


def _check_scan_equality(subject: _Scan) -> None:
    """Two fresh instances are equal and hash alike (the permutation cache is keyed by the scan)."""
    a, b = subject.fresh(), subject.fresh()
    _expect(
        a == b,
        f"two fresh instances {a!r} and {b!r} are not equal; expected equal (a scan order is a stateless value, "
        "ScanOrder compares type and vars(); keep per-instance objects out of the instance)",
    )
    _expect(hash(a) == hash(b), f"two equal fresh instances hash differently ({hash(a)} vs {hash(b)})")


def _check_scan_permutation(subject: _Scan) -> None:
    """permutation(t, h, w) is a CPU LongTensor visiting each of the t*h*w tokens once."""
    for grid in subject.grids:
        n = _numel(grid)
        try:
            perm = subject.scan.permutation(*grid)
        except Exception as exc:
            raise _Failure(f"permutation{grid} raised {type(exc).__name__}: {exc}") from exc
        _expect(isinstance(perm, torch.Tensor), f"permutation{grid} returned {type(perm).__name__}; expected a tensor")
        _expect(perm.dtype == torch.long, f"permutation{grid} has dtype {perm.dtype}; expected torch.long")
        _expect(perm.device.type == "cpu", f"permutation{grid} is on {perm.device}; expected cpu by default")
        _expect(perm.shape == (n,), f"permutation{grid} has shape {tuple(perm.shape)}; expected ({n},)")
        _expect(
            torch.equal(torch.sort(perm).values, torch.arange(n)),
            f"permutation{grid} = {perm.tolist()} is not a permutation of 0..{n - 1} (each index exactly once)",
        )


def _check_scan_inverse(subject: _Scan) -> None:
    """inverse composes with permutation to the identity both ways."""
    for grid in subject.grids:
        perm, inverse = subject.scan.permutation(*grid), subject.scan.inverse(*grid)
        identity = torch.arange(_numel(grid))
        _expect(
            isinstance(inverse, torch.Tensor)
            and inverse.shape == perm.shape
            and torch.equal(perm[inverse], identity)
            and torch.equal(inverse[perm], identity),
            f"inverse{grid} is not the inverse of permutation{grid}; expected perm[inverse] and inverse[perm] "
            "to be the identity",
        )


def _check_scan_cache(subject: _Scan) -> None:
    """permutation/inverse are cached (same object twice) and accept device='cpu'."""
    for grid in subject.grids:
        for method in ("permutation", "inverse"):
            fn = getattr(subject.scan, method)
            _expect(fn(*grid) is fn(*grid), f"two calls of {method}{grid} gave different objects; expected cached")
            on_cpu = fn(*grid, device="cpu")
            _expect(
                isinstance(on_cpu, torch.Tensor) and on_cpu.device.type == "cpu" and torch.equal(on_cpu, fn(*grid)),
                f"{method}({', '.join(map(str, grid))}, device='cpu') differs from {method}{grid}; expected equal",
            )


def _check_scan_determinism(subject: _Scan) -> None:
    """Fresh instances give the same permutations."""
    other = subject.fresh()
    for grid in subject.grids:
        a, b = subject.scan.permutation(*grid), other.permutation(*grid)
        _expect(
            torch.equal(a, b), f"two fresh instances give different permutation{grid}: {a.tolist()} vs {b.tolist()}"
        )


_SCAN_CHECKS: tuple[tuple[str, Callable[[_Scan], None]], ...] = (
    ("type", _check_scan_type),
    ("equality", _check_scan_equality),
    ("permutation", _check_scan_permutation),
    ("inverse", _check_scan_inverse),
    ("cache", _check_scan_cache),
    ("determinism", _check_scan_determinism),
)


def check_scan(scan: Any, *, grids: Sequence[Grid] = ((1, 3, 5), (2, 3, 4), (3, 1, 4), (1, 1, 1))) -> None:
    """Check that a scan order honours the scan contract; raise AssertionError naming the first failed check.

    Args:
        scan: a registry name (``"v"``), a spec mapping, a :class:`~hthlight.scans.ScanOrder`
            subclass or an instance (fresh instances of an instance are deep copies).
        grids: ``(t, h, w)`` grids to check.
    """
    subject = _scan_subject(scan, grids)
    _run(subject.name, _SCAN_CHECKS, subject)


# ===================================================================== built-ins
def _builtin_names(kind: str) -> list[str]:
    return [entry.name for entry in registry(kind).entries() if entry.source == BUILT_IN]


def check_builtins() -> None:
    """Run :func:`check_mixer` (with :data:`TINY_KWARGS`) and :func:`check_scan` over hthlight's built-ins."""
    for name in _builtin_names("mixer"):
        check_mixer(name, **TINY_KWARGS.get(name, {}))
    for name in _builtin_names("scan"):
        check_scan(name)
