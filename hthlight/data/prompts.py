"""Prompt requests: what a text-to-image ``predict`` run generates, one item per image.

An item is ``{"prompt": str, "negative_prompt": str, "label": class or -1, "seed", "index",
"prompt_index"}`` (the last three 0-d LongTensors); a batch holds lists of strings and ``(B,)``
LongTensors. Sample ``i`` of prompt ``p`` has ``index = p * samples_per_prompt + i`` and noise
seed ``seed + index``, so a sample does not depend on the batch size. ``negative_prompt`` ""
means none: guidance then uses the model's null condition.

Prompt files:

* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped;
* ``.jsonl``: one JSON object per line with ``prompt`` and optionally ``negative_prompt``
  and ``label`` (an integer class the prompt names, e.g. 7 for "a handwritten seven",
  recorded in ``predictions.jsonl`` so class scorers such as ``hthlight eval digits`` work).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from hthlight.errors import ConfigError, DataError

#: batch keys that describe a prompt request rather than condition the model directly
PROMPT_KEYS = ("prompt", "negative_prompt")


@dataclass(frozen=True)
class Prompt:
    """One prompt to sample, with its optional negative prompt and class label (-1: none)."""

    prompt: str
    negative_prompt: str = ""
    label: int = -1


def read_prompts_file(path: str | Path) -> list[Prompt]:
    """Prompts from a ``.txt`` (one per line) or ``.jsonl`` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file '{path}' does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        prompts = []
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not a JSON object ({exc})") from exc
            prompts.append(as_prompt(record, f"{path}:{line_no}"))
    else:
        prompts = [Prompt(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DataError(f"prompts file '{path}' lists no prompts")
    return prompts


def as_prompt(value: str | Mapping[str, Any] | Prompt, where: str = "prompt") -> Prompt:
    """A :class:`Prompt` from a string, a mapping (``prompt``, ``negative_prompt``, ``label``) or a Prompt."""
    if isinstance(value, Prompt):
        return value
    if isinstance(value, str):
        return Prompt(value)
    if not isinstance(value, Mapping) or not isinstance(value.get("prompt"), str):
        raise DataError(f"{where}: expected a string or an object with a 'prompt' string, got {value!r}")
    unknown = sorted(set(value) - {"prompt", "negative_prompt", "label"})
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; allowed: prompt, negative_prompt, label")
    negative = value.get("negative_prompt") or ""
    label = value.get("label", -1)
    if not isinstance(negative, str):
        raise DataError(f"{where}: negative_prompt must be a string, got {negative!r}")
    if isinstance(label, bool) or not isinstance(label, int) or label < -1:
        raise DataError(f"{where}: label must be a non-negative integer, got {label!r}")
    return Prompt(value["prompt"], negative, label)


class PromptRequests(Dataset):
    """Prompt-major sampling requests: every sample of the first prompt, then the next, ...

    Args:
        prompts: the prompts (strings, mappings or :class:`Prompt`).
        samples_per_prompt: images per prompt.
        seed: base seed; sample ``index`` uses noise seeded with ``seed + index``.
        negative_prompt: negative prompt for the prompts that give none ("" for none).
    """

    def __init__(
        self,
        prompts: Sequence[str | Mapping[str, Any] | Prompt],
        samples_per_prompt: int = 1,
        seed: int = 0,
        negative_prompt: str = "",
    ) -> None:
        if samples_per_prompt < 1:
            raise ConfigError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
        self.prompts = [as_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        if not self.prompts:
            raise ConfigError("no prompts given; give prompts or a prompts_file")
        if negative_prompt:
            self.prompts = [
                p if p.negative_prompt else Prompt(p.prompt, negative_prompt, p.label) for p in self.prompts
            ]
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed

    @classmethod
    def for_classes(
        cls, captions: Sequence[str], samples_per_class: int, seed: int = 0, classes: Sequence[int] | None = None
    ) -> PromptRequests:
        """One prompt per class (``captions[c]`` labelled ``c``), with the index and seed layout of
        :class:`hthlight.data.requests.SamplingRequests` when all classes are requested."""
        chosen = sorted(classes) if classes is not None else range(len(captions))
        requests = cls([Prompt(captions[c], "", c) for c in chosen], samples_per_class, seed)
        requests._index_base = list(chosen)
        return requests

    _index_base: list[int] | None = None

    def __len__(self) -> int:
        return len(self.prompts) * self.samples_per_prompt

    def __getitem__(self, position: int) -> dict[str, Any]:
        if not 0 <= position < len(self):
            raise IndexError(f"request {position} out of range 0..{len(self) - 1}")
        p, i = divmod(position, self.samples_per_prompt)
        prompt = self.prompts[p]
        base = self._index_base[p] if self._index_base is not None else p
        index = base * self.samples_per_prompt + i
        return {
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative_prompt,
            "label": torch.tensor(prompt.label, dtype=torch.long),
            "prompt_index": torch.tensor(p, dtype=torch.long),
            "seed": torch.tensor(self.seed + index, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }


class PromptDataModule(L.LightningDataModule):
    """``hthlight predict`` from prompts, without a dataset::

        hthlight predict --config CONFIG --ckpt_path CKPT --data hthlight.data.PromptDataModule \\
            --data.prompts_file prompts.txt --data.samples_per_prompt 4 --data.image_size 256

    Args:
        prompts: prompts given inline (strings or ``{prompt, negative_prompt, label}`` objects).
        prompts_file: a ``.txt`` or ``.jsonl`` prompts file (see :mod:`hthlight.data.prompts`).
        samples_per_prompt: images per prompt.
        seed: base noise seed.
        negative_prompt: negative prompt for every prompt that gives none ("" for none).
        image_size: side of the generated images (the model's ``sample_height``/``sample_width`` override it).
        channels: image channels (checked against the model).
        batch_size: requests per predict batch.
    """

    def __init__(
        self,
        prompts: list[Any] | None = None,
        prompts_file: str | None = None,
        samples_per_prompt: int = 1,
        seed: int = 0,
        negative_prompt: str = "",
        image_size: int = 32,
        channels: int | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1:
            raise ConfigError(f"image_size and batch_size must be >= 1, got {image_size} and {batch_size}")
        if (prompts is None) == (prompts_file is None):
            raise ConfigError("give exactly one of data.prompts (a list) and data.prompts_file (a .txt or .jsonl file)")
        listed = read_prompts_file(prompts_file) if prompts_file is not None else list(prompts or [])
        self.requests = PromptRequests(listed, samples_per_prompt, seed, negative_prompt)
        self.image_size = image_size
        self.channels = channels
        self.batch_size = batch_size
        self.predict_seed = seed
        self.predict_samples_per_prompt = samples_per_prompt

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.requests, batch_size=self.batch_size, shuffle=False)
