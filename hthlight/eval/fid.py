"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) of a folder of samples against a reference folder.

``hthlight eval fid SAMPLES_DIR REF_DIR --features PATH`` reads every image under both folders
(PNG/JPEG/WebP/BMP, recursively), extracts features once with a local feature extractor and
computes FID and KID with torchmetrics. ``PATH`` is either

* a TorchScript feature extractor (``torch.jit.save``), called on uint8 RGB batches
  ``(N, 3, H, W)`` in [0, 255] and returning ``(N, D)`` features; if its ``forward`` takes
  ``return_features`` (the ``inception-2015-12-05.pt`` TorchScript Inception of the StyleGAN /
  clean-fid evaluation suites) it is called with ``return_features=True``; or
* torch-fidelity's Inception weights file (``weights-inception-2015-12-05-6726825d.pth``), which
  builds torchmetrics' ``NoTrainInceptionV3`` (2048-d pool features) and needs torch-fidelity.

Nothing is downloaded; a missing file or package is a one-line error naming it.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from hthlight.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FEATURES_HELP = (
    "a TorchScript feature extractor (.pt, e.g. the inception-2015-12-05.pt of the StyleGAN/clean-fid suites) "
    "or torch-fidelity's weights-inception-2015-12-05-6726825d.pth (needs torch-fidelity)"
)


class FeatureExtractor(nn.Module):
    """uint8 ``(N, 3, H, W)`` images -> float ``(N, D)`` features, with ``num_features = D``."""

    def __init__(self, module: nn.Module, call: Callable[[torch.Tensor], torch.Tensor], num_features: int) -> None:
        super().__init__()
        self.module = module
        self._call = call
        self.num_features = num_features

    @torch.no_grad()
    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        features = self._call(images_NCHW)
        if isinstance(features, (tuple, list)):
            features = features[0]
        return features.reshape(features.shape[0], -1).float()


def _torchscript_call(module: torch.jit.ScriptModule) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        arguments = [a.name for a in module.forward.schema.arguments]
    except (AttributeError, RuntimeError):
        arguments = []
    if "return_features" in arguments:
        return lambda x: module(x, return_features=True)
    return module


def load_feature_extractor(path: str | Path, device: str = "cpu", probe_size: int = 64) -> FeatureExtractor:
    """The feature extractor at ``path`` (see the module docstring), on ``device``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"feature extractor '{path}' does not exist; give --features with {FEATURES_HELP}")
    try:
        module = torch.jit.load(str(path), map_location=device).eval()
        call = _torchscript_call(module)
    except Exception:  # not a TorchScript archive: maybe Inception weights
        module = _inception_from_weights(path).to(device)
        call = module
    probe = torch.zeros(1, 3, probe_size, probe_size, dtype=torch.uint8, device=device)
    try:
        with torch.no_grad():
            out = call(probe)
    except Exception as exc:
        raise ConfigError(
            f"feature extractor '{path}' failed on a uint8 (1, 3, {probe_size}, {probe_size}) image: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    out = out[0] if isinstance(out, (tuple, list)) else out
    return FeatureExtractor(module, call, int(out[0].numel()))


def _inception_from_weights(path: Path) -> nn.Module:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"'{path}' is neither a TorchScript archive nor a weights file ({exc}); give {FEATURES_HELP}"
        ) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"'{path}' holds a {type(state).__name__}, not a state dict; give {FEATURES_HELP}")
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise ConfigError(
            f"'{path}' is a weights file; building InceptionV3 from it needs torch-fidelity, which is not "
            "installed (pip install torch-fidelity), or give a TorchScript feature extractor instead"
        ) from None
    return NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
    )


def list_images(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder '{folder}' does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under '{folder}'")
    return files


def load_rgb(path: Path, size: int | None = None) -> torch.Tensor:
    """uint8 ``(3, H, W)``; resized (bicubic) to ``size x size`` if given."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None:
                image = image.resize((size, size), Image.BICUBIC)
            pixels = np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image '{path}': {err}") from err
    return torch.from_numpy(pixels).permute(2, 0, 1)


@torch.no_grad()
def extract_features(
    files: Sequence[Path], extractor: nn.Module, batch_size: int = 50, size: int | None = None, device: str = "cpu"
) -> torch.Tensor:
    """``(N, D)`` features of ``files`` in order; images of one size are batched together."""
    by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for i, path in enumerate(files):
        image = load_rgb(path, size)
        by_size[tuple(image.shape)].append((i, image))
    features: list[torch.Tensor | None] = [None] * len(files)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            batch = torch.stack([image for _, image in chunk]).to(device)
            for (i, _), row in zip(chunk, extractor(batch).double().cpu()):
                features[i] = row
    return torch.stack(features)


class _Identity(nn.Module):
    """Hands precomputed features to torchmetrics (which calls ``self.inception(x)``)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int = 1000, kid_subsets: int = 100
) -> dict[str, float]:
    """FID and KID (mean, std over subsets) of two ``(N, D)`` feature sets via torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if min(len(real), len(fake)) < 2:
        raise DataError(f"FID needs at least 2 images per folder, got {len(fake)} samples and {len(real)} reference")
    dims = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Identity(dims))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    subset = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": they are already in memory here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Identity(dims), subsets=kid_subsets, subset_size=subset)
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": subset,
    }


def evaluate(
    samples_dir: str,
    ref_dir: str,
    features: str,
    batch_size: int = 50,
    size: int | None = None,
    device: str = "cpu",
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict[str, float]:
    extractor = load_feature_extractor(features, device)
    fake_files, real_files = list_images(samples_dir), list_images(ref_dir)
    fake = extract_features(fake_files, extractor, batch_size, size, device)
    real = extract_features(real_files, extractor, batch_size, size, device)
    result = fid_kid_from_features(real, fake, kid_subset_size, kid_subsets)
    result.update(samples=len(fake_files), reference=len(real_files), feature_dim=extractor.num_features)
    return result


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hthlight eval fid", description="FID and KID of samples vs a reference.")
    parser.add_argument("samples_dir", help="folder of generated images (searched recursively)")
    parser.add_argument("ref_dir", help="folder of reference images (searched recursively)")
    parser.add_argument("--features", required=True, help=FEATURES_HELP)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=None, help="resize every image to this square size first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(list(argv))
    result = evaluate(
        args.samples_dir,
        args.ref_dir,
        args.features,
        args.batch_size,
        args.image_size,
        args.device,
        args.kid_subset_size,
        args.kid_subsets,
    )
    print(f"FID {result['fid']:.4f}")
    print(f"KID {result['kid_mean']:.6f} +- {result['kid_std']:.6f} (subset size {result['kid_subset_size']})")
    print(f"samples {result['samples']}, reference {result['reference']}, feature dim {result['feature_dim']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
