"""DiffusionModule: optimisation, EMA, deterministic sampling, checkpoints."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import tiny_denoiser_config

from hthlight.ema import ema_decay, ema_update
from hthlight.errors import ConfigError
from hthlight.module import DiffusionModule, OptimizerConfig, build_adamw, lr_lambda


def tiny_module(**overrides) -> DiffusionModule:
    kwargs = {"denoiser": tiny_denoiser_config(), "image_size": 8, "sampling": {"steps": 3, "cfg_scale": 2.0}}
    kwargs.update(overrides)
    module = DiffusionModule(**kwargs)
    module.configure_model()
    return module


def test_ema_update_and_decay_warmup():
    model = torch.nn.Linear(2, 2)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.weight.clone()
    ema_update(ema, model, decay=0.75)
    torch.testing.assert_close(ema.weight, 0.75 * before + 0.25 * model.weight)
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(10**6, 0.999) == 0.999
    assert ema_decay(0, 0.999, warmup=False) == 0.999


def test_learning_rate_warmup_then_cosine_to_floor():
    schedule = lr_lambda(OptimizerConfig(warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert lr_lambda(OptimizerConfig(schedule="constant"), 100)(50) == 1.0


def test_generate_is_deterministic_per_seed_and_independent_of_batching():
    module = tiny_module()
    with torch.no_grad():
        for p in module.ema_denoiser.parameters():
            p.normal_(0, 0.1)
    labels = torch.tensor([1, 2, 3])
    full = module.generate(labels, [10, 11, 12])
    assert full.shape == (3, 1, 8, 8) and full.abs().max() <= 1
    torch.testing.assert_close(module.generate(labels, [10, 11, 12]), full)
    torch.testing.assert_close(module.generate(labels[1:], [11, 12]), full[1:], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(module.generate(labels, [13, 11, 12])[0], full[0])


def test_sampling_uses_ema_weights():
    module = tiny_module()
    with torch.no_grad():
        for p in module.ema_denoiser.parameters():
            p.normal_(0, 0.1)
    ema_sample = module.generate(torch.tensor([0]), [0])
    module.ema_config.use_for_sampling = False  # the raw weights are still zero-initialised at the output
    raw_sample = module.generate(torch.tensor([0]), [0])
    assert not torch.allclose(ema_sample, raw_sample)


class TinyDigits(L.LightningDataModule):
    image_size, channels, num_classes = 8, 1, 10

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1
        labels = torch.arange(32) % 10
        data = [{"image": i, "label": y} for i, y in zip(images, labels)]
        return torch.utils.data.DataLoader(data, batch_size=8)


def test_training_reduces_loss_updates_ema_and_checkpoint_roundtrips(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(optimizer={"lr": 3e-3}, ema={"decay": 0.9})
    start = copy.deepcopy(module.denoiser.state_dict())
    trainer = L.Trainer(
        max_steps=40,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    data = TinyDigits()
    batch = next(iter(data.train_dataloader()))
    x0 = batch["image"]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    t = torch.full((8,), 0.5)

    def fixed_loss(model):
        with torch.no_grad():
            return module.scheduler.loss(lambda x, tt: model(x, tt, batch), x0, noise=noise, t_B=t).item()

    before = fixed_loss(module.denoiser)
    trainer.fit(module, data)
    assert fixed_loss(module.denoiser) < 0.9 * before
    changed = [k for k, v in module.denoiser.state_dict().items() if not torch.equal(v, start[k])]
    assert changed
    ema_state = module.ema_denoiser.state_dict()
    assert any(not torch.equal(ema_state[k], module.denoiser.state_dict()[k]) for k in changed)

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = DiffusionModule.load_from_checkpoint(path)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)
    assert any(k.startswith("ema_denoiser.") for k in restored.state_dict())
    torch.testing.assert_close(restored.generate(torch.tensor([4]), [0]), module.generate(torch.tensor([4]), [0]))


def test_bad_module_configs_fail_before_training():
    with pytest.raises(ConfigError, match="unknown sampler"):
        tiny_module(sampling={"sampler": "ddpm++"})
    with pytest.raises(ConfigError, match="unknown scheduler 'flow'"):
        tiny_module(scheduler="flow")
    with pytest.raises(ConfigError, match=r"ema.decay must be in \[0, 1\)"):
        tiny_module(ema={"decay": 1.5})
    with pytest.raises(ConfigError, match="image_size is not set"):
        tiny_module(image_size=None).generate(torch.tensor([0]), [0])


def test_modules_do_not_share_their_default_settings():
    """The dataclass defaults in the signature are single objects: each module must get its own."""
    first, second = tiny_module(), tiny_module()
    first.ema_config.use_for_sampling = False
    first.sampling.sampler_kwargs["eta"] = 0.5
    assert second.ema_config.use_for_sampling is True
    assert second.sampling.sampler_kwargs == {}


def _seeded_state(device: str | None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = DiffusionModule(denoiser=tiny_denoiser_config(), image_size=8)
    if device is None:
        module.configure_model()
    else:
        with torch.device(device):  # what Lightning's tensor_init_context does for one GPU or DDP
            module.configure_model()
    return module.denoiser.state_dict()


def test_model_is_built_on_the_cpu_or_deferred_on_meta():
    assert all(v.device.type == "cpu" for v in _seeded_state(None).values())
    assert all(v.device.type == "meta" for v in _seeded_state("meta").values())  # FSDP's deferred init


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_initial_weights_depend_on_the_seed_not_on_the_default_device():
    on_cpu, under_cuda = _seeded_state(None), _seeded_state("cuda")
    for key, value in on_cpu.items():
        assert torch.equal(under_cuda[key], value), key


def test_adamw_fuses_only_on_cuda_and_refuses_fused_on_cpu():
    """``optimizer.fused: null`` picks the fused kernel only for CUDA parameters; ``true`` on CPU is an error."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert not build_adamw([{"params": params}], OptimizerConfig()).defaults["fused"]
    assert not build_adamw([{"params": params}], OptimizerConfig(fused=False)).defaults["fused"]
    with pytest.raises(ConfigError, match=r"optimizer.fused: true needs every parameter on CUDA"):
        build_adamw([{"params": params}], OptimizerConfig(fused=True))
    module = tiny_module(optimizer={"fused": None})
    optimizer = module.configure_optimizers()["optimizer"]
    assert not optimizer.defaults["fused"]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.denoiser.parameters()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_is_fused_on_cuda_but_not_under_fp16_amp():
    params = [torch.nn.Parameter(torch.zeros(3, device="cuda"))]
    assert build_adamw([{"params": params}], OptimizerConfig()).defaults["fused"]
    assert not build_adamw([{"params": params}], OptimizerConfig(), fp16_amp=True).defaults["fused"]
    assert not build_adamw([{"params": params}], OptimizerConfig(fused=False)).defaults["fused"]
