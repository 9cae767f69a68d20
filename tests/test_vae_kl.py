"""The diffusers AutoencoderKL latent space, loaded from a tiny local model."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import tiny_denoiser_config

import hthlight
from hthlight.errors import ConfigError
from hthlight.module import DiffusionModule

diffusers = pytest.importorskip("diffusers")


def save_tiny_vae(path, in_channels=1, latent_channels=4, **config):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=8,
        **config,
    )
    vae.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae", scaling_factor=0.5, shift_factor=0.25)


def test_registered_with_config_factors_and_channels(vae_dir):
    vae = hthlight.build("vae", "autoencoder_kl", path=vae_dir)
    assert (vae.scaling_factor, vae.shift_factor, vae.scale_factor) == (0.5, 0.25, 2)
    assert vae.latent_channels(1) == 4
    with pytest.raises(ConfigError, match=r"takes 1-channel images, but the data has 3 channel\(s\)"):
        vae.latent_channels(3)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (3, 4, 4, 4) and not z.requires_grad
    mean = vae.model.encode(x).latent_dist.mode()
    torch.testing.assert_close(z, (mean - 0.25) * 0.5)  # the mean, shifted and scaled
    torch.testing.assert_close(vae.decode(z), vae.model.decode(mean).sample, atol=1e-5, rtol=1e-5)
    overridden = hthlight.build("vae", "autoencoder_kl", path=vae_dir, scaling_factor=2.0, shift_factor=0.0)
    torch.testing.assert_close(overridden.encode(x), mean * 2.0)
    assert not any(p.requires_grad for p in vae.parameters())


def test_chunked_equals_whole_batch_and_video_is_framewise(vae_dir):
    whole = hthlight.build("vae", "autoencoder_kl", path=vae_dir)
    chunked = hthlight.build("vae", "autoencoder_kl", path=vae_dir, chunk_size=2)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    z = whole.encode(x)
    torch.testing.assert_close(chunked.encode(x), z, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.decode(z), whole.decode(z), atol=1e-6, rtol=1e-5)
    video = torch.rand(2, 1, 3, 8, 8) * 2 - 1  # (B, C, T, H, W)
    z_video = chunked.encode(video)
    assert z_video.shape == (2, 4, 3, 4, 4)
    torch.testing.assert_close(z_video[1, :, 2], whole.encode(video[1:2, :, 2])[0], atol=1e-6, rtol=1e-5)
    assert chunked.decode(z_video).shape == video.shape


def test_posterior_sample_is_stochastic(vae_dir):
    vae = hthlight.build("vae", "autoencoder_kl", path=vae_dir, sample=True)
    x = torch.rand(2, 1, 8, 8)
    assert not torch.allclose(vae.encode(x), vae.encode(x))


def test_subfolder_and_bad_paths(tmp_path):
    save_tiny_vae(tmp_path / "pipeline" / "vae")
    vae = hthlight.build("vae", "autoencoder_kl", path=str(tmp_path / "pipeline"), subfolder="vae")
    assert vae.scaling_factor == pytest.approx(0.18215) and vae.shift_factor == 0.0  # diffusers' defaults
    with pytest.raises(ConfigError, match=r"autoencoder_kl vae path '.*missing' does not exist"):
        hthlight.build("vae", "autoencoder_kl", path=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(
        ConfigError,
        match=r"has no model weights: expected config.json and one of diffusion_pytorch_model.safetensors, "
        r"diffusion_pytorch_model.bin; found: config.json",
    ):
        hthlight.build("vae", "autoencoder_kl", path=str(tmp_path / "empty"))


class Pixels(L.LightningDataModule):
    image_size, num_classes = 8, 10

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def train_dataloader(self):
        images = torch.rand(8, self.channels, 8, 8) * 2 - 1
        return torch.utils.data.DataLoader([{"image": i, "label": 1} for i in images], batch_size=4)


def fit(module, data, tmp_path, steps=1):
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, data)
    return trainer


def test_latent_channels_must_match_the_denoiser(vae_dir, tmp_path):
    module = DiffusionModule(
        denoiser=tiny_denoiser_config(in_channels=1), vae={"name": "autoencoder_kl", "path": vae_dir}
    )
    with pytest.raises(
        ConfigError,
        match=r"the data has 1 channel\(s\), which the vae turns into 4, "
        r"but model\.denoiser\.in_channels is 1; set it to 4",
    ):
        fit(module, Pixels(channels=1), tmp_path)
    module = DiffusionModule(
        denoiser=tiny_denoiser_config(in_channels=4), vae={"name": "autoencoder_kl", "path": vae_dir}
    )
    with pytest.raises(ConfigError, match="takes 1-channel images, but the data has 3"):
        fit(module, Pixels(channels=3), tmp_path)


def test_trains_on_latents_and_keeps_the_vae_out_of_checkpoints(vae_dir, tmp_path):
    spec = {"name": "autoencoder_kl", "path": vae_dir, "chunk_size": 2}
    module = DiffusionModule(
        denoiser=tiny_denoiser_config(in_channels=4), vae=spec, image_size=8, sampling={"steps": 2}
    )
    trainer = fit(module, Pixels(channels=1), tmp_path, steps=2)
    assert not [k for k in module.state_dict() if k.startswith("vae.")]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = DiffusionModule.load_from_checkpoint(tmp_path / "last.ckpt")  # strict, without VAE weights
    torch.testing.assert_close(loaded.vae.model.encoder.conv_in.weight, module.vae.model.encoder.conv_in.weight)
    assert module.sample_shape() == (4, 4, 4)
    images = loaded.generate(torch.tensor([1, 2]), [0, 1])
    assert images.shape == (2, 1, 8, 8)
    torch.testing.assert_close(images, module.generate(torch.tensor([1, 2]), [0, 1]))
