"""Static: pin the experts a *different* trace used most; stream the rest through a small LRU.

Source: the static placements of Fiddler (Kamahori et al., arXiv 2402.07033)
and of popularity-based offloading baselines: hot experts are chosen offline
from profiling data and never move. Here each partition keeps its
`capacity - staging` most frequent experts of the training counts resident
from the start (loaded before serving, so not charged) as pins the engine
holds outside the policy, and `staging` slots (default: top-k) take demand
fetches in LRU order; when a layer's own experts fill them, a miss streams
through. Tie-break for pinning:
higher count first, then lower expert id.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ._list import last_free, new_lists, push_front, unlink

NAME = "static"
ORDER = 6  # its place in lists and tables


def pinned_items(part_of, part_capacity, params):
    """The items pinned in each partition, from params['train_counts'] (per item)."""
    counts = np.asarray(params["train_counts"], np.float64)
    staging = int(params.get("staging", params.get("top_k", 1)))
    pinned = []
    for p, cap in enumerate(part_capacity):
        members = np.flatnonzero(part_of == p)
        keep = max(int(cap) - staging, 0)
        order = members[np.lexsort((members, -counts[members]))]
        pinned.extend(order[:keep].tolist())
    return np.array(sorted(pinned), np.int32)


StaticState = namedtuple("StaticState", "hot prev nxt head tail")


def init(num_items, part_of, part_capacity, stream, params):
    return StaticState(pinned_items(part_of, part_capacity, params), *new_lists(num_items, len(part_capacity)))


def pins(state):
    return state.hot


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    hot, prev, nxt, head, tail = state
    if head[p] != x:
        unlink(prev, nxt, head, tail, p, x)
        push_front(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def on_insert(state, x, p, t):
    hot, prev, nxt, head, tail = state
    push_front(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def on_evict(state, x, p):
    hot, prev, nxt, head, tail = state
    unlink(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy, t):
    hot, prev, nxt, head, tail = state
    return last_free(prev, tail, part, busy)
