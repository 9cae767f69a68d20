"""Hydra: a bidirectional quasiseparable state-space mixer (Hwang et al. 2024).

"Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers" mixes a sequence
with a quasiseparable matrix: a causal semiseparable (Mamba-2 SSD) part shifted one token
below the diagonal, an anti-causal part shifted one token above it, and a free diagonal.
Both parts share one input projection, one centered depthwise convolution and one decay
``A``; each has its own ``B``, ``C`` and ``dt``. Parameter names and shapes equal the public
Hydra module's, so its checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.mixers.base import ScanningMixer
from hthlight.mixers.norms import GatedRMSNorm
from hthlight.mixers.ssm_common import check_ssm_config, init_dt_bias_, no_weight_decay
from hthlight.scans import ScanOrder
from hthlight.ssd.bidirectional import (
    HYDRA_BACKENDS,
    check_hydra_backend,
    check_triton_shape,
    chunk_size_for,
    resolve_hydra_backend,
    triton_chunk_size,
)


class HydraMixer(ScanningMixer):
    """Hydra token mixer (Hwang et al. 2024) over the 1D scan ``scan`` of the token grid.

    Args:
        dim: model width.
        scan: scan order (registry name, spec or :class:`~hthlight.scans.ScanOrder`).
        d_state: SSM state size ``N`` per group.
        d_conv: width of the centered depthwise convolution (odd).
        expand: inner width ``d_inner = expand * dim``.
        headdim: channels per SSM head; ``nheads = d_inner // headdim``.
        ngroups: groups of heads sharing ``B`` and ``C``.
        chunk_size: SSD chunk length; ``None`` (default) takes the backend's own
            (:data:`~hthlight.ssd.bidirectional.DEFAULT_CHUNK_SIZES`: 128 for Triton, 256 otherwise).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes.
        conv_bias, bias: biases of the convolution and of the two projections.
        norm_eps: epsilon of the gated output RMSNorm.
        backend: ``auto`` (Triton on CUDA, else PyTorch), ``torch``, ``triton`` or ``mamba_ssm``
            (the public layer: its scan arrangement and its Triton gated norm); see
            :mod:`hthlight.ssd.bidirectional`.
        recompute_states: Triton backend, training: recompute the scan's carried states in the
            backward instead of keeping them from the forward. Kept (the default), they cost
            ``B x L/Q x 2 x H x N x P`` activation values per layer until its backward (805 MB at
            HTH-5B width, 16k tokens, bf16) and save 0.8 ms of its backward there; under
            activation checkpointing a block's recomputed forward hands them straight to its
            backward, so keeping them costs no memory across layers.
    """

    def __init__(
        self,
        dim: int,
        scan: str | dict[str, Any] | ScanOrder = "h",
        d_state: int = 64,
        d_conv: int = 7,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
        recompute_states: bool = False,
    ) -> None:
        super().__init__(dim, scan)
        d_inner, nheads = check_ssm_config(
            dim,
            mixer="Hydra",
            d_conv=d_conv,
            centered_conv=True,
            expand=expand,
            d_state=d_state,
            headdim=headdim,
            ngroups=ngroups,
            chunk_size=chunk_size,
            dt_min=dt_min,
            dt_max=dt_max,
            backend=backend,
            check_backend=check_hydra_backend,
        )
        if backend == "triton":
            check_triton_shape(headdim, d_state)

        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.d_inner = d_inner
        self.nheads = nheads
        self.backend = backend
        self.recompute_states = recompute_states
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor

        bc_dim = 2 * (2 * ngroups * d_state)  # forward B, C and backward B, C
        conv_dim = d_inner + bc_dim
        # Creation order follows the public module, so one seed gives the same initial weights.
        self.in_proj = nn.Linear(dim, 2 * d_inner + bc_dim + 2 * nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv // 2, bias=conv_bias
        )
        self.dt_bias = nn.Parameter(torch.empty(nheads))
        self.A_log = nn.Parameter(torch.empty(nheads))
        self.D = nn.Parameter(torch.empty(nheads))
        no_weight_decay(self.dt_bias, self.A_log, self.D)
        self._reset_ssm_parameters()
        self.fc_D = nn.Linear(d_inner, nheads, bias=False)
        self.norm = GatedRMSNorm(d_inner, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    @torch.no_grad()
    def _reset_ssm_parameters(self) -> None:
        init_dt_bias_(self.dt_bias, self.dt_min, self.dt_max, self.dt_init_floor)
        self.A_log.zero_()  # A = -1
        self.D.fill_(1.0)

    def reset_parameters(self) -> None:
        """Re-initialise ``dt_bias``, ``A_log`` and ``D`` (submodules reset their own parameters)."""
        self._reset_ssm_parameters()

    def mix_sequence(self, x_BLD: torch.Tensor) -> torch.Tensor:
        h, p, gn = self.nheads, self.headdim, self.ngroups * self.d_state
        backend = resolve_hydra_backend(self.backend, x_BLD.device, self.headdim, self.d_state)
        chunk_size = chunk_size_for(backend, self.chunk_size)
        zxbcdt_BLF = self.in_proj(x_BLD)
        if backend == "triton":  # conv + SiLU, diagonal, scan and gated norm in Triton, one gradient buffer
            from hthlight.kernels.hydra_core import hydra_core

            y_BLE = hydra_core(
                zxbcdt_BLF,
                self.conv1d.weight,
                self.conv1d.bias,
                self.fc_D.weight,
                self.D,
                self.dt_bias,
                self.A_log,
                self.norm.weight,
                nheads=h,
                ngroups=self.ngroups,
                d_state=self.d_state,
                eps=self.norm.eps,
                chunk_size=triton_chunk_size(chunk_size),
                keep_states=not self.recompute_states,
            )
            return self.out_proj(y_BLE)
        z_BLE, xBC_BLC, dt_BL2H = torch.split(zxbcdt_BLF, [self.d_inner, self.d_inner + 4 * gn, 2 * h], dim=-1)
        xBC_BLC = F.silu(self.conv1d(xBC_BLC.transpose(1, 2)).transpose(1, 2))
        x_BLE, BC_BLC = xBC_BLC.split([self.d_inner, 4 * gn], dim=-1)
        diag_BLH = self.fc_D(x_BLE) + self.D  # the free diagonal: fc_D(x) + D per head
        A_H = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))
        y_BLHP = HYDRA_BACKENDS[backend](
            x_BLE.unflatten(-1, (h, p)),
            dt_BL2H,
            self.dt_bias,
            A_H,
            BC_BLC.unflatten(-1, (4, self.ngroups, self.d_state)),
            diag_BLH,
            chunk_size,
        )
        if backend == "mamba_ssm":  # the public layer's norm too: mamba_ssm's Triton RMSNormGated
            from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

            y_BLE = rmsnorm_fn(
                y_BLHP.flatten(2), self.norm.weight, None, z=z_BLE, eps=self.norm.eps, norm_before_gate=True
            )
        else:
            y_BLE = self.norm(y_BLHP.flatten(2), z_BLE)
        return self.out_proj(y_BLE)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, nheads={self.nheads}, ngroups={self.ngroups}, "
            f"chunk_size={self.chunk_size}, backend={self.backend}"
        )
