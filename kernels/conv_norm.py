"""Hydra's elementwise stages in Triton, on the (B, L, C) layout the projections produce.

* :func:`conv1d_silu_fwd`: centered depthwise convolution along the sequence plus bias and
  SiLU (Hydra's ``conv1d`` with ``padding = k // 2``), read straight from the strided slice
  of the input projection: no transposes, no copies.
* :func:`gated_rmsnorm_fwd`: ``rmsnorm(y) * weight * silu(z)`` (Mamba-2's gated norm with
  ``norm_before_gate=True``, as Hydra uses it) in one pass over each token.
* :func:`conv1d_silu_bwd` (for widths up to 7 one pass a token at a time, ``dpre`` kept in
  registers; wider: two kernels, ``dpre``, then ``dx`` and the weight gradient) and
  :func:`gated_rmsnorm_bwd` (one, or a ``dy`` pass and a ``dz`` pass): their backward passes. They
  recompute the activations from the inputs (nothing but the inputs is saved) and reduce the
  parameter gradients deterministically: float32 partial sums per program, summed by PyTorch
  afterwards (no atomics).
* :class:`Conv1dSiLU` / :func:`conv1d_silu` and :class:`GatedRMSNormFn` /
  :func:`gated_rmsnorm`: autograd Functions over the pairs, for training.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _aligned(stride, ALIGN: tl.constexpr):
    """``stride`` (a multiple of ``ALIGN``, checked by the caller) with that divisibility known to the
    compiler: rows of a slice such as ``xBC`` of the input projection's output (row length
    ``2 E + 4 G N + 2 H``, a multiple of 8 but not of 16 at the XL width) then load and store in
    16-byte vectors."""
    return stride // ALIGN * ALIGN


def _row_align(*strides: int) -> int:
    """The ``ALIGN`` for :func:`_aligned`: 8 elements when every row stride is a multiple of 8, else 1."""
    return 8 if all(s % 8 == 0 for s in strides) else 1


@triton.jit
def _conv_pre(x_ptr, w_ptr, b_ptr, b, rows, cols, cmask, L, C, s_xb, s_xl,
              K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The pre-activation ``pre[l] = b + sum_k w[k] x[l + k - K // 2]`` of a (BL, BC) tile, float32."""
    pre = tl.zeros((BL, BC), dtype=tl.float32)
    if HAS_BIAS:
        pre += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    # A loop over the taps, not unrolled: unrolled, all K tiles are loaded at once and spill.
    for k in range(K):
        src = rows + (k - K // 2)
        m = ((src >= 0) & (src < L))[:, None] & cmask[None, :]
        xk = tl.load(x_ptr + b * s_xb + src[:, None].to(tl.int64) * s_xl + cols[None, :], mask=m, other=0.0)
        wk = tl.load(w_ptr + cols * K + k, mask=cmask, other=0.0).to(tl.float32)  # weight as (C, K)
        pre += xk.to(tl.float32) * wk[None, :]
    return pre


@triton.jit
def _conv_silu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    L, C,
    s_xb, s_xl,
    K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, XA: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    s_xb, s_xl = _aligned(s_xb, XA), _aligned(s_xl, XA)
    rows = tl.program_id(1) * BL + tl.arange(0, BL)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    cmask = cols < C
    pre = _conv_pre(x_ptr, w_ptr, b_ptr, b, rows, cols, cmask, L, C, s_xb, s_xl, K, BL, BC, HAS_BIAS)
    out = y_ptr + (b * L + rows[:, None]) * C + cols[None, :]
    tl.store(out, (pre / (1.0 + tl.exp(-pre))).to(y_ptr.dtype.element_ty), mask=(rows < L)[:, None] & cmask[None, :])


@triton.jit
def _tap(w_ptr, cols, cmask, J: tl.constexpr, K: tl.constexpr, BC: tl.constexpr):
    """Tap ``J`` of the 7-tap window: the (C, K) weight's column ``J - (7 - K) // 2``, zero outside it."""
    k: tl.constexpr = J - (7 - K) // 2
    w = tl.zeros((BC,), dtype=tl.float32)
    if k >= 0 and k < K:
        w = tl.load(w_ptr + cols * K + k, mask=cmask, other=0.0).to(tl.float32)
    return w


@triton.jit
def _window_taps(w_ptr, b_ptr, cols, C, K: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr,
                 EVEN_C: tl.constexpr):
    """The channel mask, the 7 taps (a width-``K`` kernel centered, zero taps either side) and the
    bias of a channel block, float32."""
    if EVEN_C:
        cmask = tl.full((BC,), True, tl.int1)
    else:
        cmask = cols < C
    w0 = _tap(w_ptr, cols, cmask, 0, K, BC)
    w1 = _tap(w_ptr, cols, cmask, 1, K, BC)
    w2 = _tap(w_ptr, cols, cmask, 2, K, BC)
    w3 = _tap(w_ptr, cols, cmask, 3, K, BC)
    w4 = _tap(w_ptr, cols, cmask, 4, K, BC)
    w5 = _tap(w_ptr, cols, cmask, 5, K, BC)
    w6 = _tap(w_ptr, cols, cmask, 6, K, BC)
    bias = tl.zeros((BC,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    return cmask, w0, w1, w2, w3, w4, w5, w6, bias


@triton.jit
def _conv_silu_rolling_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    L, C,
    s_xb, s_xl,
    K: tl.constexpr, SEG: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_C: tl.constexpr,
    XA: tl.constexpr,
):
    """The forward of width <= 7 (taps zero-padded to 7) a token at a time: each row of ``x`` is
    read once into a 7-row register window instead of once per tap."""
    b = tl.program_id(0).to(tl.int64)
    s_xb, s_xl = _aligned(s_xb, XA), _aligned(s_xl, XA)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    cmask, w0, w1, w2, w3, w4, w5, w6, bias = _window_taps(w_ptr, b_ptr, cols, C, K, BC, HAS_BIAS, EVEN_C)
    l0 = tl.program_id(1) * SEG
    # x[l0-3 .. l0+2] (zero outside the sequence); the window's last row is loaded at each step.
    x_row = x_ptr + b * s_xb + (l0 - 4).to(tl.int64) * s_xl + cols
    x1 = tl.load(x_row + s_xl, mask=cmask & (l0 - 3 >= 0), other=0.0).to(tl.float32)
    x2 = tl.load(x_row + 2 * s_xl, mask=cmask & (l0 - 2 >= 0), other=0.0).to(tl.float32)
    x3 = tl.load(x_row + 3 * s_xl, mask=cmask & (l0 - 1 >= 0), other=0.0).to(tl.float32)
    x4 = tl.load(x_row + 4 * s_xl, mask=cmask & (l0 < L), other=0.0).to(tl.float32)
    x5 = tl.load(x_row + 5 * s_xl, mask=cmask & (l0 + 1 < L), other=0.0).to(tl.float32)
    x6 = tl.load(x_row + 6 * s_xl, mask=cmask & (l0 + 2 < L), other=0.0).to(tl.float32)
    x_row += 7 * s_xl  # x[l0 + 3]: the row the first step loads
    x0 = tl.zeros((BC,), dtype=tl.float32)
    y_row = y_ptr + (b * L + l0) * C + cols
    for step in range(0, SEG):
        j = l0 + step
        x0, x1, x2, x3, x4, x5 = x1, x2, x3, x4, x5, x6
        x6 = tl.load(x_row, mask=cmask & (j + 3 < L), other=0.0).to(tl.float32)
        pre = bias + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4 + w5 * x5 + w6 * x6
        silu = tl.fdiv(pre, 1.0 + tl.exp(-pre))  # the fast (2-ulp) division
        tl.store(y_row, silu.to(y_ptr.dtype.element_ty), mask=cmask & (j < L))
        x_row += s_xl
        y_row += C


#: Launch settings of the conv kernels (rows and channels per program, warps); ``rolling``: kernels of
#: width <= 7 run the one-pass, token-at-a-time kernels (taps zero-padded to 7) instead of the tiled ones.
#: ``*_programs``: the rolling kernels' segments are halved (down to 16 rows) while fewer programs
#: than that would run (see :func:`_segment_rows`; H100, bf16: XL width at 1k / 4k / 16k tokens, forward
#: 16 / 34 / 103 us against 155 / 162 / 188 us with 256-row segments, backward 31 / 81 / 224 us against
#: 155 / 170 / 214 us, HTH-5B width at 16k tokens unchanged).
CONV_CONFIG = {
    "rolling_fwd": True, "fwd_seg": 256, "fwd_bc": 128, "fwd_warps": 1, "fwd_stages": 3, "fwd_programs": 8192,
    "rolling_bwd": True, "bwd_seg": 256, "bwd_bc": 256, "bwd_warps": 4, "bwd_stages": 3, "bwd_programs": 1024,
}
_WINDOW = 7  # the rolling kernels' register window: taps of narrower kernels are zero-padded to it


def _weight_CK(weight_C1K: torch.Tensor) -> torch.Tensor:
    """The depthwise weight as a contiguous (C, K) matrix (a view of the usual contiguous parameter)."""
    channels, _, k = weight_C1K.shape
    return weight_C1K.reshape(channels, k).contiguous()


def _segment_rows(batch: int, seqlen: int, channel_blocks: int, longest: int, programs: int) -> int:
    """Rows a rolling-kernel program walks: ``longest``, halved down to 16 while fewer than ``programs``
    programs would run. A walk is a chain of dependent steps, so a short sequence (XL width, 4k
    tokens: 320 programs of 256 rows) runs more, shorter walks instead of leaving most SMs idle."""
    seg = longest
    while seg > 16 and batch * triton.cdiv(seqlen, seg) * channel_blocks < programs:
        seg //= 2
    return seg


def conv1d_silu_fwd(
    x_BLC: torch.Tensor,
    weight_C1K: torch.Tensor,
    bias_C: torch.Tensor | None,
    *,
    rolling: bool | None = None,
    block_l: int | None = None,
    block_c: int | None = None,
) -> torch.Tensor:
    """``silu(depthwise_conv(x) + bias)`` along L with a centered odd kernel; contiguous (B, L, C) out.

    Widths up to 7 run by default (``rolling``, :data:`CONV_CONFIG`) a token at a time with a 7-row
    register window, so each row of ``x`` is read once; wider kernels, or ``rolling=False``, run
    (BL, BC) tiles that re-read the halo rows from cache. ``block_l`` / ``block_c``: rows and
    channels per program (defaults from :data:`CONV_CONFIG` and :func:`_segment_rows`, or the tiled
    kernel's 32 x 128).
    """
    batch, seqlen, channels = x_BLC.shape
    k = weight_C1K.shape[-1]
    if x_BLC.stride(-1) != 1 or k % 2 == 0:
        raise ValueError("x must be contiguous in its channels and the kernel width odd")
    y = torch.empty(batch, seqlen, channels, device=x_BLC.device, dtype=x_BLC.dtype)
    rolling = CONV_CONFIG["rolling_fwd"] if rolling is None else rolling
    bias = bias_C if bias_C is not None else weight_C1K
    weight_CK = _weight_CK(weight_C1K)
    align = _row_align(x_BLC.stride(0), x_BLC.stride(1))
    if rolling and k <= _WINDOW:
        bc = block_c or CONV_CONFIG["fwd_bc"]
        blocks = triton.cdiv(channels, bc)
        seg = block_l or _segment_rows(batch, seqlen, blocks, CONV_CONFIG["fwd_seg"], CONV_CONFIG["fwd_programs"])
        _conv_silu_rolling_kernel[(batch, triton.cdiv(seqlen, seg), blocks)](
            x_BLC, weight_CK, bias, y, seqlen, channels, x_BLC.stride(0), x_BLC.stride(1),
            K=k, SEG=seg, BC=bc, HAS_BIAS=bias_C is not None, EVEN_C=channels % bc == 0, XA=align,
            num_warps=CONV_CONFIG["fwd_warps"], num_stages=CONV_CONFIG["fwd_stages"],
        )
        return y
    bl, bc = block_l or 32, block_c or 128  # fastest of 41 blocks x warps measured at HTH-5B width, 16k tokens, H100
    _conv_silu_kernel[(batch, triton.cdiv(seqlen, bl), triton.cdiv(channels, bc))](
        x_BLC, weight_CK, bias, y, seqlen, channels, x_BLC.stride(0), x_BLC.stride(1),
        K=k, BL=bl, BC=bc, HAS_BIAS=bias_C is not None, XA=align,
        num_warps=2,  # 378 -> 277 us against 64 x 128 blocks with 8 warps (one block per SM, 163 registers)
    )
    return y


@triton.jit
def _gated_rmsnorm_kernel(
    y_ptr,
    z_ptr,
    w_ptr,
    out_ptr,
    D,
    eps: tl.constexpr,  # a literal: torch.compile would pass a float argument as fp64
    s_y,
    s_z,
    BD: tl.constexpr,
    XA: tl.constexpr,
):
    row = tl.program_id(0)
    s_y, s_z = _aligned(s_y, XA), _aligned(s_z, XA)
    cols = tl.arange(0, BD)
    mask = cols < D
    y = tl.load(y_ptr + row * s_y + cols, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * s_z + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(y * y, axis=0) / D + eps)
    out = y * rstd * w * (z / (1.0 + tl.exp(-z)))
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def gated_rmsnorm_fwd(y_BLD: torch.Tensor, z_BLD: torch.Tensor, weight_D: torch.Tensor, eps: float) -> torch.Tensor:
    """``rmsnorm(y) * weight * silu(z)`` per token; ``y`` and ``z`` may be row-strided views."""
    batch, seqlen, dim = y_BLD.shape
    if y_BLD.stride(-1) != 1 or z_BLD.stride(-1) != 1:
        raise ValueError("y and z must be contiguous in their last dimension")
    y2 = y_BLD.reshape(batch * seqlen, dim) if y_BLD.stride(0) == seqlen * y_BLD.stride(1) else y_BLD.contiguous()
    z2 = z_BLD if z_BLD.stride(0) == seqlen * z_BLD.stride(1) else z_BLD.contiguous()
    out = torch.empty(batch, seqlen, dim, device=y_BLD.device, dtype=y_BLD.dtype)
    bd = triton.next_power_of_2(dim)
    _gated_rmsnorm_kernel[(batch * seqlen,)](
        y2,
        z2,
        weight_D,
        out,
        dim,
        eps,
        y2.stride(-2),
        z2.stride(-2),
        BD=bd,
        XA=_row_align(y2.stride(-2), z2.stride(-2)),
        num_warps=min(16, max(4, bd // 512)),
    )
    return out


@triton.jit
def _conv_silu_dpre_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr, dpre_ptr, part_ptr,
    L, C,
    s_dyb, s_dyl, s_xb, s_xl,
    K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, XA: tl.constexpr,
):
    """dpre = dy * silu'(pre) (contiguous, in dpre_ptr's dtype) with pre recomputed from x; dbias partial sums."""
    b = tl.program_id(0).to(tl.int64)
    s_dyb, s_dyl, s_xb, s_xl = _aligned(s_dyb, XA), _aligned(s_dyl, XA), _aligned(s_xb, XA), _aligned(s_xl, XA)
    lb = tl.program_id(1)
    rows = lb * BL + tl.arange(0, BL)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    cmask = cols < C
    pre = _conv_pre(x_ptr, w_ptr, b_ptr, b, rows, cols, cmask, L, C, s_xb, s_xl, K, BL, BC, HAS_BIAS)
    mask = (rows < L)[:, None] & cmask[None, :]
    dy = tl.load(dy_ptr + b * s_dyb + rows[:, None].to(tl.int64) * s_dyl + cols[None, :], mask=mask, other=0.0)
    sig = 1.0 / (1.0 + tl.exp(-pre))
    dpre = dy.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))  # zero past L and C
    tl.store(dpre_ptr + (b * L + rows[:, None].to(tl.int64)) * C + cols[None, :], dpre, mask=mask)
    part = part_ptr + ((b * tl.num_programs(1) + lb) * (K + 1) + K) * C + cols
    tl.store(part, tl.sum(dpre, axis=0), mask=cmask)


@triton.jit
def _conv_dx_dw_kernel(
    dpre_ptr, x_ptr, w_ptr, dx_ptr, part_ptr,
    L, C,
    s_xb, s_xl, s_ob, s_ol,
    K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, XA: tl.constexpr,
):
    """dx[l] = sum_k w[k] dpre[l + H - k]; dweight partial sums dw[k] = sum_l x[l + k - H] dpre[l]."""
    H: tl.constexpr = K // 2
    b = tl.program_id(0).to(tl.int64)
    s_xb, s_xl, s_ob, s_ol = _aligned(s_xb, XA), _aligned(s_xl, XA), _aligned(s_ob, XA), _aligned(s_ol, XA)
    lb = tl.program_id(1)
    cb = tl.program_id(2)
    rows = lb * BL + tl.arange(0, BL)
    cols = cb * BC + tl.arange(0, BC)
    cmask = cols < C
    dpre_base = dpre_ptr + b * L * C + cols[None, :]
    own = tl.load(dpre_base + rows[:, None].to(tl.int64) * C, mask=(rows < L)[:, None] & cmask[None, :], other=0.0)
    dx = tl.zeros((BL, BC), dtype=tl.float32)
    part = part_ptr + (b * tl.num_programs(1) + lb) * (K + 1) * C + cols
    for k in range(K):
        src = rows + (H - k)
        m = ((src >= 0) & (src < L))[:, None] & cmask[None, :]
        dx += tl.load(dpre_base + src[:, None].to(tl.int64) * C, mask=m, other=0.0) * tl.load(
            w_ptr + cols * K + k, mask=cmask, other=0.0).to(tl.float32)[None, :]
        src = rows + (k - H)
        m = ((src >= 0) & (src < L))[:, None] & cmask[None, :]
        xk = tl.load(x_ptr + b * s_xb + src[:, None].to(tl.int64) * s_xl + cols[None, :], mask=m, other=0.0)
        tl.store(part + k * C, tl.sum(xk.to(tl.float32) * own, axis=0), mask=cmask)
    out = dx_ptr + b * s_ob + rows[:, None].to(tl.int64) * s_ol + cols[None, :]
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=(rows < L)[:, None] & cmask[None, :])


@triton.jit
def _silu_grad(pre):
    """``silu'(pre)``; the reciprocal in the fast (2-ulp) division: the rolling backward is bound by issue."""
    sig = tl.fdiv(tl.full(pre.shape, 1.0, tl.float32), 1.0 + tl.exp(-pre))
    return sig * (1.0 + pre * (1.0 - sig))


@triton.jit
def _conv_silu_bwd_rolling_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr, dx_ptr, part_ptr,
    L, C,
    s_dyb, s_dyl, s_xb, s_xl, s_ob, s_ol,
    K: tl.constexpr, SEG: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_C: tl.constexpr,
    XA: tl.constexpr,
):
    """The conv + SiLU backward in one pass for kernels of width <= 7 (taps zero-padded to 7).

    One program walks ``SEG`` rows of one channel block a token at a time, keeping the last 7
    rows of ``x`` and of ``dpre = dy * silu'(pre)`` in registers: ``dpre[j]`` from the window
    ``x[j-3 .. j+3]``, then ``dx[j-3] = sum_k w[k] dpre[j-k]`` (the transposed conv) and, for
    the program's own rows, ``dw[k] += x[j+k-3] dpre[j]``. ``dpre`` never leaves registers; the
    3-row halo on each side is recomputed (6 of every ``SEG + 6`` rows). Partial sums of the
    7 taps' and the bias' gradients per program go to ``part`` (B, NSEG, 8, C) float32. The
    row pointers advance by one stride a step (no per-step index products).
    """
    b = tl.program_id(0).to(tl.int64)
    s_dyb, s_dyl, s_xb, s_xl = _aligned(s_dyb, XA), _aligned(s_dyl, XA), _aligned(s_xb, XA), _aligned(s_xl, XA)
    s_ob, s_ol = _aligned(s_ob, XA), _aligned(s_ol, XA)
    seg = tl.program_id(1)
    cols = tl.program_id(2) * BC + tl.arange(0, BC)
    cmask, w0, w1, w2, w3, w4, w5, w6, bias = _window_taps(w_ptr, b_ptr, cols, C, K, BC, HAS_BIAS, EVEN_C)
    l0 = seg * SEG
    # x[l0-6 .. l0-1] (zero before the sequence); x6 is loaded at the top of each step.
    x_row = x_ptr + b * s_xb + (l0 - 7).to(tl.int64) * s_xl + cols
    x1 = tl.load(x_row + s_xl, mask=cmask & (l0 - 6 >= 0), other=0.0).to(tl.float32)
    x2 = tl.load(x_row + 2 * s_xl, mask=cmask & (l0 - 5 >= 0), other=0.0).to(tl.float32)
    x3 = tl.load(x_row + 3 * s_xl, mask=cmask & (l0 - 4 >= 0), other=0.0).to(tl.float32)
    x4 = tl.load(x_row + 4 * s_xl, mask=cmask & (l0 - 3 >= 0), other=0.0).to(tl.float32)
    x5 = tl.load(x_row + 5 * s_xl, mask=cmask & (l0 - 2 >= 0), other=0.0).to(tl.float32)
    x6 = tl.load(x_row + 6 * s_xl, mask=cmask & (l0 - 1 >= 0), other=0.0).to(tl.float32)
    x_row += 7 * s_xl  # x[l0]: the row the first step (j = l0 - 3) loads
    x0 = tl.zeros((BC,), dtype=tl.float32)
    dy_row = dy_ptr + b * s_dyb + (l0 - 3).to(tl.int64) * s_dyl + cols
    dx_row = dx_ptr + b * s_ob + (l0 - 6).to(tl.int64) * s_ol + cols
    # dpre[j-6 .. j-1]: only the rows from l0 - 3 on reach a stored dx, and those are computed below.
    d1 = tl.zeros((BC,), dtype=tl.float32)
    d2 = tl.zeros((BC,), dtype=tl.float32)
    d3 = tl.zeros((BC,), dtype=tl.float32)
    d4 = tl.zeros((BC,), dtype=tl.float32)
    d5 = tl.zeros((BC,), dtype=tl.float32)
    d6 = tl.zeros((BC,), dtype=tl.float32)
    g0 = tl.zeros((BC,), dtype=tl.float32)
    g1 = tl.zeros((BC,), dtype=tl.float32)
    g2 = tl.zeros((BC,), dtype=tl.float32)
    g3 = tl.zeros((BC,), dtype=tl.float32)
    g4 = tl.zeros((BC,), dtype=tl.float32)
    g5 = tl.zeros((BC,), dtype=tl.float32)
    g6 = tl.zeros((BC,), dtype=tl.float32)
    gb = tl.zeros((BC,), dtype=tl.float32)
    for step in range(0, SEG + 6):
        j = l0 - 3 + step  # the row whose dpre this step computes
        x0, x1, x2, x3, x4, x5 = x1, x2, x3, x4, x5, x6
        x6 = tl.load(x_row, mask=cmask & (j + 3 >= 0) & (j + 3 < L), other=0.0).to(tl.float32)
        pre = bias + w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3 + w4 * x4 + w5 * x5 + w6 * x6
        dy = tl.load(dy_row, mask=cmask & (j >= 0) & (j < L), other=0.0)
        d0 = dy.to(tl.float32) * _silu_grad(pre)  # zero outside the sequence (dy is)
        own = tl.where((j >= l0) & (j < l0 + SEG), d0, 0.0)
        g0 += x0 * own
        g1 += x1 * own
        g2 += x2 * own
        g3 += x3 * own
        g4 += x4 * own
        g5 += x5 * own
        g6 += x6 * own
        gb += own
        dx = w0 * d0 + w1 * d1 + w2 * d2 + w3 * d3 + w4 * d4 + w5 * d5 + w6 * d6  # d_k = dpre[j - k]
        tl.store(dx_row, dx.to(dx_ptr.dtype.element_ty), mask=cmask & (j - 3 >= l0) & (j - 3 < L))
        d6, d5, d4, d3, d2, d1 = d5, d4, d3, d2, d1, d0
        x_row += s_xl
        dy_row += s_dyl
        dx_row += s_ol
    part = part_ptr + (b * tl.num_programs(1) + seg) * 8 * C + cols
    tl.store(part + 0 * C, g0, mask=cmask)
    tl.store(part + 1 * C, g1, mask=cmask)
    tl.store(part + 2 * C, g2, mask=cmask)
    tl.store(part + 3 * C, g3, mask=cmask)
    tl.store(part + 4 * C, g4, mask=cmask)
    tl.store(part + 5 * C, g5, mask=cmask)
    tl.store(part + 6 * C, g6, mask=cmask)
    tl.store(part + 7 * C, gb, mask=cmask)


def conv1d_silu_bwd(
    dy_BLC: torch.Tensor,
    x_BLC: torch.Tensor,
    weight_C1K: torch.Tensor,
    bias_C: torch.Tensor | None,
    *,
    rolling: bool | None = None,
    block_l: int | None = None,
    block_c: int | None = None,
    dx_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`conv1d_silu_fwd`: ``(dx_BLC, dweight_C1K, dbias_C or None)``.

    Widths up to 7 (``rolling``, the default from :data:`CONV_CONFIG`): one pass a token at a
    time (``_conv_silu_bwd_rolling_kernel``): ``dpre = dy * silu'(pre)`` stays in registers, so
    ``dy`` and ``x`` are read and ``dx`` written once. Wider kernels, or ``rolling=False``: two tiled
    passes, ``dpre`` (pre recomputed from ``x``, stored in the dtype of ``x``), then ``dx`` as the
    transposed convolution of ``dpre`` and the weight gradient, the halo rows re-read from cache.
    ``block_l`` / ``block_c``: rows and channels per program. ``dx`` is contiguous in the dtype
    of ``x``; the parameter gradients are reduced from float32 partial sums (one per ``block_l``
    rows) in the parameters' dtypes. ``dx_out`` (optional) receives ``dx`` instead: any (B, L, C)
    view contiguous in its channels, e.g. a slice of a layer's gradient buffer.
    """
    batch, seqlen, channels = x_BLC.shape
    k = weight_C1K.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"the conv kernel width must be odd (centered, padding k // 2), got {k}")
    if tuple(weight_C1K.shape) != (channels, 1, k):
        raise ValueError(f"weight must have shape ({channels}, 1, k), got {tuple(weight_C1K.shape)}")
    if tuple(dy_BLC.shape) != tuple(x_BLC.shape):
        raise ValueError(f"dy has shape {tuple(dy_BLC.shape)}, x has {tuple(x_BLC.shape)}")
    if x_BLC.stride(-1) != 1 or dy_BLC.stride(-1) != 1:
        raise ValueError("x and dy must be contiguous in their channels (stride(-1) == 1)")
    if dx_out is not None and (tuple(dx_out.shape) != tuple(x_BLC.shape) or dx_out.stride(-1) != 1):
        raise ValueError(f"dx_out must have shape {tuple(x_BLC.shape)} and stride(-1) == 1, got {tuple(dx_out.shape)}")
    device = x_BLC.device
    dx = torch.empty(batch, seqlen, channels, device=device, dtype=x_BLC.dtype) if dx_out is None else dx_out
    has_bias = bias_C is not None
    rolling = CONV_CONFIG["rolling_bwd"] if rolling is None else rolling
    weight_CK = _weight_CK(weight_C1K)
    strides = (dy_BLC.stride(0), dy_BLC.stride(1), x_BLC.stride(0), x_BLC.stride(1), dx.stride(0), dx.stride(1))
    align = _row_align(*strides)
    if rolling and k <= _WINDOW:
        bc = block_c or CONV_CONFIG["bwd_bc"]
        blocks = triton.cdiv(channels, bc)
        seg = block_l or _segment_rows(batch, seqlen, blocks, CONV_CONFIG["bwd_seg"], CONV_CONFIG["bwd_programs"])
        grid = (batch, triton.cdiv(seqlen, seg), blocks)
        parts = torch.empty(batch, grid[1], _WINDOW + 1, channels, device=device, dtype=torch.float32)
        _conv_silu_bwd_rolling_kernel[grid](
            dy_BLC, x_BLC, weight_CK, bias_C if has_bias else weight_CK, dx, parts, seqlen, channels, *strides,
            K=k, SEG=seg, BC=bc, HAS_BIAS=has_bias, EVEN_C=channels % bc == 0, XA=align,
            num_warps=CONV_CONFIG["bwd_warps"], num_stages=CONV_CONFIG["bwd_stages"],
        )
        sums = parts.sum((0, 1))
        pad = (_WINDOW - k) // 2
        taps = sums[pad : pad + k]
    else:
        # Two passes; 128 x 64 blocks on 4 warps were the fastest of 36 blocks x warps x stages at
        # HTH-5B width, 16k tokens, H100 (1.01 ms with dpre in bf16, 1.42 in float32).
        block_l, block_c = block_l or 128, block_c or 64
        grid = (batch, triton.cdiv(seqlen, block_l), triton.cdiv(channels, block_c))
        parts = torch.empty(batch, grid[1], k + 1, channels, device=device, dtype=torch.float32)
        warps = 4 if block_l * block_c <= 8192 else 8
        dpre = torch.empty(batch, seqlen, channels, device=device, dtype=x_BLC.dtype)
        _conv_silu_dpre_kernel[grid](
            dy_BLC, x_BLC, weight_CK, bias_C if has_bias else weight_CK, dpre, parts, seqlen, channels, *strides[:4],
            K=k, BL=block_l, BC=block_c, HAS_BIAS=has_bias, XA=align, num_warps=warps,
        )
        _conv_dx_dw_kernel[grid](
            dpre, x_BLC, weight_CK, dx, parts, seqlen, channels, *strides[2:],
            K=k, BL=block_l, BC=block_c, XA=align, num_warps=warps,
        )
        sums = parts.sum((0, 1))
        taps = sums[:k]
    dweight = taps.t().reshape(channels, 1, k).to(weight_C1K.dtype)
    dbias = sums[-1].to(bias_C.dtype) if has_bias else None
    return dx, dweight, dbias


@triton.jit
def _gated_rmsnorm_bwd_kernel(
    do_ptr,
    y_ptr,
    z_ptr,
    w_ptr,
    dy_ptr,
    dz_ptr,
    part_ptr,
    R,
    L,
    D,
    eps: tl.constexpr,  # a literal: torch.compile would pass a float argument as fp64
    s_ob,
    s_ol,
    s_yb,
    s_yl,
    s_zb,
    s_zl,
    s_dzb,
    s_dzl,
    ROWS: tl.constexpr,
    BD: tl.constexpr,
    WANT_DY: tl.constexpr,
    XA: tl.constexpr,
):
    # out = yhat * w * g with yhat = y * rstd, g = silu(z); per row:
    #   dyhat = dout * w * g,  dy = rstd * (dyhat - yhat * mean(dyhat * yhat)),
    #   dz = dout * yhat * w * silu'(z),  dw = sum over rows of dout * yhat * g (a partial per program).
    pid = tl.program_id(0)
    s_ob, s_ol, s_yb, s_yl = _aligned(s_ob, XA), _aligned(s_ol, XA), _aligned(s_yb, XA), _aligned(s_yl, XA)
    s_zb, s_zl, s_dzb, s_dzl = _aligned(s_zb, XA), _aligned(s_zl, XA), _aligned(s_dzb, XA), _aligned(s_dzl, XA)
    cols = tl.arange(0, BD)
    mask = cols < D
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BD,), dtype=tl.float32)
    for r in range(ROWS):
        row = pid * ROWS + r
        m = mask & (row < R)
        bi = (row // L).to(tl.int64)
        li = (row % L).to(tl.int64)
        do = tl.load(do_ptr + bi * s_ob + li * s_ol + cols, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + bi * s_yb + li * s_yl + cols, mask=m, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + bi * s_zb + li * s_zl + cols, mask=m, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(y * y, axis=0) / D + eps)
        yhat = y * rstd
        sig = 1.0 / (1.0 + tl.exp(-z))
        dw += do * yhat * z * sig
        if WANT_DY:
            dyhat = do * w * z * sig
            dy = rstd * (dyhat - yhat * (tl.sum(dyhat * yhat, axis=0) / D))
            tl.store(dy_ptr + row.to(tl.int64) * D + cols, dy.to(dy_ptr.dtype.element_ty), mask=m)
        dz = do * yhat * w * sig * (1.0 + z * (1.0 - sig))
        tl.store(dz_ptr + bi * s_dzb + li * s_dzl + cols, dz.to(dz_ptr.dtype.element_ty), mask=m)
    tl.store(part_ptr + pid.to(tl.int64) * D + cols, dw, mask=mask)


@triton.jit
def _norm_chunk(do_ptr, y_ptr, z_ptr, w_ptr, cols, D):
    """``dout * w * silu(z)`` and ``y`` of one chunk of a row, in float32 (zeros past ``D``)."""
    m = cols < D
    do = tl.load(do_ptr + cols, mask=m, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + cols, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + cols, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    return do * w * (z / (1.0 + tl.exp(-z))), y


@triton.jit
def _gated_rmsnorm_dy_kernel(
    do_ptr, y_ptr, z_ptr, w_ptr, dy_ptr, L, D,
    eps: tl.constexpr,  # a literal: torch.compile would pass a float argument as fp64
    s_ob, s_ol, s_yb, s_yl, s_zb, s_zl,
    BC: tl.constexpr, NCH: tl.constexpr, XA: tl.constexpr,
):
    # dy alone, one row a program, in NCH column chunks of BC: a first sweep sums y^2 and dout w g y, a second
    # (reading the row again, from cache) writes dy = rstd dout w g - y rstd^3 mean(dout w g y). No padding
    # of the row to a power of two and few registers: several programs per SM hide the loads' latency.
    row = tl.program_id(0)
    s_ob, s_ol, s_yb, s_yl = _aligned(s_ob, XA), _aligned(s_ol, XA), _aligned(s_yb, XA), _aligned(s_yl, XA)
    s_zb, s_zl = _aligned(s_zb, XA), _aligned(s_zl, XA)
    bi = (row // L).to(tl.int64)
    li = (row % L).to(tl.int64)
    do_ptr += bi * s_ob + li * s_ol
    y_ptr += bi * s_yb + li * s_yl
    z_ptr += bi * s_zb + li * s_zl
    c0 = tl.arange(0, BC)
    sum_yy = tl.zeros((BC,), dtype=tl.float32)
    sum_dy = tl.zeros((BC,), dtype=tl.float32)
    for c in tl.static_range(NCH):
        dyhat, y = _norm_chunk(do_ptr, y_ptr, z_ptr, w_ptr, c * BC + c0, D)
        sum_yy += y * y
        sum_dy += dyhat * y
    rstd = 1.0 / tl.sqrt(tl.sum(sum_yy, axis=0) / D + eps)
    coef = rstd * rstd * rstd * tl.sum(sum_dy, axis=0) / D
    for c in tl.static_range(NCH):
        cols = c * BC + c0
        dyhat, y = _norm_chunk(do_ptr, y_ptr, z_ptr, w_ptr, cols, D)
        tl.store(dy_ptr + row.to(tl.int64) * D + cols, (rstd * dyhat - y * coef).to(dy_ptr.dtype.element_ty),
                 mask=cols < D)


def _row_chunks(dim: int) -> tuple[int, int]:
    """``(BC, NCH)`` for :func:`_gated_rmsnorm_dy_kernel`: chunks of 2048 or 1024 columns, whichever pads the
    row less (HTH-5B's 6144: 3 x 2048; XL's 2304: 3 x 1024), one chunk for rows up to 1024, at most 16.
    Measured on an H100 against 256 and 512 (1-4 warps) and 4096 (8-16 warps): at XL width, 4k tokens,
    3 x 1024 on 4 warps takes 0.030 ms, 9 x 256 on 1 warp 0.056 ms; at HTH-5B width, 16k tokens,
    3 x 2048 on 8 warps 0.270 ms, 6 x 1024 0.297 ms, 2 x 4096 0.283 ms."""
    if dim <= 1024:
        return triton.next_power_of_2(dim), 1
    bc = min((2048, 1024), key=lambda width: triton.cdiv(dim, width) * width)
    if triton.cdiv(dim, bc) > 16:  # rows over 32k columns
        bc = triton.next_power_of_2(triton.cdiv(dim, 16))
    return bc, triton.cdiv(dim, bc)


def gated_rmsnorm_bwd(
    dout_BLD: torch.Tensor,
    y_BLD: torch.Tensor,
    z_BLD: torch.Tensor,
    weight_D: torch.Tensor,
    eps: float,
    *,
    rows_per_program: int = 16,
    grads: str = "all",
    dz_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`gated_rmsnorm_fwd`: ``(dy_BLD, dz_BLD, dweight_D)``, one kernel.

    One program per ``rows_per_program`` tokens, one row at a time (rstd recomputed); ``dy`` and
    ``dz`` are contiguous in the dtypes of ``y`` and ``z``, ``dweight`` is reduced from float32
    partial rows in the weight's dtype. Inputs may be any (B, L, D) views with stride(-1) == 1.

    ``grads``: ``"all"``, ``"dy"`` (``dy`` alone; ``None`` for the others) or ``"dz"`` (``dz`` and
    ``dweight``): a caller can take ``dz`` later, straight into its place in a larger gradient buffer
    (``dz_out``: any (B, L, D) view with stride(-1) == 1), instead of holding it meanwhile. The ``dy``
    pass then runs one row a program in column chunks (:func:`_row_chunks`), with nothing to reduce
    across rows: at HTH-5B width, 16k tokens, H100, 0.27-0.29 ms against 0.40 ms for ``dy`` and
    ``dweight`` in the one-kernel layout (the ``dz`` pass takes ``dweight``: 0.28 -> 0.34 ms).
    """
    if grads not in ("all", "dy", "dz"):
        raise ValueError(f"grads must be 'all', 'dy' or 'dz', got {grads!r}")
    batch, seqlen, dim = y_BLD.shape
    others = {"dout": dout_BLD, "z": z_BLD, **({"dz_out": dz_out} if dz_out is not None else {})}
    for name, t in others.items():
        if tuple(t.shape) != tuple(y_BLD.shape):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, y has {tuple(y_BLD.shape)}")
    for name, t in {"y": y_BLD, **others}.items():
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (stride(-1) == 1)")
    if tuple(weight_D.shape) != (dim,):
        raise ValueError(f"weight must have shape ({dim},), got {tuple(weight_D.shape)}")
    want_dy = grads in ("all", "dy")
    rows = batch * seqlen
    dy = torch.empty(batch, seqlen, dim, device=y_BLD.device, dtype=y_BLD.dtype) if want_dy else None
    in_strides = (*dout_BLD.stride()[:2], *y_BLD.stride()[:2], *z_BLD.stride()[:2])
    if grads == "dy":
        bc, nch = _row_chunks(dim)
        _gated_rmsnorm_dy_kernel[(rows,)](
            dout_BLD, y_BLD, z_BLD, weight_D, dy, seqlen, dim, eps, *in_strides,
            BC=bc, NCH=nch, XA=_row_align(*in_strides),
            num_warps=max(1, bc // 256),  # 8 elements a thread (4 or 16 a thread: 10-25 % slower at both widths)
        )
        return dy, None, None
    n_prog = triton.cdiv(rows, rows_per_program)
    dz = dz_out if dz_out is not None else torch.empty(batch, seqlen, dim, device=z_BLD.device, dtype=z_BLD.dtype)
    parts = torch.empty(n_prog, dim, device=y_BLD.device, dtype=torch.float32)
    bd = triton.next_power_of_2(dim)
    strides = (*in_strides, *dz.stride()[:2])
    _gated_rmsnorm_bwd_kernel[(n_prog,)](
        dout_BLD,
        y_BLD,
        z_BLD,
        weight_D,
        dy if want_dy else y_BLD,
        dz,
        parts,
        rows,
        seqlen,
        dim,
        eps,
        *strides,
        ROWS=rows_per_program,
        BD=bd,
        WANT_DY=want_dy,
        XA=_row_align(*strides),
        # 16 warps at D = 6144 (16 tokens a program), measured when the passes were dy + dweight and dz: 0.41 /
        # 0.28 ms at 16k tokens on an H100, against 0.43 / 0.35 ms with 32 warps and 0.49 / 0.29 ms with 8 (4-32
        # tokens a program measured). dz + dweight: 0.34-0.36 ms on 16 warps for 8-32 tokens, 0.37-0.39 on 8.
        num_warps=min(16, max(4, bd // 512)),
    )
    return dy, dz, parts.sum(0).to(weight_D.dtype)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class Conv1dSiLU(torch.autograd.Function):
    """``silu(conv1d(x) + b)`` (centered depthwise conv along L) with the Triton kernels both ways.

    Saves only ``x``, ``weight`` and ``bias``; ``x`` may be a channel-contiguous slice of a
    larger tensor (its gradient flows back through the slice).
    """

    @staticmethod
    def forward(ctx, x_BLC: torch.Tensor, weight_C1K: torch.Tensor, bias_C: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x_BLC, weight_C1K, bias_C)
        return conv1d_silu_fwd(x_BLC, weight_C1K, bias_C)

    @staticmethod
    def backward(ctx, dy_BLC: torch.Tensor):
        x_BLC, weight_C1K, bias_C = ctx.saved_tensors
        dx, dweight, dbias = conv1d_silu_bwd(_last_dim_contiguous(dy_BLC), x_BLC, weight_C1K, bias_C)
        need = ctx.needs_input_grad
        return dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None


class GatedRMSNormFn(torch.autograd.Function):
    """``rmsnorm(y) * weight * silu(z)`` (``GatedRMSNorm(norm_before_gate=True)``) with the Triton kernels.

    Saves only ``y``, ``z`` and ``weight``; ``y`` and ``z`` may be row-strided views.
    """

    @staticmethod
    def forward(ctx, y_BLD: torch.Tensor, z_BLD: torch.Tensor, weight_D: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(y_BLD, z_BLD, weight_D)
        ctx.eps = eps
        return gated_rmsnorm_fwd(y_BLD, z_BLD, weight_D, eps)

    @staticmethod
    def backward(ctx, dout_BLD: torch.Tensor):
        y_BLD, z_BLD, weight_D = ctx.saved_tensors
        dy, dz, dweight = gated_rmsnorm_bwd(_last_dim_contiguous(dout_BLD), y_BLD, z_BLD, weight_D, ctx.eps)
        need = ctx.needs_input_grad
        return dy if need[0] else None, dz if need[1] else None, dweight if need[2] else None, None


def conv1d_silu(x_BLC: torch.Tensor, weight_C1K: torch.Tensor, bias_C: torch.Tensor | None) -> torch.Tensor:
    """Differentiable :func:`conv1d_silu_fwd` (see :class:`Conv1dSiLU`)."""
    return Conv1dSiLU.apply(x_BLC, weight_C1K, bias_C)


def gated_rmsnorm(y_BLD: torch.Tensor, z_BLD: torch.Tensor, weight_D: torch.Tensor, eps: float) -> torch.Tensor:
    """Differentiable :func:`gated_rmsnorm_fwd` (see :class:`GatedRMSNormFn`)."""
    return GatedRMSNormFn.apply(y_BLD, z_BLD, weight_D, eps)
