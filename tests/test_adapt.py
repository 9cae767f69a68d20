"""Image-to-video adaptation (HTH sec. 3.3): exactly the documented blocks switch scans, nothing else changes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hthlight.adapt import VideoAdaptation, adapt_checkpoint, load_image_weights, plan_scans, video_layout
from hthlight.cli import main
from hthlight.errors import ConfigError
from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.module import DiffusionModule

HYDRA = {"name": "hydra", "d_state": 8, "headdim": 8, "expand": 2, "d_conv": 3, "chunk_size": 8}
#: HTH's layout (groups of 10 Hydra h/v + 1 attention), two groups instead of three
HTH_LAYOUT = [{"repeat": 2, "layout": [{"mixer": HYDRA, "repeat": 10, "scans": ["h", "v"]}, {"mixer": "attention"}]}]
#: block index -> expected video scan: positions 2, 3, 6, 7 of each group of 10 Hydra blocks go temporal-major
EXPECTED = {}
for _group, first in enumerate((0, 11)):
    for pos in range(10):
        direction = "h" if pos % 2 == 0 else "v"
        EXPECTED[first + pos] = {"h": "th", "v": "tv"}[direction] if pos in (2, 3, 6, 7) else direction + "t"


def config(layout, **kw) -> DenoiserConfig:
    base = {
        "in_channels": 1,
        "patch_size": 2,
        "dim": 16,
        "mlp_ratio": 1.0,
        "layout": layout,
        "conditioner": {"name": "class_label", "num_classes": 3},
    }
    return DenoiserConfig(**{**base, **kw})


def scans_of(model: Denoiser) -> dict[int, str]:
    return {i: b.mixer.scan_name for i, b in enumerate(model.blocks) if hasattr(b.mixer, "scan_name")}


def test_hth_groups_switch_exactly_the_documented_blocks():
    layout, changes = video_layout(HTH_LAYOUT)
    model = Denoiser(config(layout))
    assert scans_of(model) == EXPECTED
    temporal = sorted(c.block for c in changes if c.temporal_major)
    assert temporal == [2, 3, 6, 7, 13, 14, 17, 18]  # 8 of 20 Hydra blocks = 40 %
    assert type(model.blocks[10].mixer).__name__ == "AttentionMixer" == type(model.blocks[21].mixer).__name__
    assert video_layout(layout)[0] == layout  # adapting twice changes nothing more


def test_no_new_parameters_and_image_outputs_unchanged():
    torch.manual_seed(0)
    image = Denoiser(config([*HTH_LAYOUT[0]["layout"][:1], {"mixer": "attention"}]))
    torch.nn.init.normal_(image.final.linear.weight, std=0.5)  # the zero-initialised output layer hides everything
    video = Denoiser(config(video_layout(image.config.layout)[0]))
    assert {k: v.shape for k, v in image.state_dict().items()} == {k: v.shape for k, v in video.state_dict().items()}
    video.load_state_dict(image.state_dict(), strict=True)
    image.eval(), video.eval()  # no label dropout
    assert sum(1 for s in scans_of(video).values() if s in ("th", "tv")) == 4
    t_B, batch = torch.tensor([0.3, 0.7]), {"label": torch.tensor([0, 2])}
    one_frame = torch.randn(2, 1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(image(one_frame, t_B, batch), video(one_frame, t_B, batch))
        assert torch.equal(image(one_frame[:, :, 0], t_B, batch), video(one_frame[:, :, 0], t_B, batch))
        clip = torch.randn(2, 1, 3, 8, 8)
        assert not torch.allclose(image(clip, t_B, batch), video(clip, t_B, batch), atol=1e-4)  # scans matter


def test_positions_option_and_errors():
    scans, changes = plan_scans([{"mixer": HYDRA, "repeat": 5, "scans": ["h", "v"]}], 5, (2, 3))
    assert scans == ["ht", "vt", "th", "tv", "ht"] and len(changes) == 5
    with pytest.raises(ConfigError, match="outside a group of 5"):
        plan_scans(HTH_LAYOUT, 5, (2, 7))


def module(layout, **kw) -> DiffusionModule:
    m = DiffusionModule(denoiser=config(layout), image_size=8, **kw)
    m.configure_model()
    return m


def test_adapt_video_command_writes_a_video_checkpoint(tmp_path, capsys):
    image = module(HTH_LAYOUT[0]["layout"][:1], ema={"decay": 0.9})
    torch.nn.init.normal_(image.denoiser.final.linear.weight, std=0.5)
    src, dst = tmp_path / "image.ckpt", tmp_path / "video.ckpt"
    torch.save({"state_dict": image.state_dict(), "hyper_parameters": dict(image.hparams)}, src)
    assert main(["adapt-video", str(src), str(dst), "--num-frames", "4"]) == 0
    out = capsys.readouterr().out
    assert "block   2: h -> th  (temporal-major)" in out and "block   7: v -> tv  (temporal-major)" in out
    assert "10 scanning block(s) changed, 4 of them to temporal-major scans" in out
    checkpoint = torch.load(dst, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["num_frames"] == 4
    video = DiffusionModule(**hparams)
    video.configure_model()
    video.load_state_dict(checkpoint["state_dict"], strict=True)
    assert list(scans_of(video.denoiser).values()) == [EXPECTED[i] for i in range(10)]
    sample = video.generate(torch.tensor([1]), [0], steps=2)
    assert sample.shape == (1, 1, 4, 8, 8)
    assert main(["adapt-video", str(tmp_path / "missing.ckpt"), str(dst)]) == 2


def test_callback_adapts_config_and_loads_image_weights(tmp_path):
    image = module(HTH_LAYOUT[0]["layout"][:1])
    torch.nn.init.normal_(image.denoiser.final.linear.weight, std=0.5)
    path = tmp_path / "image.ckpt"
    torch.save({"state_dict": image.state_dict(), "hyper_parameters": dict(image.hparams)}, path)
    video = DiffusionModule(denoiser=config(HTH_LAYOUT[0]["layout"][:1]), image_size=8, num_frames=4)
    callback = VideoAdaptation(image_checkpoint=str(path))
    trainer = SimpleNamespace(is_global_zero=True, ckpt_path=None)
    callback.setup(trainer, video, "fit")
    video.configure_model()
    callback.on_fit_start(trainer, video)
    assert list(scans_of(video.denoiser).values()) == [EXPECTED[i] for i in range(10)]
    assert video.hparams["denoiser"]["layout"] == video.denoiser_config.layout
    for name, value in image.denoiser.state_dict().items():
        assert torch.equal(value, video.denoiser.state_dict()[name])
        assert torch.equal(image.ema_denoiser.state_dict()[name], video.ema_denoiser.state_dict()[name])
    other = DiffusionModule(denoiser=config(HTH_LAYOUT[0]["layout"][:1], dim=32), image_size=8)
    other.configure_model()
    with pytest.raises(ConfigError, match=r"differs .* in dim"):
        load_image_weights(other, torch.load(path, weights_only=True), str(path))


def test_adapt_checkpoint_rejects_non_checkpoints(tmp_path):
    bogus = tmp_path / "x.ckpt"
    torch.save({"weights": 1}, bogus)
    with pytest.raises(Exception, match="not an hthlight checkpoint"):
        adapt_checkpoint(bogus, tmp_path / "y.ckpt")


VIDEO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "video"


@pytest.mark.parametrize("config_file", ["stage3_180p_mixed.yaml", "stage4_360p.yaml"])
def test_stage_configs_parse(config_file, capsys):
    with pytest.raises(SystemExit) as exit_info:  # --print_config prints and exits
        main(
            [
                "fit",
                "--config",
                str(VIDEO_CONFIGS / "base.yaml"),
                "--config",
                str(VIDEO_CONFIGS / config_file),
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "hthlight.adapt.VideoAdaptation" in printed and "temporal_positions" in printed


def test_cosine_restarts_on_plateau_follow_the_paper_peaks():
    from hthlight.callbacks.lr_restarts import CosineRestartsOnPlateau

    callback = CosineRestartsOnPlateau(peaks=[1e-4, 5e-5, 3e-5, 1e-5], cycle_steps=100, min_lr=1e-6, patience=2)
    assert callback.learning_rate(0) == pytest.approx(1e-4)
    assert callback.learning_rate(50) == pytest.approx(1e-6 + (1e-4 - 1e-6) / 2)
    assert callback.learning_rate(500) == pytest.approx(1e-6)
    trainer = SimpleNamespace(sanity_checking=False, callback_metrics={}, global_step=0)
    module = SimpleNamespace(print=lambda *a: None)
    peaks = []
    for step, loss in [(10, 1.0), (20, 0.9), (30, 0.95), (40, 0.91), (50, 0.95), (60, 0.96), (70, 0.99), (80, 0.99)]:
        trainer.global_step, trainer.callback_metrics = step, {"val/loss": torch.tensor(loss)}
        callback.on_validation_end(trainer, module)
        peaks.append(callback.peaks[callback.cycle])
    assert peaks == [1e-4, 1e-4, 1e-4, 5e-5, 5e-5, 3e-5, 3e-5, 1e-5]
    assert callback.learning_rate(80) == pytest.approx(1e-5)  # a new cycle starts at its peak
    restored = CosineRestartsOnPlateau(peaks=[1e-4, 5e-5, 3e-5, 1e-5], cycle_steps=100)
    restored.load_state_dict(callback.state_dict())
    assert restored.cycle == 3 and restored.cycle_start == 80
