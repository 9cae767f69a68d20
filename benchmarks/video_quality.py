"""Temporal consistency: spatial-only scans vs HTH's adapted temporal-major layout, same budget and seed.

HTH (Hong et al. 2025, sec. 3.3) claims that switching 40 % of the Hydra blocks to
temporal-major scans (th/tv) makes videos temporally consistent. This trains the video demo
(``configs/moving_digits.yaml``'s model) twice with identical data order, noise, seed and
steps: ``spatial`` (every Hydra block scans frame by frame: ht, vt) and ``temporal`` (the
demo's ht, vt, th, tv, ht), samples the same seeds from both, and measures on every clip:

* per-frame digit class (a window around the ink's centre of mass, classified by the SVM of
  ``hthlight.eval.digits``): accuracy against the requested class, and agreement, the share
  of frames that agree with the clip's majority class (1.0 = the digit never changes);
* mean absolute frame-to-frame difference (pixels in [0, 1]) beside the real clips' value.

Three phases, so training can run on a GPU machine without decord or scikit-learn:

    python benchmarks/video_quality.py prepare --out runs/video_quality          # decode clips (decord)
    python benchmarks/video_quality.py train --out runs/video_quality --steps 2000 --device cuda
    python benchmarks/video_quality.py evaluate --out runs/video_quality          # scikit-learn SVM

``all`` runs the three in a row. Results: ``OUT/results.json`` and one table line per variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"spatial": ["ht", "vt"], "temporal": ["ht", "vt", "th", "tv", "ht"]}


def prepare(args) -> None:
    """Decode every clip of the manifest once (centre crop) into ``OUT/clips.pt``."""
    from hthlight.data.video import VideoClipDataset, read_manifest

    data = yaml.safe_load((ROOT / "configs" / "moving_digits.yaml").read_text())["data"]["init_args"]
    dataset = VideoClipDataset(
        read_manifest(args.manifest),
        num_frames=data["num_frames"],
        size=data["size"],
        fps=data["fps"],
        channels=data["channels"],
        temporal_crop="center",
    )
    items = [dataset[i] for i in range(len(dataset))]
    items = [it for it in items if isinstance(it, dict)]
    clips = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"clips": clips, "labels": labels}, args.out / "clips.pt")
    print(f"prepared {len(clips)} clips {tuple(clips.shape[1:])} from {args.manifest}")


def train(args) -> None:
    """Train each variant for ``--steps`` and sample ``--samples-per-class`` clips per class."""
    from hthlight.ema import ema_decay, ema_update
    from hthlight.module import DiffusionModule, lr_lambda

    data = torch.load(args.out / "clips.pt")
    clips, labels = data["clips"], data["labels"]
    base = yaml.safe_load((ROOT / "configs" / "moving_digits.yaml").read_text())["model"]
    device = torch.device(args.device)
    timings = {}
    for name in args.variants:
        config = copy.deepcopy(base)
        config["denoiser"]["layout"][0]["scans"] = VARIANTS[name]
        config["image_size"] = clips.shape[-1]
        torch.manual_seed(args.seed)
        module = DiffusionModule(**config)
        module.configure_model()
        module.to(device)
        opt_cfg = module.optimizer_config
        optimizer = torch.optim.AdamW(module.denoiser.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opt_cfg, args.steps))
        order = torch.Generator().manual_seed(args.seed)
        noise = torch.Generator(device=device).manual_seed(args.seed)
        start = time.perf_counter()
        for step in range(args.steps):
            index = torch.randint(len(clips), (args.batch_size,), generator=order)
            x0 = clips[index].to(device)
            batch = {"label": labels[index].to(device)}
            loss = module.scheduler.loss(lambda x, t, m=module, b=batch: m.denoiser(x, t, b), x0, generator=noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema_update(module.ema_denoiser, module.denoiser, ema_decay(step, module.ema_config.decay, True))
            if step % max(1, args.steps // 10) == 0:
                print(f"{name} step {step} loss {loss.item():.4f}", flush=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - start
        labels_out = torch.arange(10).repeat_interleave(args.samples_per_class)
        seeds = list(range(10_000, 10_000 + len(labels_out)))
        samples = torch.cat(
            [
                module.generate(labels_out[i : i + 50], seeds[i : i + 50], steps=args.sample_steps).cpu()
                for i in range(0, len(seeds), 50)
            ]
        )
        torch.save(
            {
                "samples": samples,
                "labels": labels_out,
                "train_s": timings[name],
                "steps": args.steps,
                "batch_size": args.batch_size,
                "device": str(device),
            },
            args.out / f"{name}.pt",
        )
        print(f"{name}: {args.steps} steps in {timings[name]:.0f} s; {len(samples)} samples", flush=True)


def frame_windows(clips_NCTHW: torch.Tensor) -> torch.Tensor:
    """The ``S/2 x S/2`` window around each frame's ink centre of mass: ``(N, T, 1, S/2, S/2)``."""
    n, _, t, size, _ = clips_NCTHW.shape
    side = size // 2
    ink = ((clips_NCTHW[:, 0] + 1) / 2).clamp(0, 1)  # (N, T, S, S)
    coords = torch.arange(size, dtype=torch.float32)
    mass = ink.sum(dim=(-1, -2)).clamp_min(1e-6)
    cy = (ink.sum(-1) * coords).sum(-1) / mass
    cx = (ink.sum(-2) * coords).sum(-1) / mass
    top = (cy - side / 2 + 0.5).round().clamp(0, size - side).long()
    left = (cx - side / 2 + 0.5).round().clamp(0, size - side).long()
    out = torch.empty(n, t, 1, side, side)
    for i in range(n):
        for j in range(t):
            y, x = int(top[i, j]), int(left[i, j])
            out[i, j, 0] = clips_NCTHW[i, 0, j, y : y + side, x : x + side]
    return out


def clip_metrics(clips_NCTHW: torch.Tensor, labels_N: torch.Tensor) -> dict[str, float]:
    from hthlight.eval.digits import digit_classifier

    windows = frame_windows(clips_NCTHW)
    n, t = windows.shape[:2]
    classifier = digit_classifier(windows.shape[-1])
    predicted = torch.as_tensor(classifier.predict(list(windows.flatten(0, 1)))).view(n, t)
    majority = predicted.mode(dim=1).values
    agreement = (predicted == majority[:, None]).float().mean(1)
    pixels = (clips_NCTHW.clamp(-1, 1) + 1) / 2
    diff = (pixels[:, :, 1:] - pixels[:, :, :-1]).abs().mean(dim=(1, 3, 4))  # (N, T-1)
    return {
        "clips": n,
        "frame_accuracy": float((predicted == labels_N[:, None]).float().mean()),
        "frame_agreement": float(agreement.mean()),
        "clips_all_frames_agree": float((agreement == 1).float().mean()),
        "frame_to_frame_diff": float(diff.mean()),
        "frame_to_frame_diff_std": float(diff.mean(1).std()),
    }


def evaluate(args) -> None:
    data = torch.load(args.out / "clips.pt")
    results = {"real": clip_metrics(data["clips"], data["labels"])}
    for name in args.variants:
        path = args.out / f"{name}.pt"
        if not path.is_file():
            continue
        run = torch.load(path)
        results[name] = clip_metrics(run["samples"], run["labels"])
        results[name].update({k: run[k] for k in ("train_s", "steps", "batch_size", "device")})
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| clips | n | frame accuracy | frame agreement | clips with all frames agreeing | frame-to-frame diff |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['clips']} | {r['frame_accuracy']:.3f} | {r['frame_agreement']:.3f} | "
            f"{r['clips_all_frames_agree']:.3f} | {r['frame_to_frame_diff']:.4f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["prepare", "train", "evaluate", "all"])
    parser.add_argument("--manifest", default=str(ROOT / "runs" / "data" / "moving_digits" / "manifest.jsonl"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "video_quality")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples-per-class", type=int, default=10)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # tiny SSM/EMA values otherwise slow CPU steps down many times over
    if args.phase in ("prepare", "all"):
        prepare(args)
    if args.phase in ("train", "all"):
        train(args)
    if args.phase in ("evaluate", "all"):
        evaluate(args)


if __name__ == "__main__":
    main()
