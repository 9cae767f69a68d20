"""DataLoader options shared by every hthlight training and validation loader."""

from __future__ import annotations

from typing import Any

import torch


def worker_options(num_workers: int) -> dict[str, Any]:
    """``num_workers``, workers kept alive across epochs, and page-locked batches when CUDA is present.

    Pinned batches let ``batch.to("cuda", non_blocking=True)`` (what Lightning does) return at
    once instead of waiting for the kernels already queued: a launch-bound step keeps its overlap.
    """
    return {
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
