"""Video model side: temporal patches, 3D positions, ht/vt/th/tv scans in a video denoiser, video VAEs."""

from __future__ import annotations

import pytest
import torch

import hthlight
from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.models.embeddings import PatchEmbed, sincos_position_embedding, unpatchify
from hthlight.module import DiffusionModule

HYDRA = {"name": "hydra", "d_state": 8, "headdim": 8, "expand": 2, "d_conv": 3, "chunk_size": 8}


def video_config(scans=("th", "tv"), **kw) -> DenoiserConfig:
    base = {
        "in_channels": 2,
        "patch_size": 2,
        "dim": 16,
        "mlp_ratio": 1.0,
        "layout": [{"mixer": HYDRA, "repeat": len(scans), "scans": list(scans)}],
    }
    return DenoiserConfig(**{**base, **kw})


def randomise_output(model: Denoiser) -> Denoiser:
    torch.nn.init.normal_(model.final.linear.weight, std=0.5)
    return model.eval()


def test_temporal_patches_round_trip_and_leave_images_alone():
    x = torch.randn(2, 3, 6, 8, 10)
    embed = PatchEmbed(3, 16, patch_size=2, temporal_patch_size=3)
    tokens, grid = embed(x)
    assert grid == (2, 4, 5) and tokens.shape == (2, 40, 16)
    # unpatchify inverts the patch layout: feed patches through an identity projection
    identity = PatchEmbed(3, 3 * 3 * 2 * 2, patch_size=2, temporal_patch_size=3)
    torch.nn.init.eye_(identity.proj.weight)
    torch.nn.init.zeros_(identity.proj.bias)
    patches, grid = identity(x)
    assert torch.equal(unpatchify(patches, grid, 3, 2, 3), x)
    with pytest.raises(ValueError, match="temporal_patch_size=3"):
        embed(torch.randn(1, 3, 4, 8, 10))
    # temporal_patch_size=1 keeps the image parameter shapes; images and one-frame clips work with pt > 1
    assert Denoiser(video_config()).patch_embed.proj.weight.shape == (16, 2 * 2 * 2)
    model = randomise_output(Denoiser(video_config(temporal_patch_size=2)))
    assert model.patch_embed.proj.weight.shape == (16, 2 * 2 * 2 * 2)
    assert model.final.linear.weight.shape == (2 * 2 * 2 * 2, 16)
    t_B = torch.tensor([0.5])
    with torch.no_grad():
        assert model(torch.randn(1, 2, 4, 8, 8), t_B).shape == (1, 2, 4, 8, 8)
        image = torch.randn(1, 2, 8, 8)
        assert model(image, t_B).shape == (1, 2, 8, 8)
        assert torch.equal(model(image, t_B), model(image[:, :, None], t_B)[:, :, 0])


def test_3d_positions_frame_zero_is_the_image_table():
    video = sincos_position_embedding((3, 2, 4), 16).reshape(3, 8, 16)
    image = sincos_position_embedding((1, 2, 4), 16)
    assert torch.equal(video[0], image)
    assert not torch.allclose(video[1], video[0]) and not torch.allclose(video[2], video[1])
    # every frame has the same spatial pattern, shifted by one vector per frame
    assert torch.allclose(video[2] - video[0], (video[2] - video[0])[:1].expand(8, -1), atol=1e-6)


@pytest.mark.parametrize("scan", ["ht", "vt", "th", "tv"])
def test_video_denoiser_runs_every_scan_on_the_thw_grid(scan):
    torch.manual_seed(0)
    model = randomise_output(Denoiser(video_config(scans=(scan,))))
    assert model.blocks[0].mixer.scan_name == scan
    x = torch.randn(2, 2, 3, 4, 6)
    with torch.no_grad():
        out = model(x, torch.tensor([0.2, 0.9]))
        assert out.shape == x.shape and torch.isfinite(out).all()
        # one frame: th == h and tv == v, and a clip's frames are not independent
        single = model(x[:, :, :1], torch.tensor([0.2, 0.9]))
    reference = randomise_output(Denoiser(video_config(scans=({"ht": "h", "th": "h"}.get(scan, "v"),))))
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(single, reference(x[:, :, :1], torch.tensor([0.2, 0.9])))


def test_temporal_major_scan_mixes_along_time_first():
    """A change in frame 0 reaches frame 2 of the same position; with th the scan visits them back to back."""
    perm = hthlight.build("scan", "th").permutation(3, 2, 2)
    assert perm[:3].tolist() == [0, 4, 8]  # position (0, 0) in frames 0, 1, 2
    perm = hthlight.build("scan", "tv").permutation(3, 2, 2)
    assert perm[:6].tolist() == [0, 4, 8, 2, 6, 10]  # down the first column


class HalfSizeVAE(torch.nn.Module):
    """A test image VAE: 2x average-pool encode, nearest-upsample decode, 1 -> 2 channels."""

    scale_factor = 2

    def latent_channels(self, pixel_channels: int) -> int:
        return 2 * pixel_channels

    def encode(self, x):
        z = torch.nn.functional.avg_pool2d(x, 2)
        return torch.cat([z, -z], dim=1)

    def decode(self, z):
        return torch.nn.functional.interpolate(z[:, : z.shape[1] // 2], scale_factor=2)


def test_framewise_vae_applies_the_image_vae_per_frame():
    vae = hthlight.build("vae", "framewise", image_vae={"class_path": f"{__name__}.HalfSizeVAE"}, chunk_size=3)
    clip = torch.randn(2, 1, 5, 8, 8)
    z = vae.encode(clip)
    assert z.shape == (2, 2, 5, 4, 4) and vae.scale_factor == 2 and vae.latent_channels(1) == 2
    for t in range(5):
        assert torch.equal(z[:, :, t], HalfSizeVAE().encode(clip[:, :, t]))
    assert vae.decode(z).shape == clip.shape
    identity = hthlight.build("vae", "framewise")
    assert torch.equal(identity.encode(clip), clip) and identity.latent_frames(7) == 7


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.1, -0.2, 0.0, 0.3],
        latents_std=[2.0, 1.0, 0.5, 1.5],
    )
    path = tmp_path_factory.mktemp("wan") / "vae"
    model.save_pretrained(path)
    return path


def test_diffusers_video_vae_loads_from_a_local_path_and_compresses_time(tiny_wan):
    vae = hthlight.build("vae", "diffusers_video", path=str(tiny_wan))
    assert (vae.scale_factor, vae.temporal_factor) == (2, 2)
    assert vae.latent_channels(3) == 4 and vae.latent_frames(5) == 3 and vae.latent_frames(1) == 1
    assert "_model" not in dict(vae.named_modules()) and not list(vae.state_dict())  # not saved in checkpoints
    clip = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = vae.encode(clip)
    assert z.shape == (1, 4, 3, 8, 8)
    raw = vae.model.encode(clip).latent_dist.mean
    mean, std = torch.tensor([0.1, -0.2, 0.0, 0.3]), torch.tensor([2.0, 1.0, 0.5, 1.5])
    assert torch.allclose(z, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1), atol=1e-6)
    assert vae.decode(z).shape == clip.shape
    assert vae.encode(clip[:, :, 0]).shape == (1, 4, 8, 8)  # an image is one latent frame
    with pytest.raises(hthlight.ConfigError, match="1 \\+ k \\* 2 frames"):
        vae.latent_frames(4)
    # the module asks the VAE for the latent frame count
    module = DiffusionModule(
        denoiser=video_config(in_channels=4, layout=["attention"]),
        vae={"name": "diffusers_video", "path": str(tiny_wan)},
        image_size=16,
        num_frames=5,
    )
    assert module.sample_shape() == (4, 3, 8, 8)
