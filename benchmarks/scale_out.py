"""Scale-out benchmark: 1 GPU vs 2 GPUs with DDP and FSDP at an HTH preset; largest HTH each fits.

Prints a markdown table (and writes JSON with ``--out``):

1. **Throughput and memory** (through Lightning and ``DiffusionModule``, bf16-mixed, AdamW, EMA):
   ``1gpu`` trains global batch 2B as 2 accumulated micro-batches of B; ``ddp`` and ``fsdp``
   (``hthlight.strategies``) train B per GPU on 2 GPUs. Synthetic latents (4 x 32 x 32, i.e.
   256 px through an 8x VAE, 256 tokens) and T5-width text features. The resumable sampler and
   ExactResume give every run the same samples and noise per step, so the 2-GPU losses should
   follow the 1-GPU losses (reported: largest difference over the timed steps).
2. **Capacity** (plain PyTorch, same wrap/checkpointing units, meta-device init so large models
   build in seconds): for each strategy on 2 GPUs, HTH widths in increasing size are trained
   for 2 steps at batch B per GPU with activation checkpointing and an fp32 EMA; the table shows
   the largest that fits.

Needs only torch + lightning + jsonargparse (no decord / diffusers / transformers):

    python benchmarks/scale_out.py                       # 2 GPUs; about 5-7 minutes
    python benchmarks/scale_out.py --smoke               # CPU, gloo, tiny widths: checks the script
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: capacity ladder: (name, dim, attention heads): hth-5b is the preset, the others HTH-5B made wider
#: (parameters ~ dim^2: 4.7B, 6.2B, 7.9B, 9.9B, 12.3B)
LADDER = [
    ("hth-5b", 3072, 32),
    ("hth-6b", 3584, 28),
    ("hth-8b", 4096, 32),
    ("hth-10b", 4608, 36),
    ("hth-12b", 5120, 40),
]
SMOKE_LADDER = [("tiny-64", 64, 2), ("tiny-96", 96, 2)]
CONTEXT_TOKENS = 32


# ------------------------------------------------------------------ shared pieces
def hth_config(dim: int, heads: int, smoke: bool):
    from hthlight.models import presets

    if smoke:
        return presets.config("hth-s", dim=dim, heads=heads, groups=1, hydra_per_group=1, d_state=8, text_width=32)
    return presets.config("hth-5b", dim=dim, heads=heads)


def synthetic_batch(indices: list[int], context_dim: int, device=None) -> dict[str, torch.Tensor]:
    images, contexts = [], []
    for i in indices:
        g = torch.Generator().manual_seed(int(i))
        images.append(torch.randn(4, 32, 32, generator=g))
        contexts.append(torch.randn(CONTEXT_TOKENS, context_dim, generator=g) * 0.5)
    batch = {
        "image": torch.stack(images),
        "context": torch.stack(contexts),
        "context_mask": torch.ones(len(indices), CONTEXT_TOKENS, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


# ------------------------------------------------------------------ throughput worker (Lightning)
def throughput_worker(args) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    from hthlight.data.resumable import ResumableSampler
    from hthlight.module import DiffusionModule
    from hthlight.strategies import BlockDDPStrategy, BlockFSDPStrategy

    config = hth_config(args.dim, args.heads, args.smoke)
    context_dim = config.conditioner["context_dim"]

    class Latents(Dataset):
        def __len__(self):
            return 100_000

        def __getitem__(self, i):
            return i

    class Data(L.LightningDataModule):
        channels = 4

        def train_dataloader(self):
            data = Latents()
            sampler = ResumableSampler(data, batch_size=args.batch, seed=0)
            return DataLoader(
                data, batch_size=args.batch, sampler=sampler, collate_fn=lambda ix: synthetic_batch(ix, context_dim)
            )

    class Meter(L.Callback):
        def __init__(self):
            self.times, self.losses, self._micro = [], [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = trainer.strategy.reduce(outputs["loss"].detach().float(), reduce_op="mean")
            self._micro.append(float(loss) * trainer.accumulate_grad_batches)
            if len(self._micro) == trainer.accumulate_grad_batches:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())
                self.losses.append(sum(self._micro) / len(self._micro))
                self._micro = []

        def on_train_start(self, trainer, pl_module):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

    devices, accumulate = (1, 2) if args.worker == "1gpu" else (2, 1)
    backend = "gloo" if args.smoke else None
    strategy = {
        "1gpu": "auto",
        "ddp": BlockDDPStrategy(process_group_backend=backend),
        "fsdp": BlockFSDPStrategy(activation_checkpointing=False, process_group_backend=backend),
    }[args.worker]
    L.seed_everything(0)
    module = DiffusionModule(
        denoiser=config,
        optimizer={"lr": 1e-4, "warmup_steps": 0, "schedule": "constant"},
        ema={"decay": 0.9999},
        sampling={"steps": 2},
        image_size=32,
    )
    meter = Meter()
    trainer = L.Trainer(
        accelerator="cpu" if args.smoke else "gpu",
        devices=devices,
        strategy=strategy,
        precision="32-true" if args.smoke else "bf16-mixed",
        max_steps=args.warmup + args.steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[meter],
        default_root_dir=args.result + ".run",
    )
    trainer.fit(module, datamodule=Data())
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0])
    peaks = trainer.strategy.all_gather(peak.to(trainer.strategy.root_device)).flatten().tolist()
    if trainer.is_global_zero:
        timed = meter.times[args.warmup - 1 :]
        seconds = timed[-1] - timed[0]
        global_batch = args.batch * 2
        result = {
            "run": args.worker,
            "samples_per_s": global_batch * (len(timed) - 1) / seconds,
            "step_s": seconds / (len(timed) - 1),
            "peak_gib": peaks,
            "losses": meter.losses,
            "params": sum(p.numel() for p in module.denoiser.parameters()) if args.worker != "fsdp" else None,
        }
        Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ capacity probe (plain torch)
def probe_rank(
    rank: int, world: int, port: int, strategy: str, dim: int, heads: int, batch: int, smoke: bool, out: str
):
    import torch.distributed as dist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    from hthlight.ema import ema_update
    from hthlight.models.denoiser import Denoiser
    from hthlight.strategies import fsdp_wrap_policy, is_checkpoint_unit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cpu") if smoke else torch.device("cuda", rank)
    if not smoke:
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if smoke else "nccl", rank=rank, world_size=world)
    result = {"rank": rank, "fits": False, "peak_gib": None, "error": None}
    try:
        config = hth_config(dim, heads, smoke)
        with torch.device("meta"):
            model = Denoiser(config)
        ema = copy.deepcopy(model).requires_grad_(False)

        def materialise(module, recurse=False):
            module.to_empty(device=device, recurse=recurse)
            with torch.no_grad():
                for p in module.parameters(recurse=recurse):
                    p.normal_(0, 0.02)

        if strategy == "ddp":
            for m in (model, ema):
                materialise(m, recurse=True)
            wrapper = lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrapper, check_fn=is_checkpoint_unit)
            trained = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=None if smoke else [rank], gradient_as_bucket_view=True
            )
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp import MixedPrecision

            mixed = None if smoke else MixedPrecision(torch.bfloat16, torch.bfloat16, torch.bfloat16)
            common = {
                "auto_wrap_policy": fsdp_wrap_policy(),
                "param_init_fn": materialise,
                "use_orig_params": True,
                "device_id": None if smoke else device,
            }
            trained = FSDP(model, mixed_precision=mixed, **common)
            ema = FSDP(ema, **common)  # sharded like the model: the EMA update stays shard-local
            wrapper = lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            apply_activation_checkpointing(trained, checkpoint_wrapper_fn=wrapper, check_fn=is_checkpoint_unit)
        optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-5)
        context_dim = config.conditioner["context_dim"]
        for step in range(2):
            data = synthetic_batch(list(range(step * batch, (step + 1) * batch)), context_dim, device)
            t_B = torch.rand(batch, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not smoke):
                prediction = trained(data["image"], t_B, data)
            loss = torch.nn.functional.mse_loss(prediction.float(), torch.randn_like(prediction, dtype=torch.float32))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema_update(ema, trained.module if strategy == "ddp" else trained, 0.999)
        result["fits"] = True
        if not smoke:
            torch.cuda.synchronize()
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except torch.cuda.OutOfMemoryError as exc:
        result["error"] = "out of memory: " + str(exc).splitlines()[0][:120]
    Path(f"{out}.rank{rank}").write_text(json.dumps(result))
    if result["fits"]:
        dist.destroy_process_group()
    else:
        os._exit(0)  # the other rank may wait in a collective forever; the parent ends it


def probe(strategy: str, dim: int, heads: int, batch: int, smoke: bool, out: str, timeout: float) -> dict:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    port = free_port()
    procs = [
        context.Process(target=probe_rank, args=(r, 2, port, strategy, dim, heads, batch, smoke, out)) for r in range(2)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2) if Path(f"{out}.rank{r}").exists()]
    fits = len(ranks) == 2 and all(r["fits"] for r in ranks)
    peaks = [r["peak_gib"] for r in ranks if r["peak_gib"] is not None]
    errors = [r["error"] for r in ranks if r["error"]] or ([] if fits else ["timed out or crashed"])
    return {"fits": fits, "peak_gib": max(peaks) if peaks else None, "error": errors[0] if errors else None}


def _params(dim: int, heads: int, smoke: bool) -> str:
    from hthlight.models.denoiser import Denoiser

    with torch.device("meta"):
        count = sum(p.numel() for p in Denoiser(hth_config(dim, heads, smoke)).parameters())
    return f"{count / 1e9:.1f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ orchestration
def run_throughput(name: str, args, workdir: Path) -> dict | None:
    result = workdir / f"{name}.json"
    command = [sys.executable, __file__, "--worker", name, "--result", str(result)]
    command += ["--dim", str(args.dim), "--heads", str(args.heads), "--batch", str(args.batch)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--smoke"] if args.smoke else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.run_timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0 or not result.exists():
        print(
            f"[{name}] failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}", file=sys.stderr
        )
        return None
    data = json.loads(result.read_text())
    data["wall_s"] = wall
    print(f"[{name}] {data['samples_per_s']:.1f} samples/s, peak {data['peak_gib']} GiB, {wall:.0f} s", file=sys.stderr)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="hth-xl", help="HTH size of the throughput runs (hth-s/b/l/xl/5b)")
    parser.add_argument("--batch", type=int, default=8, help="samples per GPU per step (global: 2x)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    parser.add_argument("--no-capacity", action="store_true", help="skip the largest-model search")
    parser.add_argument("--probe-timeout", type=float, default=150.0, help="seconds per capacity probe")
    parser.add_argument("--run-timeout", type=float, default=240.0, help="seconds per throughput run")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="CPU + gloo + tiny widths: check the script itself")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--heads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        throughput_worker(args)
        return
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if args.smoke:
        args.dim, args.heads, args.steps, args.warmup, args.batch = 64, 2, 3, 1, 2
    else:
        from hthlight.models import presets

        preset = presets.get(args.preset)
        args.dim, args.heads = preset.kwargs["dim"], preset.kwargs["heads"]
        if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
            sys.exit("needs 2 CUDA devices (or --smoke)")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"hthlight_scale_out_{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    names = ("1gpu", "ddp") if args.smoke else ("1gpu", "ddp", "fsdp")  # FSDP needs an accelerator
    runs = {name: run_throughput(name, args, workdir) for name in names}
    capacity: dict[str, list] = {"ddp": []} if args.smoke else {"ddp": [], "fsdp": []}
    ladder = SMOKE_LADDER if args.smoke else LADDER
    first = 0
    if not args.no_capacity:
        for strategy in capacity:
            # FSDP needs less memory than DDP: start it at the largest size DDP fitted
            for name, dim, heads in ladder[first:]:
                outcome = probe(
                    strategy,
                    dim,
                    heads,
                    args.batch,
                    args.smoke,
                    str(workdir / f"probe_{strategy}_{dim}"),
                    args.probe_timeout,
                )
                outcome.update(name=name, dim=dim)
                capacity[strategy].append(outcome)
                print(f"[capacity {strategy}] {name}: {outcome}", file=sys.stderr)
                if not outcome["fits"]:
                    break
            fitted = [
                i for i, (n, _, _) in enumerate(ladder) if any(o["name"] == n and o["fits"] for o in capacity[strategy])
            ]
            first = fitted[-1] if fitted else 0
    print(report(args, runs, capacity, time.perf_counter() - started))
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "capacity": capacity}, indent=2))


def report(args, runs: dict, capacity: dict, seconds: float) -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu (smoke)"
    import lightning

    lines = [
        f"Scale-out at {args.preset if not args.smoke else 'tiny'} (dim {args.dim}), {args.batch} samples/GPU/step, "
        f"global batch {2 * args.batch}, 256 tokens, bf16-mixed; {device}; torch {torch.__version__}, "
        f"lightning {lightning.__version__}; {args.steps} timed steps after {args.warmup}; total {seconds:.0f} s",
        "",
        "| run | GPUs | samples/s | speed-up vs 1 GPU | step (s) | peak memory per GPU (GiB) "
        "| max abs loss diff vs 1 GPU |",
        "|---|---|---|---|---|---|---|",
    ]
    base = runs.get("1gpu")
    for name, gpus in (("1gpu", 1), ("ddp", 2), ("fsdp", 2)):
        if name not in runs:
            continue
        run = runs[name]
        if run is None:
            lines.append(f"| {name} | {gpus} | failed | | | | |")
            continue
        speedup = run["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        diff = "-"
        if base and name != "1gpu":
            n = min(len(base["losses"]), len(run["losses"]))
            diff = f"{max(abs(a - b) for a, b in zip(base['losses'][:n], run['losses'][:n])):.2e}"
        peaks = " / ".join(f"{p:.1f}" for p in run["peak_gib"])
        speed = f"{run['samples_per_s']:.1f} | {speedup:.2f}x | {run['step_s']:.3f}"
        lines.append(f"| {name} | {gpus} | {speed} | {peaks} | {diff} |")
    if any(capacity.values()):
        ladder = SMOKE_LADDER if args.smoke else LADDER
        lines += [
            "",
            f"Largest HTH trained for 2 steps at {args.batch} samples/GPU on 2 GPUs (activation checkpointing, fp32 "
            "AdamW states and EMA; '-': not tried, smaller than a size that fits or larger than one that does not):",
            "",
            "| strategy | " + " | ".join(f"{n} ({_params(d, h, args.smoke)})" for n, d, h in ladder) + " | largest |",
            "|---|" + "---|" * (len(ladder) + 1),
        ]
        for strategy, outcomes in capacity.items():
            by_name = {o["name"]: o for o in outcomes}
            cells = []
            for name, _, _ in ladder:
                o = by_name.get(name)
                if o is None:
                    cells.append("-")
                elif o["fits"]:
                    cells.append(f"fits, {o['peak_gib']:.0f} GiB" if o["peak_gib"] is not None else "fits")
                else:
                    cells.append("OOM" if "memory" in (o["error"] or "") else f"failed ({o['error']})")
            largest = [o["name"] for o in outcomes if o["fits"]]
            fallback = f"{args.preset} (throughput run)" if runs.get(strategy) else "none"
            lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {largest[-1] if largest else fallback} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
