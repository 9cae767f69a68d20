"""diffusers 3D (causal) video autoencoders with temporal compression, loaded from a local path.

Supports ``AutoencoderKLWan``, ``AutoencoderKLCogVideoX`` and ``AutoencoderKLLTXVideo``
(any diffusers class with the same ``encode(x).latent_dist`` / ``decode(z).sample``
interface works when its compression ratios are given). These VAEs are causal in time: ``T``
frames become ``1 + (T - 1) / temporal_factor`` latent frames, and an image (one frame) one
latent frame. Latents are normalised with the model's ``latents_mean``/``latents_std`` when
it has them (Wan, LTX), else multiplied by ``scaling_factor`` (CogVideoX).

The diffusers model is kept out of the module tree: its (frozen) weights are not written
into hthlight checkpoints, and it follows the device of the tensors it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hthlight.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _factors(model: Any) -> tuple[int, int]:
    """(spatial, temporal) compression of a diffusers video autoencoder."""
    config = model.config
    name = type(model).__name__
    if name == "AutoencoderKLWan":
        return 2 ** (len(config.dim_mult) - 1), 2 ** sum(bool(d) for d in config.temperal_downsample)
    if name == "AutoencoderKLCogVideoX":
        return 2 ** (len(config.block_out_channels) - 1), int(config.temporal_compression_ratio)
    spatial = getattr(model, "spatial_compression_ratio", None)
    temporal = getattr(model, "temporal_compression_ratio", None)
    if spatial is None or temporal is None:
        raise ConfigError(
            f"cannot tell the compression of {name}; give spatial_factor and temporal_factor "
            "(supported without them: AutoencoderKLWan, AutoencoderKLCogVideoX, AutoencoderKLLTXVideo)"
        )
    return int(spatial), int(temporal)


class DiffusersVideoVAE(nn.Module):
    """A diffusers video autoencoder as an hthlight ``vae``.

    Args:
        path: local folder written by ``save_pretrained`` (holds ``config.json``).
        subfolder: sub-folder of ``path`` holding the VAE (e.g. ``vae`` in a pipeline folder).
        class_name: diffusers class (default: ``_class_name`` in ``config.json``).
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights.
        sample_posterior: encode to a sample of the posterior instead of its mean.
        spatial_factor: spatial down-sampling (default: read from the model).
        temporal_factor: temporal down-sampling (default: read from the model).
        chunk_size: clips per encode/decode call.
    """

    def __init__(
        self,
        path: str,
        subfolder: str | None = None,
        class_name: str | None = None,
        dtype: str = "float32",
        sample_posterior: bool = False,
        spatial_factor: int | None = None,
        temporal_factor: int | None = None,
        chunk_size: int = 1,
    ) -> None:
        super().__init__()
        folder = Path(path) / (subfolder or "")
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"no diffusers VAE at '{folder}' (expected config.json from save_pretrained)")
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
        import diffusers  # deferred: the `hf` extra

        class_name = class_name or json.loads(config_file.read_text()).get("_class_name")
        cls = getattr(diffusers, str(class_name), None)
        if cls is None:
            raise ConfigError(f"diffusers has no class {class_name!r} (from {config_file})")
        model = cls.from_pretrained(str(path), subfolder=subfolder, torch_dtype=_DTYPES[dtype]).eval()
        model.requires_grad_(False)
        self.__dict__["_model"] = model  # not a submodule: not saved in checkpoints
        spatial, temporal = (spatial_factor, temporal_factor) if spatial_factor and temporal_factor else _factors(model)
        self.scale_factor = spatial_factor or spatial
        self.temporal_factor = temporal_factor or temporal
        self.sample_posterior = sample_posterior
        self.chunk_size = chunk_size
        config = model.config
        self.z_channels = int(getattr(config, "z_dim", None) or getattr(config, "latent_channels", 0))
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None and len(mean) == self.z_channels:
            self._mean_C = torch.tensor(mean, dtype=torch.float32)
            self._std_C = torch.tensor(std, dtype=torch.float32)
        else:
            self._mean_C, self._std_C = None, None
        self.scaling_factor = float(getattr(config, "scaling_factor", 1.0) or 1.0)

    @property
    def model(self) -> Any:
        return self.__dict__["_model"]

    def latent_channels(self, pixel_channels: int) -> int:
        if pixel_channels != self.model.config.in_channels:
            raise ConfigError(f"the VAE takes {self.model.config.in_channels} channels, the data has {pixel_channels}")
        return self.z_channels

    def latent_frames(self, num_frames: int) -> int:
        if (num_frames - 1) % self.temporal_factor:
            raise ConfigError(
                f"{num_frames} frames do not fit this causal VAE: use 1 + k * {self.temporal_factor} frames"
            )
        return 1 + (num_frames - 1) // self.temporal_factor

    def _on(self, x: torch.Tensor) -> Any:
        model = self.model
        if next(model.parameters()).device != x.device:
            model.to(x.device)
        return model

    def _normalise(self, z: torch.Tensor, inverse: bool) -> torch.Tensor:
        if self._mean_C is not None:
            shape = (1, -1, 1, 1, 1)
            mean, std = self._mean_C.to(z).view(shape), self._std_C.to(z).view(shape)
            return z * std + mean if inverse else (z - mean) / std
        return z / self.scaling_factor if inverse else z * self.scaling_factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` (or an image batch) in [-1, 1] -> normalised latents ``(B, z, T', H/f, W/f)``."""
        image = x.ndim == 4
        x = x[:, :, None] if image else x
        model = self._on(x)
        dtype = next(model.parameters()).dtype
        out = []
        for chunk in x.split(self.chunk_size):
            dist = model.encode(chunk.to(dtype)).latent_dist
            out.append(dist.sample() if self.sample_posterior else dist.mean)
        z = self._normalise(torch.cat(out).float(), inverse=False)
        return z[:, :, 0] if image else z

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        image = z.ndim == 4
        z = z[:, :, None] if image else z
        model = self._on(z)
        dtype = next(model.parameters()).dtype
        z = self._normalise(z.float(), inverse=True)
        x = torch.cat([model.decode(chunk.to(dtype)).sample for chunk in z.split(self.chunk_size)]).float()
        return x[:, :, 0] if image else x
