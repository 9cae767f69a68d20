"""Video data pipeline throughput: clips/s with N DataLoader workers, and whether it keeps training fed.

    python benchmarks/video_data.py                         # clips/s for 0, 1, 2 workers (moving digits)
    python benchmarks/video_data.py --workers 0 4 8 16 --train --device cuda

Without ``--manifest`` it writes moving-digits clips (``hthlight data moving-digits``) to
``runs/data/bench_moving_digits`` first. ``--train`` also times the video demo's training step
(``configs/moving_digits.yaml``'s model, AdamW) fed by the real loader and by synthetic tensors
of the same shape already on the device, alternating the two ``--train-repeats`` times, and
prints the median real / synthetic: within 10 % means the pipeline keeps the accelerator busy.
Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from hthlight.data.moving_digits import MANIFEST, write_moving_digits
from hthlight.data.video import VideoDataModule

ROOT = Path(__file__).resolve().parents[1]


def video_data(manifest: str, workers: int, args) -> VideoDataModule:
    """The clips the benchmark reads: ``args``' frames, size, fps, channels and batch, one decode thread."""
    return VideoDataModule(
        manifest,
        num_frames=args.frames,
        size=args.size,
        fps=args.fps,
        channels=args.channels,
        batch_size=args.batch_size,
        num_workers=workers,
        decode_threads=1,
    )


def loader_throughput(manifest: str, workers: int, args) -> float:
    """Clips per second over ``args.batches`` batches after ``args.warmup`` warm-up batches."""
    data = video_data(manifest, workers, args)
    loader = data.train_dataloader()
    clips, start = 0, None
    for i, batch in enumerate(_forever(loader)):
        if i == args.warmup:
            start, clips = time.perf_counter(), 0
        clips += batch["image"].shape[0]
        if i >= args.warmup + args.batches:
            break
    return clips / (time.perf_counter() - start)


def _forever(loader):
    while True:
        yield from loader


def train_throughput(manifest: str, workers: int, args) -> dict[str, float]:
    """Training steps/s of the demo model fed by the loader vs by synthetic tensors on the device."""
    from hthlight.module import DiffusionModule

    config = yaml.safe_load((ROOT / "configs" / "moving_digits.yaml").read_text())["model"]
    config["image_size"] = args.size
    device = torch.device(args.device)
    module = DiffusionModule(**config)
    module.configure_model()
    module.to(device)
    optimizer = torch.optim.AdamW(module.denoiser.parameters(), lr=1e-4)
    data = video_data(manifest, workers, args)

    def step(batch) -> None:
        x0 = batch["image"].to(device, non_blocking=True)
        cond = {"label": batch["label"].to(device, non_blocking=True)}
        loss = module.scheduler.loss(lambda x, t: module.denoiser(x, t, cond), x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(batches) -> float:
        count = 0
        for i, batch in enumerate(batches):
            if i == args.warmup:
                _sync(device)
                start, count = time.perf_counter(), 0
            step(batch)
            count += 1
            if i >= args.warmup + args.train_steps:
                break
        _sync(device)
        return count / (time.perf_counter() - start)

    synthetic = {
        "image": torch.rand(args.batch_size, args.channels, args.frames, args.size, args.size, device=device) * 2 - 1,
        "label": torch.randint(0, 10, (args.batch_size,), device=device),
    }
    # Alternate the two feeds and take medians: a launch-bound step's own rate drifts between runs.
    real_batches = _forever(data.train_dataloader())
    synthetic_rates, real_rates = [], []
    for _ in range(args.train_repeats):
        synthetic_rates.append(timed(_repeat(synthetic)))
        real_rates.append(timed(real_batches))
    synthetic_sps, real_sps = statistics.median(synthetic_rates), statistics.median(real_rates)
    ratios = [r / s for r, s in zip(real_rates, synthetic_rates)]
    return {
        "real_steps_per_s": real_sps,
        "synthetic_steps_per_s": synthetic_sps,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def _repeat(batch):
    while True:
        yield batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=None, help="JSON-lines manifest (default: generate moving digits)")
    parser.add_argument("--num-videos", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per worker count")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also compare training fed by real vs synthetic data")
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-repeats", type=int, default=3, help="alternating real/synthetic timings (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    manifest = args.manifest
    if manifest is None:
        out = ROOT / "runs" / "data" / "bench_moving_digits"
        if not (out / MANIFEST).is_file():
            write_moving_digits(out, num_videos=args.num_videos, frames=16, size=32, fps=8.0, seed=0)
        manifest = str(out / MANIFEST)
    summary = {
        "manifest": manifest,
        "clip": f"{args.frames}x{args.size}x{args.size}x{args.channels}",
        "cpus": torch.multiprocessing.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "clips_per_s": {},
    }
    for workers in args.workers:
        rate = loader_throughput(manifest, workers, args)
        summary["clips_per_s"][workers] = round(rate, 1)
        print(f"workers={workers:2d}  {rate:8.1f} clips/s", flush=True)
    if args.train:
        for workers in args.workers:
            result = train_throughput(manifest, workers, args)
            summary[f"train_workers_{workers}"] = {k: round(v, 3) for k, v in result.items()}
            print(
                f"train workers={workers:2d}  real {result['real_steps_per_s']:.2f} steps/s  synthetic "
                f"{result['synthetic_steps_per_s']:.2f} steps/s  real/synthetic {result['ratio']:.3f} "
                f"(median of {args.train_repeats}; {result['ratio_min']:.3f}-{result['ratio_max']:.3f})",
                flush=True,
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
