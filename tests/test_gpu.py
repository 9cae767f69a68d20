"""CUDA paths against the pure-PyTorch CPU reference (skipped without a GPU).

Tolerances: float32 on GPU vs float64 on CPU, relative error <= 1e-4 (TF32 is off here);
bfloat16 SDPA/flash and autocast vs float32, relative error <= 2e-2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_denoiser_config

from hthlight.mixers.attention import AttentionMixer
from hthlight.mixers.hydra import HydraMixer
from hthlight.models.denoiser import Denoiser
from hthlight.module import DiffusionModule

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def forward_backward(module, x, grid):
    x = x.clone().requires_grad_(True)
    y = module(x, grid)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device, dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("scan", ["h", "v", "th"])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_hydra_cuda_float32_matches_cpu_float64(scan, ngroups):
    cpu = HydraMixer(dim=32, scan=scan, d_state=8, headdim=8, ngroups=ngroups, chunk_size=16).double()
    gpu = copy.deepcopy(cpu).float().cuda()
    x = torch.randn(2, 2 * 5 * 7, 32, dtype=torch.float64)
    y_ref, dx_ref, grads_ref = forward_backward(cpu, x, (2, 5, 7))
    y, dx, grads = forward_backward(gpu, x.float().cuda(), (2, 5, 7))
    assert rel_err(y.cpu(), y_ref) < 1e-4
    assert rel_err(dx.cpu(), dx_ref) < 1e-4
    for name, g in grads.items():
        assert rel_err(g.cpu(), grads_ref[name]) < 1e-4, name


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_bf16_sdpa_matches_float32_math(qk_norm):
    reference = AttentionMixer(dim=256, num_heads=4, qk_norm=qk_norm).cuda()
    fast = copy.deepcopy(reference).to(torch.bfloat16)
    x = torch.randn(2, 1024, 256, device="cuda")
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        y_ref, dx_ref, _ = forward_backward(reference, x, (1, 32, 32))
    y, dx, _ = forward_backward(fast, x.to(torch.bfloat16), (1, 32, 32))
    assert rel_err(y, y_ref) < 2e-2
    assert rel_err(dx, dx_ref) < 2e-2


def test_denoiser_bf16_autocast_matches_float32():
    model = Denoiser(
        tiny_denoiser_config(
            dim=64,
            layout=[
                {"mixer": {"name": "hydra", "d_state": 16, "headdim": 16}, "repeat": 2, "scans": ["h", "v"]},
                "attention",
            ],
        )
    ).cuda()
    with torch.no_grad():
        model.final.linear.weight.normal_(0, 0.02)
    x, t, labels = torch.randn(4, 1, 32, 32, device="cuda"), torch.rand(4, device="cuda"), torch.arange(4).cuda()
    model.eval()
    y_ref = model(x, t, {"label": labels})
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x, t, {"label": labels})
    assert rel_err(y.float(), y_ref) < 2e-2


def test_generation_on_cuda_matches_cpu():
    module = DiffusionModule(denoiser=tiny_denoiser_config(), image_size=8, sampling={"steps": 4})
    module.configure_model()
    with torch.no_grad():
        for p in module.ema_denoiser.parameters():
            p.normal_(0, 0.1)
    labels = torch.tensor([0, 5])
    cpu = module.generate(labels, [3, 4])
    gpu = module.cuda().generate(labels, [3, 4])
    assert rel_err(gpu.cpu(), cpu) < 1e-3
