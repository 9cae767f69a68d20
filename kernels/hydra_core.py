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

import torch
import torch.nn.functional as F

from hthlight.kernels.conv_norm import conv1d_silu_bwd, conv1d_silu_fwd, gated_rmsnorm_bwd, gated_rmsnorm_fwd
from hthlight.kernels.hydra_scan import TENSOR_PARTS, ScanParts, hydra_scan_fwd, scan_meta
from hthlight.kernels.hydra_scan_bwd import hydra_scan_bwd


def _core_forward(
    zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight, shape, eps, chunk_size, keep_states,
    needs_backward,
):
    """The layer's forward: ``(out, saved, meta)``, ``saved`` what :func:`_core_backward` reads after the
    layer's own inputs (``xBC_act, y, diag`` and, with ``keep_states``, the scan's four tensor parts),
    empty without ``needs_backward``; ``meta`` the kept parts' other fields (else empty)."""
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
    saved = ((xBC_act, y, diag, *(parts[:TENSOR_PARTS] if keep_states else ())) if needs_backward else ())
    meta = parts[TENSOR_PARTS:] if keep_states and needs_backward else ()
    # Inference: the conv output and the diagonal are freed before the norm's output is allocated.
    del out, parts, xBC_act, x, diag
    return gated_rmsnorm_fwd(y.flatten(2), z, norm_weight, eps), saved, meta


def _core_backward(
    dout, zxbcdt, conv_weight, conv_bias, fc_D_weight, D_dtype, dt_bias, A_log, norm_weight, saved, shape, eps,
    chunk_size, meta=(),
):
    """Gradients of :func:`_core_forward` for its eight tensor inputs (``None`` for an absent conv bias);
    ``meta`` as the forward returned it, or empty to derive it again from the shapes."""
    xBC_act, y, diag, *kept = saved
    nheads, ngroups, d_state = shape
    inner, channels = norm_weight.shape[0], conv_weight.shape[0]
    x_BLHP = xBC_act[..., :inner].unflatten(-1, (nheads, -1))
    BC_BL4GN = xBC_act[..., inner:].unflatten(-1, (4, ngroups, d_state))
    parts = None
    if kept:  # the scan's fields besides its tensors follow from the shapes
        meta = meta or scan_meta(x_BLHP, BC_BL4GN, chunk_size, x_BLHP.dtype == torch.float32, True)
        parts = ScanParts(*kept, *meta)
    z = zxbcdt[..., :inner]
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    # The norm's dz is taken after the scan's backward (the layer's peak), straight into the
    # input projection's gradient buffer, allocated only then: neither is held through the peak.
    dy = gated_rmsnorm_bwd(dout, y.flatten(2), z, norm_weight, eps, grads="dy")[0]  # dnorm_weight with dz
    dact = torch.empty_like(xBC_act)
    _, ddt_raw, ddt_bias, dA_log, _, ddiag = hydra_scan_bwd(
        dy.unflatten(-1, (nheads, -1)),
        x_BLHP,
        zxbcdt[..., inner + channels :],
        dt_bias,
        A_log,
        BC_BL4GN,
        diag,
        chunk_size,
        log_decay=True,
        dx_out=dact[..., :inner].unflatten(-1, (nheads, -1)),
        dBC_out=dact[..., inner:].unflatten(-1, (4, ngroups, d_state)),
        parts=parts,
        diag_weight=fc_D_weight,  # diag = x fc_D^T + D: fc_D's input gradient is added to dx in the dx kernel
    )
    del dy, parts, kept, saved
    x = xBC_act[..., :inner]
    ddiag_NH = ddiag.view(-1, nheads).to(x.dtype)  # contiguous, in the dtype of x (diag's)
    dfc_D = (ddiag_NH.t() @ x.reshape(-1, inner)).to(fc_D_weight.dtype)
    dD = ddiag.sum((0, 1)).to(D_dtype)
    del ddiag, ddiag_NH
    dzxbcdt = torch.empty_like(zxbcdt)
    norm_args = (dout, y.flatten(2), z, norm_weight, eps)
    dnorm_weight = gated_rmsnorm_bwd(*norm_args, grads="dz", dz_out=dzxbcdt[..., :inner])[2]
    dzxbcdt[..., inner + channels :].copy_(ddt_raw)
    del ddt_raw
    xBC, dxBC = zxbcdt[..., inner : inner + channels], dzxbcdt[..., inner : inner + channels]
    _, dconv_weight, dconv_bias = conv1d_silu_bwd(dact, xBC, conv_weight, conv_bias, dx_out=dxBC)
    return dzxbcdt, dconv_weight, dconv_bias, dfc_D, dD, ddt_bias, dA_log, dnorm_weight


class HydraCore(torch.autograd.Function):
    """``zxbcdt (B, L, E + C + 2H) -> y (B, L, E)``: conv + SiLU, diagonal, scan, gated norm (eager).

    Everything the backward reads goes through ``save_for_backward``, so activation checkpointing
    and saved-tensor hooks see all of it (plain ``ctx`` attributes would stay alive through a
    checkpointed block). With ``keep_states`` the scan's carried states (and step sizes, decays,
    ``CB``) are kept for the backward instead of recomputed.
    """

    @staticmethod
    def forward(ctx, *args):
        tensors, (shape, eps, chunk_size, keep_states, needs_backward) = args[:8], args[8:]
        out, saved, ctx.parts_meta = _core_forward(*tensors, shape, eps, chunk_size, keep_states, needs_backward)
        if needs_backward:
            zxbcdt, conv_weight, conv_bias, fc_D_weight, _D, dt_bias, A_log, norm_weight = tensors
            ctx.save_for_backward(zxbcdt, conv_weight, conv_bias, fc_D_weight, dt_bias, A_log, norm_weight, *saved)
        ctx.shape, ctx.eps, ctx.chunk_size, ctx.D_dtype = shape, eps, chunk_size, tensors[4].dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        zxbcdt, conv_weight, conv_bias, fc_D_weight, dt_bias, A_log, norm_weight, *saved = ctx.saved_tensors
        inputs = (zxbcdt, conv_weight, conv_bias, fc_D_weight, ctx.D_dtype, dt_bias, A_log, norm_weight)
        grads = _core_backward(dout, *inputs, tuple(saved), ctx.shape, ctx.eps, ctx.chunk_size, ctx.parts_meta)
        return *grads, None, None, None, None, None  # shape, eps, chunk_size, keep_states, needs_backward


# Under torch.compile the layer is two custom operators, opaque to the compiler: traced by Dynamo,
# Inductor would launch the kernels as user-defined Triton kernels, which read B_b and C_b past the
# end of the B_f / C_f views they are given (an illegal access once Inductor copies such a view).
# Eager calls keep the autograd Function: a custom operator's dispatch costs host time per call.
@torch.library.custom_op("hthlight::hydra_core_fwd", mutates_args=())
def _forward_op(
    zxbcdt: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    fc_D_weight: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    norm_weight: torch.Tensor,
    nheads: int,
    ngroups: int,
    d_state: int,
    eps: float,
    chunk_size: int,
    keep_states: bool,
    needs_backward: bool,
) -> list[torch.Tensor]:
    """``[out, *saved]`` of :func:`_core_forward`."""
    args = (zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight)
    out, saved, _ = _core_forward(*args, (nheads, ngroups, d_state), eps, chunk_size, keep_states, needs_backward)
    return [out, *saved]  # an operator returns tensors only: the backward derives the scan's settings again


@_forward_op.register_fake
def _forward_op_fake(zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight, nheads, ngroups,
                     d_state, eps, chunk_size, keep_states, needs_backward):
    batch, seqlen, _ = zxbcdt.shape
    inner, channels = norm_weight.shape[0], conv_weight.shape[0]
    out = zxbcdt.new_empty((batch, seqlen, inner))
    if not needs_backward:
        return [out]
    saved = [zxbcdt.new_empty((batch, seqlen, channels)), zxbcdt.new_empty((batch, seqlen, nheads, inner // nheads)),
             zxbcdt.new_empty((batch, seqlen, nheads))]
    if keep_states:
        nchunks = -(-seqlen // chunk_size)
        f32 = dict(dtype=torch.float32)
        saved += [zxbcdt.new_empty((batch, 2, nheads, nchunks * chunk_size), **f32),
                  zxbcdt.new_empty((batch, 2, nheads, nchunks * chunk_size), **f32),
                  zxbcdt.new_empty((batch * ngroups, nchunks, chunk_size, chunk_size), **f32),
                  zxbcdt.new_empty((batch, nchunks, 2, nheads, d_state, inner // nheads))]
    return [out, *saved]


@torch.library.custom_op("hthlight::hydra_core_bwd", mutates_args=())
def _backward_op(
    dout: torch.Tensor,
    zxbcdt: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    fc_D_weight: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    norm_weight: torch.Tensor,
    saved: list[torch.Tensor],
    nheads: int,
    ngroups: int,
    d_state: int,
    eps: float,
    chunk_size: int,
) -> list[torch.Tensor]:
    """:func:`_core_backward`'s gradients (an empty tensor for an absent conv bias)."""
    inputs = (zxbcdt, conv_weight, conv_bias, fc_D_weight, D.dtype, dt_bias, A_log, norm_weight)
    grads = _core_backward(dout, *inputs, tuple(saved), (nheads, ngroups, d_state), eps, chunk_size)
    out, storages = [], set()
    for grad in grads:  # contiguous, as the fake says; an operator's outputs may not share memory (dD, dA may)
        grad = conv_weight.new_empty(0) if grad is None else grad.contiguous()
        if grad.untyped_storage().data_ptr() in storages:
            grad = grad.clone()
        storages.add(grad.untyped_storage().data_ptr())
        out.append(grad)
    return out


@_backward_op.register_fake
def _backward_op_fake(dout, zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight, saved,
                      nheads, ngroups, d_state, eps, chunk_size):
    like = (zxbcdt, conv_weight, conv_bias if conv_bias is not None else conv_weight.new_empty(0), fc_D_weight, D,
            dt_bias, A_log, norm_weight)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]


def _op_setup_context(ctx, inputs, output):
    zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight, *settings = inputs
    ctx.save_for_backward(zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight, *output[1:])
    ctx.settings = settings[:5]  # nheads, ngroups, d_state, eps, chunk_size


def _op_grads(ctx, grads_out):
    zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight, *saved = ctx.saved_tensors
    inputs = (zxbcdt, conv_weight, conv_bias, fc_D_weight, D, dt_bias, A_log, norm_weight)
    grads = _backward_op(grads_out[0], *inputs, saved, *ctx.settings)
    if conv_bias is None:
        grads[2] = None
    return *grads, None, None, None, None, None, None, None


_forward_op.register_autograd(_op_grads, setup_context=_op_setup_context)


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
    if torch.compiler.is_compiling():  # one opaque custom operator in the graph
        settings = (nheads, ngroups, d_state, eps, chunk_size, keep_states and grad, grad)
        return _forward_op(*tensors, *settings)[0]
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
