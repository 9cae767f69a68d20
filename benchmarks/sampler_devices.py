"""Every sampler on CPU and CUDA: same samples from the same seeds, and time per ``generate`` call.

    python benchmarks/sampler_devices.py

Prints one line per (objective, sampler): max |cpu - cuda| of the generated images (float32,
tiny random denoiser, CFG 2) and the CUDA wall time per call. Stochastic samplers draw their
noise from per-sample CPU generators, so CPU and CUDA must agree up to float error too.
diffusers samplers are included when diffusers is installed.
"""

from __future__ import annotations

import importlib.util
import time

import torch

from hthlight.module import DiffusionModule

DENOISER = {
    "in_channels": 4,
    "patch_size": 2,
    "dim": 64,
    "layout": [{"mixer": {"name": "attention", "num_heads": 4}, "repeat": 2}],
    "conditioner": {"name": "class_label", "num_classes": 10},
}
CASES = [
    ("rectified_flow", "euler", {}, 20),
    ("rectified_flow", "heun", {}, 10),
    ({"name": "ddpm", "prediction": "epsilon"}, "ddim", {"eta": 0.5}, 20),
    ({"name": "ddpm", "prediction": "v"}, "ddpm", {}, 50),
]
if importlib.util.find_spec("diffusers") is not None:
    CASES += [
        ("rectified_flow", "diffusers:FlowMatchEulerDiscreteScheduler", {}, 20),
        ({"name": "ddpm"}, "diffusers:DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, 20),
    ]


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    labels, seeds = torch.arange(8) % 10, list(range(8))
    for scheduler, sampler, kwargs, steps in CASES:
        module = DiffusionModule(
            denoiser=DENOISER,
            scheduler=scheduler,
            image_size=32,
            sampling={"sampler": sampler, "steps": steps, "cfg_scale": 2.0, "sampler_kwargs": kwargs},
        )
        module.configure_model()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in module.ema_denoiser.parameters():
                p.normal_(0, 0.05)
        cpu = module.generate(labels, seeds)
        module.cuda()
        gpu = module.generate(labels, seeds)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        gpu = module.generate(labels, seeds)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        name = scheduler if isinstance(scheduler, str) else f"ddpm/{scheduler.get('prediction', 'epsilon')}"
        diff = (cpu - gpu.cpu()).abs().max().item()
        print(f"{name:16s} {sampler:44s} steps {steps:3d}  max|cpu-cuda| {diff:.2e}  cuda {elapsed * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
