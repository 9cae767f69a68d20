"""Chunked SSD scan in plain PyTorch (Mamba-2: Dao & Gu 2024, "Transformers are SSMs", sec. 6).

The selective scan with scalar-times-identity state matrix per head,

    h_t = exp(dt_t * A) h_{t-1} + dt_t * B_t x_t^T,        y_t = h_t^T C_t,

equals the causal semiseparable matrix product

    y_t = sum_{s <= t} (C_t . B_s) exp(A * sum_{r=s+1..t} dt_r) dt_s x_s.

"Structured state-space duality" computes it in chunks of ``Q`` tokens: a masked quadratic
(attention-like) product inside each chunk, the state each chunk leaves behind, a short
recurrence that carries states across chunks, and the contribution of the carried state to
every output of the next chunk. Only exponentials of non-positive partial sums appear, so
nothing overflows however long the sequence or strong the decay.

This is the reference path: every other backend must agree with it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def segsum(a_SQ: torch.Tensor) -> torch.Tensor:
    """Segment sums ``out[..., i, j] = sum_{k=j+1..i} a[..., k]`` for ``i >= j``, ``-inf`` above.

    Computed as a cumulative sum of a masked copy rather than as a difference of two prefix
    sums, so each entry is a plain sum of its own terms: no cancellation, and with
    non-positive ``a`` its exponential is a decay in ``[0, 1]``.
    """
    q = a_SQ.shape[-1]
    a_SQQ = a_SQ[..., :, None].expand(*a_SQ.shape, q)  # [..., k, j] = a[k]
    below = torch.ones(q, q, dtype=torch.bool, device=a_SQ.device).tril(-1)  # k > j
    out_SQQ = torch.cumsum(a_SQQ.masked_fill(~below, 0.0), dim=-2)  # [..., i, j] = sum_{j<k<=i} a[k]
    causal = torch.ones(q, q, dtype=torch.bool, device=a_SQ.device).tril()  # i >= j
    return out_SQQ.masked_fill(~causal, float("-inf"))


def ssd_scan(
    x_BLHP: torch.Tensor,
    dt_BLH: torch.Tensor,
    A_H: torch.Tensor,
    B_BLGN: torch.Tensor,
    C_BLGN: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Causal selective scan ``y_t = sum_{s<=t} (C_t . B_s) exp(A sum_{s<r<=t} dt_r) dt_s x_s``.

    Args:
        x_BLHP: inputs, ``H`` heads of ``P`` channels.
        dt_BLH: step sizes (already positive, e.g. after softplus); no limit is applied.
        A_H: per-head decay rate (negative for a stable scan).
        B_BLGN, C_BLGN: input and output projections, ``G`` groups of state size ``N``;
            head ``h`` uses group ``h // (H // G)``.
        chunk_size: tokens per chunk (any ``L`` works: the sequence is padded at the end).

    Returns:
        ``y_BLHP`` in the dtype of ``x_BLHP``; computed in float32, or float64 for float64
        inputs. There is no skip (``D``) term and no initial state.
    """
    batch, seqlen, nheads, headdim = x_BLHP.shape
    ngroups, d_state = B_BLGN.shape[-2:]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if ngroups < 1 or nheads % ngroups:
        raise ValueError(f"the number of heads ({nheads}) must be a multiple of the number of groups ({ngroups})")
    expected = {
        "dt_BLH": (dt_BLH, (batch, seqlen, nheads)),
        "A_H": (A_H, (nheads,)),
        "B_BLGN": (B_BLGN, (batch, seqlen, ngroups, d_state)),
        "C_BLGN": (C_BLGN, (batch, seqlen, ngroups, d_state)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape} for x of {tuple(x_BLHP.shape)}")

    out_dtype = x_BLHP.dtype
    dtype = functools.reduce(
        torch.promote_types, (t.dtype for t in (x_BLHP, dt_BLH, A_H, B_BLGN, C_BLGN)), torch.float32
    )
    heads_per_group = nheads // ngroups
    q = chunk_size
    nchunks = -(-seqlen // q)
    pad = nchunks * q - seqlen  # zero dt and x at the end: no effect on earlier outputs

    def chunked(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t.to(dtype), (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, nchunks, q, *t.shape[2:])

    # Heads split into (group, head-in-group) so B and C are never copied per head.
    x_BCQGRP = chunked(x_BLHP).unflatten(3, (ngroups, heads_per_group))
    dt_BCQGR = chunked(dt_BLH).unflatten(3, (ngroups, heads_per_group))
    B_BCQGN = chunked(B_BLGN)
    C_BCQGN = chunked(C_BLGN)
    A_GR = A_H.to(dtype).reshape(ngroups, heads_per_group)

    a_BCGRQ = (dt_BCQGR * A_GR).permute(0, 1, 3, 4, 2)  # log-decay of each step
    xdt_BCQGRP = x_BCQGRP * dt_BCQGR[..., None]

    # 1. Inside each chunk: the masked quadratic form (the "attention" side of the duality).
    decay_BCGRQQ = torch.exp(segsum(a_BCGRQ))  # [i, j]: decay from token j to token i
    CB_BCGQQ = torch.einsum("bcign,bcjgn->bcgij", C_BCQGN, B_BCQGN)
    scores_BCGRQQ = CB_BCGQQ[:, :, :, None] * decay_BCGRQQ
    y_diag_BCQGRP = torch.einsum("bcgrij,bcjgrp->bcigrp", scores_BCGRQQ, xdt_BCQGRP)

    # 2. The state each chunk leaves behind, from its own inputs (last row of the decays).
    to_end_BCGRQ = decay_BCGRQQ[..., -1, :]
    states_BCGRPN = torch.einsum(
        "bcjgn,bcjgrp->bcgrpn", B_BCQGN, xdt_BCQGRP * to_end_BCGRQ.permute(0, 1, 4, 2, 3)[..., None]
    )

    # 3. Across chunks: h_in[c] = sum_{c' < c} exp(sum_{c' < k < c} total_k) states[c'].
    # A zero state and a zero decay are prepended so row c of the segment sums is h_in[c].
    total_BGRC = a_BCGRQ.sum(-1).permute(0, 2, 3, 1)
    chunk_decay_BGRCC = torch.exp(segsum(F.pad(total_BGRC, (1, 0))))[..., :-1, :]
    states_BCGRPN = F.pad(states_BCGRPN, (0, 0) * 4 + (1, 0))
    h_in_BCGRPN = torch.einsum("bgrij,bjgrpn->bigrpn", chunk_decay_BGRCC, states_BCGRPN)

    # 4. The carried state's contribution to every output of the chunk.
    from_start_BCGRQ = torch.exp(torch.cumsum(a_BCGRQ, dim=-1))
    y_off_BCQGRP = torch.einsum("bcign,bcgrpn->bcigrp", C_BCQGN, h_in_BCGRPN)
    y_off_BCQGRP = y_off_BCQGRP * from_start_BCGRQ.permute(0, 1, 4, 2, 3)[..., None]

    y_BLHP = (y_diag_BCQGRP + y_off_BCQGRP).reshape(batch, nchunks * q, nheads, headdim)
    return y_BLHP[:, :seqlen].to(out_dtype)
