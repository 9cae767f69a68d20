"""CONTRIBUTING.md's "Write a plugin" guide, followed literally: its snippets become a plugin
on sys.path (a real dist-info with the guide's entry points) that trains through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import tiny_config

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def guide_snippet(after: str, language: str) -> str:
    guide = (ROOT / "CONTRIBUTING.md").read_text().split("## Write a plugin", 1)[1]
    match = re.search(re.escape(after) + r".*?```" + language + r"\n(.*?)```", guide, re.S)
    assert match, f"no {language} snippet after {after!r} in the guide"
    return match.group(1)


def test_plugin_from_the_guide_is_listed_and_trains(tmp_path):
    project = tomllib.loads(guide_snippet("`pyproject.toml`:", "toml"))["project"]
    package = tmp_path / "my_mixers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reverse.py").write_text(guide_snippet("`my_mixers/reverse.py`:", "python"))
    info = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in names.items())
        for group, names in project["entry-points"].items()
    )
    (info / "entry_points.txt").write_text(entry_points)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run(
        [sys.executable, "-m", "hthlight", "components", "mixer"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if "gated_cumsum" in line)
    assert row == ["mixer", "gated_cumsum", "distribution", "my-mixers", "0.1.0", "ok"]

    layout = "[{mixer: gated_cumsum, repeat: 2, scans: [h, v]}, {mixer: {name: attention, num_heads: 2}}]"
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "hthlight",
            "fit",
            "--config",
            str(tiny_config(tmp_path)),
            "--model.denoiser.layout",
            layout,
            "--trainer.max_steps",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
