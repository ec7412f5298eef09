"""previous: this layer's experts of the previous step, ranked by how many of its tokens used them."""
from __future__ import annotations

import numpy as np

from ..trace import AccessStream
from .base import Predictions, from_dense, seg_at, seg_counts, seg_position

NAME = "previous"
ORDER = 1
NEEDS_TRAIN = False
CAUSAL = True


def predict(stream: AccessStream, trace, *, horizon: int, top_n: int, train=None, model=None,
            argument: str = "") -> Predictions:
    """Known once that segment has routed, i.e. for horizons up to one full step
    (num_layers); larger horizons would need a step not yet run and get nothing.
    """
    counts = seg_counts(stream)
    pos = seg_position(stream)
    prev = seg_at(stream, pos - stream.num_layers)
    targets = np.flatnonzero(prev >= 0)
    parts = [from_dense(stream, targets, h, counts[prev[targets]], top_n, "previous")
             for h in range(1, min(horizon, stream.num_layers) + 1)]
    return Predictions.concat(parts, "previous")
