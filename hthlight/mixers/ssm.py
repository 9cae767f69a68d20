"""Mamba-2 token mixers: unidirectional (:class:`SSMMixer`) and bidirectional (:class:`BiSSMMixer`).

:class:`SSMMixer` is the Mamba-2 block of Dao & Gu 2024 ("Transformers are SSMs: Generalized
Models and Efficient Algorithms Through Structured State Space Duality") in the arrangement
of the public ``Mamba2Simple`` module: one input projection to ``[z, xBC, dt]``, a causal
depthwise convolution over ``xBC``, the selective SSD scan with a per-head skip ``D``, a gated
RMSNorm with ``z`` and an output projection. Its parameter names and shapes are
``Mamba2Simple``'s.

:class:`BiSSMMixer` is the addition-based bidirectional SSM of DiM (Mo & Tian 2024, "Scaling
Diffusion Mamba with Bidirectional SSMs") and Vim (Zhu et al. 2024, "Vision Mamba"), in
Mamba-2 form: the input and output projections are shared, while a forward scan and a
backward scan (over the reversed sequence) each have their own convolution, ``B``, ``C``,
``dt``, ``A`` and ``D``; their outputs are summed.

Both scan the token grid in the mixer's scan order (:class:`~hthlight.mixers.base.ScanningMixer`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.errors import ConfigError
from hthlight.mixers.base import ScanningMixer
from hthlight.mixers.norms import GatedRMSNorm
from hthlight.mixers.ssm_common import check_ssm_config, init_A_log_, init_dt_bias_, no_weight_decay
from hthlight.scans import ScanOrder
from hthlight.ssd import select_backend


def _causal_conv1d(channels: int, d_conv: int, bias: bool) -> nn.Conv1d:
    """Depthwise convolution padded by ``d_conv - 1`` on both sides; :func:`_run_causal` keeps the causal part."""
    return nn.Conv1d(channels, channels, kernel_size=d_conv, groups=channels, padding=d_conv - 1, bias=bias)


def _run_causal(conv: nn.Conv1d, x_BLC: torch.Tensor) -> torch.Tensor:
    """Output ``t`` sees inputs ``t - d_conv + 1 .. t`` (zeros before the start)."""
    return conv(x_BLC.transpose(1, 2))[..., : x_BLC.shape[1]].transpose(1, 2)


def _ssm_parameters(nheads: int) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """Uninitialised ``(dt_bias, A_log, D)`` of one scan direction, excluded from weight decay."""
    params = tuple(nn.Parameter(torch.empty(nheads)) for _ in range(3))
    no_weight_decay(*params)
    return params  # type: ignore[return-value]


class _Mamba2Base(ScanningMixer):
    """Argument checks, sizes and SSM parameter initialisation shared by the two mixers."""

    _mixer_name = "SSM"

    def __init__(
        self,
        dim: int,
        scan: str | dict[str, Any] | ScanOrder,
        d_state: int,
        d_conv: int,
        expand: int,
        headdim: int,
        ngroups: int,
        chunk_size: int,
        A_init_range: tuple[float, float],
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        backend: str,
    ) -> None:
        super().__init__(dim, scan)
        self.d_inner, self.nheads = check_ssm_config(
            dim,
            mixer=self._mixer_name,
            d_conv=d_conv,
            expand=expand,
            d_state=d_state,
            headdim=headdim,
            ngroups=ngroups,
            chunk_size=chunk_size,
            dt_min=dt_min,
            dt_max=dt_max,
            backend=backend,
        )
        try:
            low, high = (float(a) for a in A_init_range)
        except (TypeError, ValueError):
            raise ConfigError(f"A_init_range must be a pair (low, high), got {A_init_range!r}") from None
        if not 0 < low <= high:
            raise ConfigError(f"A_init_range must satisfy 0 < low <= high, got {A_init_range!r}")
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.A_init_range = (low, high)
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.backend = backend

    @torch.no_grad()
    def _init_direction(self, dt_bias: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor) -> None:
        init_dt_bias_(dt_bias, self.dt_min, self.dt_max, self.dt_init_floor)
        init_A_log_(A_log, self.A_init_range)
        D.fill_(1.0)

    def _scan(
        self,
        x_BLHP: torch.Tensor,
        dt_BLH: torch.Tensor,
        dt_bias_H: torch.Tensor,
        A_log_H: torch.Tensor,
        D_H: torch.Tensor,
        B_BLGN: torch.Tensor,
        C_BLGN: torch.Tensor,
    ) -> torch.Tensor:
        """``y = ssd(x, softplus(dt + dt_bias), -exp(A_log), B, C) + D x`` (causal, in sequence order)."""
        dtype = torch.promote_types(dt_BLH.dtype, torch.float32)
        dt_BLH = F.softplus(dt_BLH.to(dtype) + dt_bias_H.to(dtype))
        A_H = -torch.exp(A_log_H.to(torch.promote_types(A_log_H.dtype, torch.float32)))
        scan = select_backend(self.backend, x_BLHP.device)
        y_BLHP = scan(x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN, chunk_size=self.chunk_size)
        return y_BLHP + x_BLHP * D_H[:, None]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, nheads={self.nheads}, ngroups={self.ngroups}, "
            f"chunk_size={self.chunk_size}, backend={self.backend}"
        )


class SSMMixer(_Mamba2Base):
    """Unidirectional Mamba-2 block (Dao & Gu 2024; ``Mamba2Simple``) over the scan ``scan``.

    Token ``t`` of the scanned sequence sees only tokens ``<= t``.

    Args:
        dim: model width.
        scan: scan order (registry name, spec or :class:`~hthlight.scans.ScanOrder`).
        d_state: SSM state size ``N`` per group.
        d_conv: width of the causal depthwise convolution (>= 1).
        expand: inner width ``d_inner = expand * dim``.
        headdim: channels per SSM head; ``nheads = d_inner // headdim``.
        ngroups: groups of heads sharing ``B`` and ``C``.
        chunk_size: SSD chunk length.
        A_init_range: ``A = -a`` with ``a`` initialised uniformly in this range.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes.
        conv_bias, bias: biases of the convolution and of the two projections.
        norm_eps: epsilon of the gated output RMSNorm (gate before norm, as Mamba-2).
        backend: SSD scan backend (see :func:`hthlight.ssd.scan_backends`) or ``"auto"``.
    """

    _mixer_name = "SSM"

    def __init__(
        self,
        dim: int,
        scan: str | dict[str, Any] | ScanOrder = "h",
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            dim, scan, d_state, d_conv, expand, headdim, ngroups, chunk_size, A_init_range, dt_min, dt_max,
            dt_init_floor, backend,
        )  # fmt: skip
        gn = ngroups * d_state
        # Creation order follows Mamba2Simple, so one seed gives the same initial weights.
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 2 * gn + self.nheads, bias=bias)
        self.conv1d = _causal_conv1d(self.d_inner + 2 * gn, d_conv, conv_bias)
        self.dt_bias, self.A_log, self.D = _ssm_parameters(self.nheads)
        self._init_direction(self.dt_bias, self.A_log, self.D)
        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, norm_before_gate=False)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)

    def reset_parameters(self) -> None:
        """Re-initialise ``dt_bias``, ``A_log`` and ``D`` (submodules reset their own parameters)."""
        self._init_direction(self.dt_bias, self.A_log, self.D)

    def mix_sequence(self, x_BLD: torch.Tensor) -> torch.Tensor:
        e, h, p, g, n = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        z_BLE, xBC_BLC, dt_BLH = torch.split(self.in_proj(x_BLD), [e, e + 2 * g * n, h], dim=-1)
        xBC_BLC = F.silu(_run_causal(self.conv1d, xBC_BLC))
        x_BLE, B_BLS, C_BLS = torch.split(xBC_BLC, [e, g * n, g * n], dim=-1)
        y_BLHP = self._scan(
            x_BLE.unflatten(-1, (h, p)),
            dt_BLH,
            self.dt_bias,
            self.A_log,
            self.D,
            B_BLS.unflatten(-1, (g, n)),
            C_BLS.unflatten(-1, (g, n)),
        )
        return self.out_proj(self.norm(y_BLHP.flatten(2), z_BLE))


class BiSSMMixer(_Mamba2Base):
    """Addition-based bidirectional Mamba-2 mixer (DiM: Mo & Tian 2024; Vim: Zhu et al. 2024).

    ``in_proj`` gives ``[z, x, B_f, C_f, B_b, C_b, dt_f, dt_b]``. The forward direction runs a
    causal convolution (``conv1d``) over ``[x, B_f, C_f]`` and a causal scan; the backward
    direction runs ``conv1d_b`` over ``[x, B_b, C_b]`` and its scan on the reversed sequence
    (anti-causal in the original order), each with its own ``dt_bias``, ``A_log`` and ``D``.
    ``y = y_f + y_b`` is gated by ``z`` in the RMSNorm and projected by the shared ``out_proj``.

    Arguments are :class:`SSMMixer`'s.
    """

    _mixer_name = "BiSSM"

    def __init__(
        self,
        dim: int,
        scan: str | dict[str, Any] | ScanOrder = "h",
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 256,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            dim, scan, d_state, d_conv, expand, headdim, ngroups, chunk_size, A_init_range, dt_min, dt_max,
            dt_init_floor, backend,
        )  # fmt: skip
        gn = ngroups * d_state
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + 4 * gn + 2 * self.nheads, bias=bias)
        self.conv1d = _causal_conv1d(self.d_inner + 2 * gn, d_conv, conv_bias)
        self.conv1d_b = _causal_conv1d(self.d_inner + 2 * gn, d_conv, conv_bias)
        self.dt_bias, self.A_log, self.D = _ssm_parameters(self.nheads)
        self.dt_bias_b, self.A_b_log, self.D_b = _ssm_parameters(self.nheads)
        self.reset_parameters()
        self.norm = GatedRMSNorm(self.d_inner, eps=norm_eps, norm_before_gate=False)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias)

    def reset_parameters(self) -> None:
        """Re-initialise both directions' ``dt_bias``, ``A_log`` and ``D``."""
        self._init_direction(self.dt_bias, self.A_log, self.D)
        self._init_direction(self.dt_bias_b, self.A_b_log, self.D_b)

    def mix_sequence(self, x_BLD: torch.Tensor) -> torch.Tensor:
        e, h, p, g, n = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        z_BLE, x_BLE, BC_f, BC_b, dt_f_BLH, dt_b_BLH = torch.split(
            self.in_proj(x_BLD), [e, e, 2 * g * n, 2 * g * n, h, h], dim=-1
        )
        xBC_f_BLC = F.silu(_run_causal(self.conv1d, torch.cat([x_BLE, BC_f], dim=-1)))
        # The backward direction works on the reversed sequence throughout, flipped back at the end.
        xBC_b_BLC = F.silu(_run_causal(self.conv1d_b, torch.cat([x_BLE, BC_b], dim=-1).flip(1)))

        # Both directions in one scan: the backward heads (and groups) follow the forward ones.
        def both(fwd: torch.Tensor, bwd: torch.Tensor, size: int) -> torch.Tensor:
            return torch.cat([fwd, bwd], dim=-1).unflatten(-1, (-1, size))

        x_f, B_f, C_f = torch.split(xBC_f_BLC, [e, g * n, g * n], dim=-1)
        x_b, B_b, C_b = torch.split(xBC_b_BLC, [e, g * n, g * n], dim=-1)
        y_BL2HP = self._scan(
            both(x_f, x_b, p),
            torch.cat([dt_f_BLH, dt_b_BLH.flip(1)], dim=-1),
            torch.cat([self.dt_bias, self.dt_bias_b]),
            torch.cat([self.A_log, self.A_b_log]),
            torch.cat([self.D, self.D_b]),
            both(B_f, B_b, n),
            both(C_f, C_b, n),
        )
        y_f_BLHP, y_b_BLHP = y_BL2HP.split(h, dim=2)
        y_BLHP = y_f_BLHP + y_b_BLHP.flip(1)
        return self.out_proj(self.norm(y_BLHP.flatten(2), z_BLE))
