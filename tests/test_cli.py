"""The ``hthlight`` command end to end on CPU, and its one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_ATTENTION, TINY_HYDRA, write_plugin

from hthlight.cli import main

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, **data_overrides) -> Path:
    """configs/digits.yaml shrunk to seconds: same structure, tiny model, few steps."""
    config = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())
    run = tmp_path / "run"
    trainer = config["trainer"]
    trainer.update(
        max_steps=4,
        max_time=None,
        default_root_dir=str(run),
        check_val_every_n_epoch=1,
        limit_val_batches=1,
        log_every_n_steps=1,
        enable_progress_bar=False,
    )
    trainer["logger"]["init_args"]["save_dir"] = str(run)
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in trainer["callbacks"]}
    callbacks["ModelCheckpoint"]["dirpath"] = str(run / "checkpoints")
    callbacks["SampleGridLogger"].update(every_n_steps=2, samples_per_class=2, steps=2)
    callbacks["PredictionWriter"]["output_dir"] = str(run / "samples")
    denoiser = config["model"]["denoiser"]
    denoiser.update(
        dim=16,
        patch_size=2,
        layout=[{"mixer": TINY_HYDRA, "repeat": 2, "scans": ["h", "v"]}, {"mixer": TINY_ATTENTION}],
    )
    config["model"]["sampling"]["steps"] = 2
    config["data"]["init_args"].update(image_size=8, batch_size=16, predict_samples_per_class=2, **data_overrides)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message on stderr"
    return err[-1]


def test_fit_predict_eval_end_to_end(tmp_path, capsys):
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert main(["fit", "--config", str(config)]) == 0
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((run / "tensorboard").rglob("samples/step_*.png"))

    assert main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint)]) == 0
    samples = run / "samples"
    lines = [json.loads(x) for x in (samples / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and sorted({x["label"] for x in lines}) == list(range(10))
    assert all((samples / x["file"]).is_file() for x in lines)
    assert (samples / "grid.png").is_file() and (samples / "grid_class3.png").is_file()
    settings = json.loads((samples / "settings.json").read_text())
    assert settings["checkpoint"] == str(checkpoint) and settings["steps"] == 2 and settings["cfg_scale"] == 2.0

    # the same seeds give the same images
    first = (samples / lines[0]["file"]).read_bytes()
    assert main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint)]) == 0
    assert (samples / lines[0]["file"]).read_bytes() == first

    capsys.readouterr()
    main(["eval", "digits", str(samples)])
    assert "accuracy" in capsys.readouterr().out


def test_print_config_shows_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(tiny_config(tmp_path)), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["optimizer"]["betas"] == [0.9, 0.999]
    assert printed["model"]["ema"]["use_for_sampling"] is True
    assert printed["model"]["denoiser"]["norm_eps"] == 1e-6
    assert printed["data"]["init_args"]["val_fraction"] == 0.1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            ["--model.denoiser.layout", '["hydar"]'],
            r"unknown mixer 'hydar'; registered mixers: attention, .*bi_ssm, .*hydra, .*ssm",
        ),
        (
            ["--model.denoiser.layout", '[{"mixer": "hydra", "scans": ["hv"]}]'],
            r"unknown scan 'hv'; registered scans: h, ht, th, tv, v, vt",  # plugins may add more after
        ),
        (
            ["--model.denoiser.conditioner", '{"name": "labels"}'],
            r"unknown conditioner 'labels'; registered conditioners: class_label, text_embedding",
        ),
        (["--model.denoiser.dimm", "3"], "dimm"),
    ],
)
def test_bad_names_and_keys_exit_nonzero_with_one_clear_line(tmp_path, capsys, override, expected):
    config = tiny_config(tmp_path)
    try:
        code = main(["fit", "--config", str(config), *override])
    except SystemExit as exc:
        code = exc.code
    assert code != 0
    assert re.search(expected, one_line_error(capsys))


def test_missing_data_directory(tmp_path, capsys):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["data"] = {
        "class_path": "hthlight.data.ImageFolderDataModule",
        "init_args": {"root": str(tmp_path / "nowhere"), "channels": 1, "image_size": 8},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 2
    line = one_line_error(capsys)
    assert "nowhere" in line and "does not exist" in line


def test_missing_checkpoint(tmp_path, capsys):
    code = main(["predict", "--config", str(tiny_config(tmp_path)), "--ckpt_path", str(tmp_path / "no.ckpt")])
    assert code == 2
    line = one_line_error(capsys)
    assert "no.ckpt" in line and "does not exist" in line


def test_components_lists_builtins_and_a_broken_plugin_without_crashing(tmp_path):
    write_plugin(
        tmp_path,
        "fake-plugin-broken",
        "0.3",
        "fake_plugin_broken",
        "raise RuntimeError('boom')\n",
        {"hthlight.scans": {"spiral": "fake_plugin_broken:Spiral"}},
    )
    python_path = os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": python_path, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "hthlight", "components"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    rows = [line.split(None, 3) for line in result.stdout.splitlines()]
    assert rows[0] == ["KIND", "NAME", "SOURCE", "STATUS"]
    assert ["mixer", "hydra", "built-in", "ok"] in rows
    broken = next(line for line in result.stdout.splitlines() if "spiral" in line)
    assert "distribution fake-plugin-broken 0.3" in broken and "failed: RuntimeError: boom" in broken
    assert result.returncode == 1  # some component failed to load, but the command ran

    only_mixers = subprocess.run(
        [sys.executable, "-m", "hthlight", "components", "mixer"],
        capture_output=True,
        text=True,
        env={**env, "HTHLIGHT_NO_PLUGINS": "1"},
        cwd=tmp_path,
        timeout=120,
    )
    assert only_mixers.returncode == 0 and "spiral" not in only_mixers.stdout
    assert {line.split()[0] for line in only_mixers.stdout.splitlines()[1:-1]} == {"mixer"}


def test_every_shipped_config_parses(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8)).save(root / "a" / f"{i}.png")
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        with pytest.raises(SystemExit) as info:
            main(
                ["fit", "--config", str(config), "--data.init_args.root", str(root), "--print_config"]
                if "image_folder" in config.name
                else ["fit", "--config", str(config), "--print_config"]
            )
        assert info.value.code == 0, config.name
        assert yaml.safe_load(capsys.readouterr().out)["model"]["denoiser"]["layout"]
    for override in sorted((ROOT / "configs").glob("*/*.yaml")):  # ablation variants and plugin examples
        base = (
            override.parent / "base.yaml"
            if (override.parent / "base.yaml").exists()
            else ROOT / "configs" / "digits.yaml"
        )
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", str(base), "--config", str(override), "--print_config"])
        assert info.value.code == 0, override.name
        capsys.readouterr()
