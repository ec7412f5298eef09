"""Predictions: ranked (target segment, expert, score) guesses, each issued after one segment.

Every predictor returns a `Predictions`. A prediction *issued at* segment s is
made from what was known once s had routed (its own experts and everything
before it) and may be prefetched right after s's demand fetches. Its *horizon*
is how many layers ahead its target lies in the step-major layer sequence
(step * layers + layer): 1 = the next layer, which is also where a prediction
"made before layer l's router runs" (MoE-Beyond's pred_h0) belongs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..trace import AccessStream


@dataclass
class Predictions:
    src_seg: np.ndarray     # int64 [n]: the segment after which the prediction is known
    target_seg: np.ndarray  # int64 [n]: the segment whose experts it guesses
    horizon: np.ndarray     # int32 [n]: layers between the two in the step-major layer sequence
    item: np.ndarray        # int32 [n]: layer_index * num_experts + expert
    score: np.ndarray       # float32 [n]: higher = more likely; comparable within one predictor
    name: str = ""

    def __len__(self) -> int:
        return len(self.item)

    @classmethod
    def empty(cls, name: str = "none") -> "Predictions":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.float32), name)

    @classmethod
    def concat(cls, parts: list["Predictions"], name: str) -> "Predictions":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(name)
        p = cls(*(np.concatenate([getattr(q, f) for q in parts])
                  for f in ("src_seg", "target_seg", "horizon", "item", "score")), name)
        return p.sorted()

    def sorted(self) -> "Predictions":
        """Issue order: by issuing segment, nearer targets first, then higher score, then item."""
        order = np.lexsort((self.item, -self.score, self.horizon, self.src_seg))
        return self.take(order)

    def take(self, idx) -> "Predictions":
        return Predictions(self.src_seg[idx], self.target_seg[idx], self.horizon[idx], self.item[idx],
                           self.score[idx], self.name)


def same_model(traces) -> tuple[int, int]:
    """(MoE layers, experts) shared by every training trace; a clear error when they differ."""
    L, E = traces[0].meta.num_moe_layers, traces[0].meta.num_experts
    for tr in traces:
        tr.check_same_model(L, E, role="training trace (unlike the first; fit one predictor per model)")
    return L, E


def seg_position(stream: AccessStream) -> np.ndarray:
    """Each segment's place in the step-major layer sequence (strictly increasing in stream order)."""
    return stream.seg_step.astype(np.int64) * stream.num_layers + stream.seg_layer


def seg_at(stream: AccessStream, pos: np.ndarray) -> np.ndarray:
    """The segment at each sequence position, -1 where the stream has none (out of range or a gap)."""
    p = seg_position(stream)
    pos = np.asarray(pos, np.int64)
    i = np.searchsorted(p, pos)
    ok = (i < len(p)) & (pos >= 0)
    ok[ok] = p[i[ok]] == pos[ok]
    return np.where(ok, i, -1)


def seg_counts(stream: AccessStream) -> np.ndarray:
    """(segments, experts) float32: share of the segment's tokens that routed to each expert."""
    E = stream.num_experts
    seg_of = np.repeat(np.arange(stream.num_segments), np.diff(stream.seg_offsets))
    out = np.zeros((stream.num_segments, E), np.float32)
    np.add.at(out, (seg_of, stream.item % E), 1.0)
    out /= np.maximum(stream.seg_tokens, 1)[:, None]
    return out


def from_dense(stream: AccessStream, targets: np.ndarray, horizon: int, scores: np.ndarray, top_n: int,
               name: str) -> Predictions:
    """Sparse predictions from dense scores (len(targets), experts): the top_n positive per target.

    Each target's prediction is issued at the segment `horizon` positions before it;
    targets with no such segment (start of the stream, a gap) get none.
    """
    targets = np.asarray(targets, np.int64)
    src = seg_at(stream, seg_position(stream)[targets] - horizon)
    keep = src >= 0
    targets, src, scores = targets[keep], src[keep], scores[keep]
    E = stream.num_experts
    n = min(top_n, E)
    if len(targets) == 0 or n <= 0:
        return Predictions.empty(name)
    # stable ranking: higher score first, lower expert id among ties
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    top = np.take_along_axis(scores, order, axis=1)
    ok = top > 0
    rows = np.repeat(np.arange(len(targets)), n).reshape(-1, n)[ok]
    items = stream.seg_layer[targets][rows].astype(np.int32) * E + order[ok].astype(np.int32)
    return Predictions(src[rows], targets[rows], np.full(len(rows), horizon, np.int32), items,
                       top[ok].astype(np.float32), name)
