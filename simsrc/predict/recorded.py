"""Recorded predictions: the `pred_h<N>` columns a trace carries (speculative gates, MoE-Beyond's model).

pred_hN of the row (token, layer l) lists the experts some predictor expected at
MoE layer l+N, known when layer l ran. So N >= 1 is issued at l's segment with
horizon N; N = 0 (a guess of l itself, made before l's router) is issued at the
segment before l's -- the previous layer of the step, or the previous step's
last layer -- with horizon 1. A segment of several tokens pools its rows: an
expert's score is the share of the rows that name it (rank order breaks ties).
"""
from __future__ import annotations

import numpy as np

from ..trace import AccessStream, Trace
from .base import Predictions, from_dense, seg_at, seg_position

NAME = "recorded"
ORDER = 2
NEEDS_TRAIN = False
CAUSAL = True


def predict(stream: AccessStream, trace: Trace, *, horizon: int, top_n: int, train=None, model=None,
            argument: str = "") -> Predictions:
    return recorded(trace, stream, horizon=horizon, top_n=top_n)


def recorded(trace: Trace, stream: AccessStream, *, horizon: int, top_n: int) -> Predictions:
    horizons = trace.prediction_horizons
    if not horizons:
        raise ValueError(f"{trace.path or 'trace'}: has no recorded prediction columns (pred_h<N>); record with "
                         f"`moesim record --record-predictions H` or pick another predictor (previous, "
                         f"moe-infinity, learned:MODEL, frequency, oracle)")
    E, S = stream.num_experts, stream.num_segments
    seg_of_row = np.repeat(np.arange(S), np.diff(stream.seg_row_offsets))  # stream rows -> segment
    pos = seg_position(stream)
    parts = []
    for n in horizons:
        h = max(n, 1)
        if h > horizon:
            continue
        pred = trace.predictions(n)[stream.row_order]  # stream row order
        m = pred.shape[1]
        # target of each row's guess: its own segment (N = 0) or layer l+N of the same step
        if n == 0:
            tgt_of_row = seg_of_row
        else:
            same_step = stream.seg_layer[seg_of_row] + n < stream.num_layers
            tgt_of_row = np.where(same_step, seg_at(stream, pos[seg_of_row] + n), -1)
        rows, ranks = np.nonzero(pred >= 0)
        ok = tgt_of_row[rows] >= 0
        rows, ranks = rows[ok], ranks[ok]
        targets, t_idx = np.unique(tgt_of_row[rows], return_inverse=True)
        dense = np.zeros((len(targets), E), np.float32)
        # a rank weight far below one row's share keeps the pooled share while ordering ties by rank
        np.add.at(dense, (t_idx, pred[rows, ranks]), 1.0 - 1e-3 * ranks / m)
        dense /= np.maximum(stream.seg_tokens[targets], 1)[:, None]
        parts.append(from_dense(stream, targets, h, dense, top_n, "recorded"))
    return Predictions.concat(parts, "recorded")
