"""Make ``mamba_ssm``'s Triton kernels importable on a machine that cannot build its CUDA extensions.

The ``mamba_ssm`` backend of the Hydra mixer (the public Hydra arrangement, and the
``mamba_ssm`` rows of ``benchmarks/hydra_layer.py``) needs only Mamba-2's Triton kernels
(``mamba_ssm.ops.triton``). The package's ``__init__`` however imports its compiled CUDA
extensions (``selective_scan_cuda``), which ``pip install mamba-ssm`` builds with nvcc against the
local torch, and which a benchmark machine without a matching toolkit or network cannot build.
This copies the package's Python sources from its source distribution into ``--target`` with an
``__init__`` that only sets the version, so ``mamba_ssm.ops.triton.ssd_combined`` imports::

    python benchmarks/mamba_ssm_triton.py .whl/mamba_ssm-2.3.2.post1.tar.gz --target /tmp/site
    PYTHONPATH=/tmp/site python benchmarks/hydra_layer.py ...   # now with mamba_ssm rows

The source distribution comes from the package index, e.g.
``pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm`` (or its URL on the
index's simple page). Nothing of ``mamba_ssm`` is imported from here, only copied.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tarfile
from pathlib import Path

INIT = '''"""mamba_ssm's Python sources without its CUDA extensions (hthlight benchmarks/mamba_ssm_triton.py)."""

__version__ = "{version}"
'''


def install(sdist: str, target: str) -> Path:
    """Copy the ``mamba_ssm`` package of ``sdist`` under ``target``; return the package folder."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/mamba_ssm/" in f"/{m.name}" and m.isfile()]
        if not members:
            raise SystemExit(f"{sdist} holds no mamba_ssm package")
        root = members[0].name.split("mamba_ssm/")[0]
        package = Path(target) / "mamba_ssm"
        if package.exists():
            shutil.rmtree(package)
        for member in members:
            relative = member.name[len(root) :]
            if not relative.endswith(".py"):
                continue
            out = Path(target) / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    original = (package / "__init__.py").read_text()
    version = re.search(r'__version__\s*=\s*"([^"]+)"', original)
    (package / "__init__.py").write_text(INIT.format(version=version.group(1) if version else "unknown"))
    return package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", help="mamba_ssm source distribution (.tar.gz)")
    parser.add_argument("--target", required=True, help="folder to put on PYTHONPATH")
    args = parser.parse_args()
    print(f"installed {install(args.sdist, args.target)}")


if __name__ == "__main__":
    main()
