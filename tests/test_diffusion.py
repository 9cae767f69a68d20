"""Rectified flow objective, samplers and classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

import hthlight
from hthlight.diffusion import RectifiedFlow, get_sampler, guided, sample_euler, sample_heun
from hthlight.errors import ConfigError


def test_interpolation_and_velocity_target():
    flow = RectifiedFlow()
    x0, noise = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = flow.add_noise(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[3], noise[3])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(flow.target(x0, noise), noise - x0)


def test_loss_is_zero_for_the_true_velocity_and_positive_otherwise():
    flow = RectifiedFlow()
    x0, noise = torch.randn(8, 2), torch.randn(8, 2)
    true_velocity = lambda xt, t: noise - x0
    assert flow.loss(true_velocity, x0, noise=noise).item() == 0.0
    assert flow.loss(lambda xt, t: torch.zeros_like(xt), x0, noise=noise).item() > 0.1


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_training_times_in_unit_interval_and_seeded(sampling):
    flow = RectifiedFlow(timestep_sampling=sampling)
    t = flow.sample_time(10000, generator=torch.Generator().manual_seed(1))
    assert t.min() > 0 and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.02
    again = flow.sample_time(10000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, again)
    if sampling == "logit_normal":  # concentrated in the middle compared to uniform
        assert ((t > 0.25) & (t < 0.75)).float().mean() > 0.6


def test_shift_moves_times_towards_noise_and_keeps_endpoints():
    flow = RectifiedFlow(shift=3.0)
    times = flow.sampling_times(4)
    assert times[0] == 1.0 and times[-1] == 0.0
    assert torch.all(times[1:-1] > torch.linspace(1, 0, 5)[1:-1])


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_samplers_are_exact_for_a_point_mass(sampler, steps):
    """For data concentrated at x*, v(x, t) = (x - x*) / t and every step lands on the exact path."""
    target = torch.tensor([[2.0, -1.0]])
    velocity = lambda x, t: (x - target) / t[:, None]
    x1 = torch.randn(5, 2)
    out = sampler(velocity, x1, RectifiedFlow().sampling_times(steps))
    torch.testing.assert_close(out, target.expand(5, 2))


def test_heun_is_more_accurate_than_euler_on_a_curved_flow():
    # dx/dt = x (exact: x(0) = x(1) / e); both from t = 1 to t = 0 with 4 steps
    velocity = lambda x, t: x
    x1 = torch.ones(1, 1)
    times = torch.linspace(1, 0.0, 5)
    exact = torch.exp(torch.tensor(-1.0))
    euler_error = (sample_euler(velocity, x1, times) - exact).abs().item()
    heun_error = (sample_heun(velocity, x1, times) - exact).abs().item()
    assert heun_error < euler_error / 3


def test_guidance_combines_conditional_and_unconditional():
    def model(x, t, drop):
        return torch.where(drop[:, None], torch.full_like(x, 1.0), torch.full_like(x, 3.0))

    v = guided(model, scale=2.5)(torch.zeros(4, 2), torch.ones(4))
    torch.testing.assert_close(v, torch.full((4, 2), 1.0 + 2.5 * 2.0))
    torch.testing.assert_close(guided(model, scale=1.0)(torch.zeros(2, 2), torch.ones(2)), torch.full((2, 2), 3.0))


def test_scheduler_registry_and_errors():
    flow = hthlight.build("scheduler", "rectified_flow", timestep_sampling="uniform")
    assert isinstance(flow, RectifiedFlow)
    with pytest.raises(ValueError, match="'uniform' or 'logit_normal'"):
        RectifiedFlow(timestep_sampling="cosine")
    with pytest.raises(ConfigError, match="available samplers: euler, heun"):
        get_sampler("dpm")
    with pytest.raises(ValueError, match=">= 1"):
        RectifiedFlow().sampling_times(0)
