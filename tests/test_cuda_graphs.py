"""CUDA-graph replay of the denoiser during sampling (hthlight.diffusion.cuda_graphs)."""

from __future__ import annotations

import pytest
import torch

from hthlight.diffusion.cuda_graphs import CUDAGraphed
from hthlight.module import DiffusionModule

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Head and state widths the Triton kernels take, so that on CUDA the graph holds the Triton path.
HYDRA = {"name": "hydra", "d_state": 16, "headdim": 16, "expand": 2, "d_conv": 3, "chunk_size": 32}


def tiny_module(cuda_graph: bool, cfg_scale: float = 2.0) -> DiffusionModule:
    denoiser = {
        "in_channels": 1,
        "patch_size": 2,
        "dim": 32,
        "layout": [
            {"mixer": HYDRA, "scans": ["h", "v"], "repeat": 2},
            {"mixer": {"name": "attention", "num_heads": 2}},
        ],
        "conditioner": {"name": "class_label", "num_classes": 10, "dropout": 0.1},
    }
    sampling = {"steps": 4, "cfg_scale": cfg_scale, "cuda_graph": cuda_graph}
    torch.manual_seed(0)
    module = DiffusionModule(denoiser=denoiser, image_size=16, sampling=sampling)
    module.configure_model()
    return module


def test_cpu_calls_run_the_function_directly():
    calls = []

    def fn(x, t):
        calls.append(1)
        return x * t

    graphed = CUDAGraphed(fn)
    x, t = torch.randn(3, 4), torch.tensor(0.5)
    assert torch.equal(graphed(x, t), x * 0.5) and len(calls) == 1 and graphed.captures == 0


def test_cuda_graph_option_is_ignored_on_cpu():
    """Same seeds, same images: on CPU the option changes nothing, with and without guidance."""
    labels, seeds = torch.tensor([1, 7]), [3, 4]
    for scale in (1.0, 2.0):
        plain = tiny_module(False, scale).generate(labels, seeds)
        graphed = tiny_module(True, scale).generate(labels, seeds)
        assert torch.equal(plain, graphed)


@pytest.mark.gpu
@cuda
def test_replay_matches_eager_for_new_inputs_and_recaptures_per_shape():
    """Inputs are copied into the recorded buffers: each replay computes on the new values."""
    module = tiny_module(False).cuda()
    model = module.sampling_model().eval()
    cond = {"label": torch.tensor([1, 2], device="cuda")}

    def denoise(x, t_B):
        return model(x, t_B, cond)

    graphed = CUDAGraphed(denoise)
    with torch.inference_mode():
        for seed in range(3):
            g = torch.Generator(device="cuda").manual_seed(seed)
            x = torch.randn(2, 1, 16, 16, device="cuda", generator=g)
            t = torch.rand(2, device="cuda", generator=g)
            torch.testing.assert_close(graphed(x, t), denoise(x, t), rtol=1e-5, atol=1e-5)
        assert graphed.captures == 1
        graphed(torch.randn(2, 1, 8, 8, device="cuda"), torch.rand(2, device="cuda"))
        assert graphed.captures == 2


@pytest.mark.gpu
@cuda
def test_generate_with_cuda_graphs_matches_eager():
    labels, seeds = torch.tensor([1, 7]), [3, 4]
    plain = tiny_module(False).cuda().generate(labels, seeds)
    graphed = tiny_module(True).cuda().generate(labels, seeds)
    torch.testing.assert_close(graphed, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_function_that_synchronises_falls_back_to_eager_with_a_warning():
    def fn(x):
        return x * x.sum().item()  # a host read: cannot be captured

    graphed = CUDAGraphed(fn)
    x = torch.randn(4, device="cuda")
    with pytest.warns(UserWarning, match="CUDA graph capture failed"):
        out = graphed(x)
    torch.testing.assert_close(out, fn(x))
    torch.testing.assert_close(graphed(2 * x), fn(2 * x))  # eager from now on
    assert graphed.captures == 0
    # No capture was left half-done: the device's random generator still works.
    assert torch.randn(4, device="cuda").isfinite().all()
    assert torch.cuda.get_sync_debug_mode() == 0
