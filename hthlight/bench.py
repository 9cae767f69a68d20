"""End-to-end speed of denoisers: sampling wall time, training throughput and model FLOP utilisation.

``hthlight bench sample`` times N Euler steps ``x = x + dt * v(x, t)`` (batch 1, no CFG) of an
HTH preset and of its equal-size Transformer twin (every mixer replaced by attention, same width,
depth, patch, MLP and conditioning), as in HTH (Hong et al. 2025) fig. 5.
``hthlight bench train`` times one optimizer step (forward + backward + AdamW) and reports
samples/s, tokens/s and MFU = 3 * forward model FLOPs per sample * samples/s / peak FLOP/s
(the counting rule of PaLM, Chowdhery et al. 2022, app. B); with ``--profile`` it also splits one
step's time into categories (matrix products, attention, Hydra kernels, optimizer, ...). See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from hthlight.diffusion.cuda_graphs import CUDAGraphed
from hthlight.errors import ConfigError
from hthlight.models import presets
from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.module import OptimizerConfig, build_adamw
from hthlight.ssd.bidirectional import chunk_size_for
from hthlight.strategies import compile_blocks

Grid = tuple[int, int, int]
CUDA_SAMPLE_GRIDS = ("32x32", "64x64", "128x128", "192x192", "256x256", "384x384")
CPU_SAMPLE_GRIDS = ("8x8", "16x16")
#: H100 SXM datasheet dense bf16 tensor-core peak, TFLOP/s (ANCHORS.md measured 783 for a plain matmul)
H100_BF16_DENSE_TFLOPS = 989.4


# ---------------------------------------------------------------- configs


def parse_grid(text: str) -> Grid:
    """``"64x64"`` -> (1, 64, 64); ``"16x32x32"`` -> (16, 32, 32) (frames x height x width)."""
    try:
        sizes = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        sizes = ()
    if len(sizes) not in (2, 3) or min(sizes) < 1:
        raise ConfigError(f"grid {text!r} must be HxW or TxHxW with positive integers, e.g. 64x64 or 16x32x32")
    return (1, *sizes) if len(sizes) == 2 else sizes  # type: ignore[return-value]


def token_grid(grid: Grid, config: DenoiserConfig, unit: str) -> Grid:
    """The token grid of ``grid`` given in ``unit`` ``tokens`` or ``latent`` (latent pixels/frames)."""
    if unit == "tokens":
        return grid
    t, h, w = grid
    p, pt = config.patch_size, config.temporal_patch_size
    if h % p or w % p or (t > 1 and t % pt):
        raise ConfigError(
            f"latent grid {t}x{h}x{w} is not divisible by the patch ({pt}x{p}x{p}); give sizes that are multiples of it"
        )
    return (max(1, t // pt), h // p, w // p)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["dim=64", "groups=1"]`` -> ``{"dim": 64, "groups": 1}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must be KEY=VALUE, e.g. dim=64")
        out[key] = yaml.safe_load(value)
    return out


def _attention_spec(config: DenoiserConfig) -> dict[str, Any]:
    """The first attention mixer spec in the layout, else ``dim // 64`` heads with QK-norm."""
    from hthlight.models.layout import expand_layout

    for spec in expand_layout(config.layout):
        if (spec if isinstance(spec, str) else spec.get("name")) == "attention":
            return {"name": "attention"} if isinstance(spec, str) else dict(spec)
    return {"name": "attention", "num_heads": max(1, config.dim // 64), "qk_norm": True}


def _replace_mixers(layout: Sequence[Any], attention: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for entry in layout:
        if isinstance(entry, str):
            out.append(dict(attention))
        elif "layout" in entry:
            out.append({**entry, "layout": _replace_mixers(entry["layout"], attention)})
        else:
            out.append({k: v for k, v in entry.items() if k != "scans"} | {"mixer": dict(attention)})
    return out


def transformer_twin(config: DenoiserConfig) -> DenoiserConfig:
    """``config`` with every token mixer replaced by its attention mixer: same width, depth, MLP, conditioning."""
    return dataclasses.replace(config, layout=_replace_mixers(config.layout, _attention_spec(config)))


# ---------------------------------------------------------------- FLOPs


def _linear_flops(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def mixer_flops(mixer: torch.nn.Module, tokens: int) -> int:
    """Forward matmul FLOPs of one token mixer over ``tokens`` tokens (one sample).

    attention: ``8 L D^2`` (qkv + output projection) ``+ 4 L^2 D`` (QK^T and AV).
    Hydra (Hwang et al. 2024) with inner width E, H heads of P channels, G groups, state N, chunk
    Q = min(chunk_size, L) (unset: the Triton default): in_proj ``2 L D (2E + 4GN + 2H)``, fc_D
    ``2 L E H``, out_proj ``2 L E D``, and per scan direction (x2) the chunked SSD algorithm (Dao & Gu 2024, sec. 6):
    ``C B^T`` within chunks ``2 L Q G N``, its masked product with x ``2 L Q H P``, chunk states
    ``B^T x`` ``2 L N H P`` and state outputs ``C h`` ``2 L N H P``.
    """
    from hthlight.mixers.attention import AttentionMixer
    from hthlight.mixers.hydra import HydraMixer

    length = tokens
    if isinstance(mixer, AttentionMixer):
        d = mixer.dim
        return _linear_flops(length, d, 3 * d) + _linear_flops(length, d, d) + 4 * length * length * d
    if isinstance(mixer, HydraMixer):
        e, h, p, g, n = mixer.d_inner, mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state
        q = min(chunk_size_for("triton", mixer.chunk_size), length)  # unset: the chunk that runs on a GPU
        projections = (
            _linear_flops(length, mixer.dim, 2 * e + 4 * g * n + 2 * h)
            + _linear_flops(length, e, h)
            + _linear_flops(length, e, mixer.dim)
        )
        scan = 2 * length * q * g * n + 2 * length * q * h * p + 4 * length * n * h * p
        return projections + 2 * scan
    raise ConfigError(f"no FLOP formula for mixer {type(mixer).__name__}; bench knows attention and hydra")


def model_flops_per_sample(config: DenoiserConfig, grid: Grid, context_tokens: int = 0) -> int:
    """Forward matmul FLOPs of the denoiser for one sample on token grid ``grid`` (t, h, w).

    Sum over blocks of the mixer (:func:`mixer_flops`), the MLP ``4 L D F`` (F hidden) and the
    cross-attention to S context tokens of width C ``4 L D^2 + 4 S C D + 4 L S D``; plus the patch
    embedding ``2 L (c pt p^2) D`` and final layer ``2 L D (c' pt p^2)``. Per-sample vector work
    (timestep MLP, adaLN modulation) and elementwise ops are not counted. Training is 3x this.
    """
    with torch.device("meta"):
        model = Denoiser(config)
    length = math.prod(grid)
    c = config
    patch_values = c.temporal_patch_size * c.patch_size**2
    total = _linear_flops(length, c.in_channels * patch_values, c.dim)
    total += _linear_flops(length, c.dim, model.out_channels * patch_values)
    for block in model.blocks:
        total += mixer_flops(block.mixer, length)
        if block.mlp is not None:
            total += 2 * _linear_flops(length, c.dim, block.mlp.fc1.out_features)
        cross = block.cross_attention
        if cross is not None and context_tokens:
            total += 2 * _linear_flops(length, c.dim, c.dim)  # q and output projections
            total += _linear_flops(context_tokens, cross.kv.in_features, 2 * c.dim)
            total += 4 * length * context_tokens * c.dim
    return total


# ---------------------------------------------------------------- inputs and timing


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def make_batch(model: Denoiser, batch_size: int, device: torch.device, context_tokens: int) -> dict[str, Any] | None:
    """Random conditioning for the model's conditioner (text features or class labels), or None."""
    cond = model.conditioner
    if cond is None:
        return None
    batch: dict[str, Any] = {}
    if "context" in cond.batch_keys:
        batch["context"] = torch.randn(batch_size, context_tokens, cond.context_dim, device=device)
    if "label" in cond.batch_keys:
        batch["label"] = torch.zeros(batch_size, dtype=torch.long, device=device)
    return batch


def latent_shape(config: DenoiserConfig, grid: Grid, batch_size: int) -> tuple[int, ...]:
    t, h, w = grid
    p = config.patch_size
    spatial = (h * p, w * p)
    if t == 1:
        return (batch_size, config.in_channels, *spatial)
    return (batch_size, config.in_channels, t * config.temporal_patch_size, *spatial)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls: CUDA events on CUDA, perf_counter on CPU."""
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - begin)
    return best


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def euler_sampling_seconds(
    model: Denoiser,
    grid: Grid,
    steps: int,
    device: torch.device,
    dtype: torch.dtype,
    context_tokens: int = 120,
    warmup: int = 1,
    repeats: int = 1,
    timed_steps: int | None = None,
    cuda_graph: bool = False,
) -> float:
    """Wall time of ``steps`` Euler steps ``x <- x + dt * model(x, t)`` at batch 1, no CFG.

    With ``timed_steps`` only that many steps run and the time is scaled to ``steps``: at batch 1
    without guidance every step does the same work, so this saves minutes at large grids.
    With ``cuda_graph`` the denoiser call is replayed from a CUDA graph (:class:`CUDAGraphed`).
    """
    timed_steps = min(steps, timed_steps or steps)
    batch = make_batch(model, 1, device, context_tokens)
    if batch and "context" in batch:
        batch["context"] = batch["context"].to(dtype)
    x0 = torch.randn(latent_shape(model.config, grid, 1), device=device, dtype=dtype)
    times = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, batch)

    step_fn = CUDAGraphed(denoise) if cuda_graph else denoise

    def run(n: int) -> torch.Tensor:
        x = x0
        for i in range(n):
            x = x + (times[i + 1] - times[i]) * step_fn(x, times[i])
        return x

    with torch.inference_mode():
        for _ in range(warmup):
            run(min(steps, 2))
        return timed(lambda: run(timed_steps), device, repeats) * steps / timed_steps


def train_step_fn(
    model: Denoiser, grid: Grid, batch_size: int, device: torch.device, autocast: bool, context_tokens: int = 120
) -> Callable[[], None]:
    """One AdamW step (forward + MSE loss + backward + update) on random data, as a closure."""
    optimizer = build_adamw([{"params": list(model.parameters())}], OptimizerConfig())  # as `hthlight fit` builds it
    batch = make_batch(model, batch_size, device, context_tokens)
    x = torch.randn(latent_shape(model.config, grid, batch_size), device=device)
    target = torch.randn_like(x)
    t_B = torch.rand(batch_size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.mse_loss(model(x, t_B, batch).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_step_seconds(step: Callable[[], None], steps: int, device: torch.device, warmup: int = 1) -> float:
    """Mean seconds of one training ``step`` (:func:`train_step_fn`) over ``steps`` steps, after ``warmup``."""

    def run() -> None:
        for _ in range(steps):
            step()

    for _ in range(warmup):
        step()
    return timed(run, device, 1) / steps


#: Kernel (CUDA) or operator (CPU) names by category, first match wins: where a step's time goes.
TIME_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("hydra kernels", r"^_(dt|cb|states|output|adjoint_states|dx|dw|dbc|decay_grad)_kernel|^_conv_|^_gated_rmsnorm"),
    ("attention", r"flash|fmha|sdpa|attention|cudnn|^_short_attn_"),
    ("matrix products", r"gemm|cutlass|nvjet|xmma|cublas|^aten::(mm|addmm|bmm|baddbmm)$"),
    ("optimizer", r"(?i)adam|multi_tensor|optimizer|_foreach_"),
    ("compiled elementwise", r"^triton_"),
)


def step_time_by_category(step: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Milliseconds of one ``step`` per :data:`TIME_CATEGORIES` category (plus ``other``), from torch.profiler.

    On CUDA: device time of each kernel. On CPU: self time of each operator (``aten::``), which
    also holds the time Python spends between them; AdamW on CPU tensors runs plain elementwise
    operators there, which count as ``other``.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    totals = dict.fromkeys([name for name, _ in TIME_CATEGORIES] + ["other"], 0.0)
    for event in prof.key_averages():
        if getattr(event, "is_user_annotation", False):  # ranges such as Optimizer.step#AdamW.step: not work
            continue
        if cuda and event.device_type.name != "CUDA":
            continue
        if not cuda and (event.device_type.name != "CPU" or not event.key.startswith("aten::")):
            continue
        ms = (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e3
        name = next((n for n, pattern in TIME_CATEGORIES if re.search(pattern, event.key)), "other")
        totals[name] += ms
    return totals


# ---------------------------------------------------------------- reports


def environment(device: torch.device, argv: Sequence[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "hthlight bench " + shlex.join(argv),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str, rows: Sequence[Mapping[str, Any]], env: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({**env, "rows": list(rows)}, f, indent=2)


def plot_sampling(path: str, rows: Sequence[Mapping[str, Any]], steps: int) -> bool:
    """Time vs tokens for each model (log-log); False with a message when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed; skipped the plot (the table and JSON are complete)")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [(r["tokens"], r["seconds"]) for r in rows if r["model"] == model]
        ax.plot(*zip(*pts), marker="o", label=model)
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel=f"seconds per {steps} steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def checked_config(preset: str, overrides: Mapping[str, Any]) -> DenoiserConfig:
    """Preset ``preset`` with ``overrides``, built once on the meta device so a bad size is a :class:`ConfigError`."""
    config = presets.config(preset, **overrides)
    try:
        with torch.device("meta"):
            Denoiser(config)
            Denoiser(transformer_twin(config))
    except ValueError as exc:
        raise ConfigError(f"preset {preset!r} with overrides {dict(overrides)}: {exc}") from exc
    return config


def _build(
    config: DenoiserConfig, device: torch.device, dtype: torch.dtype | None = None, compile: bool = False
) -> Denoiser:
    model = Denoiser(config).to(device)
    model = model if dtype is None else model.to(dtype)
    return compile_blocks(model) if compile else model


def _grids(args: argparse.Namespace, config: DenoiserConfig, device: torch.device) -> list[Grid]:
    texts = args.grids or list(CUDA_SAMPLE_GRIDS if device.type == "cuda" else CPU_SAMPLE_GRIDS)
    return [token_grid(parse_grid(text), config, args.grid_unit) for text in texts]


def _grid_name(grid: Grid) -> str:
    return "x".join(str(s) for s in (grid[1:] if grid[0] == 1 else grid))


def run_sample(args: argparse.Namespace, argv: Sequence[str]) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    hth_config = checked_config(args.preset, parse_overrides(args.override))
    models = [(args.preset, hth_config), ("transformer", transformer_twin(hth_config))]
    grids = _grids(args, hth_config, device)
    rows: list[dict[str, Any]] = []
    for name, config in models:
        torch.manual_seed(0)
        model = _build(config, device, dtype, args.compile).eval()
        params = sum(p.numel() for p in model.parameters())
        for grid in grids:
            _reset_peak(device)
            seconds = euler_sampling_seconds(
                model,
                grid,
                args.steps,
                device,
                dtype,
                args.context_tokens,
                args.warmup,
                args.repeats,
                args.timed_steps,
                args.cuda_graph,
            )
            rows.append(
                {
                    "model": name,
                    "grid": _grid_name(grid),
                    "tokens": math.prod(grid),
                    "params": params,
                    "seconds": seconds,
                    "peak_mib": _peak_mib(device),
                }
            )
        del model
    baseline = {r["grid"]: r["seconds"] for r in rows if r["model"] == "transformer"}
    for row in rows:
        if row["model"] != "transformer":
            row["speedup"] = baseline[row["grid"]] / row["seconds"]
    scaled = f" (timed over {args.timed_steps}, scaled)" if args.timed_steps else ""
    scaled += ", CUDA graphs" if args.cuda_graph else ""
    device_name = environment(device, argv)["device"]
    print(f"sampling: {args.steps} Euler steps{scaled}, batch 1, no CFG, {dtype}, {device_name}")
    print(markdown_table(rows, ["model", "grid", "tokens", "params", "seconds", "peak_mib", "speedup"]))
    if args.plot:
        plot_sampling(args.plot, rows, args.steps)
    return rows


def run_train(args: argparse.Namespace, argv: Sequence[str]) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    autocast = device.type == "cuda" and not args.no_autocast
    overrides = parse_overrides(args.override)
    configs = {preset: checked_config(preset, overrides) for preset in args.presets}  # fail before timing
    for config in configs.values():
        model_flops_per_sample(config, (1, 1, 1))  # a mixer without a FLOP formula fails now
    rows: list[dict[str, Any]] = []
    for preset, config in configs.items():
        torch.manual_seed(0)
        model = _build(config, device, compile=args.compile).train()
        params = sum(p.numel() for p in model.parameters())
        context = args.context_tokens if model.conditioner is not None else 0
        for grid in _grids(args, config, device):
            _reset_peak(device)
            step = train_step_fn(model, grid, args.batch_size, device, autocast, args.context_tokens)
            seconds = train_step_seconds(step, args.steps, device, args.warmup)
            peak = _peak_mib(device)
            flops = 3 * model_flops_per_sample(config, grid, context)
            samples_per_s = args.batch_size / seconds
            rows.append(
                {
                    "model": preset,
                    "grid": _grid_name(grid),
                    "tokens": math.prod(grid),
                    "params": params,
                    "batch": args.batch_size,
                    "step_s": seconds,
                    "samples_per_s": samples_per_s,
                    "tokens_per_s": samples_per_s * math.prod(grid),
                    "tflop_per_sample": flops / 1e12,
                    "mfu": flops * samples_per_s / (args.peak_tflops * 1e12),
                    "peak_mib": peak,
                }
            )
            if args.profile:
                rows[-1]["time_ms_by_category"] = step_time_by_category(step, device)
        del model
    precision = "bf16 autocast" if autocast else "fp32"
    print(
        f"training step (forward+backward+AdamW), {precision}, no activation checkpointing, "
        f"{environment(device, argv)['device']}; MFU = 3 x forward FLOPs x samples/s / {args.peak_tflops} TFLOP/s"
    )
    columns = ["model", "grid", "tokens", "params", "batch", "step_s", "samples_per_s", "tokens_per_s"]
    print(markdown_table(rows, [*columns, "tflop_per_sample", "mfu", "peak_mib"]))
    if args.profile:
        kind = "kernel time (CUDA)" if device.type == "cuda" else "operator self time (CPU)"
        print(f"\none step profiled, {kind} in ms by category (hthlight.bench.TIME_CATEGORIES):")
        categories = list(rows[0]["time_ms_by_category"]) if rows else []
        table = []
        for r in rows:
            times = r["time_ms_by_category"]
            table.append({"model": r["model"], "grid": r["grid"], **times, "total": sum(times.values())})
        print(markdown_table(table, ["model", "grid", *categories, "total"]))
    return rows


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grids", nargs="+", metavar="GRID", help="HxW or TxHxW grids (default: by device)")
    parser.add_argument(
        "--grid-unit", choices=("tokens", "latent"), default="tokens", help="grids count tokens or latent pixels"
    )
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="preset overrides (dim=64)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--context-tokens", type=int, default=120, help="text tokens for cross-attention")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile each denoiser block (warm-up compiles)")
    parser.add_argument("--out", metavar="FILE.json", help="write the rows, device, versions, date and command")


class _Parser(argparse.ArgumentParser):
    """Argument errors become one-line :class:`ConfigError` s (exit status 2 from the CLI)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hthlight bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sample = sub.add_parser("sample", help="sampling wall time: HTH preset vs its equal-size Transformer")
    sample.add_argument("--preset", default="hth-xl")
    sample.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    sample.add_argument("--repeats", type=int, default=1, help="timed runs; the fastest is reported")
    sample.add_argument("--plot", metavar="FILE.png", help="time vs tokens (needs matplotlib)")
    sample.add_argument(
        "--timed-steps", type=int, default=None, help="time this many steps and scale to --steps (large grids)"
    )
    sample.add_argument("--cuda-graph", action="store_true", help="replay each denoiser call from a CUDA graph")
    _common(sample)
    train = sub.add_parser("train", help="training throughput and MFU")
    train.add_argument("--presets", nargs="+", default=["hth-xl", "dit-xl/2"])
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="peak for MFU")
    train.add_argument("--no-autocast", action="store_true", help="fp32 on CUDA too")
    train.add_argument(
        "--profile", action="store_true", help="also profile one step: time by category (matmul, attention, ...)"
    )
    _common(train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``hthlight bench {sample,train} [options]``; prints a markdown table, returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.steps is None:
        args.steps = 50 if args.what == "sample" else 3
    extra = ("batch_size",) if args.what == "train" else ("timed_steps",) if args.timed_steps is not None else ()
    for name in ("steps", "warmup", "context_tokens", *extra):
        if getattr(args, name) < (1 if name != "warmup" else 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    rows = run_sample(args, argv) if args.what == "sample" else run_train(args, argv)
    if args.out:
        write_json(args.out, rows, environment(resolve_device(args.device), argv))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
