"""Uninstalling a plugin: loading a checkpoint that used it names the component and its distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY_ATTENTION, TINY_HYDRA, write_plugin
from test_cli import tiny_config

ROOT = Path(__file__).resolve().parents[1]

SPIRAL = """
import torch
from hthlight.scans import ScanOrder

class ReversedRaster(ScanOrder):
    def order(self, t, h, w):
        return torch.arange(t * h * w).flip(0)
"""


def run(args, python_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*python_path, str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "hthlight", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_checkpoint_names_the_missing_plugin(tmp_path):
    plugin = tmp_path / "site"
    plugin.mkdir()
    write_plugin(
        plugin,
        "fake-plugin-reverse",
        "0.4",
        "fake_plugin_reverse",
        SPIRAL,
        {"hthlight.scans": {"reversed": "fake_plugin_reverse:ReversedRaster"}},
    )
    layout = str([{"mixer": {**TINY_HYDRA, "scan": "reversed"}}, {"mixer": TINY_ATTENTION}])
    config = str(tiny_config(tmp_path))
    fit = run(["fit", "--config", config, "--model.denoiser.layout", layout, "--trainer.max_steps", "1"], [str(plugin)])
    assert fit.returncode == 0, fit.stderr[-2000:]
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.ckpt")

    uninstalled = run(["predict", "--config", config, "--ckpt_path", checkpoint], [])
    assert uninstalled.returncode == 2
    last_line = uninstalled.stderr.strip().splitlines()[-1]
    assert "unknown scan 'reversed'" in last_line
    assert "the checkpoint was made with it from distribution fake-plugin-reverse 0.4" in last_line
