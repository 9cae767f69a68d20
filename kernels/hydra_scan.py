"""Fused bidirectional Hydra scan in Triton (forward), one pass per direction over the data.

Hydra (Hwang et al. 2024) mixes a sequence with a quasiseparable matrix ``M``: a causal SSD
part shifted one token below the diagonal, an anti-causal SSD part shifted one token above
it, and a free diagonal ``d``. Per head, with ``a_r = dt_r * A``,

    M[t, s] = (C_f[t-1] . B_f[s]) exp(sum_{s<r<t} a^f_r) dt^f_s     for s < t
    M[t, s] = (C_b[t+1] . B_b[s]) exp(sum_{t<r<s} a^b_r) dt^b_s     for s > t
    M[t, t] = d_t                                                   (fc_D(x) + D)

and ``y = M x``. The public layer builds this from a doubled batch (the sequence and its
flip), two Mamba-2 scans, a roll and a sum. Here nothing is flipped, concatenated or
doubled: the one-token shifts are offset loads of ``C``, the anti-causal direction walks the
chunks from the end by index arithmetic, and the three parts of ``M`` meet in one
accumulator. The chunked algorithm is Mamba-2's SSD (Dao & Gu 2024, sec. 6):

1. ``_dt_kernel``: ``dt = softplus(raw + dt_bias)`` for both directions and the in-chunk
   cumulative log-decays (forward: inclusive prefix; backward: inclusive suffix).
2. ``_cb_kernel``: per chunk and group, one ``Q x Q`` matrix whose strictly lower triangle is
   ``C_f[t-1] . B_f[s]`` and strictly upper triangle ``C_b[t+1] . B_b[s]`` (shared by all
   heads of the group, so it is computed once, not per head).
3. ``_states_kernel``: the state entering every chunk, forward from the start and backward
   from the end, by a sequential sweep over chunks (chunk states are never written).
4. ``_output_kernel``: per chunk, row block and head: carried states times shifted ``C``
   plus the masked, decayed ``CB`` (with ``d`` on its diagonal) times ``x``.

All arithmetic accumulates in float32; inputs may be float32 or bfloat16/float16.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    """``a @ b`` accumulated in float32; IEEE float32 products when asked (float32 inputs)."""
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _decay_rate(A_ptr, h, LOG_A: tl.constexpr):
    """Head ``h``'s decay rate ``A`` in float32: loaded, or ``-exp(A_log)`` from the layer's ``A_log`` (``LOG_A``)."""
    A = tl.load(A_ptr + h).to(tl.float32)
    if LOG_A:
        A = -tl.exp(A)
    return A


@triton.jit
def _pid(axis: tl.constexpr, WIDE: tl.constexpr):
    """The program id along ``axis``, 64-bit when offsets may pass 2**31 elements (``WIDE``)."""
    pid = tl.program_id(axis)
    if WIDE:
        pid = pid.to(tl.int64)
    return pid


@triton.jit
def _dt_kernel(
    raw_ptr, bias_ptr, A_ptr, dt_ptr, cum_ptr,
    L, H, Lp,
    s_raw_b, s_raw_l,
    Q: tl.constexpr, LOG_A: tl.constexpr,
):
    """dt (B, 2, H, Lp) and cumulative log-decay (B, 2, H, Lp); zero beyond L."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    c = tl.program_id(2)
    t = c * Q + tl.arange(0, Q)
    valid = t < L
    A = _decay_rate(A_ptr, h, LOG_A)
    for direction in tl.static_range(2):
        raw = tl.load(raw_ptr + b * s_raw_b + t * s_raw_l + direction * H + h, mask=valid, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + h).to(tl.float32)
        dt = tl.where(valid, _softplus(raw + bias), 0.0)
        a = dt * A
        prefix = tl.cumsum(a, axis=0)
        if direction == 0:
            cum = prefix  # sum_{t0 <= r <= t} a_r
        else:
            cum = tl.sum(a, axis=0) - prefix + a  # sum_{t <= r < t1} a_r
        out = ((b * 2 + direction) * H + h) * Lp + t
        tl.store(dt_ptr + out, dt)
        tl.store(cum_ptr + out, cum)


@triton.jit
def _cb_kernel(
    B_ptr, C_ptr, cb_ptr,
    L, N, G, NC,
    s_b, s_l, s_g, off_fwd, off_bwd,
    Q: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
):
    """cb (B, G, NC, Q, Q) float32: lower = C_f[t-1].B_f[s], upper = C_b[t+1].B_b[s], diagonal 0.

    ``B_ptr``/``C_ptr`` point at the forward direction's B and C; the backward direction's
    are ``off_bwd`` elements further (they live side by side in the conv output).
    """
    tile = tl.program_id(0)  # a chunk's tiles run side by side (they share its rows of B and C in cache)
    c = _pid(1, WIDE)  # 64-bit offsets: long sequences of wide layers pass 2**31 elements
    bg = _pid(2, WIDE)
    b = bg // G
    g = bg % G
    NT: tl.constexpr = Q // BT
    i = tile // NT
    j = tile % NT
    t = c * Q + i * BT + tl.arange(0, BT)
    s = c * Q + j * BT + tl.arange(0, BT)
    base = b * s_b + g * s_g
    acc_f = tl.zeros((BT, BT), dtype=tl.float32)
    acc_b = tl.zeros((BT, BT), dtype=tl.float32)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        nmask = n < N
        Bs_mask = (s < L)[:, None] & nmask[None, :]
        if j <= i:  # forward part (s < t) lives in tiles on or below the diagonal
            tf = t - 1
            Ct = tl.load(C_ptr + base + tf[:, None] * s_l + n[None, :],
                         mask=((tf >= 0) & (tf < L))[:, None] & nmask[None, :], other=0.0)
            Bs = tl.load(B_ptr + base + s[:, None] * s_l + n[None, :], mask=Bs_mask, other=0.0)
            acc_f += _mm(Ct, tl.trans(Bs), IEEE)
        if j >= i:  # backward part (s > t)
            tb = t + 1
            Ct = tl.load(C_ptr + off_bwd + base + tb[:, None] * s_l + n[None, :],
                         mask=(tb < L)[:, None] & nmask[None, :], other=0.0)
            Bs = tl.load(B_ptr + off_bwd + base + s[:, None] * s_l + n[None, :], mask=Bs_mask, other=0.0)
            acc_b += _mm(Ct, tl.trans(Bs), IEEE)
    lt = s[None, :] < t[:, None]
    gt = s[None, :] > t[:, None]
    out = tl.where(lt, acc_f, tl.where(gt, acc_b, 0.0))
    ti = i * BT + tl.arange(0, BT)
    sj = j * BT + tl.arange(0, BT)
    ptr = cb_ptr + ((bg * NC + c) * Q + ti[:, None]) * Q + sj[None, :]
    tl.store(ptr, out)


@triton.jit
def _states_kernel(
    x_ptr, B_ptr, dt_ptr, cum_ptr, st_ptr,
    L, H, N, G, NC, Lp,
    s_xb, s_xl, s_xh,
    s_b, s_l, s_g, off_bwd,
    Q: tl.constexpr, P: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
):
    """States entering each chunk, st (B, NC, 2, H, N, P) in the dtype of st_ptr.

    Forward: the state after all tokens before the chunk; backward: after all tokens after it.
    """
    pid = tl.program_id(0)  # a head's state blocks and directions run side by side (they share its x in cache)
    h = tl.program_id(1)
    b = _pid(2, WIDE)  # 64-bit offsets: long sequences of wide layers pass 2**31 elements
    direction = pid % 2
    nb = pid // 2
    g = h // (H // G)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    p = tl.arange(0, P)
    rows = tl.arange(0, Q)
    state = tl.zeros((BN, P), dtype=tl.float32)
    dtc_base = ((b * 2 + direction) * H + h) * Lp
    B_base = B_ptr + b * s_b + g * s_g + direction * off_bwd
    for k in range(0, NC):
        c = k + direction * (NC - 1 - 2 * k)  # forward: chunks in order; backward: from the end
        st = st_ptr + ((((b * NC + c) * 2 + direction) * H + h) * N + n[:, None]) * P + p[None, :]
        tl.store(st, state.to(st_ptr.dtype.element_ty), mask=nmask[:, None])
        s = c * Q + rows
        if WIDE:
            s = s.to(tl.int64)
        dt = tl.load(dt_ptr + dtc_base + s)
        cum = tl.load(cum_ptr + dtc_base + s)
        # The chunk's whole log-decay: the forward prefix at its last token, the backward suffix at its first.
        total = tl.load(cum_ptr + dtc_base + c * Q + (1 - direction) * (Q - 1))
        w = tl.exp(total - cum) * dt  # decay from s to the chunk's far end (end, or start backward)
        valid = s < L
        Bs = tl.load(B_base + s[:, None] * s_l + n[None, :], mask=valid[:, None] & nmask[None, :], other=0.0)
        xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :], mask=valid[:, None], other=0.0)
        Bw = (Bs.to(tl.float32) * w[:, None]).to(xs.dtype)
        state = state * tl.exp(total) + _mm(tl.trans(Bw), xs, IEEE)


@triton.jit
def _output_kernel(
    x_ptr, C_ptr, dt_ptr, cum_ptr, st_ptr, cb_ptr, diag_ptr, A_ptr, y_ptr,
    L, H, N, G, NC, Lp,
    s_xb, s_xl, s_xh,
    s_b, s_l, s_g, off_bwd,
    s_db, s_dl,
    Q: tl.constexpr, P: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    IEEE: tl.constexpr, WIDE: tl.constexpr, LOG_A: tl.constexpr,
):
    """y (B, L, H, P) = M x for one chunk's block of BM rows and one head."""
    bh = _pid(0, WIDE)  # 64-bit offsets: long sequences of wide layers pass 2**31 elements
    c = _pid(1, WIDE)
    m = tl.program_id(2)
    b = bh // H
    h = bh % H
    g = h // (H // G)
    A = _decay_rate(A_ptr, h, LOG_A)
    t = c * Q + m * BM + tl.arange(0, BM)
    tvalid = t < L
    p = tl.arange(0, P)
    f_base = (b * 2 * H + h) * Lp
    b_base = ((b * 2 + 1) * H + h) * Lp
    dt_f_t = tl.load(dt_ptr + f_base + t)
    dt_b_t = tl.load(dt_ptr + b_base + t)
    excl_f = tl.load(cum_ptr + f_base + t) - dt_f_t * A  # decay from the chunk start to t - 1
    excl_b = tl.load(cum_ptr + b_base + t) - dt_b_t * A  # decay from t + 1 to the chunk end

    # Carried states: forward through C_f[t-1], backward through C_b[t+1]. The decays scale the rows
    # of C, so both directions share one accumulator (fewer registers: 128-row tiles on 4 warps).
    C_base = C_ptr + b * s_b + g * s_g
    scale_f = tl.exp(excl_f)[:, None]
    scale_b = tl.exp(excl_b)[:, None]
    acc = tl.zeros((BM, P), dtype=tl.float32)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        nmask = n < N
        tf = t - 1
        Cf = tl.load(C_base + tf[:, None] * s_l + n[None, :],
                     mask=((tf >= 0) & (tf < L))[:, None] & nmask[None, :], other=0.0)
        tb = t + 1
        Cb = tl.load(C_base + off_bwd + tb[:, None] * s_l + n[None, :], mask=(tb < L)[:, None] & nmask[None, :],
                     other=0.0)
        st = st_ptr + ((((b * NC + c) * 2) * H + h) * N + n[:, None]) * P + p[None, :]
        Sf = tl.load(st, mask=nmask[:, None], other=0.0).to(Cf.dtype)
        Sb = tl.load(st + H * N * P, mask=nmask[:, None], other=0.0).to(Cb.dtype)
        acc += _mm((Cf.to(tl.float32) * scale_f).to(Sf.dtype), Sf, IEEE)
        acc += _mm((Cb.to(tl.float32) * scale_b).to(Sb.dtype), Sb, IEEE)

    # Inside the chunk: one matrix holding both directions and the diagonal.
    d_t = tl.load(diag_ptr + b * s_db + t * s_dl + h, mask=tvalid, other=0.0).to(tl.float32)
    ti = m * BM + tl.arange(0, BM)
    for k0 in range(0, Q, BK):
        s = c * Q + k0 + tl.arange(0, BK)
        sj = k0 + tl.arange(0, BK)
        cb = tl.load(cb_ptr + ((b * G + g) * NC + c) * Q * Q + ti[:, None] * Q + sj[None, :])
        dt_f_s = tl.load(dt_ptr + f_base + s)
        dt_b_s = tl.load(dt_ptr + b_base + s)
        cum_f_s = tl.load(cum_ptr + f_base + s)
        cum_b_s = tl.load(cum_ptr + b_base + s)
        # One exponential per entry: the forward part's log-decay below the diagonal, the backward's
        # above (each is <= 0 on its side; cb is 0 on the diagonal, where d goes).
        lt = s[None, :] < t[:, None]
        log = tl.where(lt, excl_f[:, None] - cum_f_s[None, :], excl_b[:, None] - cum_b_s[None, :])
        dt_s = tl.where(lt, dt_f_s[None, :], dt_b_s[None, :])
        xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :], mask=(s < L)[:, None], other=0.0)
        M = tl.where(s[None, :] == t[:, None], d_t[:, None], cb * tl.exp(log) * dt_s)
        acc += _mm(M.to(xs.dtype), xs, IEEE)
    y = y_ptr + ((b * L + t[:, None]) * H + h) * P + p[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=tvalid[:, None])


#: Launch configuration (block sizes, warps, pipeline stages) for 16-bit inputs, tuned on an H100 at
#: HTH-5B width, 16k tokens, chunk 128 with ``benchmarks/hydra_profile.py --configs`` (benchmarks/RESULTS.md).
#: float32 inputs (the exact IEEE path) keep 64-row tiles on 4 warps, forward and backward.
CONFIG = {
    "out_bm": 128, "out_warps": 4, "state_bn": 64, "state_warps": 4, "state_stages": 2,
    "adj_warps": 4, "adj_stages": 2, "dw_warps": 4,
    "dx_bm": 128, "dx_warps": 8, "dbc_bm": 128, "dbc_bn": 64, "dc_warps": 8, "db_warps": 4,
    "dx_stages": 3, "dw_stages": 3, "dbc_stages": 3, "dw_bt": 64, "out_bk": 32, "out_stages": 3, "dx_bk": 32,
    "dbc_bk": 32,
}


class ScanParts(NamedTuple):
    """What the forward computed besides ``y`` (steps 1-3), for the backward to reuse: the tensors first
    (``parts[:TENSOR_PARTS]``, what a layer saves), then the settings :func:`scan_meta` derives from shapes."""

    dt: torch.Tensor  # (B, 2, H, Lp) float32 step sizes, forward then backward direction
    cum: torch.Tensor  # (B, 2, H, Lp) float32 within-chunk cumulative log decays
    cb: torch.Tensor  # (B G, NC, Q, Q) float32 C_i . B_j of each chunk
    states: torch.Tensor  # (B, NC, 2, H, N, P) carried states, in the dtype of x
    q: int
    nchunks: int
    lp: int
    ieee: bool
    wide: bool
    bn: int
    bn_state: int
    log_decay: bool


TENSOR_PARTS = 4  # ScanParts' leading tensor fields


def _check_last_dim_contiguous(**tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension, got strides {tensor.stride()}")


def hydra_scan_fwd(
    x_BLHP: torch.Tensor,
    dt_raw_BL2H: torch.Tensor,
    dt_bias_H: torch.Tensor,
    A_H: torch.Tensor,
    BC_BL4GN: torch.Tensor,
    diag_BLH: torch.Tensor,
    chunk_size: int = 128,
    *,
    log_decay: bool = False,
    return_parts: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ScanParts]:
    """Hydra's sequence mixing ``y = M x`` (see the module docstring), forward only.

    Args:
        x_BLHP: inputs (may be a strided view, e.g. a slice of the conv output).
        dt_raw_BL2H: pre-softplus step sizes, forward heads then backward heads.
        dt_bias_H: added to ``dt_raw`` before the softplus.
        A_H: per-head decay rate (negative); with ``log_decay``, the layer's ``A_log`` instead
            (``A = -exp(A_log)``, taken inside the kernels: no extra launches).
        BC_BL4GN: ``B_f, C_f, B_b, C_b`` side by side in the last dimension (each ``G x N``),
            as the public layer's conv output holds them; may be a strided view.
        diag_BLH: the diagonal ``fc_D(x) + D``.
        chunk_size: SSD chunk length ``Q`` (a power of two, 32 to 256).

        return_parts: also return the step sizes, cumulative decays, ``CB`` matrices and carried
            states the forward computed, for :func:`~hthlight.kernels.hydra_scan_bwd.hydra_scan_bwd`
            (``parts``) to use instead of recomputing them.

    Returns:
        ``y_BLHP`` (contiguous) in the dtype of ``x``; with ``return_parts``, ``(y_BLHP, parts)``.
    """
    parts = _forward_parts(x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size, log_decay=log_decay)
    batch, seqlen, nheads, headdim = x_BLHP.shape
    ngroups, d_state = BC_BL4GN.shape[-2:]
    q = parts.q
    y = torch.empty(batch, seqlen, nheads, headdim, device=x_BLHP.device, dtype=x_BLHP.dtype)
    bm = min(64 if parts.ieee else CONFIG["out_bm"], q)  # float32 keeps 64-row tiles
    bk = min(CONFIG["out_bk"], q)
    s_b, s_l, s_g = BC_BL4GN.stride(0), BC_BL4GN.stride(1), BC_BL4GN.stride(3)
    _output_kernel[(batch * nheads, parts.nchunks, q // bm)](
        x_BLHP, BC_BL4GN[:, :, 1], parts.dt, parts.cum, parts.states, parts.cb, diag_BLH, A_H, y,
        seqlen, nheads, d_state, ngroups, parts.nchunks, parts.lp,
        x_BLHP.stride(0), x_BLHP.stride(1), x_BLHP.stride(2), s_b, s_l, s_g, 2 * ngroups * d_state,
        diag_BLH.stride(0), diag_BLH.stride(1),
        Q=q, P=headdim, BM=bm, BK=bk, BN=parts.bn, IEEE=parts.ieee, WIDE=parts.wide, LOG_A=log_decay,
        num_warps=CONFIG["out_warps"], num_stages=CONFIG["out_stages"],
    )
    return (y, parts) if return_parts else y


def scan_meta(x_BLHP, BC_BL4GN, chunk_size: int, ieee: bool, log_decay: bool) -> tuple:
    """Checks the shapes, then :class:`ScanParts`' fields after the tensors, in order: chunk length,
    chunks, padded length, IEEE products, 64-bit offsets, ``CB`` state block, states' state block,
    ``log_decay``. A function of the inputs' shapes and strides only, so a backward can rebuild them."""
    batch, seqlen, nheads, headdim = x_BLHP.shape
    _, _, four, ngroups, d_state = BC_BL4GN.shape
    q = chunk_size
    if four != 4 or nheads % ngroups:
        raise ValueError(f"BC_BL4GN must be (B, L, 4, G, N) with H % G == 0, got {tuple(BC_BL4GN.shape)}")
    if q not in (32, 64, 128, 256):
        raise ValueError(f"the Triton Hydra scan supports chunk_size 32, 64, 128 or 256, got {q}")
    if headdim not in (16, 32, 64, 128):
        raise ValueError(f"the Triton Hydra scan supports headdim 16, 32, 64 or 128, got {headdim}")
    _check_last_dim_contiguous(x=x_BLHP, BC=BC_BL4GN)
    if BC_BL4GN.stride(3) != d_state or BC_BL4GN.stride(2) != ngroups * d_state:
        raise ValueError("B and C must be laid out as (4, G, N) contiguous within a token")
    nchunks = triton.cdiv(seqlen, q)
    lp = nchunks * q
    # 64-bit offsets only where some index may pass 2**31 (they cost about 20% at small sizes).
    state_elements = batch * nchunks * 2 * nheads * d_state * headdim
    output_elements = batch * seqlen * nheads * headdim
    largest = max(state_elements, output_elements, x_BLHP.stride(0) * batch, BC_BL4GN.stride(0) * batch)
    wide = largest >= 2**31
    wide_tiles = x_BLHP.dtype == torch.float32 and q > 128  # float32 tiles of 256 rows need smaller blocks
    bn_state = min(CONFIG["state_bn"] if headdim <= 64 and not wide_tiles else 32, triton.next_power_of_2(d_state))
    return q, nchunks, lp, ieee, wide, min(64, triton.next_power_of_2(d_state)), bn_state, log_decay


def _forward_parts(
    x_BLHP, dt_raw_BL2H, dt_bias_H, A_H, BC_BL4GN, diag_BLH, chunk_size, ieee: bool | None = None,
    log_decay: bool = False,
) -> ScanParts:
    """Checks, then steps 1-3: ``dt`` and cumulative decays, the ``CB`` matrices, the carried states.

    States are stored in the dtype of ``x``; ``ieee`` (default: ``x`` is float32) asks for IEEE
    float32 products instead of the matrix units' faster modes; ``log_decay``: ``A_H`` is ``A_log``.
    """
    batch, seqlen, nheads, headdim = x_BLHP.shape
    ngroups, d_state = BC_BL4GN.shape[-2:]
    _check_last_dim_contiguous(dt_raw=dt_raw_BL2H, diag=diag_BLH)
    meta = scan_meta(x_BLHP, BC_BL4GN, chunk_size, x_BLHP.dtype == torch.float32 if ieee is None else ieee, log_decay)
    q, nchunks, lp, ieee, wide, bn, bn_state, _ = meta
    device = x_BLHP.device
    dt = torch.empty(batch, 2, nheads, lp, device=device, dtype=torch.float32)
    cum = torch.empty_like(dt)
    _dt_kernel[(batch, nheads, nchunks)](
        dt_raw_BL2H, dt_bias_H, A_H, dt, cum, seqlen, nheads, lp, dt_raw_BL2H.stride(0), dt_raw_BL2H.stride(1),
        Q=q, LOG_A=log_decay,
    )
    gn = ngroups * d_state
    s_b, s_l, s_g = BC_BL4GN.stride(0), BC_BL4GN.stride(1), BC_BL4GN.stride(3)
    B_f, C_f = BC_BL4GN[:, :, 0], BC_BL4GN[:, :, 1]
    off_bwd = 2 * gn  # B_b and C_b sit 2 * G * N elements after B_f and C_f
    bt = min(64, q)
    cb = torch.empty(batch * ngroups, nchunks, q, q, device=device, dtype=torch.float32)
    _cb_kernel[((q // bt) ** 2, nchunks, batch * ngroups)](
        B_f, C_f, cb, seqlen, d_state, ngroups, nchunks, s_b, s_l, s_g, 0, off_bwd,
        Q=q, BT=bt, BN=bn, IEEE=ieee, WIDE=wide, num_warps=4,
    )
    states = torch.empty(batch, nchunks, 2, nheads, d_state, headdim, device=device, dtype=x_BLHP.dtype)
    _states_kernel[(2 * triton.cdiv(d_state, bn_state), nheads, batch)](
        x_BLHP, B_f, dt, cum, states, seqlen, nheads, d_state, ngroups, nchunks, lp,
        x_BLHP.stride(0), x_BLHP.stride(1), x_BLHP.stride(2), s_b, s_l, s_g, off_bwd,
        Q=q, P=headdim, BN=bn_state, IEEE=ieee, WIDE=wide, num_warps=CONFIG["state_warps"],
        num_stages=1 if x_BLHP.dtype == torch.float32 else CONFIG["state_stages"],
    )
    return ScanParts(dt, cum, cb, states, *meta)
