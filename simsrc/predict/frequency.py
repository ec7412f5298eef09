"""frequency: each layer's most used experts in a *training* trace, the same guess every step."""
from __future__ import annotations

import numpy as np

from ..trace import AccessStream, Trace
from .base import Predictions, from_dense

NAME = "frequency"
ORDER = 5
NEEDS_TRAIN = True
CAUSAL = True


def layer_frequency(train: Trace, num_layers: int, num_experts: int) -> np.ndarray:
    """(layers, experts): each expert's share of its layer's activations in a training trace."""
    train.check_same_model(num_layers, num_experts)
    c = train.expert_counts()
    return (c / np.maximum(c.sum(axis=1, keepdims=True), 1)).astype(np.float32)


def predict(stream: AccessStream, trace, *, horizon: int, top_n: int, train: Trace, model=None,
            argument: str = "") -> Predictions:
    freq = layer_frequency(train, stream.num_layers, stream.num_experts)
    targets = np.arange(stream.num_segments)
    parts = [from_dense(stream, targets, h, freq[stream.seg_layer], top_n, "frequency")
             for h in range(1, horizon + 1)]
    return Predictions.concat(parts, "frequency")
