"""Hydra's elementwise stages in Triton, on the (B, L, C) layout the projections produce.

* :func:`conv1d_silu_fwd`: centered depthwise convolution along the sequence plus bias and
  SiLU (Hydra's ``conv1d`` with ``padding = k // 2``), read straight from the strided slice
  of the input projection: no transposes, no copies.
* :func:`gated_rmsnorm_fwd`: ``rmsnorm(y) * weight * silu(z)`` (Mamba-2's gated norm with
  ``norm_before_gate=True``, as Hydra uses it) in one pass over each token.

Forward only; the mixer uses them when no gradient is needed and PyTorch otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_silu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    L, C,
    s_xb, s_xl,
    K: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    b = tl.program_id(0)
    lb = tl.program_id(1)
    cb = tl.program_id(2)
    rows = lb * BL + tl.arange(0, BL)
    cols = cb * BC + tl.arange(0, BC)
    cmask = cols < C
    acc = tl.zeros((BL, BC), dtype=tl.float32)
    for k in tl.static_range(K):
        src = rows + (k - K // 2)
        m = ((src >= 0) & (src < L))[:, None] & cmask[None, :]
        xk = tl.load(x_ptr + b * s_xb + src[:, None] * s_xl + cols[None, :], mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + cols * K + k, mask=cmask, other=0.0).to(tl.float32)
        acc += xk * wk[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    acc = acc / (1.0 + tl.exp(-acc))
    out = y_ptr + (b * L + rows[:, None]) * C + cols[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(rows < L)[:, None] & cmask[None, :])


def conv1d_silu_fwd(x_BLC: torch.Tensor, weight_C1K: torch.Tensor, bias_C: torch.Tensor | None) -> torch.Tensor:
    """``silu(depthwise_conv(x) + bias)`` along L with a centered odd kernel; contiguous (B, L, C) out."""
    batch, seqlen, channels = x_BLC.shape
    k = weight_C1K.shape[-1]
    if x_BLC.stride(-1) != 1 or k % 2 == 0:
        raise ValueError("x must be contiguous in its channels and the kernel width odd")
    y = torch.empty(batch, seqlen, channels, device=x_BLC.device, dtype=x_BLC.dtype)
    bl, bc = 64, 128
    weight = weight_C1K.reshape(channels, k).contiguous()
    _conv_silu_kernel[(batch, triton.cdiv(seqlen, bl), triton.cdiv(channels, bc))](
        x_BLC, weight, bias_C if bias_C is not None else weight, y, seqlen, channels,
        x_BLC.stride(0), x_BLC.stride(1), K=k, BL=bl, BC=bc, HAS_BIAS=bias_C is not None, num_warps=4,
    )
    return y


@triton.jit
def _gated_rmsnorm_kernel(
    y_ptr, z_ptr, w_ptr, out_ptr,
    D, eps,
    s_y, s_z,
    BD: tl.constexpr,
):
    row = tl.program_id(0)
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
        y2, z2, weight_D, out, dim, eps, y2.stride(-2), z2.stride(-2), BD=bd, num_warps=min(16, max(4, bd // 512)),
    )
    return out
