"""Prompt requests, prompt files, captioned digits, and ``predict`` per prompt (recorded in predictions.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import yaml
from conftest import TINY_ATTENTION, TINY_HYDRA

from hthlight.callbacks.prediction_writer import PredictionWriter
from hthlight.cli import main
from hthlight.data.digits import DigitsDataModule
from hthlight.data.prompts import Prompt, PromptDataModule, PromptRequests, read_prompts_file
from hthlight.data.requests import SamplingRequests
from hthlight.errors import ConfigError, DataError
from hthlight.module import DiffusionModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from hthlight.conditioning.text_encoders import make_tiny_t5

    return str(make_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", d_model=16))


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\na red cube\n\n  a blue ball  \n")
    assert read_prompts_file(txt) == [Prompt("a red cube"), Prompt("a blue ball")]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a seven", "label": 7}\n\n{"prompt": "x", "negative_prompt": "blurry"}\n')
    assert read_prompts_file(jsonl) == [Prompt("a seven", "", 7), Prompt("x", "blurry", -1)]
    with pytest.raises(DataError, match=r"prompts file '.*nope\.txt' does not exist"):
        read_prompts_file(tmp_path / "nope.txt")
    jsonl.write_text('{"prompt": "x", "colour": 1}\n')
    with pytest.raises(
        DataError, match=r"p.jsonl:1: unknown field\(s\) \['colour'\]; allowed: prompt, negative_prompt, label"
    ):
        read_prompts_file(jsonl)
    jsonl.write_text('{"prompt": "x"\n')
    with pytest.raises(DataError, match=r"p\.jsonl:1: not a JSON object"):
        read_prompts_file(jsonl)
    txt.write_text("# only a comment\n")
    with pytest.raises(DataError, match="lists no prompts"):
        read_prompts_file(txt)


def test_prompt_requests_layout():
    requests = PromptRequests(
        ["a", {"prompt": "b", "negative_prompt": "c", "label": 3}], 3, seed=100, negative_prompt="n"
    )
    assert len(requests) == 6
    items = [requests[i] for i in range(6)]
    assert [x["prompt"] for x in items] == ["a"] * 3 + ["b"] * 3
    assert [x["negative_prompt"] for x in items] == ["n"] * 3 + ["c"] * 3  # the default only where none is given
    assert [int(x["index"]) for x in items] == list(range(6))
    assert [int(x["seed"]) for x in items] == list(range(100, 106))
    assert [int(x["label"]) for x in items] == [-1] * 3 + [3] * 3
    with pytest.raises(ConfigError, match="samples_per_prompt must be >= 1"):
        PromptRequests(["a"], 0)
    with pytest.raises(ConfigError, match=r"give exactly one of data\.prompts"):
        PromptDataModule()


@pytest.mark.parametrize("classes", [None, [2, 7]])
def test_class_prompts_match_the_sampling_requests(classes):
    captions = [f"digit {c}" for c in range(10)]
    prompts = PromptRequests.for_classes(captions, 2, seed=5, classes=classes)
    labels = SamplingRequests(10, 2, seed=5, classes=classes)
    assert len(prompts) == len(labels)
    for i in range(len(prompts)):
        p, s = prompts[i], labels[i]
        assert (int(p["label"]), int(p["seed"]), int(p["index"])) == (int(s["label"]), int(s["seed"]), int(s["index"]))
        assert p["prompt"] == f"digit {int(s['label'])}"


def test_digits_with_captions():
    data = DigitsDataModule(image_size=8, batch_size=4, captions=True, predict_samples_per_class=1, predict_classes=[7])
    batch = next(iter(data.train_dataloader()))
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert batch["caption"] == [f"a handwritten {words[int(y)]}" for y in batch["label"]]
    request = next(iter(data.predict_dataloader()))
    assert request["prompt"] == ["a handwritten seven"] and request["label"].tolist() == [7]
    assert "caption" not in DigitsDataModule(image_size=8).train_dataloader().dataset[0]


def text_module(t5_dir) -> DiffusionModule:
    module = DiffusionModule(
        denoiser={
            "in_channels": 1,
            "patch_size": 2,
            "dim": 16,
            "layout": [{"mixer": TINY_HYDRA, "scans": ["h"]}, {"mixer": TINY_ATTENTION}],
            "conditioner": {"name": "text_embedding", "context_dim": 16},
        },
        text_encoder={"name": "t5", "path": t5_dir, "max_length": 12},
        image_size=8,
        sampling={"steps": 2, "cfg_scale": 2.0},
    )
    module.configure_model()
    return module


def test_predict_writes_one_file_per_prompt_sample_with_the_prompt(t5_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a handwritten seven", "label": 7}\n{"prompt": "a cat", "negative_prompt": "dog"}\n')
    data = PromptDataModule(prompts_file=str(prompts), samples_per_prompt=2, seed=10, image_size=8, batch_size=3)
    out = tmp_path / "samples"
    trainer = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[PredictionWriter(str(out), grid_columns=2)])
    trainer.predict(text_module(t5_dir), data, return_predictions=False)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["a handwritten seven"] * 2 + ["a cat"] * 2
    assert [r["negative_prompt"] for r in records] == ["", "", "dog", "dog"]
    assert [r.get("label") for r in records] == [7, 7, None, None]  # a prompt without a class has no label
    assert [r["file"] for r in records] == [
        "samples/00000_class7.png",
        "samples/00001_class7.png",
        "samples/00002.png",
        "samples/00003.png",
    ]
    assert [r["seed"] for r in records] == [10, 11, 12, 13]
    assert all((out / r["file"]).is_file() for r in records)
    assert (out / "grid_class7.png").is_file() and (out / "grid_prompt0.png").is_file() and (out / "grid.png").is_file()
    assert json.loads((out / "settings.json").read_text())["predict_samples_per_prompt"] == 2


@pytest.mark.slow
def test_digits_text_config_trains_predicts_per_prompt_and_scores(t5_dir, tmp_path, capsys):
    """configs/digits_text.yaml shrunk: tiny model and T5, 2 steps, then predict per prompt and score."""
    config = yaml.safe_load((ROOT / "configs" / "digits_text.yaml").read_text())
    run = tmp_path / "run"
    config["trainer"].update(max_steps=2, max_time=None, default_root_dir=str(run), enable_progress_bar=False)
    config["trainer"]["logger"] = False
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": 2},
        },
        {"class_path": "hthlight.callbacks.PredictionWriter", "init_args": {"output_dir": str(run / "samples")}},
    ]
    model = config["model"]
    model["text_encoder"]["path"] = t5_dir
    model["denoiser"].update(
        dim=16, patch_size=2, layout=[{"mixer": TINY_HYDRA, "scans": ["h"]}, {"mixer": TINY_ATTENTION}]
    )
    model["denoiser"]["conditioner"]["context_dim"] = 16
    model["sampling"]["steps"] = 2
    config["data"]["init_args"].update(image_size=8, batch_size=16, predict_samples_per_class=1)
    path = tmp_path / "tiny_text.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    checkpoint = next((run / "ckpt").glob("*.ckpt"))
    prompts = [
        "--data",
        "hthlight.data.PromptDataModule",
        "--data.prompts_file",
        str(ROOT / "configs" / "digits_prompts.jsonl"),
    ]
    assert (
        main(["predict", "--config", str(path), "--ckpt_path", str(checkpoint), *prompts, "--data.image_size", "8"])
        == 0
    )
    records = [json.loads(line) for line in (run / "samples" / "predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == list(range(10)) and records[7]["prompt"] == "a handwritten seven"
    capsys.readouterr()
    assert main(["eval", "digits", str(run / "samples")]) == 0
    assert "accuracy" in capsys.readouterr().out
