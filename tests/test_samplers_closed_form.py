"""Every sampler against a closed form: Gaussian data with its exact velocity / epsilon / v field.

Data ``x0 ~ N(mu, s^2)`` in 2-D (``mu = (1.5, -1)``, ``s = (0.5, 2)``: narrower and wider than
the noise). Sampling 20,000 points from noise with the exact model must reproduce the data's
mean within 0.05 and its standard deviation within the relative tolerance written per case
(discretisation error of the step count used; Monte-Carlo error is ~1 %).
"""

from __future__ import annotations

import pytest
import torch
from gaussian_fields import ddpm_output, flow_velocity

from hthlight.diffusion import DDPM, RectifiedFlow, run_sampler

MU = torch.tensor([1.5, -1.0])
S = torch.tensor([0.5, 2.0])
N = 20_000
MEAN_TOL = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(seed))


def check_moments(samples: torch.Tensor, std_rtol: float) -> None:
    mean, std = samples.mean(0), samples.std(0)
    assert torch.allclose(mean, MU, atol=MEAN_TOL), f"mean {mean.tolist()} vs {MU.tolist()}"
    assert torch.allclose(std, S, rtol=std_rtol), f"std {std.tolist()} vs {S.tolist()} (rtol {std_rtol})"


@pytest.mark.parametrize(
    ("sampler", "steps", "shift", "std_rtol"),
    [("euler", 50, 1.0, 0.04), ("euler", 50, 3.0, 0.07), ("heun", 10, 1.0, 0.03), ("heun", 20, 3.0, 0.05)],
)
def test_flow_samplers_reproduce_gaussian_data(sampler, steps, shift, std_rtol):
    flow = RectifiedFlow(shift=shift)
    check_moments(run_sampler(flow, sampler, flow_velocity(MU, S), noise(), steps), std_rtol)


def test_resolution_shift_is_used_when_sampling():
    """An 8x8 latent with base size 4 samples with shift 2, exactly like a plain shift-2 flow."""
    flow = RectifiedFlow(shift=1.0, shift_base_size=4)
    assert flow.effective_shift((2, 8, 8)) == pytest.approx(2.0)
    assert flow.effective_shift((2, 4, 4)) == pytest.approx(1.0)
    velocity = flow_velocity(MU.view(2, 1, 1), S.view(2, 1, 1))
    x = noise()[:500].view(500, 2, 1, 1).expand(500, 2, 8, 8).contiguous()
    shifted = run_sampler(flow, "heun", velocity, x, 10)
    torch.testing.assert_close(shifted, run_sampler(RectifiedFlow(shift=2.0), "heun", velocity, x, 10))
    assert not torch.allclose(shifted, run_sampler(RectifiedFlow(shift=1.0), "heun", velocity, x, 10))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize(
    ("sampler", "steps", "kwargs", "std_rtol"),
    [
        ("ddim", 200, {}, 0.03),  # deterministic DDIM: first order, 5 % low at 50 steps
        ("ddim", 250, {"eta": 1.0}, 0.04),
        ("ddpm", 250, {}, 0.04),  # DiM's 250 sampling steps
    ],
)
def test_ddpm_samplers_reproduce_gaussian_data(prediction, sampler, steps, kwargs, std_rtol):
    ddpm = DDPM(prediction=prediction)
    generator = torch.Generator().manual_seed(1)
    out = run_sampler(ddpm, sampler, ddpm_output(ddpm, MU, S), noise(), steps, generator=generator, **kwargs)
    check_moments(out, std_rtol)


def test_stochastic_samplers_are_seeded_per_sample():
    """Per-sample generators: a sample does not depend on the rest of the batch."""
    ddpm = DDPM()
    model = ddpm_output(ddpm, MU, S)
    x = noise()[:4]
    full = run_sampler(ddpm, "ddpm", model, x, 20, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    part = run_sampler(ddpm, "ddpm", model, x[2:], 20, generator=[torch.Generator().manual_seed(i) for i in (2, 3)])
    torch.testing.assert_close(part, full[2:])
    again = run_sampler(ddpm, "ddpm", model, x, 20, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    torch.testing.assert_close(again, full)
    other = run_sampler(ddpm, "ddpm", model, x, 20, generator=[torch.Generator().manual_seed(9 + i) for i in range(4)])
    assert not torch.allclose(other, full)


def test_wrong_model_output_fails_the_check():
    """The moment check is sharp enough to catch an epsilon model sampled as v."""
    eps_model = ddpm_output(DDPM(prediction="epsilon"), MU, S)
    out = run_sampler(DDPM(prediction="v"), "ddim", eps_model, noise(), 200)
    with pytest.raises(AssertionError):
        check_moments(out, 0.03)
