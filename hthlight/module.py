"""DiffusionModule: the LightningModule that trains a denoiser and samples from it.

Training minimises the scheduler's objective (rectified flow by default) on VAE latents; an
EMA copy of the denoiser is kept for sampling and saved in checkpoints; ``predict`` turns
sampling requests (label, seed, index) into images. The denoiser is built in
:meth:`configure_model` so sharded strategies can build it directly on their devices.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from hthlight.callbacks.numerics import step_was_skipped
from hthlight.conditioning.text_encoders import (
    build_text_encoder,
    encode_captions,
    encode_prompts,
    install_empty_prompt,
    pair_with_negative,
)
from hthlight.diffusion.cuda_graphs import CUDAGraphed
from hthlight.diffusion.rectified_flow import sample_time_for
from hthlight.diffusion.samplers import check_sampler, guided, run_sampler
from hthlight.ema import ema_decay, ema_update
from hthlight.errors import ConfigError
from hthlight.models.denoiser import Denoiser, DenoiserConfig
from hthlight.models.presets import PresetSpec
from hthlight.registry import build_from_spec, plugin_provenance, resolve
from hthlight.strategies import clean_name, no_weight_decay_names


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up then cosine (or constant) learning rate.

    Args:
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not applied to biases, norms, or SSM ``A_log``/``D``/``dt_bias``).
        betas: Adam betas.
        eps: Adam epsilon.
        warmup_steps: linear warm-up steps from 0 to ``lr``.
        schedule: ``cosine`` decay to ``min_lr_ratio * lr`` at the last step, or ``constant``.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine).
        fused: AdamW's fused CUDA kernel (one launch for the whole update) instead of the
            multi-tensor one; ``null`` (default) fuses when every parameter is on CUDA, except
            under float16 mixed precision (Lightning refuses gradient clipping for a fused
            optimizer that unscales its own gradients).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    fused: bool | None = None


def build_adamw(param_groups: list[dict[str, Any]], cfg: OptimizerConfig, fp16_amp: bool = False) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``param_groups`` as ``cfg`` says; ``fused: null`` fuses on CUDA without fp16 AMP."""
    params = [p for group in param_groups for p in group["params"]]
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    fused = cfg.fused if cfg.fused is not None else on_cuda and not fp16_amp
    if fused and not on_cuda:
        raise ConfigError("optimizer.fused: true needs every parameter on CUDA; use null (automatic) or false")
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None)


@dataclass
class EMAConfig:
    """Exponential moving average of the denoiser's weights.

    Args:
        decay: EMA decay per optimizer step; 0 disables the EMA.
        warmup: use ``min(decay, (1 + step) / (10 + step))`` early in training.
        use_for_sampling: sample with the EMA weights (else the trained weights).
    """

    decay: float = 0.9999
    warmup: bool = True
    use_for_sampling: bool = True


@dataclass
class SamplingConfig:
    """How ``predict`` and sample callbacks generate.

    Args:
        sampler: ``euler`` (= DDIM on the flow path) or ``heun`` for rectified flow; ``ddim`` or
            ``ddpm`` for the ``ddpm`` objective; ``diffusers:<SchedulerClass>`` for any diffusers
            scheduler (docs/sampling.md lists the pairs that fit).
        steps: number of sampler steps.
        cfg_scale: classifier-free guidance scale (1: no guidance).
        sampler_kwargs: the sampler's own options, e.g. ``{eta: 0.5}`` for ``ddim`` or the diffusers
            scheduler's constructor arguments (``{algorithm_type: dpmsolver++, solver_order: 2}``).
        cuda_graph: on CUDA, record the denoiser call once per ``generate`` as a CUDA graph and
            replay it at every step (:mod:`hthlight.diffusion.cuda_graphs`): removes the host's
            launch overhead, which dominates at small token counts; ignored on CPU.
    """

    sampler: str = "euler"
    steps: int = 50
    cfg_scale: float = 4.0
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    cuda_graph: bool = False


def _as(cls, value):
    """A private ``cls`` instance: the dataclass defaults in the signature are shared objects."""
    return cls(**value) if isinstance(value, Mapping) else copy.deepcopy(value)


def resolve_denoiser(value: DenoiserConfig | PresetSpec | Mapping[str, Any]) -> DenoiserConfig:
    """A full denoiser config from a config, a preset spec, or their mapping forms."""
    if isinstance(value, Mapping):
        value = PresetSpec(**value) if "preset" in value else DenoiserConfig(**value)
    return value.resolve() if isinstance(value, PresetSpec) else value


class DiffusionModule(L.LightningModule):
    """Train and sample a diffusion denoiser.

    Args:
        denoiser: the denoiser architecture, in full or as a preset
            (``{preset: dit-s/2, overrides: {in_channels: 1}}``; see ``hthlight.models.presets``).
        scheduler: diffusion objective and time grid (registry kind ``scheduler``).
        vae: autoencoder to latent space (registry kind ``vae``; ``identity`` for pixels).
        optimizer: optimizer and learning-rate schedule.
        ema: weight EMA.
        sampling: sampler settings for predict and sample logging.
        image_size: pixel size of generated images (set from the data module by the CLI).
        sample_height: generate at this height instead of ``image_size`` (any multiple of the
            patch size times the VAE factor: positions and scans are computed per grid).
        sample_width: generate at this width instead of ``image_size``.
        num_frames: frames per generated sample (1 for images).
        text_encoder: frozen text encoder (registry kind ``text_encoder``, e.g.
            ``{name: t5, path: ..., max_length: 120}``) that turns batch ``caption`` and predict
            ``prompt``/``negative_prompt`` strings into ``context``; built on first use, loaded
            from its path and never saved in checkpoints (see docs/text_to_image.md).
    """

    def __init__(
        self,
        denoiser: DenoiserConfig | PresetSpec,
        scheduler: str | dict[str, Any] = "rectified_flow",
        vae: str | dict[str, Any] = "identity",
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008 (dataclass default shown by --print_config)
        ema: EMAConfig = EMAConfig(),  # noqa: B008
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008
        image_size: int | None = None,
        sample_height: int | None = None,
        sample_width: int | None = None,
        num_frames: int = 1,
        text_encoder: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.denoiser_config = resolve_denoiser(denoiser)
        self.optimizer_config = _as(OptimizerConfig, optimizer)
        self.ema_config = _as(EMAConfig, ema)
        self.sampling = _as(SamplingConfig, sampling)
        self.image_size = image_size
        self.sample_height = sample_height
        self.sample_width = sample_width
        self.num_frames = num_frames
        self.save_hyperparameters(
            {
                "denoiser": asdict(self.denoiser_config),
                "scheduler": scheduler,
                "vae": vae,
                "optimizer": asdict(self.optimizer_config),
                "ema": asdict(self.ema_config),
                "sampling": asdict(self.sampling),
                "image_size": image_size,
                "sample_height": sample_height,
                "sample_width": sample_width,
                "num_frames": num_frames,
                "text_encoder": text_encoder,
            }
        )
        self.scheduler = build_from_spec("scheduler", scheduler)
        self.vae = build_from_spec("vae", vae)
        if isinstance(self.vae, nn.Module):
            self.vae.requires_grad_(False)
        check_sampler(self.scheduler, self.sampling.sampler, self.sampling.sampler_kwargs)  # fail now, not later
        self.text_encoder_spec = text_encoder
        if text_encoder is not None:
            resolve("text_encoder", text_encoder)  # an unknown name fails now; weights load on first use
        object.__setattr__(self, "_text_encoder", None)  # not a submodule: never in state_dict / checkpoints
        if not 0.0 <= self.ema_config.decay < 1.0:
            raise ConfigError(f"ema.decay must be in [0, 1), got {self.ema_config.decay}")
        with torch.device("meta"):  # validates names, kwargs and shapes without allocating
            Denoiser(self.denoiser_config)
        self.denoiser: Denoiser | None = None
        self.ema_denoiser: Denoiser | None = None

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.denoiser is not None:
            return
        # Built on the CPU (unless inside a meta-device context for deferred init): the initial
        # weights then depend on the seed alone. Lightning would otherwise build on the GPU for
        # single-device and DDP runs and on the CPU for FSDP, drawing from different generators.
        device = "meta" if torch.get_default_device().type == "meta" else "cpu"
        with torch.device(device):
            self.denoiser = Denoiser(self.denoiser_config)
        if self.ema_config.decay > 0:
            self.ema_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    @classmethod
    def from_exported(cls, directory: str, map_location: str | torch.device = "cpu") -> DiffusionModule:
        """A sampling-only module from ``hthlight export``'s folder (see :mod:`hthlight.export`)."""
        from hthlight.export import load_exported

        return load_exported(directory, map_location)

    def sampling_model(self) -> Denoiser:
        self.configure_model()
        if self.ema_denoiser is not None and self.ema_config.use_for_sampling:
            return self.ema_denoiser
        return self.denoiser

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hthlight_plugins"] = plugin_provenance()  # names the plugins to install to load it

    def configure_callbacks(self):
        from hthlight.callbacks.resume import ExactResume
        from hthlight.callbacks.skipped import SkippedSamplesReporter
        from hthlight.checkpointing import SafeCheckpoints

        configured = {type(cb) for cb in self._trainer.callbacks} if self._trainer is not None else set()
        defaults = [SkippedSamplesReporter(), ExactResume(), SafeCheckpoints()]
        return [cb for cb in defaults if type(cb) not in configured]  # a configured one keeps its settings

    def setup(self, stage: str) -> None:
        data_channels = getattr(self.trainer.datamodule, "channels", None)
        if data_channels is None or not hasattr(self.vae, "latent_channels"):
            return
        expected = self.vae.latent_channels(data_channels)
        if expected != self.denoiser_config.in_channels:
            raise ConfigError(
                f"the data has {data_channels} channel(s), which the vae turns into {expected}, but "
                f"model.denoiser.in_channels is {self.denoiser_config.in_channels}; set it to {expected}"
            )

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """Clean latents ``x0`` and the batch the conditioner reads; None for an empty batch.

        An empty batch is one whose samples were all unreadable and skipped by the collate.
        ``caption`` strings are encoded into ``context``/``context_mask`` unless the batch has ``context``.
        A batch with ``latent`` (a feature cache, ``hthlight cache``) is used as it is: ``x0 = latent``.
        """
        if "latent" in batch:
            from hthlight.data.feature_cache import use_cached_features

            return use_cached_features(self, batch)
        if "image" not in batch:
            return None
        return self.vae.encode(batch["image"]), encode_captions(batch, self.encode_text, self.denoiser)

    def text_encoder(self):
        """The frozen text encoder (built from ``text_encoder`` on first use), or None."""
        if self._text_encoder is None and self.text_encoder_spec is not None:
            object.__setattr__(self, "_text_encoder", build_text_encoder(self.text_encoder_spec, self.denoiser_config))
        return self._text_encoder

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context_BSD, mask_BS)`` of ``prompts`` on this module's device."""
        encoder = self.text_encoder()
        if encoder is None:
            raise ConfigError("the batch has captions or prompts but model.text_encoder is not set; set it")
        encode = lambda texts: encoder(texts, device=self.device)
        install_empty_prompt([getattr(m, "conditioner", None) for m in (self.denoiser, self.ema_denoiser)], encode)
        return encode(prompts)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        encoded = self.encode_batch(batch)
        if encoded is None:
            return None
        x0, batch = encoded
        loss = self.scheduler.loss(lambda x, t: self.denoiser(x, t, batch), x0)
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the EMA update: once per optimizer step (not per accumulated
        micro-batch), before any callback can checkpoint the step, and not after a skipped step."""
        super().optimizer_step(*args, **kwargs)
        if self.ema_denoiser is not None and not step_was_skipped(self.trainer):
            decay = ema_decay(self.global_step, self.ema_config.decay, self.ema_config.warmup)
            ema_update(self.ema_denoiser, self.denoiser, decay)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        encoded = self.encode_batch(batch)
        if encoded is None:
            return None
        x0, batch = encoded
        generator = torch.Generator().manual_seed(batch_idx)  # the same noise and times every epoch
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t_B = sample_time_for(self.scheduler, x0, generator)  # resolution-shifted where the objective is
        loss = self.scheduler.loss(lambda x, t: self.denoiser(x, t, batch), x0, noise=noise, t_B=t_B)
        self.log("val/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        cfg = self.optimizer_config
        decay, no_decay = [], []
        with torch.device("meta"):  # decided on unwrapped shapes: FSDP flattens its shards to 1-D
            exempt_names = no_weight_decay_names(Denoiser(self.denoiser_config))
        for name, param in self.denoiser.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if clean_name(name) in exempt_names else decay).append(param)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fp16_amp = self._trainer is not None and str(self.trainer.precision).startswith("16")
        optimizer = build_adamw(groups, cfg, fp16_amp=fp16_amp)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        schedule = lr_lambda(cfg, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    def sample_shape(self) -> tuple[int, ...]:
        """Latent shape of one sample: ``(C, H, W)`` or ``(C, T, H, W)``."""
        height = self.sample_height or self.image_size
        width = self.sample_width or self.image_size
        if height is None or width is None:
            raise ConfigError("model.image_size is not set; set it (the CLI links it from data.image_size)")
        factor = getattr(self.vae, "scale_factor", 1)
        multiple = factor * self.denoiser_config.patch_size
        if height % multiple or width % multiple:
            raise ConfigError(
                f"sample size {height}x{width} must be a multiple of {multiple} (patch size x VAE down-sampling)"
            )
        spatial = (height // factor, width // factor)
        latent_frames = getattr(self.vae, "latent_frames", None)  # video VAEs may compress time
        frames_T = latent_frames(self.num_frames) if callable(latent_frames) else self.num_frames
        frames = (frames_T,) if self.num_frames > 1 else ()
        return (self.denoiser_config.in_channels, *frames, *spatial)

    @torch.no_grad()
    def generate(
        self,
        condition: Mapping[str, Any] | torch.Tensor | None,
        seeds_B: Sequence[int] | torch.Tensor,
        steps: int | None = None,
        cfg_scale: float | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1]; sample i starts from noise seeded by ``seeds_B[i]``.

        ``condition`` holds what the conditioner reads, one row per sample (``{"label": ...}``,
        or ``{"context": ..., "context_mask": ...}`` for text); a tensor is taken as labels.
        ``prompt`` / ``negative_prompt`` (lists of str) are encoded with the text encoder; where a
        negative prompt is given ("" = none) guidance's unconditional branch uses it instead of
        the null condition.
        """
        model = self.sampling_model()
        steps = steps or self.sampling.steps
        cfg_scale = self.sampling.cfg_scale if cfg_scale is None else cfg_scale
        sampler_kwargs = self.sampling.sampler_kwargs if sampler in (None, self.sampling.sampler) else {}
        sampler = sampler or self.sampling.sampler
        device = next(model.parameters()).device
        shape = self.sample_shape()
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds_B]  # also drive stochastic samplers
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        if condition is not None and not isinstance(condition, Mapping):
            condition = {"label": condition}
        condition, negative = encode_prompts(condition or {}, self.encode_text)
        if model.conditioner is not None:
            model.conditioner.check_batch(condition)  # on the host, before the loop (no sync per step)
        condition = {k: torch.as_tensor(v).to(device) for k, v in condition.items()}

        def conditional(x: torch.Tensor, t_B: torch.Tensor, drop_B: torch.Tensor) -> torch.Tensor:
            repeats = x.shape[0] // noise.shape[0]  # guidance evaluates both halves as one batch
            batch = {k: v.repeat(repeats, *[1] * (v.ndim - 1)) for k, v in condition.items()}
            if negative is not None and repeats == 2:
                batch, drop_B = pair_with_negative(batch, drop_B, negative)
            return model(x, t_B, batch, drop_B)

        graphed = CUDAGraphed if self.sampling.cuda_graph else lambda fn: fn
        if model.conditioner is None:
            velocity = graphed(lambda x, t_B: model(x, t_B))
        else:
            velocity = guided(graphed(conditional), cfg_scale)
        was_training = model.training
        model.eval()
        try:
            latents = run_sampler(
                self.scheduler, sampler, velocity, noise, steps, generator=generators, **sampler_kwargs
            )
        finally:
            model.train(was_training)
        return self.vae.decode(latents).float().clamp(-1, 1)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        condition = {k: v for k, v in batch.items() if k not in ("seed", "index", "prompt_index")}
        images = self.generate(condition, batch["seed"])
        prompts = {k: batch[k] for k in ("prompt", "negative_prompt") if k in batch}  # recorded by the writer
        return {
            "images": images.cpu(),
            "label": batch["label"].cpu(),
            "seed": batch["seed"].cpu(),
            "index": batch["index"].cpu(),
            **prompts,
        }


def lr_lambda(cfg: OptimizerConfig, total_steps: int):
    """Learning-rate multiplier per step: linear warm-up, then cosine or constant."""

    def multiplier(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
