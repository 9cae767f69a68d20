"""Shared test helpers: tiny configs, fake plugin distributions on sys.path, Triton's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TINY_HYDRA = {"name": "hydra", "d_state": 4, "headdim": 8, "expand": 2, "d_conv": 3, "chunk_size": 8}
TINY_ATTENTION = {"name": "attention", "num_heads": 2, "qk_norm": True}


def run_interpreted(code: str, timeout: float = 300) -> str:
    """Standard output of ``code`` run in Triton's CPU interpreter (``TRITON_INTERPRET=1``).

    A fresh process (the interpreter must be on before Triton is imported) in the repository
    root with ``tests/`` on the path, so the snippet imports test modules as the tests do; a non-zero
    exit fails the test with its stderr.
    """
    pytest.importorskip("triton")
    tests = Path(__file__).resolve().parent
    root = tests.parent
    path = os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")]))  # as pytest imports them
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def tiny_denoiser_config(**overrides):
    config = {
        "in_channels": 1,
        "patch_size": 2,
        "dim": 16,
        "layout": [{"mixer": TINY_HYDRA, "repeat": 2, "scans": ["h", "v"]}, {"mixer": TINY_ATTENTION}],
        "conditioner": {"name": "class_label", "num_classes": 10},
    }
    config.update(overrides)
    return config


def write_plugin(
    root: Path,
    dist: str,
    version: str,
    module: str,
    source: str,
    entry_points: dict[str, dict[str, str]],
    requires: tuple[str, ...] = (),
):
    """Write an importable module and a ``*.dist-info`` declaring its entry points under ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    requirements = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n{requirements}")
    lines = []
    for group, names in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in names.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A directory on sys.path where tests write fake plugin distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fake_plugin")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread: for tiny tensors thread hand-offs cost more than the work on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """GPU tests (``@pytest.mark.gpu``) skip cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
