"""Latent space of a pretrained diffusers ``AutoencoderKL`` (SD / SDXL / FLUX-style VAEs).

Latent diffusion (Rombach et al. 2022): the denoiser works on ``z = (E(x) - shift) * scale``
and samples are decoded with ``D(z / scale + shift)``, where ``scale`` and ``shift`` are the
VAE's ``scaling_factor`` and ``shift_factor`` (SD 1.x/2.x 0.18215, SDXL 0.13025, FLUX
0.3611 with shift 0.1159), read from its config unless given.

The VAE is frozen and, like the text encoders, is loaded from its path and never stored in
checkpoints: its weights are left out of ``state_dict()`` and not expected when one is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hthlight.conditioning.text_encoders import HF_EXTRA_HINT, check_model_dir, resolve_dtype
from hthlight.errors import ConfigError

VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class AutoencoderKLVAE(nn.Module):
    """Encode pixels in [-1, 1] to scaled latents and decode them back, in chunks.

    Images are ``(B, C, H, W)``; videos ``(B, C, T, H, W)`` are encoded frame by frame (the
    frames are folded into the batch). Latents have ``latent_channels`` channels and
    ``H / scale_factor`` x ``W / scale_factor`` positions.

    Args:
        path: local folder (or hub id) of the VAE, or of a diffusers pipeline with ``subfolder``.
        subfolder: e.g. ``vae`` in a pipeline folder.
        scaling_factor: latent scale (default: the VAE config's ``scaling_factor``).
        shift_factor: latent shift (default: the config's ``shift_factor``, or 0).
        sample: encode to a sample of the posterior ``N(mean, std)`` (noise from the global
            RNG); False (default) encodes to its mean, deterministic.
        chunk_size: images per encoder/decoder call (bounds activation memory; the result
            does not depend on it); None: the whole batch at once.
        dtype: weights and compute dtype (``float32``, ``bfloat16``, ``float16``); outputs
            come back in the input's dtype.
    """

    def __init__(
        self,
        path: str,
        subfolder: str | None = None,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        sample: bool = False,
        chunk_size: int | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"vae chunk_size must be >= 1 or null, got {chunk_size}")
        try:
            from diffusers import AutoencoderKL
        except ImportError as exc:
            raise ConfigError(
                f"the autoencoder_kl vae needs the 'diffusers' package; install it with {HF_EXTRA_HINT}"
            ) from exc
        check_model_dir(str(path), subfolder, "autoencoder_kl vae", VAE_WEIGHT_FILES)
        self.path = str(path)
        self.compute_dtype = resolve_dtype(dtype)
        try:
            model = AutoencoderKL.from_pretrained(self.path, subfolder=subfolder, torch_dtype=self.compute_dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the autoencoder_kl vae from '{self.path}': {exc}") from exc
        self.model = model.eval().requires_grad_(False)
        config = model.config
        self.scaling_factor = float(config.scaling_factor if scaling_factor is None else scaling_factor)
        shift = getattr(config, "shift_factor", None) if shift_factor is None else shift_factor
        self.shift_factor = float(shift or 0.0)
        self.sample = sample
        self.chunk_size = chunk_size
        self.in_channels = int(config.in_channels)
        self.channels = int(config.latent_channels)
        self.scale_factor = 2 ** (len(config.block_out_channels) - 1)  # spatial down-sampling
        self._load_prefix = ""
        self._register_state_dict_hook(_drop_own_keys)
        self._register_load_state_dict_pre_hook(_remember_prefix, with_module=True)
        self.register_load_state_dict_post_hook(_forgive_missing_own_keys)

    def train(self, mode: bool = True) -> AutoencoderKLVAE:
        return super().train(False)  # always frozen

    def latent_channels(self, pixel_channels: int) -> int:
        if pixel_channels != self.in_channels:
            raise ConfigError(
                f"the autoencoder_kl vae at '{self.path}' takes {self.in_channels}-channel images, "
                f"but the data has {pixel_channels} channel(s)"
            )
        return self.channels

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, C, [T,] H, W)`` in [-1, 1] -> scaled latents ``(B, latent_channels, [T,] h, w)``."""
        return self._framewise(x, self._encode_images)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in (about) [-1, 1]."""
        return self._framewise(z, self._decode_images)

    def _encode_images(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        def one(chunk: torch.Tensor) -> torch.Tensor:
            posterior = self.model.encode(chunk).latent_dist
            return posterior.sample() if self.sample else posterior.mode()

        z = self._chunked(x_BCHW, one)
        return (z - self.shift_factor) * self.scaling_factor

    def _decode_images(self, z_BCHW: torch.Tensor) -> torch.Tensor:
        z = z_BCHW / self.scaling_factor + self.shift_factor
        return self._chunked(z, lambda chunk: self.model.decode(chunk).sample)

    def _chunked(self, x: torch.Tensor, fn) -> torch.Tensor:
        dtype = x.dtype
        device = next(self.model.parameters()).device
        x = x.to(device=device, dtype=self.compute_dtype)
        size = self.chunk_size or max(1, x.shape[0])
        return torch.cat([fn(chunk) for chunk in x.split(size)]).to(dtype)

    @staticmethod
    def _framewise(x: torch.Tensor, fn) -> torch.Tensor:
        if x.ndim == 4:
            return fn(x)
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) images or (B, C, T, H, W) videos, got shape {tuple(x.shape)}")
        b, _, t = x.shape[:3]
        y = fn(x.transpose(1, 2).flatten(0, 1))  # (B*T, C, H, W)
        return y.unflatten(0, (b, t)).transpose(1, 2)

    def extra_repr(self) -> str:
        return (
            f"path={self.path!r}, latent_channels={self.channels}, scale_factor={self.scale_factor}, "
            f"scaling_factor={self.scaling_factor}, shift_factor={self.shift_factor}, "
            f"sample={self.sample}, chunk_size={self.chunk_size}"
        )


def _drop_own_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: leave the frozen external weights (``<prefix>model.*``) out."""
    for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
        del state_dict[key]


def _remember_prefix(module: nn.Module, state_dict: Any, prefix: str, *args: Any) -> None:
    module._load_prefix = prefix


def _forgive_missing_own_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """Load hook: the external weights are not in checkpoints, so do not report them missing."""
    own = module._load_prefix + "model."
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not k.startswith(own)]
