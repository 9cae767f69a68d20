"""Cross-attention to a few text tokens: hthlight's Triton kernels, SDPA's backends, explicit softmax.

Usage: python benchmarks/cross_attention.py [--queries 16384 --keys 120 --heads 32 --head-dim 96]
       [--configs fwd_bm=128 bwd_bm=32,bwd_warps=4 ...]

Times one call, forward and forward+backward (median of ``triton.testing.do_bench``), without
and with a key mask (the last sixth of the keys masked, as padded text is), for
:mod:`hthlight.kernels.short_attention` (what ``CrossAttention`` runs on CUDA by default), SDPA's
default choice, each SDPA backend forced (flash, memory-efficient, cuDNN, math), and
``q k^T -> softmax -> v`` written out, eager and under ``torch.compile``. Inputs are laid out as
the layer makes them, ``(B, L, H, D)`` (SDPA gets transposed views). ``--configs`` times the Triton
kernels again under each set of launch settings (``short_attention.CONFIG`` keys). The default
shape is the HTH-5B cross-attention at 128^2 tokens with 120 text tokens; bf16, batch 1, CUDA.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from hthlight.kernels import short_attention


def explicit_attention(q, k, v, attn_mask=None):
    """Softmax attention written out (float32 softmax), the reference the SDPA backends compute."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def sdpa_with(backend):
    def attend(q, k, v, attn_mask=None):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    return attend


def head_major(attend):
    """``attend`` on (B, H, L, D) called with the layer's (B, L, H, D) tensors and a (B, S) mask."""

    def call(q, k, v, mask_BS=None):
        mask = None if mask_BS is None else mask_BS[:, None, None, :]
        return attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask).transpose(1, 2)

    return call


def time_call(attend, q, k, v, mask, dy) -> tuple[float, float]:
    def forward():
        with torch.no_grad():
            attend(q, k, v, mask)

    def forward_backward():
        attend(q, k, v, mask).backward(dy)

    return triton.testing.do_bench(forward), triton.testing.do_bench(forward_backward)


def parse_config(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (item.split("=") for item in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=16384)
    parser.add_argument("--keys", type=int, default=120)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=96)
    parser.add_argument("--configs", nargs="*", default=[], type=parse_config, help="Triton launch settings")
    args = parser.parse_args()
    shape_q = (1, args.queries, args.heads, args.head_dim)
    q, dy = (torch.randn(shape_q, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    kv = torch.randn(1, args.keys, 2 * args.heads * args.head_dim, device="cuda", dtype=torch.bfloat16)
    k, v = kv.view(1, args.keys, 2, args.heads, args.head_dim).unbind(2)  # halves of one projection
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    mask = torch.ones(1, args.keys, device="cuda", dtype=torch.bool)
    mask[:, args.keys - args.keys // 6 :] = False
    candidates = {
        "triton (hthlight)": short_attention.short_attention,
        "sdpa default": head_major(F.scaled_dot_product_attention),
        "flash": head_major(sdpa_with(SDPBackend.FLASH_ATTENTION)),
        "efficient": head_major(sdpa_with(SDPBackend.EFFICIENT_ATTENTION)),
        "cudnn": head_major(sdpa_with(SDPBackend.CUDNN_ATTENTION)),
        "math": head_major(sdpa_with(SDPBackend.MATH)),
        "explicit": head_major(explicit_attention),
        "explicit, compiled": head_major(torch.compile(explicit_attention)),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| attention | key mask | fwd ms | fwd+bwd ms |\n|---|---|---:|---:|")
    default = dict(short_attention.CONFIG)
    for config in args.configs:
        short_attention.CONFIG.update(config)
        for masked in (False, True):
            fwd, fwd_bwd = time_call(short_attention.short_attention, q, k, v, mask if masked else None, dy)
            print(f"| triton {config} | {masked} | {fwd:.3f} | {fwd_bwd:.3f} |", flush=True)
        short_attention.CONFIG.update(default)
    for masked in (False, True):
        for name, attend in candidates.items():
            try:
                fwd, fwd_bwd = time_call(attend, q, k, v, mask if masked else None, dy)
            except RuntimeError as exc:  # a backend that cannot take this call (flash with a mask)
                print(f"| {name} | {masked} | {str(exc).splitlines()[0][:40]} | |")
                continue
            print(f"| {name} | {masked} | {fwd:.3f} | {fwd_bwd:.3f} |", flush=True)


if __name__ == "__main__":
    main()
