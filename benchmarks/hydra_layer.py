"""Time one Hydra layer against attention (ANCHORS.md shapes), forward, forward+backward, memory.

Usage (on a CUDA machine)::

    python benchmarks/hydra_layer.py [--shapes 5b xl] [--tokens 4096 16384 ...] [--cuda-graph]
        [--compile reduce-overhead] [--out results.json]

Rows: ``triton`` (hthlight's fused bidirectional kernels), ``torch`` (hthlight's reference
path; only up to --torch-max-tokens), ``mamba_ssm`` (the public arrangement: doubled batch over
the Mamba-2 kernels, when ``mamba_ssm`` is importable; ``benchmarks/mamba_ssm_triton.py`` makes
its Triton kernels importable where its CUDA extensions cannot be built), ``attention`` (qkv projection, SDPA,
output projection, as in ANCHORS.md) and ``scan`` (the Triton mixing kernels alone, forward).
``--compile MODE`` adds ``triton+compile`` and ``attention+compile`` rows under ``torch.compile``.
``--cuda-graph`` adds ``triton+graph`` and ``attention+graph`` rows: the same layers replayed from
CUDA graphs (forward: :class:`hthlight.diffusion.cuda_graphs.CUDAGraphed`, as sampling uses it;
forward+backward: ``torch.cuda.make_graphed_callables``), i.e. the device time without the host's
launch overhead, which dominates at batch 1 and few tokens.
bf16 weights and activations, batch 1, median of ``triton.testing.do_bench`` over about a second. Prints a markdown
table; ``--out`` also writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import platform

import torch
import torch.nn.functional as F
from torch import nn

from hthlight.mixers.hydra import HydraMixer

SHAPES = {
    # name: (d_model, d_state, attention heads)
    "5b": (3072, 256, 32),
    "xl": (1152, 64, 16),
}
TOKENS = [4096, 16384, 36864, 65536, 147456]


class PlainAttention(nn.Module):
    """ANCHORS.md's attention layer: qkv projection, SDPA, output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x_BLD).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


def bench(fn, rep_ms: int = 1000) -> float:
    """Median time of ``fn`` over about ``rep_ms`` of repetitions (at least ~50 of a 20 ms layer: with
    200 ms the median of ~10 moved by up to 0.8 ms between runs at HTH-5B width, 16k tokens)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median"))


def peak_memory_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(layer: nn.Module, x: torch.Tensor, backward: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    with torch.no_grad():
        out["fwd_ms"] = bench(lambda: layer(x))
    if backward:
        xg = x.detach().requires_grad_(True)
        dy = torch.randn_like(x)

        def step():
            layer(xg).backward(dy)
            xg.grad = None
            for p in layer.parameters():
                p.grad = None

        out["fwd_bwd_ms"] = bench(step)
        out["fwd_bwd_peak_mib"] = peak_memory_mib(step)
    return out


def measure_graphed(layer: nn.Module, x: torch.Tensor, backward: bool) -> dict[str, float]:
    """:func:`measure` with the forward, and the forward+backward, replayed from CUDA graphs."""
    from hthlight.diffusion.cuda_graphs import CUDAGraphed

    out: dict[str, float] = {}
    forward = CUDAGraphed(layer)
    with torch.no_grad():
        forward(x)
        if forward.captures != 1:
            raise RuntimeError("the forward could not be captured in a CUDA graph")
        out["fwd_ms"] = bench(lambda: forward(x))
    if backward:
        xg = x.detach().requires_grad_(True)
        dy = torch.randn_like(x)
        graphed = torch.cuda.make_graphed_callables(layer, (xg,))

        def step():
            graphed(xg).backward(dy)

        out["fwd_bwd_ms"] = bench(step)  # no peak memory: a graph's buffers are allocated once, at capture
    return out


def hydra_layer(dim: int, d_state: int, backend: str, chunk_size: int) -> nn.Module:
    layer = HydraMixer(
        dim, d_state=d_state, headdim=64, expand=2, ngroups=1, d_conv=7, chunk_size=chunk_size, backend=backend
    )
    return layer.cuda().to(torch.bfloat16)


def scan_only(layer: HydraMixer, x: torch.Tensor) -> float:
    from hthlight.kernels.hydra_scan import hydra_scan_fwd
    from hthlight.ssd.bidirectional import triton_chunk_size

    h, gn = layer.nheads, layer.ngroups * layer.d_state
    with torch.no_grad():
        _z, xBC, dt = torch.split(layer.in_proj(x), [layer.d_inner, layer.d_inner + 4 * gn, 2 * h], dim=-1)
        xs, BC = xBC.split([layer.d_inner, 4 * gn], dim=-1)
        args = (
            xs.unflatten(-1, (h, layer.headdim)),
            dt,
            layer.dt_bias,
            -torch.exp(layer.A_log.float()),
            BC.unflatten(-1, (4, layer.ngroups, layer.d_state)),
            layer.fc_D(xs) + layer.D,
        )
        q = triton_chunk_size(layer.chunk_size)
        return bench(lambda: hydra_scan_fwd(*args, chunk_size=q))


def measure_compiled(layer: nn.Module, x: torch.Tensor, backward: bool, mode: str) -> dict[str, float]:
    """:func:`measure` of ``torch.compile(layer, mode=mode, fullgraph=True)`` (the Triton Hydra core is
    one opaque operator in the graph; ``reduce-overhead`` replays CUDA graphs)."""
    torch._dynamo.reset()
    compiled = torch.compile(layer, mode=mode, fullgraph=True, dynamic=False)
    with torch.no_grad():
        compiled(x)  # compiles outside the timing (do_bench's warm-up would too, but this keeps it explicit)
    out = measure(_Call(compiled, layer), x, backward)
    if mode == "reduce-overhead":  # buffers come from the graphs' private pools: no meaningful peak
        out.pop("fwd_bwd_peak_mib", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--torch-max-tokens", type=int, default=16384)
    parser.add_argument("--backward-max-tokens", type=int, default=65536)
    parser.add_argument("--cuda-graph", action="store_true", help="also time triton and attention from CUDA graphs")
    parser.add_argument(
        "--compile",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
        help="also time triton and attention under torch.compile(mode=...) (fullgraph)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    have_mamba = importlib.util.find_spec("mamba_ssm") is not None
    rows = []
    for shape in args.shapes:
        dim, d_state, heads = SHAPES[shape]
        layers = {"triton": hydra_layer(dim, d_state, "triton", args.chunk_size)}
        if have_mamba:
            layers["mamba_ssm"] = hydra_layer(dim, d_state, "mamba_ssm", 256)
        layers["torch"] = hydra_layer(dim, d_state, "torch", 256)
        layers["attention"] = PlainAttention(dim, heads).cuda().to(torch.bfloat16)
        for tokens in args.tokens:
            x = torch.randn(1, tokens, dim, device="cuda", dtype=torch.bfloat16)
            for name, layer in layers.items():
                if name == "torch" and tokens > args.torch_max_tokens:
                    continue
                row = {"shape": shape, "tokens": tokens, "layer": name}
                try:
                    run = layer.mix_sequence if isinstance(layer, HydraMixer) else layer
                    row.update(measure(_Call(run, layer), x, backward=tokens <= args.backward_max_tokens))
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
                variants = {"graph": measure_graphed} if args.cuda_graph else {}
                if args.compile:
                    variants["compile"] = functools.partial(measure_compiled, mode=args.compile)
                for variant, timer in variants.items():
                    if name not in ("triton", "attention"):
                        continue
                    row = {"shape": shape, "tokens": tokens, "layer": f"{name}+{variant}"}
                    try:
                        run = layer.mix_sequence if isinstance(layer, HydraMixer) else layer
                        row.update(timer(_Call(run, layer), x, backward=tokens <= args.backward_max_tokens))
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                        row["error"] = str(exc).splitlines()[0][:80]
                    torch.cuda.empty_cache()
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            rows.append({"shape": shape, "tokens": tokens, "layer": "scan", "fwd_ms": scan_only(layers["triton"], x)})
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": importlib.import_module("triton").__version__,
        "python": platform.python_version(),
        "mamba_ssm": have_mamba,
        "chunk_size": args.chunk_size,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))
    print(table(rows))


class _Call(nn.Module):
    """Wrap a callable so measure() sees parameters and a forward."""

    def __init__(self, fn, owner: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.owner = owner

    def forward(self, x):
        return self.fn(x)


def table(rows: list[dict]) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| shape | tokens | layer | fwd ms | fwd+bwd ms | fwd+bwd peak MiB |", "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['tokens']} | {r['layer']} | {fmt(r.get('fwd_ms'))} | "
            f"{fmt(r.get('fwd_bwd_ms', r.get('error')))} | {fmt(r.get('fwd_bwd_peak_mib'))} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
