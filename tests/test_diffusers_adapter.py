"""``sampler: diffusers:<SchedulerClass>``: equivalence with our samplers where they coincide,
closed-form Gaussian checks for the others, and clear errors for pairs that do not fit."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_denoiser_config
from gaussian_fields import ddpm_output, flow_velocity

from hthlight.diffusion import DDPM, RectifiedFlow, check_sampler, run_sampler
from hthlight.errors import ConfigError
from hthlight.module import DiffusionModule

pytest.importorskip("diffusers")

MU = torch.tensor([1.5, -1.0])
S = torch.tensor([0.5, 2.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def noise(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 7, 25])
def test_flow_match_euler_equals_our_euler_on_the_same_grid(shift, steps):
    flow = RectifiedFlow(shift=shift)
    velocity = flow_velocity(MU, S)
    x = noise(2000)
    ours = run_sampler(flow, "euler", velocity, x, steps)
    theirs = run_sampler(flow, "diffusers:FlowMatchEulerDiscreteScheduler", velocity, x, steps, time_grid="hthlight")
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_diffusers_ddim_equals_our_ddim(prediction, spacing):
    ddpm = DDPM(prediction=prediction, timestep_spacing=spacing)
    model = ddpm_output(ddpm, MU, S)
    x = noise(2000)
    ours = run_sampler(ddpm, "ddim", model, x, 20)
    theirs = run_sampler(ddpm, "diffusers:DDIMScheduler", model, x, 20)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "steps", "kwargs", "std_rtol"),
    [
        ("diffusers:DPMSolverMultistepScheduler", 20, {"algorithm_type": "dpmsolver++"}, 0.05),  # Dimba's sampler
        ("diffusers:UniPCMultistepScheduler", 20, {}, 0.05),
        ("diffusers:FlowMatchEulerDiscreteScheduler", 50, {}, 0.04),
        ("diffusers:FlowMatchHeunDiscreteScheduler", 10, {}, 0.03),
    ],
)
def test_diffusers_flow_samplers_reproduce_gaussian_data(name, steps, kwargs, std_rtol):
    out = run_sampler(RectifiedFlow(), name, flow_velocity(MU, S), noise(), steps, **kwargs)
    assert torch.allclose(out.mean(0), MU, atol=0.05)
    assert torch.allclose(out.std(0), S, rtol=std_rtol), out.std(0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize(
    ("name", "steps", "std_rtol"),
    [
        ("diffusers:DPMSolverMultistepScheduler", 20, 0.06),
        ("diffusers:UniPCMultistepScheduler", 20, 0.06),
        ("diffusers:EulerDiscreteScheduler", 50, 0.07),
        ("diffusers:DDPMScheduler", 250, 0.04),
    ],
)
def test_diffusers_ddpm_samplers_reproduce_gaussian_data(prediction, name, steps, std_rtol):
    ddpm = DDPM(prediction=prediction)
    generator = torch.Generator().manual_seed(2)
    out = run_sampler(ddpm, name, ddpm_output(ddpm, MU, S), noise(), steps, generator=generator)
    assert torch.allclose(out.mean(0), MU, atol=0.05), out.mean(0)
    assert torch.allclose(out.std(0), S, rtol=std_rtol), out.std(0)


def test_pairs_that_do_not_fit_are_config_errors():
    with pytest.raises(ConfigError, match="FlowMatchEulerDiscreteScheduler cannot sample the DDPM objective"):
        check_sampler(DDPM(), "diffusers:FlowMatchEulerDiscreteScheduler")
    with pytest.raises(ConfigError, match="DDIMScheduler cannot sample the RectifiedFlow objective"):
        check_sampler(RectifiedFlow(), "diffusers:DDIMScheduler")
    with pytest.raises(ConfigError, match="diffusers has no scheduler class 'DPMSolver'"):
        check_sampler(DDPM(), "diffusers:DPMSolver")
    with pytest.raises(ConfigError, match="unknown sampler_kwargs solver_ordr; DPMSolverMultistepScheduler accepts"):
        check_sampler(DDPM(), "diffusers:DPMSolverMultistepScheduler", {"solver_ordr": 2})
    with pytest.raises(ConfigError, match="time_grid 'hthlight' applies to flow objectives only"):
        check_sampler(DDPM(), "diffusers:DDIMScheduler", {"time_grid": "hthlight"})

    class CurvedFlow(RectifiedFlow):
        @staticmethod
        def add_noise(x0, noise, t_B):
            return x0

    with pytest.raises(ConfigError, match="straight path"):
        check_sampler(CurvedFlow(), "diffusers:FlowMatchEulerDiscreteScheduler")


def test_module_generates_with_a_diffusers_sampler_and_guidance():
    """Through ``generate`` (CFG 2): FlowMatchEuler on our grid gives our Euler's images."""

    def module(sampler, **kwargs):
        m = DiffusionModule(
            denoiser=tiny_denoiser_config(),
            image_size=8,
            sampling={"sampler": sampler, "steps": 4, "cfg_scale": 2.0, "sampler_kwargs": kwargs},
        )
        m.configure_model()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in m.ema_denoiser.parameters():
                p.normal_(0, 0.1)
        return m

    ours = module("euler").generate(torch.tensor([1, 2]), [3, 4])
    theirs = module("diffusers:FlowMatchEulerDiscreteScheduler", time_grid="hthlight").generate(
        torch.tensor([1, 2]), [3, 4]
    )
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    unipc = module("diffusers:UniPCMultistepScheduler").generate(torch.tensor([1, 2]), [3, 4])
    assert unipc.shape == (2, 1, 8, 8) and torch.isfinite(unipc).all()


def test_stochastic_diffusers_scheduler_is_seeded_per_sample():
    """DDPMScheduler draws its noise from the per-sample generators: batching does not change a sample."""
    module = DiffusionModule(
        denoiser=tiny_denoiser_config(),
        scheduler="ddpm",
        image_size=8,
        sampling={"sampler": "diffusers:DDPMScheduler", "steps": 5, "cfg_scale": 2.0},
    )
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.ema_denoiser.parameters():
            p.normal_(0, 0.1)
    full = module.generate(torch.tensor([1, 2, 3]), [5, 6, 7])
    torch.testing.assert_close(module.generate(torch.tensor([2, 3]), [6, 7]), full[1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(module.generate(torch.tensor([1, 2, 3]), [8, 6, 7])[0], full[0])
