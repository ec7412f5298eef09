"""none: demand fetch only, no prefetch."""
from __future__ import annotations

from .base import Predictions

NAME = "none"
ORDER = 0
NEEDS_TRAIN = False
CAUSAL = True


def predict(stream, trace, *, horizon: int, top_n: int, train=None, model=None, argument: str = "") -> Predictions:
    return Predictions.empty("none")
