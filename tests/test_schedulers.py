"""Objectives (kind ``scheduler``): DDPM eps/v, resolution-shifted rectified flow, sampler pairing."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import tiny_denoiser_config

import hthlight
from hthlight.cli import main
from hthlight.diffusion import DDPM, RectifiedFlow, check_sampler, run_sampler
from hthlight.errors import ConfigError
from hthlight.module import DiffusionModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ddpm_linear_betas_match_dim_setting():
    ddpm = hthlight.build("scheduler", "ddpm")
    assert ddpm.num_train_timesteps == 1000
    assert ddpm.betas[0].item() == pytest.approx(1e-4) and ddpm.betas[-1].item() == pytest.approx(0.02)
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(500))
    assert ddpm.alphas_cumprod[499].item() == pytest.approx(expected, rel=1e-9)
    assert ddpm.alpha_bar(torch.tensor([0.499])).item() == pytest.approx(expected, rel=1e-9)
    t = ddpm.sample_time(10_000, generator=torch.Generator().manual_seed(0))
    k = t * 1000
    assert torch.allclose(k, k.round(), atol=1e-3) and k.min() >= 0 and k.max() <= 999


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddpm_noising_target_and_inversion(prediction):
    ddpm = DDPM(prediction=prediction)
    x0, noise = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.999])
    abar = ddpm.alpha_bar(t).float().view(-1, 1, 1, 1)
    xt = ddpm.add_noise(x0, noise, t)
    torch.testing.assert_close(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    target = ddpm.target(x0, noise, t)
    expected = noise if prediction == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
    torch.testing.assert_close(target, expected)
    x0_hat, eps_hat = ddpm.predict_x0_eps(target, xt, ddpm.alpha_bar(t))  # the true output recovers x0 and eps
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(eps_hat, noise, atol=2e-3, rtol=1e-3)
    assert ddpm.loss(lambda x, tt: ddpm.target(x0, noise, tt), x0, noise=noise).item() < 1e-10


def test_ddpm_timestep_spacings():
    assert DDPM().timesteps(4) == [999, 666, 333, 0]  # DiT/DiM respacing: round(linspace(0, T-1, n))
    assert DDPM(timestep_spacing="leading").timesteps(4) == [750, 500, 250, 0]
    assert DDPM(timestep_spacing="trailing").timesteps(4) == [999, 749, 499, 249]
    assert DDPM().timesteps(1000) == list(range(999, -1, -1))
    with pytest.raises(ConfigError, match=r"1\.\.1000"):
        DDPM().timesteps(1001)
    with pytest.raises(ConfigError, match="epsilon, v"):
        DDPM(prediction="x0")


def test_resolution_shift_formula():
    flow = RectifiedFlow(shift=1.5, shift_base_size=32)  # base: 256 px through an 8x VAE
    assert flow.effective_shift((4, 32, 32)) == pytest.approx(1.5)
    assert flow.effective_shift((4, 128, 128)) == pytest.approx(1.5 * 4)  # 1K: 16x the tokens
    assert flow.effective_shift((4, 64, 128)) == pytest.approx(1.5 * math.sqrt(8))
    assert flow.effective_shift((4, 4, 32, 32)) == pytest.approx(1.5 * 2)  # 4 latent frames
    times = flow.sampling_times(4, shape=(4, 128, 128))
    s = 6.0
    grid = torch.linspace(1, 0, 5)
    torch.testing.assert_close(times, s * grid / (1 + (s - 1) * grid))
    # training times follow the sample's resolution: larger latents are noisier on average
    g = lambda: torch.Generator().manual_seed(0)
    small = flow.sample_time(4000, generator=g(), shape=(4, 32, 32))
    large = flow.sample_time(4000, generator=g(), shape=(4, 128, 128))
    assert large.mean() > small.mean() + 0.1
    torch.testing.assert_close(small, RectifiedFlow(shift=1.5).sample_time(4000, generator=g()))
    assert RectifiedFlow(shift=2.0).effective_shift((4, 128, 128)) == 2.0  # no base size: fixed shift


@pytest.mark.parametrize(
    ("scheduler", "sampler", "allowed"),
    [(RectifiedFlow(), "ddim", "euler, heun"), (DDPM(), "euler", "ddim, ddpm"), (DDPM(), "heun", "ddim, ddpm")],
)
def test_incompatible_pairs_list_the_allowed_samplers(scheduler, sampler, allowed):
    with pytest.raises(ConfigError, match=f"allowed samplers: {allowed}, diffusers:"):
        check_sampler(scheduler, sampler)


def test_sampler_kwargs_are_checked():
    check_sampler(DDPM(), "ddim", {"eta": 0.3})
    with pytest.raises(ConfigError, match="unknown sampler_kwargs etta; it accepts: eta"):
        check_sampler(DDPM(), "ddim", {"etta": 0.3})
    with pytest.raises(ConfigError, match="accepts: none"):
        check_sampler(RectifiedFlow(), "euler", {"eta": 0.3})
    with pytest.raises(ConfigError, match="eta must be >= 0"):
        run_sampler(DDPM(), "ddim", lambda x, t: x, torch.zeros(1, 1), 2, eta=-1.0)


class TinyData(L.LightningDataModule):
    image_size, channels, num_classes = 8, 1, 10

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
        data = [{"image": i, "label": y} for i, y in zip(images, torch.arange(16) % 10)]
        return torch.utils.data.DataLoader(data, batch_size=8)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddpm_training_through_the_module_reduces_the_loss(prediction, tmp_path):
    torch.manual_seed(0)
    module = DiffusionModule(
        denoiser=tiny_denoiser_config(),
        scheduler={"name": "ddpm", "prediction": prediction},
        optimizer={"lr": 3e-3},
        sampling={"sampler": "ddim", "steps": 3, "cfg_scale": 2.0, "sampler_kwargs": {"eta": 0.5}},
        image_size=8,
    )
    batch = next(iter(TinyData().train_dataloader()))
    noise = torch.randn(batch["image"].shape, generator=torch.Generator().manual_seed(5))
    t = torch.full((8,), 0.3)

    def fixed_loss():
        with torch.no_grad():
            return module.scheduler.loss(lambda x, tt: module.denoiser(x, tt, batch), batch["image"], noise, t).item()

    module.configure_model()
    before = fixed_loss()
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(module, TinyData())
    assert fixed_loss() < 0.9 * before
    images = module.generate(torch.tensor([1, 2]), [0, 1])
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    torch.testing.assert_close(module.generate(torch.tensor([2]), [1]), images[1:], atol=1e-5, rtol=1e-4)


def test_module_rejects_a_sampler_that_does_not_fit_its_objective():
    with pytest.raises(ConfigError, match="allowed samplers: ddim, ddpm"):
        DiffusionModule(denoiser=tiny_denoiser_config(), scheduler="ddpm", sampling={"sampler": "euler"})


def test_predict_command_line_sets_sampler_steps_and_kwargs(tmp_path, capsys):
    """``hthlight predict --model.sampling.*``: sampler, steps and sampler kwargs reach the module."""
    import yaml

    args = [
        "predict",
        "--model.denoiser",
        yaml.safe_dump(tiny_denoiser_config(), default_flow_style=True).strip(),
        "--model.scheduler",
        "{name: ddpm, prediction: v}",
        "--model.sampling.sampler",
        "ddim",
        "--model.sampling.steps",
        "7",
        "--model.sampling.sampler_kwargs",
        "{eta: 0.25}",
        "--data",
        "hthlight.data.SamplingDataModule",
        "--data.num_classes",
        "2",
        "--print_config",
    ]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    sampling = {"sampler": "ddim", "steps": 7, "cfg_scale": 4.0, "sampler_kwargs": {"eta": 0.25}, "cuda_graph": False}
    assert printed["sampling"] == sampling
    assert printed["scheduler"] == {"name": "ddpm", "prediction": "v"}
    bad = [a if a != "ddim" else "heun" for a in args if a != "--print_config"]
    assert main(bad) == 2
    assert "allowed samplers: ddim, ddpm" in capsys.readouterr().err
