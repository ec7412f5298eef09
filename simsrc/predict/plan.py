"""From predictions to the engine's prefetch plan: horizon, budget, and the adaptive (just-in-time) horizon.

Budget knobs: `top_n` experts per (issuing segment, target layer), a score
`threshold`, and `step_cap_bytes`, the most bytes of prefetch started per step.
The adaptive mode follows ExpertFlow (arXiv 2510.26730): pick the horizon whose
lead time -- the compute of the layers in between -- just covers the time the
link needs to bring one layer's prefetches, so they land neither late nor long
before they are needed (occupying cache slots meanwhile).
"""
from __future__ import annotations

import math

import numpy as np

from ..hardware import Hardware, dtype_bytes
from ..trace import AccessStream
from .base import Predictions


def segment_seconds(stream: AccessStream, meta, hw: Hardware, expert_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """(dense, total) seconds of each segment with every expert resident: what a prefetch can hide behind."""
    from ..replay import dense_seconds  # replay imports this package; import late to keep the arrow one way
    dense = dense_seconds(stream, meta, hw, expert_bytes)
    seg_of = np.repeat(np.arange(stream.num_segments, dtype=np.int64), np.diff(stream.seg_offsets))
    key, tokens = np.unique(seg_of * stream.num_items + stream.item, return_counts=True)
    flops_per_token = 2.0 * expert_bytes / dtype_bytes(meta.dtype)
    t = np.maximum(tokens * flops_per_token / (hw.gpu_tflops * 1e12), expert_bytes / (hw.hbm_gbps * 1e9))
    t += hw.launch_us * 1e-6
    experts = np.bincount(key // stream.num_items, weights=t, minlength=stream.num_segments)
    return dense, dense + experts


def adaptive_horizon(stream: AccessStream, meta, hw: Hardware, expert_bytes: float, per_layer: int,
                     max_horizon: int) -> int:
    """Smallest horizon whose lead time covers one layer's `per_layer` prefetches on the link."""
    _, total = segment_seconds(stream, meta, hw, expert_bytes)
    layer_s = float(np.mean(total)) if len(total) else 0.0
    need_s = hw.latency_us * 1e-6 + per_layer * expert_bytes / (hw.bandwidth_gbps * 1e9)
    if layer_s <= 0:
        return max_horizon
    return int(min(max(math.ceil(need_s / layer_s), 1), max_horizon))


def select(pred: Predictions, *, horizon: int | None = None, threshold: float | None = None,
           only_horizon: int | None = None) -> Predictions:
    keep = np.ones(len(pred), bool)
    if horizon is not None:
        keep &= pred.horizon <= horizon
    if only_horizon is not None:
        keep &= pred.horizon == only_horizon
    if threshold is not None:
        keep &= pred.score >= threshold
    return pred.take(np.flatnonzero(keep))


def to_plan(pred: Predictions, num_segments: int, *, step_cap: int = -1):
    """The engine's Prefetch: each issuing segment's slice, in issue order."""
    from ..replay import Prefetch
    pred = pred.sorted()
    offsets = np.zeros(num_segments + 1, np.int64)
    np.cumsum(np.bincount(pred.src_seg, minlength=num_segments), out=offsets[1:])
    return Prefetch(offsets, pred.item.astype(np.int32), pred.target_seg.astype(np.int64), int(step_cap))
