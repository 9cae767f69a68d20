"""Per-kernel times of the Triton Hydra path at one shape (torch.profiler).

Usage::

    python benchmarks/hydra_profile.py [--dim 3072 --d-state 256 --tokens 16384 --chunks 64 128 256]
    python benchmarks/hydra_profile.py --backward          # the scan's backward kernels alone
    python benchmarks/hydra_profile.py --layer             # a whole HydraMixer, forward + backward
"""

from __future__ import annotations

import argparse
import functools
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from hthlight.kernels.hydra_scan import hydra_scan_fwd


def _config(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}


def profile_kernels(run, label: str, repeats: int = 5) -> None:
    """Print the mean CUDA time per call of each kernel ``run()`` launches (after 3 warm-up calls)."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    totals = defaultdict(float)
    for evt in prof.key_averages():
        if evt.device_type.name == "CUDA" or "kernel" in evt.key:
            totals[evt.key] += evt.self_device_time_total / repeats / 1000
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    parts = "\n  ".join(f"{v:7.3f} ms  {k[:110]}" for k, v in rows if v > 0.005)
    print(f"{label}: total {sum(totals.values()):.3f} ms\n  {parts}", flush=True)


def profile_layer(args) -> None:
    """Kernel times of one HydraMixer (bf16, Triton backend) forward and forward+backward."""
    from hthlight.mixers.hydra import HydraMixer

    for q in args.chunks:
        torch.manual_seed(0)
        layer = HydraMixer(args.dim, d_state=args.d_state, chunk_size=q, backend="triton").cuda().bfloat16()
        x = torch.randn(1, args.tokens, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn_like(x)

        def fwd_bwd(layer=layer, x=x, grad=grad):
            layer.mix_sequence(x).backward(grad)

        runs = [("forward (grad enabled)", functools.partial(layer.mix_sequence, x)), ("forward+backward", fwd_bwd)]
        for label, run in runs:
            profile_kernels(run, f"{label} dim={args.dim} N={args.d_state} L={args.tokens} Q={q}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--d-state", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--backward", action="store_true", help="profile hydra_scan_bwd instead")
    parser.add_argument("--layer", action="store_true", help="profile a whole HydraMixer forward+backward")
    parser.add_argument("--configs", type=_config, nargs="*", help="e.g. out_bm=128,out_warps=8")
    args = parser.parse_args()
    if args.layer:
        return profile_layer(args)
    h, p, n = 2 * args.dim // 64, 64, args.d_state
    conv = torch.randn(1, args.tokens, h * p + 4 * n, device="cuda", dtype=torch.bfloat16)
    x = conv[..., : h * p].unflatten(-1, (h, p))
    BC = conv[..., h * p :].unflatten(-1, (4, 1, n))
    dt = torch.randn(1, args.tokens, 2 * h, device="cuda", dtype=torch.bfloat16) - 3
    bias = torch.zeros(h, device="cuda")
    A = -torch.ones(h, device="cuda")
    diag = torch.randn(1, args.tokens, h, device="cuda", dtype=torch.bfloat16)
    from hthlight.kernels import hydra_scan

    configs = [dict(c) for c in args.configs] if args.configs else [dict(hydra_scan.CONFIG)]
    from hthlight.kernels.hydra_scan_bwd import hydra_scan_bwd

    dy = torch.randn(x.shape, device="cuda", dtype=torch.bfloat16)
    for config, q in [(c, q) for c in configs for q in args.chunks]:
        hydra_scan.CONFIG.update(config)
        if args.backward:
            run = lambda q=q: hydra_scan_bwd(dy, x, dt, bias, A, BC, diag, q)
        else:
            run = lambda q=q: hydra_scan_fwd(x, dt, bias, A, BC, diag, chunk_size=q)
        profile_kernels(run, f"{config} Q={q}", repeats=10)


if __name__ == "__main__":
    main()
