"""Frechet Video Distance (Unterthiner et al. 2018) with the StyleGAN-V protocol (Skorokhodov et al. 2022).

``hthlight eval fvd SAMPLES_DIR REF_DIR --i3d PATH.pt`` takes one clip of ``--num-frames``
consecutive frames (16, as StyleGAN-V and DiM report; every ``--subsample``-th frame) from the
start of each video, extracts I3D features with a local TorchScript detector called as
StyleGAN-V calls ``i3d_torchscript.pt``: ``detector(videos_BCTHW, rescale=True, resize=True,
return_features=True)`` on float frames in [0, 255] (detectors without those keywords are
called on the videos alone), and reports the Frechet distance of the two feature Gaussians
(``scipy.linalg.sqrtm``, as StyleGAN-V). StyleGAN-V/DiM use 2048 clips per side.

Accepted videos, found directly under each folder (sorted by name):

* video files ``.mp4 .avi .mov .mkv .webm``, decoded with decord;
* frame folders: a sub-folder holding the frames as images (PNG/JPEG/WebP/BMP), in name order.

Videos that cannot be read or are shorter than the clip are skipped, counted and reported
(``--strict`` makes them an error). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hthlight.errors import ConfigError, DataError
from hthlight.eval.fid import IMAGE_SUFFIXES, load_rgb

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
STYLEGAN_V_KWARGS = {"rescale": True, "resize": True, "return_features": True}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (the FID/FVD formula)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(np.dot(sigma1, sigma2))
    covmean = np.real(covmean[0] if isinstance(covmean, tuple) else covmean)
    return float(np.sum(np.square(mu1 - mu2)) + np.trace(sigma1 + sigma2 - 2 * covmean))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def load_i3d(path: str | Path, device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """``videos_BCTHW`` (float, [0, 255]) -> ``(B, D)`` features, from a TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"I3D detector '{path}' does not exist; give --i3d with a local TorchScript file (StyleGAN-V's "
            "i3d_torchscript.pt); nothing is downloaded"
        )
    try:
        detector = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:
        raise ConfigError(f"'{path}' is not a TorchScript archive (torch.jit.save): {exc}") from exc
    try:
        names = {a.name for a in detector.forward.schema.arguments}
    except (AttributeError, RuntimeError):
        names = set()
    kwargs = {k: v for k, v in STYLEGAN_V_KWARGS.items() if k in names}

    @torch.no_grad()
    def features(videos_BCTHW: torch.Tensor) -> torch.Tensor:
        out = detector(videos_BCTHW, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.reshape(out.shape[0], -1).double().cpu()

    return features


def list_videos(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"video folder '{folder}' does not exist")
    entries = []
    for p in sorted(root.iterdir()):
        is_video = p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
        if is_video or (p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())):
            entries.append(p)
    if not entries:
        raise DataError(f"no videos ({', '.join(VIDEO_SUFFIXES)} files or folders of frames) in '{folder}'")
    return entries


def read_clip(path: Path, num_frames: int, subsample: int = 1, size: int | None = None) -> torch.Tensor:
    """uint8 ``(3, T, H, W)``: frames ``0, s, 2s, ...`` (``T = num_frames``) of a video file or frame folder."""
    needed = (num_frames - 1) * subsample + 1
    if path.is_dir():
        frames = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(frames) < needed:
            raise DataError(f"'{path}' has {len(frames)} frames, the clip needs {needed}")
        return torch.stack([load_rgb(f, size) for f in frames[:needed:subsample]], dim=1)
    try:
        import decord
    except ImportError as exc:
        raise ConfigError(f"reading video files needs decord: pip install 'hthlight[video]' ({exc})") from exc
    try:
        kwargs = {"width": size, "height": size} if size else {}
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), **kwargs)
        if len(reader) < needed:
            raise DataError(f"'{path}' has {len(reader)} frames, the clip needs {needed}")
        frames = reader.get_batch(list(range(0, needed, subsample))).asnumpy()  # (T, H, W, 3)
    except DataError:
        raise
    except Exception as exc:  # decord raises its own error types
        raise DataError(f"cannot read video '{path}': {exc}") from exc
    return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()


def video_features(
    folder: str | Path,
    detector: Callable[[torch.Tensor], torch.Tensor],
    num_frames: int = 16,
    subsample: int = 1,
    size: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    strict: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """I3D features ``(N, D)`` of the clips of ``folder``, and the skipped videos with their reasons."""
    clips, skipped, feats = [], [], []

    def flush():
        if clips:
            feats.append(detector(torch.stack(clips).float().to(device)).numpy())
            clips.clear()

    for path in list_videos(folder):
        try:
            clip = read_clip(path, num_frames, subsample, size)
        except DataError as err:
            if strict:
                raise
            skipped.append(str(err))
            continue
        if clips and clip.shape != clips[0].shape:
            flush()
        clips.append(clip)
        if len(clips) == batch_size:
            flush()
    flush()
    if not feats:
        raise DataError(f"no readable video with at least {num_frames} frames in '{folder}' ({len(skipped)} skipped)")
    return np.concatenate(feats), skipped


def evaluate(
    samples_dir: str,
    ref_dir: str,
    i3d: str,
    num_frames: int = 16,
    subsample: int = 1,
    size: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    strict: bool = False,
) -> dict:
    detector = load_i3d(i3d, device)
    fake, fake_skipped = video_features(samples_dir, detector, num_frames, subsample, size, batch_size, device, strict)
    real, real_skipped = video_features(ref_dir, detector, num_frames, subsample, size, batch_size, device, strict)
    if min(len(fake), len(real)) < 2:
        raise DataError(f"FVD needs at least 2 videos per folder, got {len(fake)} samples and {len(real)} reference")
    return {
        "fvd": frechet_distance(*feature_stats(fake), *feature_stats(real)),
        "samples": len(fake),
        "reference": len(real),
        "skipped": fake_skipped + real_skipped,
        "num_frames": num_frames,
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hthlight eval fvd", description="FVD (StyleGAN-V protocol).")
    parser.add_argument("samples_dir", help="generated videos: video files or folders of frames")
    parser.add_argument("ref_dir", help="reference videos: video files or folders of frames")
    parser.add_argument("--i3d", required=True, help="local TorchScript I3D detector (StyleGAN-V's i3d_torchscript.pt)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip (StyleGAN-V: 16)")
    parser.add_argument("--subsample", type=int, default=1, help="take every n-th frame")
    parser.add_argument("--resolution", type=int, default=None, help="resize frames to this square size first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strict", action="store_true", help="an unreadable or too short video is an error")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(list(argv))
    result = evaluate(
        args.samples_dir,
        args.ref_dir,
        args.i3d,
        args.num_frames,
        args.subsample,
        args.resolution,
        args.batch_size,
        args.device,
        args.strict,
    )
    print(
        f"FVD {result['fvd']:.4f} ({result['samples']} samples vs {result['reference']} reference clips of "
        f"{result['num_frames']} frames)"
    )
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} video(s): " + "; ".join(result["skipped"][:5]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
