"""Feature cache on a GPU: exactly-once, CPU agreement and throughput (docs/data.md).

Makes a synthetic caption data set (random images of 5 aspect ratios), a tiny T5 and a tiny
diffusers AutoencoderKL (random weights, saved locally: no download), then

1. caches it with ``hthlight cache`` on the GPU (``--device cuda``) and on the CPU,
2. checks every sample is cached exactly once and that GPU and CPU features agree,
3. if ``--nproc 2`` (needs 2 GPUs), caches again with two processes (``torchrun``) and
   checks that cache against the first.

Prints one line per check and the samples/s of each run::

    python benchmarks/feature_cache_gpu.py --out /tmp/fcache --images 2000 [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

SHAPES = [(64, 64), (48, 80), (80, 48), (40, 96), (96, 40)]


def make_data(root: Path, n: int) -> None:
    generator = torch.Generator().manual_seed(0)
    rows = []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = SHAPES[i % len(SHAPES)]
        pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(root / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "caption": f"synthetic image number {i}", "height": h, "width": w})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_models(out: Path) -> tuple[str, str]:
    import diffusers

    from hthlight.conditioning.text_encoders import make_tiny_t5

    t5 = make_tiny_t5(out / "t5", d_model=64)
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ).save_pretrained(out / "vae")
    return str(t5), str(out / "vae")


def cache(config: Path, out: Path, device: str, nproc: int = 1) -> float:
    args = ["cache", "--config", str(config), "--output", str(out), "--device", device, "--shard_size", "256"]
    command = [sys.executable, "-m", "hthlight", *args]
    if nproc > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "hthlight",
            *args,
        ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def features(folder: Path) -> list[dict[str, torch.Tensor]]:
    """Every cached sample in source order; fails if one is missing or cached twice."""
    from hthlight.data.feature_cache import CachedFeaturesDataset

    data = CachedFeaturesDataset(folder)
    sources = [row[0] for row in data.rows]
    assert sources == list(range(len(data))), "a sample is missing or cached twice"
    return [data[i] for i in range(len(data))]


def max_difference(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]], key: str) -> float:
    assert len(a) == len(b)
    return max((x[key].float() - y[key].float()).abs().max().item() for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    out = args.out
    make_data(out / "data", args.images)
    t5, vae = make_models(out)
    config = out / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"vae": {"name": "autoencoder_kl", "path": vae}, "text_encoder": {"name": "t5", "path": t5}},
                "data": {
                    "class_path": "hthlight.data.CaptionDataModule",
                    "init_args": {
                        "root": str(out / "data"),
                        "manifest": "captions.jsonl",
                        "image_size": 64,
                        "buckets": True,
                        "batch_size": 64,
                        "num_workers": 4,
                    },
                },
            }
        )
    )
    seconds = cache(config, out / "gpu", args.device)
    print(f"cache on {args.device}: {args.images} images in {seconds:.1f} s ({args.images / seconds:.0f} images/s)")
    seconds = cache(config, out / "cpu", "cpu")
    print(f"cache on cpu: {args.images} images in {seconds:.1f} s ({args.images / seconds:.0f} images/s)")
    gpu, cpu = features(out / "gpu" / "train"), features(out / "cpu" / "train")
    print("exactly once: ok (gpu and cpu caches)")
    for key in ("latent", "context"):
        print(f"{key}: max |gpu - cpu| = {max_difference(gpu, cpu, key):.2e}")
    if args.nproc > 1:
        seconds = cache(config, out / "multi", args.device if args.device != "cuda" else "auto", args.nproc)
        multi = features(out / "multi" / "train")
        rate = args.images / seconds
        print(f"cache with {args.nproc} processes: {seconds:.1f} s ({rate:.0f} images/s); exactly once: ok")
        for key in ("latent", "context"):
            print(f"{key}: max |{args.nproc} processes - 1| = {max_difference(multi, gpu, key):.2e}")
    os.sync()


if __name__ == "__main__":
    main()
