"""Predictors that need no model: previous token, training-trace frequency, and the oracle bound."""
from __future__ import annotations

import numpy as np

from ..trace import AccessStream, Trace
from .base import Predictions, from_dense, seg_at, seg_counts, seg_position


def previous(stream: AccessStream, *, horizon: int, top_n: int) -> Predictions:
    """This layer's experts of the previous step, ranked by how many of its tokens used them.

    Known once that segment has routed, i.e. for horizons up to one full step
    (num_layers); larger horizons would need a step not yet run and get nothing.
    """
    counts = seg_counts(stream)
    pos = seg_position(stream)
    prev = seg_at(stream, pos - stream.num_layers)
    targets = np.flatnonzero(prev >= 0)
    parts = [from_dense(stream, targets, h, counts[prev[targets]], top_n, "previous")
             for h in range(1, min(horizon, stream.num_layers) + 1)]
    return Predictions.concat(parts, "previous")


def layer_frequency(train: Trace, num_layers: int, num_experts: int) -> np.ndarray:
    """(layers, experts): each expert's share of its layer's activations in a training trace."""
    train.check_same_model(num_layers, num_experts)
    c = train.expert_counts()
    return (c / np.maximum(c.sum(axis=1, keepdims=True), 1)).astype(np.float32)


def frequency(stream: AccessStream, train: Trace, *, horizon: int, top_n: int) -> Predictions:
    """The top experts of each layer in a *training* trace: the same guess every step."""
    freq = layer_frequency(train, stream.num_layers, stream.num_experts)
    targets = np.arange(stream.num_segments)
    parts = [from_dense(stream, targets, h, freq[stream.seg_layer], top_n, "frequency")
             for h in range(1, horizon + 1)]
    return Predictions.concat(parts, "frequency")


def oracle(stream: AccessStream, *, horizon: int, top_n: int) -> Predictions:
    """The experts each segment really uses (the bound no causal predictor can beat); not causal."""
    counts = seg_counts(stream)
    targets = np.arange(stream.num_segments)
    parts = [from_dense(stream, targets, h, counts, top_n, "oracle") for h in range(1, horizon + 1)]
    return Predictions.concat(parts, "oracle")
