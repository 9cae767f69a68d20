"""Evaluation of generated samples (``python -m hthlight.eval.digits PRED_DIR``)."""

from typing import Any

__all__ = ["evaluate_predictions"]


def __getattr__(name: str) -> Any:
    # Lazy so that ``python -m hthlight.eval.digits`` does not import the module twice.
    if name == "evaluate_predictions":
        from hthlight.eval.digits import evaluate_predictions

        return evaluate_predictions
    raise AttributeError(f"module 'hthlight.eval' has no attribute {name!r}")
