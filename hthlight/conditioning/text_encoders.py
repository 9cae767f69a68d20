"""Frozen Hugging Face text encoders: prompts -> token features + attention mask.

HTH (Hong et al. 2025) and Dimba (Fei et al. 2024) cross-attend to FLAN-T5-XXL token
features; Stable Diffusion-style models use CLIP's text tower. Every encoder here is called
as ``encoder(prompts) -> (context_BSD, mask_BS)`` (mask True = a real token, padding False;
padded positions are zeroed) and exposes ``context_dim`` and ``max_length``. Encoders are
frozen (``eval()``, no gradients) and are never part of a checkpoint: they are loaded from
``path`` (a local folder, or a hub id that ``from_pretrained`` resolves) whenever needed.

Devices: ``encoder(prompts, device=D)`` computes on ``D``. Without ``offload`` the weights
move to ``D`` on the first call and stay there. With ``offload=True`` the weights live on the
CPU between calls and are moved to ``D`` for each call and back afterwards (bounds GPU memory
at the cost of a host-to-device copy per call; for large runs cache the features instead).

Default lengths: ``t5`` 120 tokens (the HTH paper gives no text length; 120 is PixArt-alpha's
T5 length, the T2I recipe HTH-style models follow; Dimba uses 350: set ``max_length: 350``),
``clip`` 77 (CLIP's context), ``hf`` 120.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hthlight.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: one of these (with config.json) must be in a local model folder
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_EXTRA_HINT = "pip install 'hthlight[hf]'"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; a ConfigError lists the allowed names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}") from None


def import_transformers(what: str):
    """The ``transformers`` module, or a ConfigError naming the extra that installs it."""
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(f"{what} needs the 'transformers' package; install it with {HF_EXTRA_HINT}") from exc
    return transformers


def looks_local(path: str) -> bool:
    """True for a filesystem path (existing, absolute, ``./``, ``~``, or more than one ``/``);
    False for a hub id like ``google/flan-t5-xxl``."""
    p = Path(path).expanduser()
    return p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path


def check_model_dir(path: str, subfolder: str | None, what: str, weight_files: Sequence[str] = WEIGHT_FILES) -> None:
    """Raise a ConfigError unless ``path[/subfolder]`` is a folder with a config and weights.

    Hub ids (see :func:`looks_local`) are left to ``from_pretrained``.
    """
    if not looks_local(path):
        return
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"{what} path '{path}' does not exist (give a local model folder or a hub id)")
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise ConfigError(f"{what} folder '{folder}' does not exist (check path and subfolder)")
    found = sorted(p.name for p in folder.iterdir())
    if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in weight_files):
        raise ConfigError(
            f"{what} folder '{folder}' has no model weights: expected config.json and one of "
            f"{', '.join(weight_files)}; found: {', '.join(found) or '(empty)'}"
        )


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face text encoder; the output is its last hidden state.

    Args:
        path: local folder or hub id of the model (and, by default, its tokenizer).
        max_length: tokens per prompt (longer prompts are truncated); default
            ``default_max_length`` of the class (t5 120, clip 77, hf 120).
        dtype: weights and compute dtype: ``float32``, ``bfloat16`` or ``float16``.
        offload: keep the weights on the CPU between calls (see the module docstring).
        padding: ``max_length`` (every prompt padded to ``max_length``: fixed shapes, as
            PixArt/HTH caches) or ``longest`` (pad to the longest prompt of the call).
        subfolder: the model's subfolder in ``path`` (e.g. ``text_encoder`` in a diffusers pipeline folder).
        tokenizer_path: where the tokenizer is (default: ``path``).
        tokenizer_subfolder: the tokenizer's subfolder (default: ``subfolder``; ``tokenizer``
            in a diffusers pipeline folder).
    """

    model_class = "AutoModel"
    kind_name = "hf text encoder"
    default_max_length = 120

    def __init__(
        self,
        path: str,
        max_length: int | None = None,
        dtype: str = "float32",
        offload: bool = False,
        padding: Literal["max_length", "longest"] = "max_length",
        subfolder: str | None = None,
        tokenizer_path: str | None = None,
        tokenizer_subfolder: str | None = None,
    ) -> None:
        super().__init__()
        max_length = self.default_max_length if max_length is None else max_length
        if max_length < 1:
            raise ConfigError(f"text encoder max_length must be >= 1, got {max_length}")
        if padding not in ("max_length", "longest"):
            raise ConfigError(f"text encoder padding must be 'max_length' or 'longest', got {padding!r}")
        transformers = import_transformers(f"the {self.kind_name}")
        self.path = str(path)
        self.max_length = max_length
        self.dtype = resolve_dtype(dtype)
        self.offload = offload
        self.padding = padding
        check_model_dir(self.path, subfolder, self.kind_name)
        tokenizer_path = str(tokenizer_path or path)
        tokenizer_subfolder = subfolder if tokenizer_subfolder is None else tokenizer_subfolder
        try:
            model = getattr(transformers, self.model_class).from_pretrained(
                self.path, subfolder=subfolder or "", dtype=self.dtype
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the {self.kind_name} from '{self.path}': {exc}") from exc
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                tokenizer_path, subfolder=tokenizer_subfolder or ""
            )
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"cannot load the tokenizer of the {self.kind_name} from '{tokenizer_path}'"
                f"{f' (subfolder {tokenizer_subfolder})' if tokenizer_subfolder else ''}: {exc}"
            ) from exc
        if hasattr(model, "decoder") and hasattr(model, "get_encoder"):
            model = model.get_encoder()  # an encoder-decoder (e.g. a full T5 through AutoModel): keep the encoder
        self.model = model.eval().requires_grad_(False)
        self.context_dim = int(self._hidden_size(model.config))

    @staticmethod
    def _hidden_size(config: Any) -> int:
        for name in ("d_model", "hidden_size"):
            if getattr(config, name, None):
                return getattr(config, name)
        raise ConfigError(f"cannot tell the width of text encoder config {type(config).__name__}")

    def train(self, mode: bool = True) -> HFTextEncoder:
        return super().train(False)  # always frozen

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a sequence of str, got {type(prompts).__name__}")
        return self.tokenizer(
            list(prompts),
            padding=self.padding,
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def forward(
        self, prompts: Sequence[str], device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context_BSD, mask_BS)`` of ``prompts``; on ``device`` (default: where the weights are)."""
        device = torch.device(device) if device is not None else self.device
        tokens = self.tokenize(prompts)
        ids_BS = tokens["input_ids"].to(device)
        mask_BS = tokens["attention_mask"].to(device).bool()
        with self._on(device):
            hidden_BSD = self.model(input_ids=ids_BS, attention_mask=mask_BS.long()).last_hidden_state
        return hidden_BSD * mask_BS[..., None].to(hidden_BSD.dtype), mask_BS

    @contextlib.contextmanager
    def _on(self, device: torch.device):
        """Run with the weights on ``device``; with offload, put them back on the CPU afterwards."""
        if self.device != device:
            self.model.to(device)
        try:
            yield
        finally:
            if self.offload and self.device.type != "cpu":
                self.model.to("cpu")

    def extra_repr(self) -> str:
        return (
            f"path={self.path!r}, context_dim={self.context_dim}, max_length={self.max_length}, "
            f"dtype={self.dtype}, offload={self.offload}, padding={self.padding!r}"
        )


class T5TextEncoder(HFTextEncoder):
    """T5 encoder (``T5EncoderModel``): FLAN-T5-XXL in HTH and Dimba (4096-wide features).

    Takes :class:`HFTextEncoder`'s arguments; ``max_length`` defaults to 120 (see the module
    docstring; Dimba: 350). Run T5 in ``bfloat16`` or ``float32``: ``float16`` overflows.
    """

    model_class = "T5EncoderModel"
    kind_name = "t5 text encoder"
    default_max_length = 120


class CLIPTextEncoder(HFTextEncoder):
    """CLIP's text tower (``CLIPTextModel``), last hidden state as in Stable Diffusion; 77 tokens."""

    model_class = "CLIPTextModel"
    kind_name = "clip text encoder"
    default_max_length = 77


# ----------------------------------------------------------------------------- module glue
EncodeFn = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


def build_text_encoder(spec: Any, denoiser_config: Any = None) -> nn.Module:
    """Build a text encoder from its config spec; check its width against the denoiser's text conditioner."""
    from hthlight.registry import build_from_spec

    encoder = build_from_spec("text_encoder", spec)
    conditioner = getattr(denoiser_config, "conditioner", None)
    expected = conditioner.get("context_dim") if isinstance(conditioner, Mapping) else None
    width = getattr(encoder, "context_dim", None)
    if expected is not None and width is not None and expected != width:
        raise ConfigError(
            f"the text encoder gives {width}-wide features but model.denoiser.conditioner.context_dim is "
            f"{expected}; set context_dim to {width}"
        )
    return encoder


def encode_captions(batch: Mapping[str, Any], encode: EncodeFn, denoiser: nn.Module | None = None) -> dict[str, Any]:
    """``batch`` with ``context``/``context_mask`` encoded from ``caption`` (list of str), unless
    it already has ``context`` (e.g. cached features) or ``denoiser``'s conditioner reads no text."""
    batch = dict(batch)
    conditioner = getattr(denoiser, "conditioner", None)
    if denoiser is not None and "context" not in getattr(conditioner, "batch_keys", ()):
        return batch
    if "caption" in batch and "context" not in batch:
        batch["context"], batch["context_mask"] = encode(list(batch["caption"]))
    return batch


@dataclass
class NegativeContext:
    """Encoded negative prompts for the unconditional half of guidance; ``given_B`` marks the
    samples that have one (the others use the model's null condition)."""

    context_BSD: torch.Tensor
    mask_BS: torch.Tensor
    given_B: torch.Tensor


def encode_prompts(condition: Mapping[str, Any], encode: EncodeFn) -> tuple[dict[str, Any], NegativeContext | None]:
    """Replace ``prompt`` by ``context``/``context_mask``; encode ``negative_prompt`` ("" = none)."""
    condition = dict(condition)
    prompts = condition.pop("prompt", None)
    negatives = condition.pop("negative_prompt", None)
    if prompts is not None:
        condition["context"], condition["context_mask"] = encode(list(prompts))
    if negatives is None or not any(negatives):
        return condition, None
    if "context" not in condition:
        raise ConfigError("negative prompts need prompts (a text-conditioned model)")
    context, mask = encode(list(negatives))
    given = torch.tensor([bool(n) for n in negatives], device=context.device)
    return condition, NegativeContext(context, mask, given)


def pair_with_negative(
    batch_2B: Mapping[str, Any], drop_2B: torch.Tensor, negative: NegativeContext
) -> tuple[dict[str, Any], torch.Tensor]:
    """For a guidance batch (conditional half, then unconditional half): put the negative
    prompts' context in the second half where given, and do not drop those samples."""
    from hthlight.conditioning.text import fit_length

    b = negative.given_B.shape[0]
    context, mask = batch_2B["context"], batch_2B["context_mask"]
    length = max(context.shape[1], negative.context_BSD.shape[1])
    context, mask = fit_length(context, mask.bool(), length)
    neg_context, neg_mask = fit_length(negative.context_BSD.to(context), negative.mask_BS.bool(), length)
    given = negative.given_B.to(context.device)
    uncond_context = torch.where(given[:, None, None], neg_context, context[b:])
    uncond_mask = torch.where(given[:, None], neg_mask, mask[b:])
    batch = {
        **batch_2B,
        "context": torch.cat([context[:b], uncond_context]),
        "context_mask": torch.cat([mask[:b], uncond_mask]),
    }
    return batch, drop_2B & ~torch.cat([torch.zeros_like(given), given])


def install_empty_prompt(conditioners: Sequence[nn.Module | None], encode: EncodeFn) -> None:
    """Give conditioners with ``null: empty_prompt`` the embedding of "" (when not yet set)."""
    targets = [c for c in conditioners if getattr(c, "null_kind", None) == "empty_prompt" and c.empty_context is None]
    if targets:
        context_1SD, mask_1S = encode([""])
        for conditioner in targets:
            conditioner.set_empty_prompt(context_1SD[0], mask_1S[0])


# ----------------------------------------------------------------------------- tiny models
def make_tiny_t5(out: str | Path, seed: int = 0, d_model: int = 32, num_layers: int = 2) -> Path:
    """Save a randomly initialised tiny T5 encoder with a byte-level tokenizer (ByT5) to ``out``.

    Needs no download (ByT5's tokenizer has no vocabulary file); for tests and the demo.
    """
    transformers = import_transformers("making a tiny T5")
    out = Path(out)
    tokenizer = transformers.ByT5Tokenizer()
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=max(8, d_model // 4),
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        model = transformers.T5EncoderModel(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_clip(out: str | Path, seed: int = 0, hidden_size: int = 32, num_layers: int = 2) -> Path:
    """Save a randomly initialised tiny CLIP text model with a byte-level BPE tokenizer (no merges)."""
    transformers = import_transformers("making a tiny CLIP")
    out = Path(out)
    vocab = {ch: i for i, ch in enumerate(_byte_chars())}
    vocab.update({ch + "</w>": len(vocab) for ch in _byte_chars()})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    with _seeded(seed):
        model = transformers.CLIPTextModel(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b if b in printable else next(extra)) for b in range(256)]


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


TINY_MODELS = {"tiny-t5": make_tiny_t5, "tiny-clip": make_tiny_clip}


def text_encoder_command(argv: Sequence[str]) -> int:
    """``hthlight text-encoder {tiny-t5,tiny-clip} --out DIR [--seed N]``: save a tiny random model."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="hthlight text-encoder",
        description="Save a tiny randomly initialised text encoder and tokenizer (no download), for demos and tests.",
    )
    parser.add_argument("model", choices=sorted(TINY_MODELS))
    parser.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    parser.add_argument("--width", type=int, default=32, help="hidden width (the encoder's context_dim)")
    args = parser.parse_args(list(argv))
    out = TINY_MODELS[args.model](args.out, args.seed, args.width)
    print(f"hthlight: wrote {args.model} (width {args.width}, seed {args.seed}) to {out}")
    return 0
