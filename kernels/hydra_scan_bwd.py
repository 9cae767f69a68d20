"""Backward of the fused bidirectional Hydra scan (:mod:`hthlight.kernels.hydra_scan`) in Triton.

With ``y = M x`` (module docstring of ``hydra_scan``) and, per head, the forward part
``M_f[t, s] = C~_f[t].B_f[s] exp(E_f[t] - S_f[s]) dt_f[s]`` (``s < t``; ``E_f``/``S_f`` the
exclusive/inclusive prefix sums of ``a_f = A dt_f``, ``C~_f[t] = C_f[t-1]``) and the backward
part mirrored, the gradients are (Mamba-2's SSD backward, Dao & Gu 2024, applied to each part):

* ``u_f[s] = sum_{t>s} C~_f[t].B_f[s] exp(E_f[t] - S_f[s]) dy_t`` (the transposed scan, run
  with reverse "adjoint" states) and ``u_b`` mirrored;
  ``dx_s = d_s dy_s + dt_f[s] u_f[s] + dt_b[s] u_b[s]``, ``dd_s = dy_s . x_s``;
* ``dC~_f[t] = sum_h sum_{s<t} exp(..) dt_f[s] (dy_t . x_s) B_f[s]`` and
  ``dB_f[s] = sum_h dt_f[s] sum_{t>s} exp(..) (dy_t . x_s) C~_f[t]``: inside a chunk both are
  ``W B`` and ``W^T C~`` for one head-summed ``W[t, s] = sum_h exp(..) dt_f[s] (dy_t . x_s)``
  (B and C are shared by a group's heads), so the ``Q x Q x N`` products run once per group;
  across chunks they go through the carried and adjoint states, head by head in one program
  (no atomics, no per-head copies);
* the log-decays: ``da_f[r]`` is the gradient flow ``G[t, s] = dy_t . M_f[t, s] x_s`` of the
  token pairs it lies between (``s < r < t``). As ``sum_{t>r} dy_t.y^f_t - sum_{s>=r} dt_s x_s.u_s``
  over the whole sequence this is a difference of two huge, nearly equal sums (bfloat16 keeps
  no digit of it), so it is summed chunk by chunk instead, from four non-cancelling parts:
  pairs inside the chunk (row and column sums of the exact float32 ``G`` per head, from
  ``_dw_kernel``), pairs whose source is in an earlier chunk (``dy . y`` of the carried states,
  the dC pass of ``_dbc_kernel``), pairs whose output is in a later chunk
  (``x . u`` of the adjoint states, ``_dx_kernel``), and pairs straddling the chunk
  (``<carried state, adjoint state>``, ``_adjoint_states_kernel``); ``_decay_grad_kernel``
  sums them within each chunk and applies ``A`` and the softplus' derivative, with per-chunk
  shares of the ``dt_bias``/``A`` reductions (summed in PyTorch).

Kernels, in launch order: ``_adjoint_states_kernel`` (reverse sweep of ``C~ dy^T``), ``_dw_kernel``
(the in-chunk weights ``W[t, s]`` of dB/dC summed over a group's heads, and ``dd = dy . x``),
``_dx_kernel`` (``dx``, ``x.u``; with ``diag_weight`` also ``dd W``), ``_dbc_kernel`` (``dB``, ``dC``:
carried-state term per head plus ``W B`` / ``W^T C~`` once per group; the dC pass also ``dy . y^f``
and ``dy . y^b`` of the carried states) and ``_decay_grad_kernel``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hthlight.kernels.hydra_scan import CONFIG, _decay_rate, _forward_parts, _mm, _pid


@triton.jit
def _adjoint_states_kernel(
    dy_ptr, C_ptr, dt_ptr, cum_ptr, A_ptr, adj_ptr, st_ptr, cross_ptr,
    L, H, N, G, NC, Lp,
    s_yb, s_yl, s_yh,
    s_b, s_l, s_g, off_bwd,
    Q: tl.constexpr, P: tl.constexpr, BN: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
    LOG_A: tl.constexpr,
):
    """adj (B, NC, 2, H, N, P): forward part, sum over later chunks of exp(..) C~_f dy^T; backward, earlier.

    Also ``cross`` (B, 2, H, NC, N) float32: per state row, its share of
    ``exp(chunk's log-decay) <state entering the chunk, adjoint leaving it>``, the gradient
    flow of the token pairs that straddle the whole chunk (the decay gradients' chunk term);
    summed over the rows by ``_decay_grad_kernel`` (a sum here would cross warps in the sweep).
    """
    pid = tl.program_id(0)  # a head's state blocks and directions run side by side (they share its dy in cache)
    h = tl.program_id(1)
    b = _pid(2, WIDE)
    direction = pid % 2
    nb = pid // 2
    g = h // (H // G)
    A = _decay_rate(A_ptr, h, LOG_A)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    p = tl.arange(0, P)
    rows = tl.arange(0, Q)
    state = tl.zeros((BN, P), dtype=tl.float32)
    base = ((b * 2 + direction) * H + h) * Lp
    shift = 2 * direction - 1  # C~_f[t] = C_f[t - 1], C~_b[t] = C_b[t + 1]
    C_base = C_ptr + b * s_b + g * s_g + direction * off_bwd
    for k in range(0, NC):
        c = k + (1 - direction) * (NC - 1 - 2 * k)  # forward part: from the end; backward part: from the start
        off = ((((b * NC + c) * 2 + direction) * H + h) * N + n[:, None]) * P + p[None, :]
        tl.store(adj_ptr + off, state.to(adj_ptr.dtype.element_ty), mask=nmask[:, None])
        t = c * Q + rows
        dt = tl.load(dt_ptr + base + t)
        excl = tl.load(cum_ptr + base + t) - dt * A
        # The chunk's whole log-decay: the forward prefix at its last token, the backward suffix at its first.
        total = tl.load(cum_ptr + base + c * Q + (1 - direction) * (Q - 1))
        carried = tl.load(st_ptr + off, mask=nmask[:, None], other=0.0).to(tl.float32)
        cross = tl.sum(carried * state, axis=1) * tl.exp(total)  # per state row: no reduction across warps
        tl.store(cross_ptr + (((b * 2 + direction) * H + h) * NC + c) * N + n, cross, mask=nmask)
        tc = t + shift
        Ct = tl.load(C_base + tc[:, None] * s_l + n[None, :],
                     mask=((tc >= 0) & (tc < L) & (t < L))[:, None] & nmask[None, :], other=0.0)
        dy = tl.load(dy_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :], mask=(t < L)[:, None], other=0.0)
        Cw = (Ct.to(tl.float32) * tl.exp(excl)[:, None]).to(dy.dtype)
        state = state * tl.exp(total) + _mm(tl.trans(Cw), dy, IEEE)


@triton.jit
def _dx_kernel(
    x_ptr, dy_ptr, B_ptr, dt_ptr, cum_ptr, A_ptr, adj_ptr, cb_ptr, diag_ptr, dx_ptr, scal_ptr, dd_ptr, fc_ptr,
    L, H, N, G, NC, Lp,
    s_xb, s_xl, s_xh, s_yb, s_yl, s_yh,
    s_b, s_l, s_g, off_bwd,
    s_db, s_dl,
    s_ob, s_ol, s_oh, s_fc,
    Q: tl.constexpr, P: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    IEEE: tl.constexpr, WIDE: tl.constexpr, LOG_A: tl.constexpr, HP: tl.constexpr, FC: tl.constexpr,
):
    """dx (B, L, H, P) with strides (s_ob, s_ol, s_oh, 1); scal (B, 2, H, Lp) float32 per token and head:
    the parts of x.u_f and x.u_b that come from other chunks (through the adjoint states).

    With ``FC`` the diagonal is a projection of ``x`` itself, ``d = x W^T + D`` (``W``: (H, H P) at
    ``fc_ptr``, row stride ``s_fc``), and ``dx`` also takes its input gradient ``dd W`` from the
    diagonal's gradient ``dd`` (B, L, H) that ``_dw_kernel`` stored: one ``BM x H x P`` product here
    instead of a separate matrix product that reads and writes all of ``dx`` again.

    The in-chunk parts of ``x.u`` are the column sums of ``_dw_kernel``'s pair flows, so inside the
    chunk both directions and their step sizes go into one matrix: one exponential and one product.
    """
    bh = _pid(0, WIDE)
    c = _pid(1, WIDE)
    m = tl.program_id(2)
    b = bh // H
    h = bh % H
    g = h // (H // G)
    A = _decay_rate(A_ptr, h, LOG_A)
    s = c * Q + m * BM + tl.arange(0, BM)
    svalid = s < L
    p = tl.arange(0, P)
    f_base = (b * 2 * H + h) * Lp
    b_base = ((b * 2 + 1) * H + h) * Lp
    dt_f_s = tl.load(dt_ptr + f_base + s)
    dt_b_s = tl.load(dt_ptr + b_base + s)
    cum_f_s = tl.load(cum_ptr + f_base + s)
    cum_b_s = tl.load(cum_ptr + b_base + s)
    total_f = tl.load(cum_ptr + f_base + c * Q + Q - 1)
    total_b = tl.load(cum_ptr + b_base + c * Q)

    # Later chunks (forward part) and earlier chunks (backward part), through the adjoint states.
    B_base = B_ptr + b * s_b + g * s_g
    u_f = tl.zeros((BM, P), dtype=tl.float32)
    u_b = tl.zeros((BM, P), dtype=tl.float32)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        nmask = n < N
        mask = svalid[:, None] & nmask[None, :]
        Bf = tl.load(B_base + s[:, None] * s_l + n[None, :], mask=mask, other=0.0)
        Bb = tl.load(B_base + off_bwd + s[:, None] * s_l + n[None, :], mask=mask, other=0.0)
        st = adj_ptr + ((((b * NC + c) * 2) * H + h) * N + n[:, None]) * P + p[None, :]
        Gf = tl.load(st, mask=nmask[:, None], other=0.0).to(Bf.dtype)
        Gb = tl.load(st + H * N * P, mask=nmask[:, None], other=0.0).to(Bb.dtype)
        u_f += _mm(Bf, Gf, IEEE)
        u_b += _mm(Bb, Gb, IEEE)
    u_f = u_f * tl.exp(total_f - cum_f_s)[:, None]
    u_b = u_b * tl.exp(total_b - cum_b_s)[:, None]
    x = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :], mask=svalid[:, None], other=0.0)
    x = x.to(tl.float32)
    scal = scal_ptr + (b * 2 * H + h) * Lp + s
    tl.store(scal, tl.sum(x * u_f, axis=1), mask=svalid)
    tl.store(scal + H * Lp, tl.sum(x * u_b, axis=1), mask=svalid)
    dy_s = tl.load(dy_ptr + b * s_yb + s[:, None] * s_yl + h * s_yh + p[None, :], mask=svalid[:, None], other=0.0)
    dy_s = dy_s.to(tl.float32)
    d_s = tl.load(diag_ptr + b * s_db + s * s_dl + h, mask=svalid, other=0.0).to(tl.float32)
    dx = d_s[:, None] * dy_s + dt_f_s[:, None] * u_f + dt_b_s[:, None] * u_b
    if FC:  # + dd W: every head's diagonal gradient of these tokens times W's columns of this head
        k = tl.arange(0, HP)
        dd = tl.load(dd_ptr + (b * L + s[:, None]) * H + k[None, :], mask=svalid[:, None] & (k < H)[None, :],
                     other=0.0)
        W = tl.load(fc_ptr + k[:, None] * s_fc + h * P + p[None, :], mask=(k < H)[:, None], other=0.0)
        dx += _mm(dd.to(W.dtype), W, IEEE)

    # Inside the chunk: the transposed CB matrix, decayed and scaled by dt_s, times dy. One exponential
    # per entry: the forward part's log-decay where t > s, the backward's where t < s (cb is 0 at t = s).
    si = m * BM + tl.arange(0, BM)
    for k0 in range(0, Q, BK):
        t = c * Q + k0 + tl.arange(0, BK)
        tj = k0 + tl.arange(0, BK)
        cbT = tl.load(cb_ptr + ((b * G + g) * NC + c) * Q * Q + tj[None, :] * Q + si[:, None])  # [s, t] = CB[t, s]
        excl_f_t = tl.load(cum_ptr + f_base + t) - tl.load(dt_ptr + f_base + t) * A
        excl_b_t = tl.load(cum_ptr + b_base + t) - tl.load(dt_ptr + b_base + t) * A
        later = t[None, :] > s[:, None]
        log = tl.where(later, excl_f_t[None, :] - cum_f_s[:, None], excl_b_t[None, :] - cum_b_s[:, None])
        dt_s = tl.where(later, dt_f_s[:, None], dt_b_s[:, None])
        dy = tl.load(dy_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :], mask=(t < L)[:, None], other=0.0)
        dx += _mm((cbT * tl.exp(log) * dt_s).to(dy.dtype), dy, IEEE)
    tl.store(dx_ptr + b * s_ob + s[:, None] * s_ol + h * s_oh + p[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=svalid[:, None])


@triton.jit
def _dw_kernel(
    x_ptr, dy_ptr, dt_ptr, cum_ptr, A_ptr, cb_ptr, w_ptr, rows_ptr, cols_ptr, dd_ptr,
    L, H, G, NC, Lp,
    s_xb, s_xl, s_xh, s_yb, s_yl, s_yh,
    Q: tl.constexpr, P: tl.constexpr, BT: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
    LOG_A: tl.constexpr,
):
    """W (B, G, NC, Q, Q) float32, one ``BT x BT`` tile per program, summed over the group's heads:

    ``W[t, s] = sum_h exp(E_f[t] - S_f[s]) dt_f[s] (dy_t . x_s)`` below the diagonal (forward
    part) and the backward part's mirror above it. ``dC~ = W B`` and ``dB = W^T C~`` inside a
    chunk, so the ``Q x Q x N`` products are done once per group instead of once per head.

    Per head it also sums ``G[t, s] = CB[t, s] W_h[t, s] = dy_t . M[t, s] x_s`` (the in-chunk
    token pairs' gradient flow, exact in float32) over this tile's columns into ``rows``
    (B, 2, H, NT, Lp): ``dy_t . y_t`` of the in-chunk parts, and (without ``dt_s``) over its rows
    into ``cols``: ``x_s . u_s`` of the in-chunk parts; index 0 forward part, 1 backward part.
    The diagonal tiles (``i == j``: rows and columns are the same tokens) also store the diagonal's
    gradient ``dd = dy . x`` (B, L, H), the diagonal of ``dy x^T``, in ``dd_ptr``'s dtype.
    """
    tile = tl.program_id(0)  # a chunk's tiles run side by side (they share its rows of x and dy in cache)
    c = _pid(1, WIDE)
    bg = _pid(2, WIDE)
    b = bg // G
    g = bg % G
    R = H // G
    NT: tl.constexpr = Q // BT
    i = tile // NT
    j = tile % NT
    t = c * Q + i * BT + tl.arange(0, BT)
    s = c * Q + j * BT + tl.arange(0, BT)
    p = tl.arange(0, P)
    lt = s[None, :] < t[:, None]  # (a branch on i, j inside the head loop crashes Triton 3.6's Hopper pipeline)
    gt = s[None, :] > t[:, None]
    acc = tl.zeros((BT, BT), dtype=tl.float32)
    ti = i * BT + tl.arange(0, BT)
    sj = j * BT + tl.arange(0, BT)
    cb = tl.load(cb_ptr + ((bg * NC + c) * Q + ti[:, None]) * Q + sj[None, :])
    for r in range(0, R):
        h = g * R + r
        A = _decay_rate(A_ptr, h, LOG_A)
        dy = tl.load(dy_ptr + b * s_yb + t[:, None] * s_yl + h * s_yh + p[None, :], mask=(t < L)[:, None], other=0.0)
        xs = tl.load(x_ptr + b * s_xb + s[:, None] * s_xl + h * s_xh + p[None, :], mask=(s < L)[:, None], other=0.0)
        S = _mm(dy, tl.trans(xs), IEEE)  # [t, s] = dy_t . x_s
        # One exponential per entry: the forward part's log-decay below the diagonal, the backward's above.
        f_base = (b * 2 * H + h) * Lp
        b_base = ((b * 2 + 1) * H + h) * Lp
        excl_f = tl.load(cum_ptr + f_base + t) - tl.load(dt_ptr + f_base + t) * A
        excl_b = tl.load(cum_ptr + b_base + t) - tl.load(dt_ptr + b_base + t) * A
        log_f = excl_f[:, None] - tl.load(cum_ptr + f_base + s)[None, :]
        log_b = excl_b[:, None] - tl.load(cum_ptr + b_base + s)[None, :]
        log = tl.where(lt, log_f, tl.where(gt, log_b, float("-inf")))
        dt_s = tl.where(lt, tl.load(dt_ptr + f_base + s)[None, :], tl.load(dt_ptr + b_base + s)[None, :])
        decayed = S * tl.exp(log)
        term = decayed * dt_s
        acc += term
        pair = term * cb  # dy_t . M[t, s] x_s: forward part below the diagonal, backward part above
        flow = decayed * cb  # the same without dt_s: its column sums are x_s . u_s of the in-chunk parts
        f_rows = ((b * 2 * H + h) * NT + j) * Lp + t
        b_rows = (((b * 2 + 1) * H + h) * NT + j) * Lp + t
        tl.store(rows_ptr + f_rows, tl.sum(tl.where(lt, pair, 0.0), axis=1))
        tl.store(rows_ptr + b_rows, tl.sum(tl.where(gt, pair, 0.0), axis=1))
        f_cols = ((b * 2 * H + h) * NT + i) * Lp + s
        b_cols = (((b * 2 + 1) * H + h) * NT + i) * Lp + s
        tl.store(cols_ptr + f_cols, tl.sum(tl.where(lt, flow, 0.0), axis=0))
        tl.store(cols_ptr + b_cols, tl.sum(tl.where(gt, flow, 0.0), axis=0))
        # Every tile sums it, only the diagonal ones store it: a branch on i, j here crashes Triton 3.6 (above).
        dd = tl.sum(tl.where(s[None, :] == t[:, None], S, 0.0), axis=1)
        tl.store(dd_ptr + (b * L + t) * H + h, dd.to(dd_ptr.dtype.element_ty), mask=(t < L) & (i == j))
    tl.store(w_ptr + ((bg * NC + c) * Q + ti[:, None]) * Q + sj[None, :], acc)


@triton.jit
def _dbc_kernel(
    x_ptr, dy_ptr, B_ptr, C_ptr, dt_ptr, cum_ptr, A_ptr, st_ptr, adj_ptr, w_ptr, dbc_ptr, dot_ptr,
    L, H, N, G, NC, Lp,
    s_xb, s_xl, s_xh, s_yb, s_yl, s_yh,
    s_b, s_l, s_g, off_bwd,
    s_ob, s_ol,
    Q: tl.constexpr, P: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    WANT_DB: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr, LOG_A: tl.constexpr,
):
    """dC (WANT_DB False) or dB (True) of both parts for BM rows and BN state channels.

    The carried-state term is summed over the group's heads here (one ``BM x P x BN`` product
    per head); the in-chunk term is one product with the head-summed ``W`` of ``_dw_kernel``.
    Output ``dbc`` is (B, L, 4, G, N) laid out like ``BC`` (dB_f, dC_f, dB_b, dC_b), any dtype;
    the dC pass writes ``dC_f[L - 1]`` and ``dC_b[0]`` as zeros (no token reads them).

    In the dC pass each head's carried-state product, dotted with ``C~`` before the sum over
    heads, also gives this N block's share of ``dy . y^f`` and ``dy . y^b`` of the carried-state
    parts (``dot``: (B, 2, H, NB, Lp) float32), which the decay gradients need: one pass over the
    states instead of a second, dy-dotted run of the forward output kernel (0.51 ms less at
    HTH-5B width, 16k tokens, H100).
    """
    pid = tl.program_id(0)  # a chunk's row and state blocks run side by side (they share its x, dy, W in cache)
    c = _pid(1, WIDE)
    bg = _pid(2, WIDE)
    NB = tl.cdiv(N, BN)
    m = pid // NB
    nb = pid % NB
    b = bg // G
    g = bg % G
    R = H // G
    rows = c * Q + m * BM + tl.arange(0, BM)
    rvalid = rows < L
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    p = tl.arange(0, P)
    acc_f = tl.zeros((BM, BN), dtype=tl.float32)
    acc_b = tl.zeros((BM, BN), dtype=tl.float32)
    if not WANT_DB:  # C~_f[t] = C_f[t - 1] and C~_b[t] = C_b[t + 1] of these rows
        rf = rows - 1
        rb = rows + 1
        C_rows = C_ptr + b * s_b + g * s_g + n[None, :]
        Ct_f = tl.load(C_rows + rf[:, None] * s_l, mask=((rf >= 0) & rvalid)[:, None] & nmask[None, :], other=0.0)
        Ct_b = tl.load(C_rows + off_bwd + rb[:, None] * s_l, mask=(rb < L)[:, None] & nmask[None, :], other=0.0)
        Ct_f = Ct_f.to(tl.float32)
        Ct_b = Ct_b.to(tl.float32)
    for r in range(0, R):
        h = g * R + r
        A = _decay_rate(A_ptr, h, LOG_A)
        f_base = (b * 2 * H + h) * Lp
        b_base = ((b * 2 + 1) * H + h) * Lp
        dt_f_r = tl.load(dt_ptr + f_base + rows)
        dt_b_r = tl.load(dt_ptr + b_base + rows)
        cum_f_r = tl.load(cum_ptr + f_base + rows)
        cum_b_r = tl.load(cum_ptr + b_base + rows)
        if WANT_DB:  # rows are sources s: x against the adjoint states, decayed to the chunk's far ends
            own = tl.load(x_ptr + b * s_xb + rows[:, None] * s_xl + h * s_xh + p[None, :], mask=rvalid[:, None],
                          other=0.0)
            states = adj_ptr
            scale_f = tl.exp(tl.load(cum_ptr + f_base + c * Q + Q - 1) - cum_f_r) * dt_f_r
            scale_b = tl.exp(tl.load(cum_ptr + b_base + c * Q) - cum_b_r) * dt_b_r
        else:  # rows are outputs t: dy against the forward states, decayed from the chunk's near ends
            own = tl.load(dy_ptr + b * s_yb + rows[:, None] * s_yl + h * s_yh + p[None, :], mask=rvalid[:, None],
                          other=0.0)
            states = st_ptr
            scale_f = tl.exp(cum_f_r - dt_f_r * A)
            scale_b = tl.exp(cum_b_r - dt_b_r * A)
        st = states + ((((b * NC + c) * 2) * H + h) * N + n[None, :]) * P + p[:, None]  # (P, BN) view of (N, P)
        Sf = tl.load(st, mask=nmask[None, :], other=0.0).to(own.dtype)
        Sb = tl.load(st + H * N * P, mask=nmask[None, :], other=0.0).to(own.dtype)
        own32 = own.to(tl.float32)
        if not WANT_DB:  # each head's product is needed on its own; the dB pass accumulates in place
            head_f = _mm((own32 * scale_f[:, None]).to(own.dtype), Sf, IEEE)
            head_b = _mm((own32 * scale_b[:, None]).to(own.dtype), Sb, IEEE)
            dot = dot_ptr + ((b * 2 * H + h) * NB + nb) * Lp + rows
            tl.store(dot, tl.sum(head_f * Ct_f, axis=1), mask=rvalid)
            tl.store(dot + H * NB * Lp, tl.sum(head_b * Ct_b, axis=1), mask=rvalid)
            acc_f += head_f
            acc_b += head_b
        else:
            acc_f += _mm((own32 * scale_f[:, None]).to(own.dtype), Sf, IEEE)
            acc_b += _mm((own32 * scale_b[:, None]).to(own.dtype), Sb, IEEE)

    BC_base = b * s_b + g * s_g
    W_base = w_ptr + (bg * NC + c) * Q * Q
    ri = m * BM + tl.arange(0, BM)
    for k0 in range(0, Q, BK):
        k = c * Q + k0 + tl.arange(0, BK)
        kj = k0 + tl.arange(0, BK)
        kvalid = k < L
        if WANT_DB:  # dB_f[s] = sum_{t>s} W[t, s] C_f[t-1]; dB_b[s] = sum_{t<s} W[t, s] C_b[t+1]
            Wt = tl.load(W_base + kj[None, :] * Q + ri[:, None])  # [s, t] = W[t, s]
            W_f = tl.where(k[None, :] > rows[:, None], Wt, 0.0)
            W_b = tl.where(k[None, :] < rows[:, None], Wt, 0.0)
            kf = k - 1
            kb = k + 1
            Of = tl.load(C_ptr + BC_base + kf[:, None] * s_l + n[None, :],
                         mask=((kf >= 0) & kvalid)[:, None] & nmask[None, :], other=0.0)
            Ob = tl.load(C_ptr + off_bwd + BC_base + kb[:, None] * s_l + n[None, :],
                         mask=(kb < L)[:, None] & nmask[None, :], other=0.0)
        else:  # dC~_f[t] = sum_{s<t} W[t, s] B_f[s]; dC~_b[t] = sum_{s>t} W[t, s] B_b[s]
            Wr = tl.load(W_base + ri[:, None] * Q + kj[None, :])
            W_f = tl.where(k[None, :] < rows[:, None], Wr, 0.0)
            W_b = tl.where(k[None, :] > rows[:, None], Wr, 0.0)
            mask = kvalid[:, None] & nmask[None, :]
            Of = tl.load(B_ptr + BC_base + k[:, None] * s_l + n[None, :], mask=mask, other=0.0)
            Ob = tl.load(B_ptr + off_bwd + BC_base + k[:, None] * s_l + n[None, :], mask=mask, other=0.0)
        acc_f += _mm(W_f.to(Of.dtype), Of, IEEE)
        acc_b += _mm(W_b.to(Ob.dtype), Ob, IEEE)
    out = dbc_ptr + b * s_ob + g * N + n[None, :]
    out_dtype = dbc_ptr.dtype.element_ty
    if WANT_DB:  # dB_f[s], dB_b[s]
        mask = rvalid[:, None] & nmask[None, :]
        tl.store(out + rows[:, None] * s_ol, acc_f.to(out_dtype), mask=mask)
        tl.store(out + 2 * G * N + rows[:, None] * s_ol, acc_b.to(out_dtype), mask=mask)
    else:  # dC_f[t - 1] = dC~_f[t], dC_b[t + 1] = dC~_b[t]
        rf = rows - 1
        rb = rows + 1
        tl.store(out + G * N + rf[:, None] * s_ol, acc_f.to(out_dtype),
                 mask=((rf >= 0) & rvalid)[:, None] & nmask[None, :])
        tl.store(out + 3 * G * N + rb[:, None] * s_ol, acc_b.to(out_dtype), mask=(rb < L)[:, None] & nmask[None, :])
        zero = tl.zeros((BM, BN), dtype=out_dtype)  # dC_f[L - 1] and dC_b[0]: no token reads them
        tl.store(out + G * N + rows[:, None] * s_ol, zero, mask=(rows == L - 1)[:, None] & nmask[None, :])
        tl.store(out + 3 * G * N + rows[:, None] * s_ol, zero, mask=(rows == 0)[:, None] & nmask[None, :])


@triton.jit
def _decay_grad_kernel(
    wst_ptr, rows_ptr, cols_ptr, scal_ptr, dt_ptr, cross_ptr, raw_ptr, bias_ptr, A_ptr, draw_ptr, part_ptr,
    L, H, NC, Lp, N, ND,
    s_rb, s_rl,
    Q: tl.constexpr, NT: tl.constexpr, LOG_A: tl.constexpr, NP: tl.constexpr,
):
    """One chunk and head: the decay gradient ``da`` of both parts from its four pieces (module
    docstring), then ``ddt = x.u + A da`` and ``d dt_raw = ddt sigmoid(raw + dt_bias)`` (stored
    in ``draw``, laid out like ``dt_raw``), and this chunk's shares of ``dA`` (``d A_log`` with
    ``LOG_A``) and ``d dt_bias`` (``part``: (B, H, NC, 2) float32)."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    c = tl.program_id(2)
    t = c * Q + tl.arange(0, Q)
    valid = t < L
    A = _decay_rate(A_ptr, h, LOG_A)
    bias = tl.load(bias_ptr + h).to(tl.float32)
    dA = 0.0
    dbias = 0.0
    for d in tl.static_range(2):
        base = ((b * 2 + d) * H + h) * Lp
        w = tl.zeros([Q], dtype=tl.float32)
        for nd in range(0, ND):  # dy . y from carried states, summed over the state blocks
            w += tl.load(wst_ptr + (((b * 2 + d) * H + h) * ND + nd) * Lp + t, mask=valid, other=0.0)
        z_in = tl.zeros([Q], dtype=tl.float32)
        for i in tl.static_range(NT):  # + the in-chunk pairs, summed over the column / row tiles
            w += tl.load(rows_ptr + (((b * 2 + d) * H + h) * NT + i) * Lp + t)
            z_in += tl.load(cols_ptr + (((b * 2 + d) * H + h) * NT + i) * Lp + t)
        dt = tl.load(dt_ptr + base + t)
        xu_out = tl.load(scal_ptr + ((b * 2 + d) * H + h) * Lp + t, mask=valid, other=0.0)  # x . u, other chunks
        xu = xu_out + z_in  # + the in-chunk part
        z_in = dt * z_in
        z_out = dt * xu_out
        k = tl.arange(0, NP)  # <state, adjoint> of the pairs straddling the chunk, summed over the state rows
        cross = tl.load(cross_ptr + (((b * 2 + d) * H + h) * NC + c) * N + k, mask=k < N, other=0.0)
        through = tl.sum(cross, axis=0)
        if d == 0:  # forward part: pairs s < r < t
            da = (tl.cumsum(w, 0, reverse=True) - w) - tl.cumsum(z_in, 0, reverse=True) \
                + (tl.cumsum(z_out, 0) - z_out) + through
        else:  # backward part: pairs t < r < s
            da = (tl.cumsum(w, 0) - w) - tl.cumsum(z_in, 0) + (tl.cumsum(z_out, 0, reverse=True) - z_out) + through
        raw = tl.load(raw_ptr + b * s_rb + t * s_rl + d * H + h, mask=valid, other=0.0).to(tl.float32) + bias
        draw = tl.where(valid, (xu + A * da) * tl.sigmoid(raw), 0.0)  # softplus' = sigmoid
        tl.store(draw_ptr + (b * L + t) * 2 * H + d * H + h, draw.to(draw_ptr.dtype.element_ty), mask=valid)
        dA += tl.sum(tl.where(valid, dt * da, 0.0), axis=0)
        dbias += tl.sum(draw, axis=0)
    out = part_ptr + ((b * H + h) * NC + c) * 2
    if LOG_A:  # the share of d A_log = dA * A (A = -exp(A_log))
        dA = dA * A
    tl.store(out, dA)
    tl.store(out + 1, dbias)


def _destination(name: str, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``out`` when it can take a gradient of ``shape`` (any strides, last dimension contiguous)."""
    if tuple(out.shape) != tuple(shape) or out.stride(-1) != 1:
        raise ValueError(f"{name} must have shape {tuple(shape)} and stride(-1) == 1, got {tuple(out.shape)}, "
                         f"strides {out.stride()}")
    return out


def hydra_scan_bwd(
    dy, x, dt_raw, dt_bias, A, BC, diag, chunk_size, *, log_decay=False, dx_out=None, dBC_out=None, parts=None,
    diag_weight=None,
):
    """Gradients of :func:`hydra_scan_fwd` for ``(x, dt_raw, dt_bias, A, BC, diag)``.

    ``log_decay``: ``A`` is the layer's ``A_log`` (``A = -exp(A_log)``), and its gradient is the one returned.

    ``dx_out`` and ``dBC_out`` are optional destinations (any views contiguous in their last
    dimension): a layer can have the gradients written straight into slices of one buffer
    instead of concatenating them. ``parts``: what ``hydra_scan_fwd(..., return_parts=True)``
    returned for these inputs; without it the carried states are recomputed (0.8 ms at HTH-5B
    width, 16k tokens, H100).

    ``diag_weight`` (H, H P): the layer's diagonal is a projection of ``x``, ``diag = x W^T + D``
    (Hydra's ``fc_D``); the returned ``dx`` then includes that path, ``ddiag W``, added inside the
    ``dx`` kernel (at HTH-5B width, 16k tokens this replaces a 0.20 ms ``addmm`` over all of ``dx``).
    """
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = BC.shape[-2:]
    out_dtypes = (x.dtype, BC.dtype)
    ieee = x.dtype == torch.float32
    dy = dy.contiguous() if dy.stride(-1) != 1 else dy
    if diag_weight is not None:
        if tuple(diag_weight.shape) != (nheads, nheads * headdim) or diag_weight.stride(-1) != 1:
            raise ValueError(f"diag_weight must be ({nheads}, {nheads * headdim}) with stride(-1) == 1, got "
                             f"{tuple(diag_weight.shape)}, strides {diag_weight.stride()}")
        diag_weight = diag_weight.to(x.dtype)
    if parts is None:
        parts = _forward_parts(x, dt_raw, dt_bias, A, BC, diag, chunk_size, ieee=ieee, log_decay=log_decay)
    elif (parts.q != chunk_size or parts.ieee != ieee or parts.log_decay != log_decay
          or parts.states.shape[:2] != (batch, triton.cdiv(seqlen, parts.q))):
        raise ValueError("parts were computed for other inputs, another chunk size or another log_decay")
    q, nchunks, lp = parts.q, parts.nchunks, parts.lp
    device = x.device
    s_b, s_l, s_g = BC.stride(0), BC.stride(1), BC.stride(3)
    B_f, C_f = BC[:, :, 0], BC[:, :, 1]
    off_bwd = 2 * ngroups * d_state
    bn = min(64, triton.next_power_of_2(d_state))
    # 64-bit offsets only where some index may pass 2**31: the forward's tensors, dy and the float32 dB/dC buffer.
    wide = parts.wide or max(dy.stride(0) * batch, batch * seqlen * 4 * ngroups * d_state) >= 2**31

    adj = torch.empty_like(parts.states)
    n_blocks = triton.cdiv(d_state, parts.bn_state)
    cross = torch.empty(batch, 2, nheads, nchunks, d_state, device=device, dtype=torch.float32)
    _adjoint_states_kernel[(2 * n_blocks, nheads, batch)](
        dy, C_f, parts.dt, parts.cum, A, adj, parts.states, cross, seqlen, nheads, d_state, ngroups, nchunks, lp,
        dy.stride(0), dy.stride(1), dy.stride(2), s_b, s_l, s_g, off_bwd,
        Q=q, P=headdim, BN=parts.bn_state, IEEE=ieee, WIDE=wide, LOG_A=log_decay,
        num_warps=CONFIG["adj_warps"], num_stages=1 if ieee else CONFIG["adj_stages"],
    )
    bt = min(CONFIG["dw_bt"], q)
    w_mat = torch.empty(batch * ngroups, nchunks, q, q, device=device, dtype=torch.float32)
    pair_rows = torch.empty(batch, 2, nheads, q // bt, lp, device=device, dtype=torch.float32)  # all written
    pair_cols = torch.empty_like(pair_rows)
    ddiag = torch.empty(batch, seqlen, nheads, device=device, dtype=diag.dtype)  # dy . x, by the diagonal tiles
    _dw_kernel[((q // bt) ** 2, nchunks, batch * ngroups)](
        x, dy, parts.dt, parts.cum, A, parts.cb, w_mat, pair_rows, pair_cols, ddiag, seqlen, nheads, ngroups, nchunks,
        lp,
        x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2),
        Q=q, P=headdim, BT=bt, IEEE=ieee, WIDE=wide, LOG_A=log_decay,
        num_warps=CONFIG["dw_warps"], num_stages=CONFIG["dw_stages"],
    )
    if dx_out is not None:
        dx = _destination("dx_out", dx_out, x.shape)
    else:
        dx = torch.empty(batch, seqlen, nheads, headdim, device=device, dtype=out_dtypes[0])
    scal = torch.empty(batch, 2, nheads, lp, device=device, dtype=torch.float32)  # tokens past L: never read
    dx_bm, dx_warps = (min(64, q), 4) if ieee else (min(CONFIG["dx_bm"], q), CONFIG["dx_warps"])
    _dx_kernel[(batch * nheads, nchunks, q // dx_bm)](
        x, dy, B_f, parts.dt, parts.cum, A, adj, parts.cb, diag, dx, scal, ddiag,
        diag if diag_weight is None else diag_weight, seqlen, nheads, d_state, ngroups, nchunks,
        lp, x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2), s_b, s_l, s_g, off_bwd,
        diag.stride(0), diag.stride(1), dx.stride(0), dx.stride(1), dx.stride(2),
        0 if diag_weight is None else diag_weight.stride(0),
        Q=q, P=headdim, BM=dx_bm, BK=min(CONFIG["dx_bk"], q), BN=bn, IEEE=ieee, WIDE=wide, LOG_A=log_decay,
        HP=max(16, triton.next_power_of_2(nheads)), FC=diag_weight is not None,
        num_warps=dx_warps, num_stages=CONFIG["dx_stages"],
    )
    if dBC_out is not None:
        dbc = _destination("dBC_out", dBC_out, BC.shape)
        if dbc.stride(2) != ngroups * d_state or dbc.stride(3) != d_state:
            raise ValueError(f"dBC_out must be contiguous in its last three dimensions, got strides {dbc.stride()}")
    else:
        dbc = torch.empty(batch, seqlen, 4, ngroups, d_state, device=device, dtype=out_dtypes[1])
    bn_bc = min(CONFIG["dbc_bn"], triton.next_power_of_2(d_state))
    n_dot = triton.cdiv(d_state, bn_bc)
    # The dC pass also gives dy . y^f and dy . y^b of the carried-state parts, per token, head and state block.
    w = torch.empty(batch, 2, nheads, n_dot, lp, device=device, dtype=torch.float32)  # tokens past L: never read
    dbc_bm = min(64, q) if ieee else min(CONFIG["dbc_bm"], q)
    grid = ((q // dbc_bm) * n_dot, nchunks, batch * ngroups)
    for want_db in (False, True):
        warps = 4 if ieee else CONFIG["db_warps" if want_db else "dc_warps"]
        _dbc_kernel[grid](
            x, dy, B_f, C_f, parts.dt, parts.cum, A, parts.states, adj, w_mat, dbc, w, seqlen, nheads, d_state,
            ngroups, nchunks, lp, x.stride(0), x.stride(1), x.stride(2), dy.stride(0), dy.stride(1), dy.stride(2),
            s_b, s_l, s_g, off_bwd, dbc.stride(0), dbc.stride(1),
            Q=q, P=headdim, BM=dbc_bm, BK=min(CONFIG["dbc_bk"], q), BN=bn_bc, WANT_DB=want_db, IEEE=ieee, WIDE=wide,
            LOG_A=log_decay, num_warps=warps, num_stages=CONFIG["dbc_stages"],
        )

    # Per-token scalars: decays, dt, dt_bias, A (sec. "the log-decays" in the module docstring),
    # chunk by chunk so that no sum runs over more than one chunk (no cancellation over L).
    ddt_raw = torch.empty(batch, seqlen, 2 * nheads, device=device, dtype=dt_raw.dtype)
    part = torch.empty(batch, nheads, nchunks, 2, device=device, dtype=torch.float32)
    _decay_grad_kernel[(batch, nheads, nchunks)](
        w, pair_rows, pair_cols, scal, parts.dt, cross, dt_raw, dt_bias, A, ddt_raw, part,
        seqlen, nheads, nchunks, lp, d_state, n_dot, dt_raw.stride(0), dt_raw.stride(1),
        Q=q, NT=q // bt, LOG_A=log_decay, NP=triton.next_power_of_2(d_state), num_warps=4,
    )
    dA, ddt_bias = part.sum(dim=(0, 2)).unbind(-1)
    return dx, ddt_raw, ddt_bias.to(dt_bias.dtype), dA.to(A.dtype), dbc, ddiag
