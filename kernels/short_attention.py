"""Attention of many queries to a few keys (cross-attention to text tokens) in Triton.

In PixArt-style and HTH blocks every image token attends to a caption of ``S`` ~ 120 text
tokens. FlashAttention's backward (Dao 2023, FlashAttention-2, alg. 2) runs one program per
block of keys and walks all queries: with ``S <= 128`` that is one program per (batch, head),
32 programs on a 132-SM H100 at HTH-5B width. Here every pass is parallel over query blocks;
each program walks a run ("split") of them for one (batch, head) and key block:

* ``_short_attn_fwd_kernel``: ``s = q k^T * scale`` (masked keys at ``-inf``), the online
  softmax over key blocks (the first loaded once per program), ``o = softmax(s) v`` and the
  row's log-sum-exp ``lse``;
* ``_short_attn_dq_kernel``: ``delta = rowsum(do * o)`` (stored), ``p = exp(s - lse)``,
  ``ds = p (do v^T - delta)``, ``dq = ds k * scale`` (written directly with one key block,
  else as per-key-block float32 parts summed after);
* ``_short_attn_dkdv_kernel``: ``dk += ds^T q * scale``, ``dv += p^T do`` over the split, in
  the transposed (keys x queries) form, written as per-split float32 parts summed after
  (deterministic, no atomics). Apart from ``dq`` so that each pass holds one float32
  accumulator: fused, the two spilled registers.

Tensors are ``(B, L, H, D)`` views with unit stride over ``D`` (the layout the projections
produce, so no transposes); the key mask ``(B, S)`` is True where a key may be attended to.
A query row with every key masked gets zeros, as PyTorch's SDPA gives (the tests compare them).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hthlight.kernels.hydra_scan import _mm, _pid

#: launch settings (16-bit inputs): query rows per block, warps, pipeline stages and programs per
#: SM (each program walks its share of the query blocks) of the forward and backward kernels, and
#: keys per block
CONFIG = {
    "fwd_bm": 128, "fwd_warps": 8, "fwd_stages": 3, "fwd_programs_per_sm": 2,
    "dq_bm": 128, "dq_warps": 8, "dq_stages": 2, "dq_programs_per_sm": 2,
    "dkdv_bm": 32, "dkdv_warps": 8, "dkdv_stages": 2, "dkdv_programs_per_sm": 1,
    "bs": 128,
}
#: what float32 inputs change (their tiles are twice the bytes)
CONFIG_FP32 = {"fwd_bm": 32, "fwd_stages": 1, "dq_bm": 32, "dq_stages": 1, "dkdv_bm": 32, "dkdv_stages": 1}

#: the kernels hold one (key block x head width) tile: head widths beyond this need SDPA
MAX_HEAD_DIM = 128


@triton.jit
def _key_ok(kv_rows, mask_ptr, S, HAS_MASK: tl.constexpr):
    """Keys that may be attended to: within ``S`` and, with a mask, unmasked."""
    valid = kv_rows < S
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + kv_rows, mask=kv_rows < S, other=0) != 0)
    return valid


@triton.jit
def _scores(q, k, kv_rows, mask_ptr, S, scale, HAS_MASK: tl.constexpr, IEEE: tl.constexpr):
    """``q k^T * scale`` (queries x keys, float32) with padded and masked keys at ``-inf``."""
    valid = _key_ok(kv_rows, mask_ptr, S, HAS_MASK)
    return tl.where(valid[None, :], _mm(q, tl.trans(k), IEEE) * scale, float("-inf"))


@triton.jit
def _load_kv(k_ptr, v_ptr, kv_rows, dims, dim_ok, S, s_ks, s_vs):
    kv_mask = (kv_rows < S)[:, None] & dim_ok[None, :]
    k = tl.load(k_ptr + kv_rows[:, None] * s_ks + dims[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_rows[:, None] * s_vs + dims[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _short_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr,
    L, S, H, scale, blocks_per_split,
    s_qb, s_ql, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_mb, s_ob, s_ol, s_oh,
    D: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, ONE_KEY_BLOCK: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
):
    """o (B, L, H, D) and lse (B, H, L) float32 for ``blocks_per_split`` blocks of ``BM`` queries of one head.

    The first key block is loaded once per program (with ``ONE_KEY_BLOCK`` it is all of them);
    further key blocks are folded in by the online softmax.
    """
    bh = _pid(1, WIDE)
    b = bh // H
    h = bh % H
    dims = tl.arange(0, BD)
    dim_ok = dims < D
    k_ptr += b * s_kb + h * s_kh
    v_ptr += b * s_vb + h * s_vh
    mask_ptr += b * s_mb
    kv_rows0 = tl.arange(0, BS)
    k0, v0 = _load_kv(k_ptr, v_ptr, kv_rows0, dims, dim_ok, S, s_ks, s_vs)
    for i in range(blocks_per_split):
        rows = (_pid(0, WIDE) * blocks_per_split + i) * BM + tl.arange(0, BM)
        tile = (rows < L)[:, None] & dim_ok[None, :]
        q = tl.load(q_ptr + b * s_qb + h * s_qh + rows[:, None] * s_ql + dims[None, :], mask=tile, other=0.0)
        s = _scores(q, k0, kv_rows0, mask_ptr, S, scale, HAS_MASK, IEEE)
        m = tl.max(s, 1)
        p = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[:, None])
        denom = tl.sum(p, 1)
        acc = _mm(p.to(v0.dtype), v0, IEEE)
        if not ONE_KEY_BLOCK:
            for start in range(BS, S, BS):
                kv_rows = start + tl.arange(0, BS)
                k, v = _load_kv(k_ptr, v_ptr, kv_rows, dims, dim_ok, S, s_ks, s_vs)
                s = _scores(q, k, kv_rows, mask_ptr, S, scale, HAS_MASK, IEEE)
                m_new = tl.maximum(m, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: nothing to rescale
                p = tl.exp(s - m_safe[:, None])
                alpha = tl.exp(m - m_safe)
                denom = denom * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, IEEE)
                m = m_new
        empty = denom == 0.0  # every key masked: zeros out, lse = +inf so the backward's p is 0
        o = acc / tl.where(empty, 1.0, denom)[:, None]
        lse = tl.where(empty, float("inf"), m + tl.log(tl.where(empty, 1.0, denom)))
        o_ptrs = o_ptr + b * s_ob + h * s_oh + rows[:, None] * s_ol + dims[None, :]
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=tile)
        tl.store(lse_ptr + bh * L + rows, lse, mask=rows < L)


@triton.jit
def _head_keys(k_ptr, v_ptr, H, S, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, D: tl.constexpr, BS: tl.constexpr,
               BD: tl.constexpr, WIDE: tl.constexpr):
    """The program's (batch, head) from grid axis 1, its key block ``kb`` from axis 2 and that block's k, v."""
    bh = _pid(1, WIDE)
    b = bh // H
    h = bh % H
    dims = tl.arange(0, BD)
    dim_ok = dims < D
    kb = _pid(2, WIDE)
    kv_rows = kb * BS + tl.arange(0, BS)
    k, v = _load_kv(k_ptr + b * s_kb + h * s_kh, v_ptr + b * s_vb + h * s_vh, kv_rows, dims, dim_ok, S, s_ks, s_vs)
    return bh, b, h, kb, dims, dim_ok, kv_rows, k, v


@triton.jit
def _short_attn_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    L, S, H, scale, blocks_per_split,
    s_qb, s_ql, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_mb, s_ob, s_ol, s_oh, s_gb, s_gl, s_gh,
    s_dqp, s_dqb, s_dql, s_dqh,
    D: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
):
    """dq of one key block (written directly with one key block, else its float32 part) and
    ``delta = rowsum(do * o)`` (B, H, L) for :func:`_short_attn_dkdv_kernel`."""
    bh, b, h, kb, dims, dim_ok, kv_rows, k, v = _head_keys(
        k_ptr, v_ptr, H, S, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, D, BS, BD, WIDE
    )
    for i in range(blocks_per_split):
        rows = (_pid(0, WIDE) * blocks_per_split + i) * BM + tl.arange(0, BM)
        row_ok = rows < L
        tile = row_ok[:, None] & dim_ok[None, :]
        q = tl.load(q_ptr + b * s_qb + h * s_qh + rows[:, None] * s_ql + dims[None, :], mask=tile, other=0.0)
        do = tl.load(do_ptr + b * s_gb + h * s_gh + rows[:, None] * s_gl + dims[None, :], mask=tile, other=0.0)
        o = tl.load(o_ptr + b * s_ob + h * s_oh + rows[:, None] * s_ol + dims[None, :], mask=tile, other=0.0)
        lse = tl.load(lse_ptr + bh * L + rows, mask=row_ok, other=float("inf"))
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(delta_ptr + bh * L + rows, delta, mask=row_ok & (kb == 0))
        p = tl.exp(_scores(q, k, kv_rows, mask_ptr + b * s_mb, S, scale, HAS_MASK, IEEE) - lse[:, None])
        ds = p * (_mm(do, tl.trans(v), IEEE) - delta[:, None])
        dq = _mm(ds.to(k.dtype), k, IEEE) * scale
        tl.store(
            dq_ptr + kb * s_dqp + b * s_dqb + h * s_dqh + rows[:, None] * s_dql + dims[None, :],
            dq.to(dq_ptr.dtype.element_ty), mask=tile,
        )


@triton.jit
def _short_attn_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    L, S, H, B, scale, blocks_per_split,
    s_qb, s_ql, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_mb, s_gb, s_gl, s_gh,
    D: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
    HAS_MASK: tl.constexpr, IEEE: tl.constexpr, WIDE: tl.constexpr,
):
    """This split's parts of dk and dv (splits, B, S, H, D) float32, in the transposed form
    (keys x queries: ``p^T``, ``ds^T``), so no tile is transposed in registers."""
    split = _pid(0, WIDE)
    bh, b, h, _kb, dims, dim_ok, kv_rows, k, v = _head_keys(
        k_ptr, v_ptr, H, S, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, D, BS, BD, WIDE
    )
    kv_mask = (kv_rows < S)[:, None] & dim_ok[None, :]
    key_ok = _key_ok(kv_rows, mask_ptr + b * s_mb, S, HAS_MASK)
    dk = tl.zeros((BS, BD), tl.float32)
    dv = tl.zeros((BS, BD), tl.float32)
    for i in range(blocks_per_split):
        rows = (split * blocks_per_split + i) * BM + tl.arange(0, BM)
        row_ok = rows < L
        # q and do loaded transposed (head width x queries): the B operands of k q^T and v do^T
        tile_t = dim_ok[:, None] & row_ok[None, :]
        q_t = tl.load(q_ptr + b * s_qb + h * s_qh + rows[None, :] * s_ql + dims[:, None], mask=tile_t, other=0.0)
        do_t = tl.load(do_ptr + b * s_gb + h * s_gh + rows[None, :] * s_gl + dims[:, None], mask=tile_t, other=0.0)
        lse = tl.load(lse_ptr + bh * L + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_ptr + bh * L + rows, mask=row_ok, other=0.0)
        s_t = tl.where(key_ok[:, None], _mm(k, q_t, IEEE) * scale, float("-inf"))
        p_t = tl.exp(s_t - lse[None, :])
        dv += _mm(p_t.to(do_t.dtype), tl.trans(do_t), IEEE)
        ds_t = p_t * (_mm(v, do_t, IEEE) - delta[None, :])
        dk += _mm(ds_t.to(q_t.dtype), tl.trans(q_t), IEEE)
    # parts laid out (splits, B, S, H, D), contiguous
    part = ((split * B + b) * S + kv_rows[:, None]) * H * D + h * D + dims[None, :]
    tl.store(dk_ptr + part, dk * scale, mask=kv_mask)
    tl.store(dv_ptr + part, dv, mask=kv_mask)


def _check(q, k, v, mask):
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"short_attention takes q (B, L, H, D) and k, v (B, S, H, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} differ in batch, heads or head width")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"short_attention takes q, k, v of one dtype among float16, bfloat16 and float32, got {q.dtype}, "
            f"{k.dtype}, {v.dtype}"
        )
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"short_attention supports head widths up to {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (k.shape[0], k.shape[1])):
        raise ValueError(
            f"the key mask must be bool (B, S) = {tuple(k.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}"
        )


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _settings(dtype: torch.dtype) -> dict[str, int]:
    """Launch settings for ``dtype``: float32 tiles are twice the bytes, so fewer rows and stages."""
    return {**CONFIG, **(CONFIG_FP32 if dtype == torch.float32 else {})}


def _splits(query_blocks: int, other_programs: int, programs_per_sm: int, device: torch.device) -> tuple[int, int]:
    """(splits, query blocks per split): about ``programs_per_sm`` programs per SM in all."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    splits = min(query_blocks, max(1, programs_per_sm * sms // other_programs))
    per_split = triton.cdiv(query_blocks, splits)
    return triton.cdiv(query_blocks, per_split), per_split


def _wide(*tensors: torch.Tensor) -> bool:
    return any(t.numel() >= 2**31 for t in tensors)


def _mask_bytes(q: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return mask.to(torch.uint8).contiguous() if mask is not None else q.new_ones(1, dtype=torch.uint8)


# The passes are custom operators (torch.library), so that under torch.compile they stay opaque
# and launch through Triton's own runtime: compiled by Inductor as user-defined kernels they ran
# 2-3.6x slower (H100, HTH-5B cross-attention: forward 0.53 against 0.15 ms).
@torch.library.custom_op("hthlight::short_attention_fwd", mutates_args=())
def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(o (B, L, H, D), lse (B, H, L) float32)."""
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    B, L, H, D = q.shape
    S = k.shape[1]
    cfg = _settings(q.dtype)
    BS, BD, BM = cfg["bs"], max(16, triton.next_power_of_2(D)), cfg["fwd_bm"]
    splits, per_split = _splits(triton.cdiv(L, BM), B * H, cfg["fwd_programs_per_sm"], q.device)
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    _short_attn_fwd_kernel[(splits, B * H)](
        q, k, v, _mask_bytes(q, mask), o, lse, L, S, H, 1.0 / math.sqrt(D), per_split,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), S, o.stride(0), o.stride(1), o.stride(2),
        D=D, BM=BM, BS=BS, BD=BD, ONE_KEY_BLOCK=S <= BS, HAS_MASK=mask is not None,
        IEEE=q.dtype == torch.float32, WIDE=_wide(q), num_warps=cfg["fwd_warps"],
        num_stages=cfg["fwd_stages"] if S <= BS else 1,  # pipelining the key-block loop overflows shared memory
    )
    return o, lse


@_forward.register_fake
def _forward_fake(q, k, v, mask):
    B, L, H, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, H, L), dtype=torch.float32)


@torch.library.custom_op("hthlight::short_attention_bwd", mutates_args=())
def _backward(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
    o: torch.Tensor, lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each laid out (B, *, H, D) contiguous."""
    q, k, v, do = _unit_stride(q), _unit_stride(k), _unit_stride(v), _unit_stride(do)
    B, L, H, D = q.shape
    S = k.shape[1]
    cfg = _settings(q.dtype)
    BS, BD = cfg["bs"], max(16, triton.next_power_of_2(D))
    key_blocks = triton.cdiv(S, BS)
    programs = B * H * key_blocks
    splits, per_split = _splits(triton.cdiv(L, cfg["dkdv_bm"]), programs, cfg["dkdv_programs_per_sm"], q.device)
    dq_splits, dq_per_split = _splits(triton.cdiv(L, cfg["dq_bm"]), programs, cfg["dq_programs_per_sm"], q.device)
    scale = 1.0 / math.sqrt(D)
    if key_blocks == 1:  # dq written directly
        dq_parts = torch.empty_like(q, memory_format=torch.contiguous_format)
        s_dq = (0, *dq_parts.stride()[:3])
    else:  # one float32 part per key block, summed below
        dq_parts = q.new_empty((key_blocks, B, L, H, D), dtype=torch.float32)
        s_dq = dq_parts.stride()[:4]
    dk_parts = q.new_empty((splits, B, S, H, D), dtype=torch.float32)
    dv_parts = torch.empty_like(dk_parts)
    delta = torch.empty_like(lse)
    mask_u8 = _mask_bytes(q, mask)
    flags = dict(D=D, BS=BS, BD=BD, HAS_MASK=mask is not None, IEEE=q.dtype == torch.float32, WIDE=_wide(q, dq_parts))
    qkv_strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    qkv_strides += (v.stride(0), v.stride(1), v.stride(2), S)
    _short_attn_dq_kernel[(dq_splits, B * H, key_blocks)](
        q, k, v, mask_u8, o, do, lse, delta, dq_parts, L, S, H, scale, dq_per_split,
        *qkv_strides, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2), *s_dq,
        BM=cfg["dq_bm"], num_warps=cfg["dq_warps"], num_stages=cfg["dq_stages"], **flags,
    )
    _short_attn_dkdv_kernel[(splits, B * H, key_blocks)](
        q, k, v, mask_u8, do, lse, delta, dk_parts, dv_parts, L, S, H, B, scale, per_split,
        *qkv_strides, do.stride(0), do.stride(1), do.stride(2),
        BM=cfg["dkdv_bm"], num_warps=cfg["dkdv_warps"], num_stages=cfg["dkdv_stages"], **flags,
    )
    dq = dq_parts if key_blocks == 1 else dq_parts.sum(0).to(q.dtype)
    return dq, dk_parts.sum(0).to(k.dtype), dv_parts.sum(0).to(v.dtype)


@_backward.register_fake
def _backward_fake(do, q, k, v, mask, o, lse):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, mask = inputs
    ctx.save_for_backward(q, k, v, mask, *output)


def _grads(ctx, do, _dlse):
    q, k, v, mask, o, lse = ctx.saved_tensors
    return *_backward(do, q, k, v, mask, o, lse), None


_forward.register_autograd(_grads, setup_context=_setup_context)


def short_attention(
    q_BLHD: torch.Tensor, k_BSHD: torch.Tensor, v_BSHD: torch.Tensor, mask_BS: torch.Tensor | None = None
) -> torch.Tensor:
    """Scaled dot-product attention of ``L`` queries to ``S`` keys, ``(B, L, H, D)`` in and out.

    ``mask_BS`` (bool, True = attend) masks keys per batch element. Scale ``1 / sqrt(D)``, as
    SDPA's default. Differentiable in ``q``, ``k`` and ``v``.
    """
    _check(q_BLHD, k_BSHD, v_BSHD, mask_BS)
    return _forward(q_BLHD, k_BSHD, v_BSHD, mask_BS)[0]
