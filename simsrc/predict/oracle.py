"""oracle: the experts each segment really uses, the bound no causal predictor can beat (not causal)."""
from __future__ import annotations

import numpy as np

from ..trace import AccessStream
from .base import Predictions, from_dense, seg_counts

NAME = "oracle"
ORDER = 6
NEEDS_TRAIN = False
CAUSAL = False


def predict(stream: AccessStream, trace, *, horizon: int, top_n: int, train=None, model=None,
            argument: str = "") -> Predictions:
    counts = seg_counts(stream)
    targets = np.arange(stream.num_segments)
    parts = [from_dense(stream, targets, h, counts, top_n, "oracle") for h in range(1, horizon + 1)]
    return Predictions.concat(parts, "oracle")
