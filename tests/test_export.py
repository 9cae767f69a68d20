"""hthlight export: safetensors + resolved config; the exported model samples exactly like the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from test_resume import digits, tiny_module, trainer

from hthlight.checkpointing import load_checkpoint
from hthlight.cli import main
from hthlight.module import DiffusionModule


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    module = tiny_module()
    trainer(root, max_steps=3, callbacks=[ModelCheckpoint(dirpath=root, save_last=True)]).fit(
        module, datamodule=digits(16)
    )
    return root / "last.ckpt"


def _from_checkpoint(path) -> DiffusionModule:
    ckpt = load_checkpoint(path)
    module = DiffusionModule(**ckpt["hyper_parameters"])
    module.configure_model()
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def test_export_writes_ema_weights_and_config(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), str(tmp_path / "out")]) == 0
    assert "exported the ema weights" in capsys.readouterr().out
    state = load_checkpoint(checkpoint)["state_dict"]
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert weights.keys() == {k.removeprefix("ema_denoiser.") for k in state if k.startswith("ema_denoiser.")}
    for key, value in weights.items():
        assert torch.equal(value, state[f"ema_denoiser.{key}"])
    document = json.loads((tmp_path / "out" / "config.json").read_text())
    assert document["export"]["weights"] == "ema" and document["export"]["global_step"] == 3
    assert document["model"]["denoiser"]["dim"] == 32
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text()) == document
    assert "optimizer" not in document["model"]


def test_exported_samples_equal_checkpoint_samples(checkpoint, tmp_path):
    main(["export", str(checkpoint), str(tmp_path / "out")])
    exported = DiffusionModule.from_exported(tmp_path / "out")
    assert exported.ema_denoiser is None  # sampling-only: no training state
    reference = _from_checkpoint(checkpoint)
    labels, seeds = torch.tensor([1, 7, 3]), [5, 6, 7]
    # same weights and code; float32 CPU kernels may round differently per memory layout (1 ulp seen)
    torch.testing.assert_close(exported.generate(labels, seeds), reference.generate(labels, seeds), rtol=0, atol=1e-6)


def test_raw_export_and_errors(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), str(tmp_path / "raw"), "--raw"]) == 0
    state = load_checkpoint(checkpoint)["state_dict"]
    weights = load_file(str(tmp_path / "raw" / "model.safetensors"))
    assert all(torch.equal(v, state[f"denoiser.{k}"]) for k, v in weights.items())
    assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(Exception, match="not an exported model"):
        DiffusionModule.from_exported(tmp_path / "x")
