"""Issue-4 features through the CLI: ablation configs, presets in YAML, sampling at new sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ATTENTION, TINY_HYDRA
from PIL import Image
from test_cli import one_line_error, tiny_config

from hthlight.cli import main

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = sorted(p.stem for p in (ROOT / "configs" / "ablation").glob("*.yaml") if p.stem != "base")


def quick(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.batch_size",
        "16",
    ]


def test_ablation_has_the_papers_variants():
    assert VARIANTS == ["attention", "bi_ssm", "hybrid_10_1", "hybrid_3_8", "hybrid_7_4", "hydra", "ssm"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_ablation_variant_trains_a_few_steps(tmp_path, variant):
    base = ROOT / "configs" / "ablation" / "base.yaml"
    config = ROOT / "configs" / "ablation" / f"{variant}.yaml"
    assert main(["fit", "--config", str(base), "--config", str(config), *quick(tmp_path)]) == 0
    checkpoints = list((tmp_path / variant).rglob("last.ckpt"))
    assert checkpoints, f"no checkpoint for {variant}"


def test_ablation_variants_differ_only_in_their_mixers():
    base = yaml.safe_load((ROOT / "configs" / "ablation" / "base.yaml").read_text())
    for variant in VARIANTS:
        override = yaml.safe_load((ROOT / "configs" / "ablation" / f"{variant}.yaml").read_text())
        assert set(override) == {"trainer", "model"}
        assert override["trainer"] == {"logger": {"init_args": {"name": variant}}}
        assert set(override["model"]["denoiser"]) == {"layout"}
    assert base["model"]["denoiser"]["dim"] == 128


def preset_config(tmp_path: Path, preset: dict) -> Path:
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["model"]["denoiser"] = preset
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_preset_selected_in_config_trains(tmp_path, capsys):
    spec = {"preset": "dit-s/4", "overrides": {"in_channels": 1, "num_classes": 10, "depth": 2}}
    config = preset_config(tmp_path, spec)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["denoiser"] == spec
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "1"]) == 0


def test_unknown_preset_fails_at_config_time_with_the_names(tmp_path, capsys):
    assert main(["fit", "--config", str(preset_config(tmp_path, {"preset": "dit-xxl"}))]) == 2
    line = one_line_error(capsys)
    assert "unknown preset 'dit-xxl'" in line and "hth-5b" in line and "dim-xl/8" in line


def test_sampling_at_an_unseen_size_without_the_training_data(tmp_path):
    config = tiny_config(tmp_path)
    assert main(["fit", "--config", str(config)]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = tmp_path / "wide"
    writer = json.dumps({"class_path": "hthlight.callbacks.PredictionWriter", "init_args": {"output_dir": str(out)}})
    args = [
        "predict",
        "--config",
        str(config),
        "--ckpt_path",
        str(checkpoint),
        "--data",
        "hthlight.data.SamplingDataModule",
        "--data.num_classes",
        "10",
        "--data.samples_per_class",
        "1",
        "--data.image_size",
        "8",
        "--model.sample_height",
        "12",
        "--model.sample_width",
        "20",
        f"--trainer.callbacks=[{writer}]",
    ]
    assert main(args) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 10
    assert Image.open(out / lines[0]["file"]).size == (20, 12)
    assert json.loads((out / "settings.json").read_text())["sample_shape"] == [1, 12, 20]


def test_sample_size_must_fit_the_patch_grid(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert main(["fit", "--config", str(config)]) == 0
    args = [
        "predict",
        "--config",
        str(config),
        "--ckpt_path",
        str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
        "--model.sample_height",
        "13",
    ]
    assert main(args) == 2
    assert "must be a multiple of 2" in one_line_error(capsys)


def test_checkpoint_dictates_architecture_and_command_line_the_sampling(tmp_path):
    config = tiny_config(tmp_path)
    assert main(["fit", "--config", str(config)]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    args = [
        "predict",
        "--config",
        str(config),
        "--ckpt_path",
        str(checkpoint),
        "--model.denoiser.dim",
        "32",  # ignored: the weights were trained with dim 16
        "--model.sampling.steps",
        "3",
        "--model.sampling.cfg_scale",
        "1.5",
        "--data.init_args.predict_samples_per_class",
        "1",
    ]
    assert main(args) == 0
    settings = json.loads((tmp_path / "run" / "samples" / "settings.json").read_text())
    assert settings["steps"] == 3 and settings["cfg_scale"] == 1.5


@pytest.mark.parametrize(
    ("name", "package"), [("zigzag", "hthlight_zigzag"), ("cosine_flow", "hthlight_flowschedules")]
)
def test_plugin_configs_train_when_the_plugin_is_installed(tmp_path, name, package):
    pytest.importorskip(package, reason=f"example plugin {package} not installed (make test installs it)")
    override = ROOT / "configs" / "plugins" / f"{name}.yaml"
    config = tiny_config(tmp_path)
    args = ["fit", "--config", str(config), "--config", str(override), "--trainer.max_steps", "2"]
    if name == "zigzag":  # keep the plugin's scans, shrink the mixers
        layout = [{"mixer": {**TINY_HYDRA}, "repeat": 2, "scans": ["zigzag_0", "zigzag_5"]}, {"mixer": TINY_ATTENTION}]
        args += ["--model.denoiser.layout", json.dumps(layout)]
    assert main(args) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
