"""CosineFlow: the trigonometric interpolant, its velocity target, sampling, and use in DiffusionModule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hthlight_flowschedules import CosineFlow

from hthlight.diffusion import sample_euler
from hthlight.module import DiffusionModule
from hthlight.registry import Registry, build_from_spec

# as tests/conftest.py tiny_denoiser_config() in the hthlight repository
TINY_HYDRA = {"name": "hydra", "d_state": 4, "headdim": 8, "expand": 2, "d_conv": 3, "chunk_size": 8}
TINY_ATTENTION = {"name": "attention", "num_heads": 2, "qk_norm": True}
TINY_DENOISER = {
    "in_channels": 1,
    "patch_size": 2,
    "dim": 16,
    "layout": [{"mixer": TINY_HYDRA, "repeat": 2, "scans": ["h", "v"]}, {"mixer": TINY_ATTENTION}],
    "conditioner": {"name": "class_label", "num_classes": 10},
}


def point_mass_velocity(target):
    """Exact velocity when all data sits at ``target`` (x*).

    On the path ``x = cos(a) x* + sin(a) eps`` with ``a = pi t / 2`` the noise is
    ``eps = (x - cos(a) x*) / sin(a)``, so ``v = (pi/2)(cos(a) eps - sin(a) x*) = (pi/2)(cos(a) x - x*) / sin(a)``.
    """

    def velocity(x, t_B):
        a = (math.pi / 2 * t_B).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return math.pi / 2 * (torch.cos(a) * x - target) / torch.sin(a)

    return velocity


def test_interpolation_endpoints_and_midpoint():
    flow = CosineFlow()
    x0, noise = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    xt = flow.add_noise(x0, noise, torch.tensor([0.0, 0.5, 1.0, 1 / 3]))
    torch.testing.assert_close(xt[0], x0[0])  # t = 0: data
    torch.testing.assert_close(xt[1], (x0[1] + noise[1]) / math.sqrt(2))
    torch.testing.assert_close(xt[2], noise[2])  # t = 1: noise
    torch.testing.assert_close(xt[3], math.cos(math.pi / 6) * x0[3] + 0.5 * noise[3])


def test_path_is_variance_preserving():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(CosineFlow.alpha(t) ** 2 + CosineFlow.sigma(t) ** 2, torch.ones_like(t))
    x0, noise = torch.randn(200000, dtype=torch.float64), torch.randn(200000, dtype=torch.float64)
    xt = CosineFlow.add_noise(x0[None].expand(3, -1), noise[None].expand(3, -1), torch.tensor([0.2, 0.5, 0.8]))
    assert torch.allclose(xt.var(dim=1), torch.ones(3, dtype=torch.float64), atol=0.02)


def test_target_is_the_time_derivative_of_the_path():
    flow = CosineFlow()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(9, 2, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(9, 2, 3, generator=g, dtype=torch.float64)
    t = torch.linspace(0.01, 0.99, 9, dtype=torch.float64)
    h = 1e-6
    finite_difference = (flow.add_noise(x0, noise, t + h) - flow.add_noise(x0, noise, t - h)) / (2 * h)
    target = flow.target(x0, noise, t)
    assert target.dtype == torch.float64
    torch.testing.assert_close(target, finite_difference, rtol=0, atol=1e-8)
    # endpoints: d/dt at t = 0 is (pi/2) eps, at t = 1 it is -(pi/2) x0
    torch.testing.assert_close(flow.target(x0, noise, torch.zeros(9, dtype=torch.float64)), math.pi / 2 * noise)
    torch.testing.assert_close(flow.target(x0, noise, torch.ones(9, dtype=torch.float64)), -math.pi / 2 * x0)


def test_loss_is_zero_for_the_true_velocity_and_positive_otherwise():
    flow = CosineFlow()
    x0, noise = torch.randn(8, 2), torch.randn(8, 2)
    t = flow.sample_time(8, generator=torch.Generator().manual_seed(3))
    true_velocity = lambda xt, t_B: flow.target(x0, noise, t_B)
    assert flow.loss(true_velocity, x0, noise=noise, t_B=t).item() == 0.0
    assert flow.loss(true_velocity, x0, noise=noise).item() == 0.0  # times drawn inside
    assert flow.loss(lambda xt, t_B: torch.zeros_like(xt), x0, noise=noise).item() > 0.1
    # the rectified-flow target is not this objective's target
    assert flow.loss(lambda xt, t_B: noise - x0, x0, noise=noise, t_B=t).item() > 1e-3


def test_loss_draws_noise_and_times_from_the_generator():
    flow = CosineFlow()
    x0 = torch.randn(4, 3)
    model = lambda xt, t_B: xt * t_B[:, None]
    a = flow.loss(model, x0, generator=torch.Generator().manual_seed(7))
    b = flow.loss(model, x0, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item()


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_training_times_in_unit_interval_and_seeded(sampling):
    flow = CosineFlow(timestep_sampling=sampling)
    t = flow.sample_time(10000, generator=torch.Generator().manual_seed(1))
    assert t.shape == (10000,) and t.min() > 0 and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.02
    assert torch.equal(t, flow.sample_time(10000, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampling_times_decrease_from_one_to_zero(shift):
    times = CosineFlow(shift=shift).sampling_times(6)
    assert times.shape == (7,) and times[0] == 1.0 and times[-1] == 0.0
    assert torch.all(times[1:] < times[:-1])
    if shift > 1:
        assert torch.all(times[1:-1] > torch.linspace(1, 0, 7)[1:-1])


def test_euler_converges_to_a_point_mass_as_steps_grow():
    target = torch.tensor([[0.7, -1.5, 2.0]], dtype=torch.float64)
    velocity = point_mass_velocity(target)
    x1 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flow = CosineFlow()
    errors = []
    for steps in (2, 4, 8, 16, 32, 64, 128):
        out = sample_euler(velocity, x1, flow.sampling_times(steps).to(torch.float64))
        errors.append((out - target).abs().max().item())
    assert all(later < earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.02 * errors[0] and errors[-1] < 0.01, errors


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="'uniform' or 'logit_normal'"):
        CosineFlow(timestep_sampling="cosine")
    with pytest.raises(ValueError, match="must be positive"):
        CosineFlow(shift=0.0)
    with pytest.raises(ValueError, match=">= 1"):
        CosineFlow().sampling_times(0)


def test_built_from_a_class_path_spec():
    flow = build_from_spec("scheduler", {"class_path": "hthlight_flowschedules.CosineFlow", "shift": 2.0})
    assert isinstance(flow, CosineFlow) and flow.shift == 2.0 and flow.prediction == "velocity"


def test_entry_point_registers_cosine_flow(installed_plugin, monkeypatch):
    monkeypatch.delenv("HTHLIGHT_NO_PLUGINS", raising=False)
    registry = Registry("scheduler", "hthlight.schedulers", {})  # fresh: the global registry's cache is not involved
    assert "cosine_flow" in registry.names()
    entry = registry.entry("cosine_flow")
    assert entry.distribution == "hthlight-flowschedules" and entry.version == "0.1.0"
    flow = registry.build("cosine_flow", timestep_sampling="uniform")
    assert type(flow).__name__ == "CosineFlow" and flow.timestep_sampling == "uniform"


def test_diffusion_module_trains_and_generates_with_cosine_flow():
    torch.manual_seed(0)
    module = DiffusionModule(
        denoiser=TINY_DENOISER, scheduler={"class_path": "hthlight_flowschedules.CosineFlow"}, image_size=8
    )
    module.configure_model()
    assert isinstance(module.scheduler, CosineFlow)
    denoiser = module.denoiser
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    batch = {"label": torch.tensor([0, 3, 5, 9])}
    noise = torch.randn(x0.shape, generator=g)
    t_B = module.scheduler.sample_time(4, generator=g)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=3e-3)

    def step():
        optimizer.zero_grad()
        loss = module.scheduler.loss(lambda x, t: denoiser(x, t, batch), x0, noise=noise, t_B=t_B)
        loss.backward()
        return loss

    loss = step()
    assert torch.isfinite(loss)
    grads = [p.grad for p in denoiser.parameters() if p.requires_grad]
    assert grads and all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert any(grad.abs().sum() > 0 for grad in grads)
    optimizer.step()
    for _ in range(15):
        step()
        optimizer.step()
    assert step().item() < loss.item()  # the same batch, noise and times: training lowers the loss

    for sampler in ("euler", "heun"):
        images = module.generate(torch.tensor([1, 7]), seeds_B=[0, 1], steps=4, cfg_scale=2.0, sampler=sampler)
        assert images.shape == (2, 1, 8, 8)
        assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    again = module.generate(torch.tensor([1, 7]), seeds_B=[0, 1], steps=4, cfg_scale=2.0, sampler="heun")
    assert torch.equal(images, again)  # seeded
