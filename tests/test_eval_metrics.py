"""FID/KID, CLIP score and FVD: tiny feature extractors made here, real loading code, closed forms."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hthlight.cli import main
from hthlight.errors import ConfigError, DataError
from hthlight.eval import clip_score, fid, fvd

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyImageFeatures(torch.nn.Module):
    """uint8 (N, 3, H, W) -> 12 features: per-channel mean and std, and 2x1 pooled means."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (2, 1)).flatten(1)
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), pooled], dim=1)


class TinyI3D(torch.nn.Module):
    """StyleGAN-V's call signature; features: channel means, std, and mean absolute frame difference."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if rescale:
            x = x / 127.5 - 1
        diff = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((2, 3, 4))
        return torch.cat([x.mean((2, 3, 4)), x.std((2, 3, 4)), diff], dim=1)


def save_script(module: torch.nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


def write_images(folder, n: int, seed: int, brightness: float = 0.0, size: int = 16) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.uniform(0, 1, size=(1, 1, 3)) * 0.6 + brightness
        pixels = np.clip(base + 0.2 * rng.standard_normal((size, size, 3)), 0, 1)
        Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


# ----------------------------------------------------------------------------- FID / KID
def test_fid_kid_identical_folders_zero_and_shift_larger(tmp_path, capsys):
    features = save_script(TinyImageFeatures(), tmp_path / "features.pt")
    write_images(tmp_path / "a", 60, seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "a_copy")
    write_images(tmp_path / "b", 60, seed=1)  # same distribution, other draws
    write_images(tmp_path / "bright", 60, seed=2, brightness=0.3)
    same = fid.evaluate(str(tmp_path / "a"), str(tmp_path / "a_copy"), features, kid_subset_size=50, kid_subsets=10)
    near = fid.evaluate(str(tmp_path / "b"), str(tmp_path / "a"), features, kid_subset_size=50, kid_subsets=10)
    far = fid.evaluate(str(tmp_path / "bright"), str(tmp_path / "a"), features, kid_subset_size=50, kid_subsets=10)
    assert abs(same["fid"]) < 1e-6 and abs(same["kid_mean"]) < 0.05 * far["kid_mean"]  # KID is unbiased: ~0 +- noise
    assert same["samples"] == same["reference"] == 60 and same["feature_dim"] == 12
    assert far["fid"] > 5 * near["fid"] > 0 and far["kid_mean"] > near["kid_mean"]

    out = tmp_path / "fid.json"
    args = ["eval", "fid", str(tmp_path / "bright"), str(tmp_path / "a"), "--features", features]
    assert main([*args, "--kid-subset-size", "50", "--json", str(out)]) == 0
    assert "FID" in capsys.readouterr().out
    assert json.loads(out.read_text())["fid"] == pytest.approx(far["fid"], rel=1e-6)


def test_frechet_distance_closed_form_on_gaussian_features():
    """N(0, I) vs N(m, diag(s^2)): FID = |m|^2 + sum(1 + s^2 - 2 s)."""
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([1.0, -0.5, 0.0, 2.0])
    s = torch.tensor([1.0, 2.0, 0.5, 1.5])
    real = torch.randn(40_000, 4, generator=g, dtype=torch.float64)
    fake = m + s * torch.randn(40_000, 4, generator=g, dtype=torch.float64)
    expected = float((m**2).sum() + (1 + s**2 - 2 * s).sum())  # 6.25 + 1.5 = 7.75
    result = fid.fid_kid_from_features(real, fake, kid_subset_size=500, kid_subsets=5)
    assert result["fid"] == pytest.approx(expected, rel=0.03)
    exact = fvd.frechet_distance(m.numpy(), np.diag((s**2).numpy()), np.zeros(4), np.eye(4))
    assert exact == pytest.approx(expected, rel=1e-9)


def test_feature_extractor_with_return_features_keyword(tmp_path):
    class WithKeyword(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            features = x.float().mean((2, 3))
            return features if return_features else features.softmax(-1)

    extractor = fid.load_feature_extractor(save_script(WithKeyword(), tmp_path / "kw.pt"))
    images = torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(extractor(images), images.float().mean((2, 3)))


def test_missing_or_unusable_features_are_clear_errors(tmp_path, capsys):
    write_images(tmp_path / "a", 4, seed=0)
    with pytest.raises(ConfigError, match=r"feature extractor '.*nope.pt' does not exist; give --features"):
        fid.load_feature_extractor(tmp_path / "nope.pt")
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, weights)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs torch-fidelity, which is not installed"):
            fid.load_feature_extractor(weights)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="neither a TorchScript archive nor a weights file"):
        fid.load_feature_extractor(tmp_path / "junk.pt")
    code = main(["eval", "fid", str(tmp_path / "a"), str(tmp_path / "a"), "--features", str(tmp_path / "nope.pt")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        fid.list_images(tmp_path / "empty")


# ----------------------------------------------------------------------------- CLIP score
def make_tiny_clip(out) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(vocab) for c in chars})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    special = {k: vocab[v] for k, v in [("bos_token_id", "<|startoftext|>"), ("eos_token_id", "<|endoftext|>")]}
    text = dict(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
        pad_token_id=special["eos_token_id"],
        **special,
    )
    vision = dict(
        image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return str(out)


def write_prompted_samples(folder, prompts) -> None:
    write_images(folder / "samples", len(prompts), seed=3)
    rows = [{"file": f"samples/{i:03d}.png", "prompt": p, "seed": i} for i, p in enumerate(prompts)]
    rows.append({"file": "samples/000.png", "label": 1, "seed": 0})  # a class request: no prompt, skipped
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_clip_score_from_a_local_model_matches_the_definition(tmp_path, capsys):
    pytest.importorskip("transformers")
    model_dir = make_tiny_clip(tmp_path / "clip")
    prompts = ["a red square", "a blue circle", "a long prompt " * 20]
    write_prompted_samples(tmp_path / "pred", prompts)
    result = clip_score.clip_score(str(tmp_path / "pred"), model_dir, batch_size=2)
    assert result["samples"] == 3

    model, processor = clip_score.load_clip(model_dir)
    wrapped = clip_score._ProjectedFeatures(model)
    scores = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            image = Image.open(tmp_path / "pred" / "samples" / f"{i:03d}.png").convert("RGB")
            pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
            tokens = processor(text=[prompt], return_tensors="pt", padding=True)
            ids, mask = tokens["input_ids"][:, :77], tokens["attention_mask"][:, :77]
            a = torch.nn.functional.normalize(wrapped.get_image_features(pixels), dim=-1)
            b = torch.nn.functional.normalize(wrapped.get_text_features(ids, mask), dim=-1)
            scores.append(100 * max((a * b).sum().item(), 0.0))
    assert result["clip_score"] == pytest.approx(sum(scores) / 3, rel=1e-4, abs=1e-4)
    assert main(["eval", "clip", str(tmp_path / "pred"), "--model", model_dir]) == 0
    assert "CLIP score" in capsys.readouterr().out


def test_clip_score_errors(tmp_path, capsys):
    write_prompted_samples(tmp_path / "pred", ["a cat"])
    assert main(["eval", "clip", str(tmp_path / "pred"), "--model", str(tmp_path / "no_clip")]) == 2
    assert "no CLIP model in" in capsys.readouterr().err
    (tmp_path / "pred" / "predictions.jsonl").write_text(json.dumps({"file": "samples/000.png", "label": 0}) + "\n")
    with pytest.raises(DataError, match="no sample with a 'prompt'"):
        clip_score.read_prompted_predictions(tmp_path / "pred")


# ----------------------------------------------------------------------------- FVD
def write_frame_folders(root, n: int, seed: int, frames: int = 16, motion: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    for v in range(n):
        folder = root / f"video{v:02d}"
        folder.mkdir(parents=True)
        base = rng.uniform(0.2, 0.6, size=(1, 1, 3))
        for f in range(frames):
            pixels = np.clip(base + motion * f / frames + 0.05 * rng.standard_normal((8, 8, 3)), 0, 1)
            Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{f:03d}.png")


def write_mp4(path, frames_THWC: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames_THWC.shape[2], frames_THWC.shape[1], "yuv420p"
        for frame in frames_THWC:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_fvd_identical_zero_moving_larger_and_short_videos_skipped(tmp_path, capsys):
    i3d = save_script(TinyI3D(), tmp_path / "i3d.pt")
    write_frame_folders(tmp_path / "real", 12, seed=0)
    shutil.copytree(tmp_path / "real", tmp_path / "real_copy")
    write_frame_folders(tmp_path / "moving", 12, seed=1, motion=0.4)
    write_frame_folders(tmp_path / "still", 12, seed=2)
    write_frame_folders(tmp_path / "short", 1, seed=3, frames=4)  # too short: skipped, counted
    shutil.move(tmp_path / "short" / "video00", tmp_path / "still" / "video99")
    same = fvd.evaluate(str(tmp_path / "real"), str(tmp_path / "real_copy"), i3d)
    assert abs(same["fvd"]) < 1e-6 and same["samples"] == 12
    near = fvd.evaluate(str(tmp_path / "still"), str(tmp_path / "real"), i3d)
    far = fvd.evaluate(str(tmp_path / "moving"), str(tmp_path / "real"), i3d)
    assert far["fvd"] > 5 * near["fvd"] > 0
    assert len(near["skipped"]) == 1 and "has 4 frames, the clip needs 16" in near["skipped"][0]
    with pytest.raises(DataError, match="the clip needs 16"):
        fvd.evaluate(str(tmp_path / "still"), str(tmp_path / "real"), i3d, strict=True)
    assert main(["eval", "fvd", str(tmp_path / "moving"), str(tmp_path / "real"), "--i3d", i3d]) == 0
    assert "FVD" in capsys.readouterr().out
    assert main(["eval", "fvd", str(tmp_path / "moving"), str(tmp_path / "real"), "--i3d", str(tmp_path / "x.pt")]) == 2
    assert "I3D detector" in capsys.readouterr().err


def test_fvd_reads_mp4_files_like_frame_folders(tmp_path):
    pytest.importorskip("decord")
    pytest.importorskip("av")
    rng = np.random.default_rng(0)
    frames = (rng.uniform(0, 1, size=(4, 1, 1, 1, 3)) * 200 + 20 * np.ones((4, 18, 32, 32, 3))).astype(np.uint8)
    for v in range(4):
        write_mp4(tmp_path / f"clip{v}.mp4", frames[v])
        folder = tmp_path / "frames" / f"clip{v}"
        folder.mkdir(parents=True)
        for f, frame in enumerate(frames[v]):
            Image.fromarray(frame).save(folder / f"{f:03d}.png")
    from_mp4 = fvd.read_clip(tmp_path / "clip0.mp4", 16)
    from_folder = fvd.read_clip(tmp_path / "frames" / "clip0", 16)
    assert from_mp4.shape == from_folder.shape == (3, 16, 32, 32) and from_mp4.dtype == torch.uint8
    assert (from_mp4.float() - from_folder.float()).abs().mean() < 4  # lossy codec
    assert len(fvd.list_videos(tmp_path)) == 4  # the four .mp4 files ("frames" holds folders, not frames)
