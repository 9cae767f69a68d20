"""A Hydra layer between its two projections on the Triton kernels, as one autograd Function.

Forward (Hwang et al. 2024, the public layer's order): the centered depthwise conv + SiLU of
``xBC`` (:func:`~hthlight.kernels.conv_norm.conv1d_silu_fwd`), the free diagonal
``fc_D(x) + D``, the fused bidirectional scan (:func:`~hthlight.kernels.hydra_scan.hydra_scan_fwd`)
and the gated RMSNorm with ``z`` (:func:`~hthlight.kernels.conv_norm.gated_rmsnorm_fwd`).

Backward: the conv's ``dxBC`` is written straight into one gradient buffer laid out like the
input projection's output ``z | xBC | dt`` (the norm's ``dz`` by a second pass of the norm's
backward once the scan's is done, the scan's ``ddt`` copied in), the scan's ``dx`` and
``dBC`` straight into one buffer laid out like the conv output ``x | BC``, and ``fc_D``'s input
gradient ``ddiag fc_D`` is added to ``dx`` inside the scan's ``dx`` kernel
(``hydra_scan_bwd(..., diag_weight=)``). Composing separate autograd Functions instead costs a
concatenation of each buffer's parts and a sum of the two ``dx`` (0.9 ms of 19.6 at HTH-5B width,
16k tokens, H100). (``fc_D``'s input gradient was an ``addmm`` into the ``dx`` slice until the tenth
session: 0.20 ms there, against 0.07 ms more in the ``dx`` kernel; folding it into the conv's
``dpre`` pass instead was measured and dropped: 0.26-0.30 ms more in that pass.)
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from hthlight.kernels.conv_norm import conv1d_silu_bwd, conv1d_silu_fwd, gated_rmsnorm_bwd, gated_rmsnorm_fwd
from hthlight.kernels.hydra_scan import hydra_scan_fwd
from hthlight.kernels.hydra_scan_bwd import hydra_scan_bwd


class HydraCore(torch.autograd.Function):
    """``zxbcdt (B, L, E + C + 2H) -> y (B, L, E)``: conv + SiLU, diagonal, scan, gated norm.

    Everything the backward reads goes through ``save_for_backward``, so activation checkpointing
    and saved-tensor hooks see all of it (plain ``ctx`` attributes would stay alive through a
    checkpointed block). With ``keep_states`` the scan's carried states (and step sizes, decays,
    ``CB``) are kept for the backward instead of recomputed.
    """

    @staticmethod
    def forward(
        ctx,
        zxbcdt,
        conv_weight,
        conv_bias,
        fc_D_weight,
        D,
        dt_bias,
        A_log,
        norm_weight,
        shape,
        eps,
        chunk_size,
        keep_states,
        needs_backward,
    ):
        inner, channels = norm_weight.shape[0], conv_weight.shape[0]
        nheads, ngroups, d_state = shape
        z = zxbcdt[..., :inner]
        xBC_act = conv1d_silu_fwd(zxbcdt[..., inner : inner + channels], conv_weight, conv_bias)
        x = xBC_act[..., :inner]
        diag = F.linear(x, fc_D_weight.to(x.dtype), D.to(x.dtype))  # fc_D(x) + D, the bias in the product
        out = hydra_scan_fwd(
            x.unflatten(-1, (nheads, -1)),
            zxbcdt[..., inner + channels :],
            dt_bias,
            A_log,
            xBC_act[..., inner:].unflatten(-1, (4, ngroups, d_state)),
            diag,
            chunk_size=chunk_size,
            log_decay=True,  # A = -exp(A_log) inside the kernels
            return_parts=keep_states,
        )
        y, parts = out if keep_states else (out, None)
        if needs_backward:
            kept = (parts.dt, parts.cum, parts.cb, parts.states) if keep_states else ()
            ctx.save_for_backward(
                zxbcdt, conv_weight, conv_bias, fc_D_weight, dt_bias, A_log, norm_weight, xBC_act, y, diag, *kept
            )
            ctx.parts_meta = tuple((k, v) for k, v in vars(parts).items() if not torch.is_tensor(v)) if kept else ()
        # Inference: the conv output and the diagonal are freed before the norm's output is allocated.
        del out, parts, xBC_act, x, diag
        ctx.shape, ctx.eps, ctx.chunk_size, ctx.D_dtype = shape, eps, chunk_size, D.dtype
        return gated_rmsnorm_fwd(y.flatten(2), z, norm_weight, eps)

    @staticmethod
    def backward(ctx, dout):
        zxbcdt, conv_weight, conv_bias, fc_D_weight, dt_bias, A_log, norm_weight, xBC_act, y, diag, *kept = (
            ctx.saved_tensors
        )
        parts = None
        if kept:
            parts = SimpleNamespace(**dict(ctx.parts_meta), **dict(zip(("dt", "cum", "cb", "states"), kept)))
        nheads, ngroups, d_state = ctx.shape
        inner, channels = norm_weight.shape[0], conv_weight.shape[0]
        z = zxbcdt[..., :inner]
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        # The norm's dz is taken after the scan's backward (the layer's peak), straight into the
        # input projection's gradient buffer, allocated only then: neither is held through the peak.
        dy, _, dnorm_weight = gated_rmsnorm_bwd(dout, y.flatten(2), z, norm_weight, ctx.eps, grads="dy")
        dact = torch.empty_like(xBC_act)
        x = xBC_act[..., :inner]
        _, ddt_raw, ddt_bias, dA_log, _, ddiag = hydra_scan_bwd(
            dy.unflatten(-1, (nheads, -1)),
            x.unflatten(-1, (nheads, -1)),
            zxbcdt[..., inner + channels :],
            dt_bias,
            A_log,
            xBC_act[..., inner:].unflatten(-1, (4, ngroups, d_state)),
            diag,
            ctx.chunk_size,
            log_decay=True,
            dx_out=dact[..., :inner].unflatten(-1, (nheads, -1)),
            dBC_out=dact[..., inner:].unflatten(-1, (4, ngroups, d_state)),
            parts=parts,
            diag_weight=fc_D_weight,  # diag = x fc_D^T + D: fc_D's input gradient is added to dx in the dx kernel
        )
        del dy, parts, kept
        ddiag_NH = ddiag.view(-1, nheads).to(x.dtype)  # contiguous, in the dtype of x (diag's)
        dfc_D = (ddiag_NH.t() @ x.reshape(-1, inner)).to(fc_D_weight.dtype)
        dD = ddiag.sum((0, 1)).to(ctx.D_dtype)
        del ddiag, ddiag_NH
        dzxbcdt = torch.empty_like(zxbcdt)
        gated_rmsnorm_bwd(dout, y.flatten(2), z, norm_weight, ctx.eps, grads="dz", dz_out=dzxbcdt[..., :inner])
        dzxbcdt[..., inner + channels :].copy_(ddt_raw)
        del ddt_raw
        xBC, dxBC = zxbcdt[..., inner : inner + channels], dzxbcdt[..., inner : inner + channels]
        _, dconv_weight, dconv_bias = conv1d_silu_bwd(dact, xBC, conv_weight, conv_bias, dx_out=dxBC)
        grads = (dzxbcdt, dconv_weight, dconv_bias, dfc_D, dD, ddt_bias, dA_log, dnorm_weight)
        return *grads, None, None, None, None, None  # shape, eps, chunk_size, keep_states, needs_backward


def hydra_core(
    zxbcdt_BLF: torch.Tensor,
    conv_weight_C1K: torch.Tensor,
    conv_bias_C: torch.Tensor | None,
    fc_D_weight_HE: torch.Tensor,
    D_H: torch.Tensor,
    dt_bias_H: torch.Tensor,
    A_log_H: torch.Tensor,
    norm_weight_E: torch.Tensor,
    *,
    nheads: int,
    ngroups: int,
    d_state: int,
    eps: float,
    chunk_size: int,
    keep_states: bool = True,
) -> torch.Tensor:
    """Differentiable Hydra core (see :class:`HydraCore`); ``zxbcdt_BLF`` is the input projection's output.

    ``keep_states``: keep the scan's carried states from the forward for the backward (``B L/Q 2 H N P``
    values in the activations' dtype: 805 MB at HTH-5B width and 16k tokens), 0.8 ms less backward
    there; ``False`` recomputes them in the backward instead.
    """
    tensors = (zxbcdt_BLF, conv_weight_C1K, conv_bias_C, fc_D_weight_HE, D_H, dt_bias_H, A_log_H, norm_weight_E)
    # Without a backward to come (inference) nothing is saved: the states, the conv output and the diagonal
    # are freed in the forward, before the norm's output exists.
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return HydraCore.apply(
        zxbcdt_BLF,
        conv_weight_C1K,
        conv_bias_C,
        fc_D_weight_HE,
        D_H,
        dt_bias_H,
        A_log_H,
        norm_weight_E,
        (nheads, ngroups, d_state),
        eps,
        chunk_size,
        keep_states and grad,
        grad,
    )
