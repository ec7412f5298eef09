"""MoE-Infinity's activation-aware prefetching (Xue et al., arXiv 2401.14361), as the paper describes it.

Each request keeps an expert activation matrix (layers x experts counts) that
grows as its tokens route. A collection of such matrices, one per request of
*training* traces, stands for the workload seen before. After every segment
the running matrix is matched to the nearest collected one by cosine
similarity taken layer by layer and averaged over the layers the request has
used so far; that matrix's share of each expert in a later layer, times a
priority that decays with the distance to that layer (1 - (h-1)/layers),
ranks the experts to prefetch. The similarities are updated incrementally --
a token's routing changes one layer's row -- so a match costs O(collection),
not O(collection x layers x experts).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..trace import AccessStream, Trace
from .base import Predictions, from_dense, seg_at, seg_position

NAME = "moe-infinity"
ORDER = 3
NEEDS_TRAIN = True
CAUSAL = True


def predict(stream: AccessStream, trace, *, horizon: int, top_n: int, train: Trace, model=None,
            argument: str = "") -> Predictions:
    return moe_infinity(stream, train, horizon=horizon, top_n=top_n)


def collection(train: Trace, num_layers: int, num_experts: int) -> np.ndarray:
    """(requests, layers, experts) float64: each training request's activation counts."""
    train.check_same_model(num_layers, num_experts)
    req = train.column("request_id").astype(np.int64)
    _, r = np.unique(req, return_inverse=True)
    layer = train.layer_index().astype(np.int64)
    ids = train.expert_ids().astype(np.int64)
    out = np.zeros((r.max() + 1 if len(r) else 0, num_layers, num_experts))
    np.add.at(out, (np.repeat(r, ids.shape[1]), np.repeat(layer, ids.shape[1]), ids.reshape(-1)), 1.0)
    return out


@njit(cache=True)
def _match(item, seg_row_offsets, row_request, top_k, num_layers, num_experts, ref, slot_of_row, n_slots):
    """Nearest collected matrix for each stream row's request, after its segment has routed."""
    K = ref.shape[0]
    ref_norm = np.zeros((K, num_layers))
    for k in range(K):
        for l in range(num_layers):
            s = 0.0
            for e in range(num_experts):
                s += ref[k, l, e] * ref[k, l, e]
            ref_norm[k, l] = np.sqrt(s)
    cur = np.zeros((n_slots, num_layers, num_experts))
    norm2 = np.zeros((n_slots, num_layers))
    dot = np.zeros((n_slots, K, num_layers))
    cos = np.zeros((n_slots, K, num_layers))
    cos_sum = np.zeros((n_slots, K))
    owner = np.full(n_slots, -1, np.int64)
    best = np.full(row_request.shape[0], -1, np.int64)
    for s in range(seg_row_offsets.shape[0] - 1):
        r0, r1 = seg_row_offsets[s], seg_row_offsets[s + 1]
        for r in range(r0, r1):
            slot = slot_of_row[r]
            if owner[slot] != row_request[r]:  # a new request takes over the slot: start from zero
                owner[slot] = row_request[r]
                cur[slot] = 0.0
                norm2[slot] = 0.0
                dot[slot] = 0.0
                cos[slot] = 0.0
                cos_sum[slot] = 0.0
            for j in range(top_k):
                x = item[r * top_k + j]
                l = x // num_experts
                e = x % num_experts
                norm2[slot, l] += 2.0 * cur[slot, l, e] + 1.0
                cur[slot, l, e] += 1.0
                for k in range(K):
                    dot[slot, k, l] += ref[k, l, e]
            l = item[r * top_k] // num_experts
            n = np.sqrt(norm2[slot, l])
            for k in range(K):
                c = dot[slot, k, l] / (n * ref_norm[k, l]) if ref_norm[k, l] > 0 else 0.0
                cos_sum[slot, k] += c - cos[slot, k, l]
                cos[slot, k, l] = c
        for r in range(r0, r1):
            slot = slot_of_row[r]
            b = 0
            for k in range(1, K):
                if cos_sum[slot, k] > cos_sum[slot, b]:
                    b = k
            best[r] = b
    return best


def _slots(stream: AccessStream) -> tuple[np.ndarray, int]:
    """A reusable state slot per request, so memory follows the batch size, not the request count."""
    req = stream.row_request.astype(np.int64)
    n = len(req)
    last = {}
    for i, q in enumerate(req[::-1]):
        last.setdefault(int(q), n - 1 - i)
    slot_of_row = np.empty(n, np.int64)
    free: list[int] = []
    taken: dict[int, int] = {}
    n_slots = 0
    for i, q in enumerate(req.tolist()):
        s = taken.get(q)
        if s is None:
            s = free.pop() if free else n_slots
            n_slots = max(n_slots, s + 1)
            taken[q] = s
        slot_of_row[i] = s
        if last[q] == i:
            free.append(taken.pop(q))
    return slot_of_row, max(n_slots, 1)


def moe_infinity(stream: AccessStream, train: Trace, *, horizon: int, top_n: int) -> Predictions:
    L, E = stream.num_layers, stream.num_experts
    ref = collection(train, L, E)
    if len(ref) == 0:
        raise ValueError(f"{train.path}: the training trace has no requests to build MoE-Infinity's collection from")
    slot_of_row, n_slots = _slots(stream)
    best = _match(stream.item, stream.seg_row_offsets, stream.row_request, stream.top_k, L, E, ref,
                  slot_of_row, n_slots)
    share = ref / np.maximum(ref.sum(axis=2, keepdims=True), 1.0)  # (K, L, E)
    S = stream.num_segments
    seg_of_row = np.repeat(np.arange(S), np.diff(stream.seg_row_offsets))
    pos = seg_position(stream)
    parts = []
    for h in range(1, horizon + 1):
        targets = seg_at(stream, pos + h)
        srcs = np.flatnonzero(targets >= 0)
        if len(srcs) == 0:
            continue
        idx = np.full(S, -1, np.int64)
        idx[srcs] = np.arange(len(srcs))
        rows = np.flatnonzero(idx[seg_of_row] >= 0)
        dense = np.zeros((len(srcs), E), np.float64)
        # a batch pools its requests' guesses, weighted by their tokens in the segment
        np.add.at(dense, idx[seg_of_row[rows]], share[best[rows], stream.seg_layer[targets[seg_of_row[rows]]]])
        dense /= np.maximum(stream.seg_tokens[srcs], 1)[:, None]
        dense *= 1.0 - (h - 1) / L
        parts.append(from_dense(stream, targets[srcs], h, dense.astype(np.float32), top_n, "moe-infinity"))
    return Predictions.concat(parts, "moe-infinity")
