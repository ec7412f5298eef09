"""From predictions to the engine's prefetch plan: horizon, budget, and the adaptive (just-in-time) horizon.

Budget knobs: `top_n` experts per (issuing segment, target layer), a score
`threshold`, and `step_cap_bytes`, the most bytes of prefetch started per step.
The adaptive mode follows ExpertFlow (arXiv 2510.26730): pick the horizon whose
lead time -- the compute of the layers in between -- just covers the time the
link needs to bring one layer's prefetches, so they land neither late nor long
before they are needed (occupying cache slots meanwhile). With memory tiers the
prefetches that miss the host tier are read from storage first, and the lead
time covers that read too (adaptive_horizon).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cost import segment_seconds, storage_seconds, transfer_seconds
from ..hardware import Hardware
from ..trace import AccessStream
from .base import Predictions


@dataclass
class Prefetch:
    """A prefetch plan for the engine: per segment, the experts to fetch and the segment that needs them."""

    offsets: np.ndarray     # int64 [segments+1]
    item: np.ndarray        # int32: layer_index * num_experts + expert
    target_seg: np.ndarray  # int64: segment whose layer the prediction is for
    step_cap: int = -1      # most prefetches started per step (-1: no cap)

    @classmethod
    def none(cls, num_segments: int) -> "Prefetch":
        return cls(np.zeros(num_segments + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))


def adaptive_horizon(stream: AccessStream, meta, hw: Hardware, expert_bytes: float, per_layer: int,
                     max_horizon: int, host_held: float = 1.0) -> int:
    """Smallest horizon whose lead time covers one layer's `per_layer` prefetches on the link.

    host_held: the share of all experts the host tier holds (memory tiers; 1: every expert in host memory).
    With less than all of them and a storage link, the lead time also covers the layer's expected storage
    read: knowing nothing of which experts the host tier holds, a prefetch misses it with probability
    1 - host_held, so (1 - host_held) x storage_seconds(the layer's prefetch bytes). The read and the copy
    count one after the other, as one expert's read and copy are (reads and copies of different experts
    overlap, so this errs towards a horizon early, whose cost is slots held a little longer, not a stall).
    """
    _, total = segment_seconds(stream, meta, hw, expert_bytes)
    layer_s = float(np.mean(total)) if len(total) else 0.0
    need_s = transfer_seconds(per_layer * expert_bytes, hw)
    if host_held < 1.0 and hw.storage_bandwidth is not None:
        need_s += (1.0 - host_held) * storage_seconds(per_layer * expert_bytes, hw)
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
    pred = pred.sorted()
    offsets = np.zeros(num_segments + 1, np.int64)
    np.cumsum(np.bincount(pred.src_seg, minlength=num_segments), out=offsets[1:])
    return Prefetch(offsets, pred.item.astype(np.int32), pred.target_seg.astype(np.int64), int(step_cap))
