"""Hydra's bidirectional sequence mixing ``y = M x`` (Hwang et al. 2024), with backends.

``M`` is quasiseparable: a causal SSD (Mamba-2) part shifted one token below the diagonal,
an anti-causal part shifted one token above it, and the data-dependent diagonal
``fc_D(x) + D``. Contract shared by every backend::

    hydra_mix(x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size) -> y_BLHP

``dt_raw`` holds the pre-softplus step sizes of the forward heads, then the backward heads;
``BC`` holds ``B_f, C_f, B_b, C_b`` (each ``G x N``) as the conv output lays them out.

Backends:

* ``torch``: the reference. Both directions as one doubled batch (the sequence and its
  flip) through :func:`hthlight.ssd.torch_scan.ssd_scan`, shift, flip back, add the diagonal:
  the public layer's arrangement in plain PyTorch. Runs anywhere, any dtype.
* ``triton``: :mod:`hthlight.kernels.hydra_scan`, both directions fused in one pass, no flips
  (CUDA), forward and backward.
* ``mamba_ssm``: the public arrangement over the Mamba-2 Triton kernels of the ``mamba_ssm``
  package (CUDA, when that package is installed), forward and backward.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hthlight.errors import ConfigError
from hthlight.ssd.torch_scan import ssd_scan

MixFn = Callable[..., torch.Tensor]


def _flip_join(fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
    return torch.cat([fwd, bwd.flip(1)], dim=0)


def _doubled_batch_mix(scan, x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size):
    """The public arrangement: doubled batch, two causal scans, shift, flip back, diagonal."""
    batch, nheads = x_BLHP.shape[0], x_BLHP.shape[2]
    dt_f, dt_b = dt_raw_BL2H.split(nheads, dim=-1)
    dtype = torch.promote_types(dt_raw_BL2H.dtype, torch.float32)  # float32, or float64 for float64 inputs
    dt_2BLH = F.softplus(_flip_join(dt_f, dt_b).to(dtype) + dt_bias_H.to(dtype))
    B_f, C_f, B_b, C_b = BC_BL4GN.unbind(2)
    y_2BLHP = scan(_flip_join(x_BLHP, x_BLHP), dt_2BLH, A_H, _flip_join(B_f, B_b), _flip_join(C_f, C_b), chunk_size)
    y_2BLHP = F.pad(y_2BLHP[:, :-1], (0, 0, 0, 0, 1, 0))  # one token off the diagonal
    y_BLHP = y_2BLHP[:batch] + y_2BLHP[batch:].flip(1)
    return y_BLHP + x_BLHP * diag_BLH[..., None].to(x_BLHP.dtype)


def hydra_mix_torch(x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size: int) -> torch.Tensor:
    """Reference backend (pure PyTorch, float32 accumulation)."""
    return _doubled_batch_mix(ssd_scan, x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size)


def _mamba_scan(x, dt, A, B, C, chunk_size):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(x, dt.to(x.dtype), A.float(), B, C, chunk_size)


def hydra_mix_mamba_ssm(x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size: int) -> torch.Tensor:
    """The public Hydra arrangement over ``mamba_ssm``'s Mamba-2 kernels."""
    return _doubled_batch_mix(_mamba_scan, x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size)


class _TritonHydraMix(torch.autograd.Function):
    """Forward and backward through the fused Triton kernels (:mod:`hthlight.kernels`)."""

    @staticmethod
    def forward(ctx, x, dt_raw, dt_bias, A, BC, diag, chunk_size):
        from hthlight.kernels.hydra_scan import hydra_scan_fwd

        ctx.save_for_backward(x, dt_raw, dt_bias, A, BC, diag)
        ctx.chunk_size = triton_chunk_size(chunk_size)
        return hydra_scan_fwd(x, dt_raw, dt_bias, A, BC, diag, chunk_size=ctx.chunk_size)

    @staticmethod
    def backward(ctx, dy):
        from hthlight.kernels.hydra_scan_bwd import hydra_scan_bwd

        return (*hydra_scan_bwd(dy, *ctx.saved_tensors, ctx.chunk_size), None)


def triton_chunk_size(chunk_size: int) -> int:
    """The Triton kernels' chunk length: the mixer's, clamped to the supported powers of two."""
    return 1 << max(5, min(8, (max(chunk_size, 1) - 1).bit_length()))


def hydra_mix_triton(x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size: int) -> torch.Tensor:
    """Fused bidirectional Triton backend (CUDA)."""
    return _TritonHydraMix.apply(x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size)


HYDRA_BACKENDS: dict[str, MixFn] = {
    "torch": hydra_mix_torch,
    "triton": hydra_mix_triton,
    "mamba_ssm": hydra_mix_mamba_ssm,
}


# Asked on every forward: the packages are looked up once, at import (a plain dict, which
# torch.compile reads as a constant).
_INSTALLED = {
    "torch": True,
    "triton": importlib.util.find_spec("triton") is not None,
    "mamba_ssm": importlib.util.find_spec("mamba_ssm") is not None,
}


def _available(name: str) -> bool:
    return _INSTALLED[name]


def check_hydra_backend(name: str) -> None:
    """Raise a :class:`ConfigError` for an unknown backend or one whose package is missing."""
    if name == "auto":
        return
    if name not in HYDRA_BACKENDS:
        raise ConfigError(f"unknown Hydra backend {name!r}; allowed: auto, {', '.join(HYDRA_BACKENDS)}")
    if not _available(name):
        package = {"triton": "triton", "mamba_ssm": "mamba-ssm"}[name]
        raise ConfigError(f"Hydra backend {name!r} needs the {package!r} package, which is not installed")


#: Chunk length of each backend when a mixer leaves ``chunk_size`` unset: the Triton kernels' fastest
#: (HTH-5B layer forward+backward on an H100, benchmarks/RESULTS.md), and the public layer's default for
#: the others. The result does not depend on it beyond rounding: it only tiles the same matrix ``M``.
DEFAULT_CHUNK_SIZES = {"torch": 256, "triton": 128, "mamba_ssm": 256}


def chunk_size_for(backend: str, chunk_size: int | None) -> int:
    """The chunk length ``backend`` runs with: ``chunk_size``, or the backend's default when it is ``None``."""
    return DEFAULT_CHUNK_SIZES[backend] if chunk_size is None else chunk_size


#: Head widths the Triton kernels are built for; the state width must be at least 16 (tensor-core tiles).
TRITON_HEADDIMS = (16, 32, 64, 128)
TRITON_MIN_D_STATE = 16


def triton_supports(headdim: int, d_state: int) -> bool:
    """Whether the Triton kernels handle this head and state width."""
    return headdim in TRITON_HEADDIMS and d_state >= TRITON_MIN_D_STATE


def check_triton_shape(headdim: int, d_state: int) -> None:
    """Raise a :class:`ConfigError` when ``backend: triton`` is asked for a shape its kernels lack."""
    if not triton_supports(headdim, d_state):
        raise ConfigError(
            f"Hydra backend 'triton' needs headdim in {TRITON_HEADDIMS} and d_state >= {TRITON_MIN_D_STATE}, "
            f"got headdim={headdim}, d_state={d_state}; use backend 'auto' (falls back to 'torch') or 'torch'"
        )


def resolve_hydra_backend(name: str, device: torch.device | str, headdim: int, d_state: int) -> str:
    """The backend that runs for ``name`` on ``device``: ``auto`` is ``triton`` on CUDA, else ``torch``.

    ``auto`` also falls back to ``torch`` for a ``headdim``/``d_state`` the Triton kernels lack
    (tiny test models). A fast backend asked for on a CPU tensor falls back to the reference
    (a model trained on GPU still runs on CPU).
    """
    check_hydra_backend(name)
    on_cuda = torch.device(device).type == "cuda"
    if name == "auto":
        name = "triton" if on_cuda and _available("triton") and triton_supports(headdim, d_state) else "torch"
    return name if on_cuda else "torch"
