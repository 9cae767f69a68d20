"""HTH appendix B.1/B.2 at digits scale: token-mixer ablation and zero-shot 2x resolution.

Trains every variant of ``configs/ablation/`` (same model, only the mixers differ) in parallel
processes, samples 500 digits at the training size (16 px) and, zero-shot, at twice the side
(32 px, 8 x 8 instead of 4 x 4 tokens), and scores both with the real-digit classifier
(32 px samples are resized to 16 px first). It also reports the checkerboard energy of the
2x samples: the share of spectral energy at the Nyquist frequencies, which tiling artefacts
of absolute-position attention raise. Prints a markdown table.

    python benchmarks/mixer_ablation.py [--steps 2000] [--out runs/ablation] [--variants hydra attention]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ssm", "bi_ssm", "attention", "hydra", "hybrid_10_1", "hybrid_7_4", "hybrid_3_8"]


def hthlight(*args: str, log: Path) -> None:
    with log.open("a") as f:
        subprocess.run(
            [sys.executable, "-m", "hthlight", *args], check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT
        )


def scalar_curve(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a TensorBoard scalar, from the newest run under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values = [(e.step, e.value) for e in acc.Scalars(tag)]
    return values


def checkerboard_energy(sample_dir: Path) -> float:
    """Mean share of each image's (mean-removed) spectral energy in the Nyquist row and column."""
    shares = []
    for png in sorted((sample_dir / "samples").glob("*.png")):
        image = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
        spectrum = np.abs(np.fft.fft2(image - image.mean())) ** 2
        h, w = spectrum.shape
        nyquist = spectrum[h // 2, :].sum() + spectrum[:, w // 2].sum() - spectrum[h // 2, w // 2]
        shares.append(nyquist / max(spectrum.sum(), 1e-12))
    return float(np.mean(shares))


def run_variant(name: str, steps: int, out: Path, patch_size: int | None) -> dict:
    config = ["--config", "configs/ablation/base.yaml", "--config", f"configs/ablation/{name}.yaml"]
    if patch_size:
        config += ["--model.denoiser.patch_size", str(patch_size)]
    run = out / name
    log = out / f"{name}.log"
    start = time.time()
    hthlight(
        "fit",
        *config,
        "--trainer.max_steps",
        str(steps),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.enable_progress_bar",
        "false",
        log=log,
    )
    train_s = time.time() - start
    checkpoint = sorted(run.rglob("last.ckpt"))[-1]
    curve = scalar_curve(run, "val/loss")
    result = {"variant": name, "train_s": round(train_s), "val_loss": curve[-1][1], "val_loss_curve": curve}
    for side in (16, 32):
        samples = out / f"{name}_samples_{side}"
        writer = json.dumps(
            {
                "class_path": "hthlight.callbacks.PredictionWriter",
                "init_args": {"output_dir": str(samples), "overwrite": True},
            }
        )
        hthlight(
            "predict",
            *config,
            "--ckpt_path",
            str(checkpoint),
            f"--trainer.callbacks=[{writer}]",
            "--model.sample_height",
            str(side),
            "--model.sample_width",
            str(side),
            "--trainer.enable_progress_bar",
            "false",
            log=log,
        )
        from hthlight.eval.digits import evaluate_predictions

        result[f"accuracy_{side}px"] = evaluate_predictions(str(samples), image_size=16)["accuracy"]
        result[f"checkerboard_{side}px"] = checkerboard_energy(samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--parallel", type=int, default=len(VARIANTS))
    parser.add_argument("--patch-size", type=int, default=None, help="override the configs' patch size (4)")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda v: run_variant(v, args.steps, out, args.patch_size), args.variants))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    columns = [
        "variant",
        "val loss at 1/4, 1/2, end",
        "train s",
        "accuracy 16 px",
        "accuracy 32 px (zero-shot)",
        "checkerboard 16 px",
        "checkerboard 32 px",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        curve = [v for _, v in r["val_loss_curve"]]
        losses = ", ".join(f"{curve[min(len(curve) - 1, int(q * len(curve)))]:.4f}" for q in (0.25, 0.5, 1.0))
        print(
            f"| {r['variant']} | {losses} | {r['train_s']} | {r['accuracy_16px']:.3f} | "
            f"{r['accuracy_32px']:.3f} | {r['checkerboard_16px']:.4f} | {r['checkerboard_32px']:.4f} |"
        )


if __name__ == "__main__":
    main()
