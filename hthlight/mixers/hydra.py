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
from hthlight.ssd import select_backend


def _shift_right(y_BLHP: torch.Tensor) -> torch.Tensor:
    """Output at ``t`` becomes the input at ``t - 1``; zero at ``t = 0``."""
    return F.pad(y_BLHP[:, :-1], (0, 0, 0, 0, 1, 0))


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
        chunk_size: SSD chunk length.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes.
        conv_bias, bias: biases of the convolution and of the two projections.
        norm_eps: epsilon of the gated output RMSNorm.
        backend: SSD scan backend (see :func:`hthlight.ssd.scan_backends`) or ``"auto"``.
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
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
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
        )

        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.d_inner = d_inner
        self.nheads = nheads
        self.backend = backend
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
        batch = x_BLD.shape[0]
        h, p, gn = self.nheads, self.headdim, self.ngroups * self.d_state

        z_BLE, xBC_BLC, dt_BL2H = torch.split(self.in_proj(x_BLD), [self.d_inner, self.d_inner + 4 * gn, 2 * h], dim=-1)
        xBC_BLC = F.silu(self.conv1d(xBC_BLC.transpose(1, 2)).transpose(1, 2))
        x_BLE, B_f, C_f, B_b, C_b = torch.split(xBC_BLC, [self.d_inner, gn, gn, gn, gn], dim=-1)
        x_BLHP = x_BLE.unflatten(-1, (h, p))

        # Both directions as one doubled batch: the sequence, then its reverse.
        def both(fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
            return torch.cat([fwd, bwd.flip(1)], dim=0)

        dt_f, dt_b = dt_BL2H.split(h, dim=-1)
        dt_2BLH = F.softplus(both(dt_f, dt_b) + self.dt_bias)
        B_2BLGN = both(B_f, B_b).unflatten(-1, (self.ngroups, self.d_state))
        C_2BLGN = both(C_f, C_b).unflatten(-1, (self.ngroups, self.d_state))
        A_H = -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

        scan = select_backend(self.backend, x_BLD.device)
        y_2BLHP = scan(both(x_BLHP, x_BLHP), dt_2BLH, A_H, B_2BLGN, C_2BLGN, chunk_size=self.chunk_size)
        # Shift each direction one token off the diagonal, then undo the reversal.
        y_2BLHP = _shift_right(y_2BLHP)
        y_BLHP = y_2BLHP[:batch] + y_2BLHP[batch:].flip(1)

        # Diagonal: each head's channels scaled by the data-dependent fc_D(x) + D.
        diag_BLH = self.fc_D(x_BLE) + self.D
        y_BLHP = y_BLHP + x_BLHP * diag_BLH[..., None]

        y_BLE = self.norm(y_BLHP.flatten(2), z_BLE)
        return self.out_proj(y_BLE)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, nheads={self.nheads}, ngroups={self.ngroups}, "
            f"chunk_size={self.chunk_size}, backend={self.backend}"
        )
