"""configs/recipes: every paper recipe parses through the CLI and carries its paper's values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_denoiser_config

from hthlight.cli import main
from hthlight.module import DiffusionModule

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
PAPER_RECIPES = ["hth_stage1_256", "hth_stage2_1k", "dim_imagenet256", "dimba"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parsed():
    """Each recipe parsed alone and on top of base.yaml (capsys is function-scoped: capture by hand)."""
    import contextlib
    import io

    out = {}
    for name in PAPER_RECIPES:
        for key, configs in [
            (name, [RECIPES / f"{name}.yaml"]),
            (f"base+{name}", [RECIPES / "base.yaml", RECIPES / f"{name}.yaml"]),
        ]:
            buffer = io.StringIO()
            args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
            with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit) as info:
                main(args)
            assert info.value.code == 0, key
            out[key] = yaml.safe_load(buffer.getvalue())
    return out


def global_batch(config: dict) -> int:
    trainer = config["trainer"]
    return (
        config["data"]["init_args"]["batch_size"]
        * trainer["devices"]
        * trainer["num_nodes"]
        * trainer["accumulate_grad_batches"]
    )


def test_every_recipe_parses_alone_and_equals_itself_on_top_of_base(parsed):
    assert set(RECIPES.glob("*.yaml")) == {RECIPES / f"{n}.yaml" for n in [*PAPER_RECIPES, "base"]}
    for name in PAPER_RECIPES:
        assert parsed[f"base+{name}"] == parsed[name], name


def test_hth_stage_recipes_follow_the_paper(parsed):
    s1, s2 = parsed["hth_stage1_256"], parsed["hth_stage2_1k"]
    for config in (s1, s2):
        model = config["model"]
        assert model["denoiser"]["preset"] == "hth-5b"
        assert model["text_encoder"]["name"] == "t5" and "flan-t5-xxl" in model["text_encoder"]["path"]
        assert model["scheduler"]["name"] == "rectified_flow"
        assert model["vae"]["name"] == "autoencoder_kl"
        assert config["data"]["class_path"] == "hthlight.data.CaptionDataModule"
    assert global_batch(s1) == 1024 and s1["trainer"]["max_steps"] == 200_000 + 286_000
    assert s1["model"]["optimizer"]["lr"] == 1e-4 and s1["model"]["optimizer"]["schedule"] == "cosine"
    assert s1["data"]["init_args"]["image_size"] == 256
    assert global_batch(s2) == 576 and s2["trainer"]["max_steps"] == 10_000
    opt = s2["model"]["optimizer"]
    assert opt["lr"] == 5e-5 and opt["lr"] * opt["min_lr_ratio"] == pytest.approx(1e-6)
    assert s2["data"]["init_args"]["image_size"] == 1024 and s2["data"]["init_args"]["max_aspect_ratio"] == 4.0


def test_dim_and_dimba_recipes_follow_their_papers(parsed):
    dim, dimba = parsed["dim_imagenet256"], parsed["dimba"]
    assert global_batch(dim) == 256
    assert dim["model"]["optimizer"] == {**dim["model"]["optimizer"], "lr": 1e-4, "weight_decay": 0.0}
    assert dim["model"]["optimizer"]["schedule"] == "constant" and dim["model"]["ema"]["decay"] == 0.9999
    sched = dim["model"]["scheduler"]
    assert (sched["name"], sched["beta_start"], sched["beta_end"], sched["num_train_timesteps"]) == (
        "ddpm",
        1e-4,
        0.02,
        1000,
    )
    assert dim["model"]["sampling"]["sampler"] == "ddpm" and dim["model"]["sampling"]["steps"] == 250
    assert dim["model"]["sampling"]["cfg_scale"] == 1.5
    assert dimba["model"]["denoiser"]["preset"] == "dimba-l"
    assert dimba["model"]["text_encoder"]["max_length"] == 350
    assert dimba["model"]["optimizer"]["lr"] == 2e-5 and dimba["model"]["optimizer"]["schedule"] == "constant"
    assert dimba["model"]["sampling"]["sampler"] == "diffusers:DPMSolverMultistepScheduler"
    assert dimba["model"]["sampling"]["steps"] == 20


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_recipe_objective_and_sampler_build_on_a_tiny_denoiser(name, parsed):
    """The recipe's scheduler + sampler (+ kwargs) pass the module's checks and sample."""
    model = parsed[name]["model"]
    module = DiffusionModule(
        denoiser=tiny_denoiser_config(conditioner={"name": "class_label", "num_classes": 10}),
        scheduler=model["scheduler"],
        sampling={**model["sampling"], "steps": 2 if model["sampling"]["sampler"] != "ddpm" else 3},
        image_size=8,
    )
    module.configure_model()
    images = module.generate(torch.tensor([1]), [0])
    assert images.shape == (1, 1, 8, 8) and torch.isfinite(images).all()


def test_init_from_checkpoint_loads_weights_but_not_the_step(tmp_path):
    """Stage 2 starts from stage 1's EMA weights with a fresh optimizer and step counter."""
    import lightning as L

    from hthlight.callbacks.init_from_checkpoint import InitFromCheckpoint
    from hthlight.errors import ConfigError

    def module(**kwargs):
        m = DiffusionModule(denoiser=tiny_denoiser_config(), image_size=8, sampling={"steps": 2}, **kwargs)
        m.configure_model()
        return m

    stage1 = module()
    with torch.no_grad():
        for p in stage1.ema_denoiser.parameters():
            p.normal_(0, 0.1)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.strategy.connect(stage1)
    path = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(path)

    stage2 = module()
    fresh = type("Trainer", (), {"ckpt_path": None})()
    InitFromCheckpoint(str(path)).on_fit_start(fresh, stage2)
    for ours, theirs in zip(stage2.denoiser.parameters(), stage1.ema_denoiser.parameters()):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(stage2.generate(torch.tensor([3]), [0]), stage1.generate(torch.tensor([3]), [0]))
    resumed = module()
    InitFromCheckpoint(str(path)).on_fit_start(type("Trainer", (), {"ckpt_path": "x.ckpt"})(), resumed)
    assert not torch.equal(next(resumed.denoiser.parameters()), next(stage2.denoiser.parameters()))
    with pytest.raises(ConfigError, match="differs from the one in"):
        InitFromCheckpoint(str(path)).on_fit_start(fresh, _wider())
    with pytest.raises(ConfigError, match="does not exist"):
        InitFromCheckpoint(str(tmp_path / "none.ckpt")).setup(None, stage2, "fit")


def _wider() -> DiffusionModule:
    m = DiffusionModule(denoiser=tiny_denoiser_config(dim=32), image_size=8, sampling={"steps": 2})
    m.configure_model()
    return m
