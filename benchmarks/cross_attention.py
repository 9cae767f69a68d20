"""Cross-attention to a few text tokens: SDPA's backends against an explicit softmax attention.

Usage: python benchmarks/cross_attention.py [--queries 16384 --keys 120 --heads 32 --head-dim 96]

Times one call, forward and forward+backward (median of ``triton.testing.do_bench``), without
and with a key mask (the last sixth of the keys masked, as padded text is), for SDPA's default
choice, each backend forced (flash, memory-efficient, cuDNN, math), and ``q k^T -> softmax -> v``
written out, eager and under ``torch.compile``. The default shape is the HTH-5B cross-attention
at 128^2 tokens with 120 text tokens; bf16, batch 1, CUDA.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel


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


def time_call(attend, q, k, v, mask, dy) -> tuple[float, float]:
    def forward():
        with torch.no_grad():
            attend(q, k, v, attn_mask=mask)

    def forward_backward():
        attend(q, k, v, attn_mask=mask).backward(dy)

    return triton.testing.do_bench(forward), triton.testing.do_bench(forward_backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=16384)
    parser.add_argument("--keys", type=int, default=120)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=96)
    args = parser.parse_args()
    shape_q = (1, args.heads, args.queries, args.head_dim)
    shape_kv = (1, args.heads, args.keys, args.head_dim)
    q, dy = (torch.randn(shape_q, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(shape_kv, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    mask = torch.ones(1, 1, 1, args.keys, device="cuda", dtype=torch.bool)
    mask[..., args.keys - args.keys // 6 :] = False
    candidates = {
        "sdpa default": F.scaled_dot_product_attention,
        "flash": sdpa_with(SDPBackend.FLASH_ATTENTION),
        "efficient": sdpa_with(SDPBackend.EFFICIENT_ATTENTION),
        "cudnn": sdpa_with(SDPBackend.CUDNN_ATTENTION),
        "math": sdpa_with(SDPBackend.MATH),
        "explicit": explicit_attention,
        "explicit, compiled": torch.compile(explicit_attention),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| attention | key mask | fwd ms | fwd+bwd ms |\n|---|---|---:|---:|")
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
