"""Make the plugin importable from its source tree, and install it into a temp dir on demand."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]

try:  # an installed copy (pip install -e / pip install) wins; else test the source tree
    import hthlight_zigzag  # noqa: F401
except ImportError:
    sys.path.insert(0, str(PLUGIN_DIR))


@pytest.fixture(scope="session")
def installed_plugin(tmp_path_factory):
    """The plugin pip-installed (with its dist-info and entry points) into a temp dir on sys.path.

    The source is copied first so the build leaves nothing (``build/``, ``*.egg-info``) in the
    plugin's directory; ``--no-deps --no-build-isolation --no-index`` keeps pip off the network.
    """
    root = tmp_path_factory.mktemp("zigzag_install")
    source = root / "src"
    shutil.copytree(
        PLUGIN_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    target = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run(
        [*command, "--target", str(target), str(source)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"pip install --target failed:\n{result.stdout}\n{result.stderr}")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    importlib.invalidate_caches()
