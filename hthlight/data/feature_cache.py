"""Feature cache: encode a data set once into VAE latents and text features, then train from them.

Large text-to-image runs (PixArt-alpha, Chen et al. 2023; HTH) do not run the VAE and T5 at
every step: ``hthlight cache`` encodes every sample of a data module's splits once and
writes, per split, sharded safetensors plus a JSON index::

    CACHE/train/index.json            the truth: metadata and the finished shards
    CACHE/train/index.rank3.json      (with several writers) the shards rank 3 finished
    CACHE/train/shard-00000.safetensors
    CACHE/train/empty_prompt.safetensors   the encoder's embedding of "" (caption dropout)

A shard holds samples of one aspect-ratio bucket: ``latent (n, C, h, w)`` (already
VAE-scaled), ``context (n, L, D)``, ``context_mask (n, L)`` (bool), ``label (n,)`` when the
data has labels and ``index (n,)`` (position in the source data set); the captions are in
its metadata. The plan (which samples go to which shard) is fixed by the data, bucket
assignment and ``shard_size``, and recorded by a fingerprint. Shards are written to a
temporary file and renamed, then the index is rewritten the same way: an interrupted run
resumed with the same command redoes only shards the index does not list, so every sample
ends up exactly once (unreadable ones are listed as skipped). Several processes (torchrun)
share the pending shards by rank. :class:`CachedFeaturesDataModule`
trains from a cache; its batches carry ``latent``, ``context``, ``context_mask`` and ``label``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from hthlight.data.buckets import bucket_loader
from hthlight.data.health import SkippedSample
from hthlight.data.requests import SamplingRequests, check_common_args, predict_loader
from hthlight.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "hthlight-feature-cache"
VERSION = 1
INDEX = "index.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------- writing
def plan_shards(bucket_ids: Sequence[int], shard_size: int) -> list[tuple[int, list[int]]]:
    """``(bucket, dataset indices)`` of every shard: each bucket's indices in order, cut in ``shard_size``."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    by_bucket: dict[int, list[int]] = {}
    for index, bucket in enumerate(bucket_ids):
        by_bucket.setdefault(int(bucket), []).append(index)
    return [
        (bucket, indices[start : start + shard_size])
        for bucket, indices in sorted(by_bucket.items())
        for start in range(0, len(indices), shard_size)
    ]


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _as_list(items: list[Any]) -> list[Any]:
    return items


class CacheInterrupted(Exception):
    """Raised (for tests) to simulate a crash in the middle of writing a cache."""


class FeatureCacheWriter:
    """Write one split of a cache: plan, resume from the index, encode and store shards.

    Args:
        output: Folder of the split (created).
        dataset: Items ``{"image", "caption"[, "label"]}`` or :class:`SkippedSample`.
        bucket_ids: Bucket of each item (items of one batch must have the same image size).
        vae: Object with ``encode(x_BCHW) -> latents`` (e.g. from ``build_from_spec("vae", ...)``).
        text_encoder: ``encoder(prompts, device=...) -> (context_BSD, mask_BS)`` with
            ``max_length``; None stores no text features.
        meta: Description saved in the index (encoders, image size, ...); part of the fingerprint.
        shard_size: Samples per shard.
        batch_size: Samples encoded at once.
        num_workers: DataLoader workers reading the images.
        device: Where the encoders run.
        dtype: Storage dtype of latents and context: float32, bfloat16 or float16.
        rank: This process's rank when several processes write one cache (e.g. under torchrun):
            it writes the pending shards whose id modulo ``world_size`` is ``rank``, and lists
            them in its own part of the index (``index.json`` for rank 0, else
            ``index.rank{rank}.json``; :func:`read_index` merges the parts).
        world_size: Number of writing processes.
    """

    def __init__(
        self,
        output: str | Path,
        dataset: Dataset,
        bucket_ids: Sequence[int],
        vae: Any,
        text_encoder: Any = None,
        meta: Mapping[str, Any] | None = None,
        shard_size: int = 1024,
        batch_size: int = 32,
        num_workers: int = 0,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"cache rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        check_common_args(batch_size=batch_size, num_workers=num_workers)
        if dtype not in STORE_DTYPES:
            raise ConfigError(f"cache dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        if len(bucket_ids) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"{len(bucket_ids)} bucket ids for {len(dataset)} samples")  # type: ignore[arg-type]
        self.output = Path(output)
        self.dataset = dataset
        self.vae = vae
        self.text_encoder = text_encoder
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = torch.device(device)
        self.dtype = STORE_DTYPES[dtype]
        self.rank, self.world_size = rank, world_size
        self.written = 0  # shards this writer finished
        self.plan = plan_shards(bucket_ids, shard_size)
        self.context_length = getattr(text_encoder, "max_length", None) if text_encoder is not None else None
        if text_encoder is not None and not self.context_length:
            raise ConfigError("the text encoder must have max_length (the cache stores fixed-length features)")
        description = {
            **dict(meta or {}),
            "num_samples": len(bucket_ids),
            "shard_size": shard_size,
            "dtype": dtype,
            "context_length": self.context_length,
        }
        self.header = {
            "format": FORMAT,
            "version": VERSION,
            **description,
            "fingerprint": _fingerprint({"description": description, "plan": self.plan}),
            "num_shards": len(self.plan),
        }
        self.index = self._load_or_start_index()

    # ------------------------------------------------------------------ index
    @property
    def index_path(self) -> Path:
        """This process's part of the index."""
        return self.output / (INDEX if self.rank == 0 else f"index.rank{self.rank}.json")

    def _load_or_start_index(self) -> dict[str, Any]:
        self.output.mkdir(parents=True, exist_ok=True)
        for stale in self.output.glob("*.tmp"):  # left by an interrupted write of this rank; never indexed
            mine = stale.name == self.index_path.name + ".tmp" or _shard_id(stale.name) % self.world_size == self.rank
            if mine:
                stale.unlink(missing_ok=True)
        if index_parts(self.output):
            found = read_index(self.output)
            if found.get("fingerprint") != self.header["fingerprint"]:
                raise ConfigError(
                    f"'{self.output}' holds a cache of other data or settings (fingerprint "
                    f"{found.get('fingerprint')}, now {self.header['fingerprint']}); use another --output or delete it"
                )
        if self.index_path.exists():
            return _read_json(self.index_path)
        index = {**self.header, "shards": {}}
        self._write_index(index)
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        _atomic_write_bytes(self.index_path, json.dumps(index, indent=1).encode())

    def pending(self) -> list[int]:
        """Shard ids no part of the index lists yet (over all ranks)."""
        done = read_index(self.output)["shards"]
        return [i for i in range(len(self.plan)) if shard_name(i) not in done]

    # ------------------------------------------------------------------ encoding
    def run(self, max_shards: int | None = None, fail_after: int | None = None) -> dict[str, Any]:
        """Write this rank's pending shards (at most ``max_shards`` of them); return the merged index.

        ``fail_after`` raises :class:`CacheInterrupted` after that many shards, between the
        shard's rename and the index update (the worst moment), to test resuming.
        """
        if self.rank == 0:
            self._write_empty_prompt()
        todo = [i for i in self.pending() if i % self.world_size == self.rank]
        if max_shards is not None:
            todo = todo[:max_shards]
        for done, shard_id in enumerate(todo):
            bucket, indices = self.plan[shard_id]
            record = self._write_shard(shard_id, bucket, indices)
            if fail_after is not None and done + 1 >= fail_after:
                raise CacheInterrupted(f"stopped after writing {shard_name(shard_id)} (before the index update)")
            self.index["shards"][shard_name(shard_id)] = record
            self._write_index(self.index)
            self.written += 1
            log.info("cache %s: %s (%d samples)", self.output, record["file"], record["count"])
        return read_index(self.output)

    def _write_empty_prompt(self) -> None:
        if self.text_encoder is None or (self.output / EMPTY_PROMPT).exists():
            return
        context_1SD, mask_1S = self._encode_text([""])
        _atomic_save_tensors(
            self.output / EMPTY_PROMPT, {"context": context_1SD[0], "context_mask": mask_1S[0]}, {"format": FORMAT}
        )

    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from hthlight.conditioning.text import fit_length

        context_BSD, mask_BS = self.text_encoder(prompts, device=self.device)
        context_BSD, mask_BS = fit_length(context_BSD, mask_BS.bool(), self.context_length)
        return context_BSD.to("cpu", self.dtype), mask_BS.cpu()

    @torch.no_grad()
    def _encode_images(self, image_BCHW: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image_BCHW.to(self.device)).to("cpu", self.dtype)

    def _write_shard(self, shard_id: int, bucket: int, indices: list[int]) -> dict[str, Any]:
        loader = DataLoader(
            Subset(self.dataset, indices),
            batch_size=self.batch_size,
            collate_fn=_as_list,
            num_workers=self.num_workers,
        )
        parts: dict[str, list[Any]] = {}
        captions: list[str] = []
        skipped: list[dict[str, Any]] = []
        position = 0
        for items in loader:
            good = []
            for item in items:
                if item is None or isinstance(item, SkippedSample):
                    path, reason = (item.path, item.reason) if item is not None else ("<unknown>", "")
                    skipped.append({"index": indices[position], "path": path, "reason": reason})
                else:
                    good.append((indices[position], item))
                position += 1
            if not good:
                continue
            batch = default_collate([item for _, item in good])
            parts.setdefault("index", []).append(torch.tensor([i for i, _ in good], dtype=torch.long))
            parts.setdefault("latent", []).append(self._encode_images(batch["image"]))
            if "label" in batch:
                parts.setdefault("label", []).append(torch.as_tensor(batch["label"]).long())
            if "caption" in batch:
                captions += list(batch["caption"])
                if self.text_encoder is not None:
                    context, mask = self._encode_text(list(batch["caption"]))
                    parts.setdefault("context", []).append(context)
                    parts.setdefault("context_mask", []).append(mask)
            elif self.text_encoder is not None:
                raise ConfigError("a text encoder is set but the data has no 'caption'; drop model.text_encoder")
        name = shard_name(shard_id)
        count = sum(len(t) for t in parts.get("index", []))
        if count:
            tensors = {key: torch.cat(values) for key, values in parts.items()}
            _atomic_save_tensors(self.output / name, tensors, {"format": FORMAT, "captions": json.dumps(captions)})
        return {"file": name if count else None, "bucket": bucket, "count": count, "skipped": skipped}


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.safetensors"


def _shard_id(file_name: str) -> int:
    """The id in ``shard-00012.safetensors[.tmp]``; -1 for other files."""
    stem = file_name.split(".", 1)[0]
    return int(stem[6:]) if stem.startswith("shard-") and stem[6:].isdigit() else -1


def index_parts(folder: str | Path) -> list[Path]:
    """The index files of a split: ``index.json`` (rank 0) and ``index.rank*.json`` (other writers)."""
    folder = Path(folder)
    main_part = [folder / INDEX] if (folder / INDEX).is_file() else []
    return main_part + sorted(folder.glob("index.rank*.json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"'{path}' is not valid JSON: {err}") from err
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DataError(f"'{path}' is not a version-{VERSION} hthlight feature cache index")
    return index


def read_index(folder: str | Path) -> dict[str, Any]:
    """The index of one cache split, its parts merged: the header, ``shards`` (every finished
    shard's record, by file name) and ``complete``; a DataError if there is none."""
    parts = index_parts(folder)
    if not parts:
        raise DataError(f"no feature cache at '{folder}' ({INDEX} is missing); write one with 'hthlight cache'")
    indexes = [_read_json(path) for path in parts]
    header = indexes[0]
    shards: dict[str, Any] = {}
    for path, index in zip(parts, indexes):
        if index.get("fingerprint") != header.get("fingerprint"):
            raise DataError(f"'{path}' belongs to another cache than '{parts[0]}' (different fingerprint)")
        shards.update(index["shards"])
    merged = {**header, "shards": dict(sorted(shards.items()))}
    merged["complete"] = len(shards) == header["num_shards"]
    return merged


# ---------------------------------------------------------------------- reading
class CachedFeaturesDataset(Dataset):
    """The samples of a cache split, in their source data set's order (skipped ones left out).

    Item: ``{"latent", "context", "context_mask", "label"}`` (those present in the cache),
    latents and context as float32. Shards are memory-mapped and read one row at a time.
    """

    def __init__(self, folder: str | Path, allow_incomplete: bool = False) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        if not self.index.get("complete") and not allow_incomplete:
            missing = self.index["num_shards"] - len(self.index["shards"])
            raise DataError(
                f"the feature cache '{self.folder}' is incomplete ({missing} of {self.index['num_shards']} shards "
                "missing); run the same 'hthlight cache' command again to finish it"
            )
        rows: list[tuple[int, str, int, int]] = []  # (source index, file, row, bucket)
        self.keys: list[str] = []
        for record in self.index["shards"].values():
            if not record["count"]:
                continue
            with safe_open(str(self.folder / record["file"]), framework="pt") as f:
                source = f.get_tensor("index").tolist()
                self.keys = sorted(f.keys())
            rows += [(s, record["file"], row, record["bucket"]) for row, s in enumerate(source)]
        rows.sort()
        self.rows = rows
        self.bucket_ids = [bucket for *_, bucket in rows]
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, file: str) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            if len(self._handles) >= 64:
                self._handles.clear()
            handle = self._handles[file] = safe_open(str(self.folder / file), framework="pt")
        return handle

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        _, file, row, _ = self.rows[i]
        shard = self._shard(file)
        item = {key: shard.get_slice(key)[row] for key in self.keys if key != "index"}
        for key in ("latent", "context"):
            if key in item:
                item[key] = item[key].float()
        return item

    def __getstate__(self) -> dict[str, Any]:  # open shard handles do not cross into workers
        return {**self.__dict__, "_handles": {}}


def load_empty_prompt(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(context_SD, mask_S)``: the cached embedding of the empty prompt, or None."""
    path = Path(folder) / EMPTY_PROMPT
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("context").float(), f.get_tensor("context_mask").bool()


class CachedFeaturesDataModule(L.LightningDataModule):
    """Train from a feature cache written by ``hthlight cache`` (no VAE or text encoder runs).

    Batches carry ``latent`` (already VAE-scaled: ``DiffusionModule`` uses it as ``x0``),
    ``context``, ``context_mask`` and ``label`` (those the cache holds), grouped by bucket
    with the seeded, sharded, resumable :class:`~hthlight.data.buckets.BucketBatchSampler`,
    so for the same seed the batches hold the same samples as the raw data module's
    (with the same ``batch_size``, ``seed`` and ``drop_last``).

    Args:
        root: The cache folder (holding ``train/`` and optionally ``val/``).
        batch_size: Training and validation batch size.
        seed: Batch-order seed, combined with the epoch (None: the run's ``seed_everything``).
        drop_last: Drop incomplete batches (else every sample is served once per epoch).
        num_workers: DataLoader worker processes.
        predict_samples_per_class: Samples per class generated by ``predict`` (labelled caches).
        predict_seed: Base noise seed of ``predict``.
        predict_classes: Classes to generate (None: all).
        predict_batch_size: Sampling requests per predict batch.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        seed: int | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        predict_samples_per_class: int = 8,
        predict_seed: int = 0,
        predict_classes: list[int] | None = None,
        predict_batch_size: int = 64,
    ) -> None:
        super().__init__()
        check_common_args(batch_size=batch_size, num_workers=num_workers, predict_batch_size=predict_batch_size)
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.predict_batch_size = predict_batch_size
        self.train_set = CachedFeaturesDataset(self.root / "train")
        self.val_set = CachedFeaturesDataset(self.root / "val") if (self.root / "val" / INDEX).exists() else None
        meta = self.train_set.index
        self.image_size = meta.get("image_size")
        self.channels = meta.get("channels")
        self.num_classes = meta.get("num_classes") or 0
        self.empty_prompt = load_empty_prompt(self.root / "train")
        self.requests = (
            SamplingRequests(self.num_classes, predict_samples_per_class, predict_seed, predict_classes)
            if self.num_classes
            else None
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.requests is None:
            raise ConfigError("this cache has no class labels to sample; predict with PromptDataModule instead")
        return predict_loader(self.requests, self.predict_batch_size, self.num_workers)

    def _loader(self, dataset: CachedFeaturesDataset, shuffle: bool) -> DataLoader:
        trainer = self.trainer if getattr(self, "trainer", None) is not None else None
        return bucket_loader(
            dataset,
            dataset.bucket_ids,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=self.drop_last and shuffle,
            num_workers=self.num_workers,
            trainer=trainer,
        )


def use_cached_features(module: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(x0, batch)`` of a cached batch for ``DiffusionModule.encode_batch``.

    The latents are used as they are (the VAE scaled them when the cache was written). A
    text conditioner that drops captions to the empty prompt gets the cached embedding of "".
    """
    from hthlight.conditioning.text_encoders import install_empty_prompt

    datamodule = getattr(getattr(module, "_trainer", None), "datamodule", None)
    empty = getattr(datamodule, "empty_prompt", None)
    if empty is not None:
        context_SD, mask_S = empty
        conditioners = [getattr(m, "conditioner", None) for m in (module.denoiser, module.ema_denoiser)]
        install_empty_prompt(conditioners, lambda prompts: (context_SD[None], mask_S[None]))
    return batch["latent"], batch


# ---------------------------------------------------------------------- command
CACHE_DESCRIPTION = """Encode a data module's splits once into VAE latents and text features (docs/data.md).

Reads the `data` section and `model.vae` / `model.text_encoder` of a training config:
  hthlight cache --config configs/captions.yaml --output cache/
  hthlight fit --config configs/captions.yaml --data hthlight.data.CachedFeaturesDataModule --data.root cache/
Interrupted? Run the same command again: finished shards are kept, the rest is written.
Several GPUs: torchrun --nproc_per_node 8 -m hthlight cache ...  (each process writes its share)
"""


def cache_command(argv: Sequence[str]) -> int:
    """``hthlight cache --config CONFIG --output DIR [options]``."""
    args = _parse_cache_args(argv)
    datamodule = args.data
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = args.model or {}
    vae_spec = model.get("vae", "identity")
    text_spec = model.get("text_encoder")
    rank = int(os.environ.get("RANK", 0)) if args.rank is None else args.rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if args.world_size is None else args.world_size
    device = torch.device(args.device)
    if args.device == "auto":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    vae = _build_vae(vae_spec, device)
    text_encoder = _build_text_encoder(text_spec)
    for split in args.splits:
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None or len(dataset) == 0:
            if split == "train":
                raise ConfigError(f"{type(datamodule).__name__} has no train_set to cache")
            print(f"hthlight: cache {split}: the data module has no {split} samples; nothing to write")
            continue
        bucket_ids = getattr(datamodule, f"{split}_buckets", None) or [0] * len(dataset)
        records = getattr(dataset, "records", None)
        meta = {
            "split": split,
            "data": type(datamodule).__qualname__,
            "source": _fingerprint([(r.path, r.caption) for r in records]) if records is not None else None,
            "image_size": getattr(datamodule, "image_size", None),
            "channels": getattr(datamodule, "channels", None),
            "num_classes": getattr(datamodule, "num_classes", 0) or 0,
            "class_names": getattr(datamodule, "class_names", None),
            "buckets": [list(b) for b in getattr(datamodule, "buckets", [])] or None,
            "vae": vae_spec,
            "text_encoder": text_spec,
        }
        writer = FeatureCacheWriter(
            Path(args.output) / split,
            dataset,
            bucket_ids,
            vae,
            text_encoder,
            meta=meta,
            shard_size=args.shard_size,
            batch_size=args.batch_size or getattr(datamodule, "batch_size", 32),
            num_workers=args.num_workers,
            device=device,
            dtype=args.dtype,
            rank=rank,
            world_size=world_size,
        )
        index = writer.run(max_shards=args.max_shards)
        shards = index["shards"].values()
        samples = sum(r["count"] for r in shards)
        skipped = sum(len(r["skipped"]) for r in shards)
        state = "complete" if index["complete"] else "incomplete: run the same command again to continue"
        if world_size > 1 and not index["complete"]:
            state = "incomplete: other writers may still be running; rerun the command afterwards to finish"
        who = f" (rank {rank} of {world_size})" if world_size > 1 else ""
        print(
            f"hthlight: cache {split}{who}: {len(index['shards'])}/{index['num_shards']} shards "
            f"({writer.written} new), {samples} samples, {skipped} skipped -> "
            f"{writer.output} ({state})"
        )
    return 0


def _parse_cache_args(argv: Sequence[str]) -> Any:
    from typing import Literal

    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    import hthlight.data  # noqa: F401  (data modules selectable by class name)

    parser = ArgumentParser(prog="hthlight cache", description=CACHE_DESCRIPTION, exit_on_error=False)
    parser.add_argument(
        "--config", action=ActionConfigFile, help="a training config (its data and model.vae/text_encoder)"
    )
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    parser.add_argument(
        "--model", type=dict | None, default=None, help="model section; only vae and text_encoder are read"
    )
    parser.add_argument("--trainer", type=dict | None, default=None, help="ignored")
    parser.add_argument("--seed_everything", type=int | bool | None, default=None, help="ignored")
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="ignored")
    parser.add_argument("--output", type=str, required=True, help="cache folder (one sub-folder per split)")
    parser.add_argument("--splits", type=list[str], default=["train", "val"], help="splits to cache")
    parser.add_argument("--shard_size", type=int, default=1024, help="samples per shard")
    parser.add_argument("--batch_size", type=int | None, default=None, help="samples encoded at once (default: data's)")
    parser.add_argument("--num_workers", type=int, default=0, help="image-reading workers")
    parser.add_argument(
        "--device", type=str, default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda:1, ..."
    )
    parser.add_argument("--rank", type=int | None, default=None, help="this writer's rank (default: $RANK or 0)")
    parser.add_argument("--world_size", type=int | None, default=None, help="writers (default: $WORLD_SIZE or 1)")
    parser.add_argument("--dtype", type=Literal["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument(
        "--max_shards", type=int | None, default=None, help="write at most this many new shards, then stop"
    )
    try:
        return parser.instantiate(parser.parse_args(list(argv)))
    except ArgumentError as exc:
        raise ConfigError(" ".join(str(exc).split())) from exc


def _build_vae(spec: Any, device: torch.device) -> Any:
    from hthlight.registry import build_from_spec

    vae = build_from_spec("vae", spec)
    return vae.to(device) if isinstance(vae, torch.nn.Module) else vae


def _build_text_encoder(spec: Any) -> Any:
    if spec is None:
        return None
    from hthlight.conditioning.text_encoders import build_text_encoder

    return build_text_encoder(spec)
