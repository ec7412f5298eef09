"""MoE-Infinity's activation-aware eviction: evict the expert with the lowest priority score.

Source: Xue et al., "MoE-Infinity: Offloading-Efficient MoE Model Serving",
arXiv 2401.14361 (the paper's cache replacement, not the repository's code).
priority = layer proximity x (this request's activations of the expert + 1)
x (activations of the expert over all requests so far + 1), where layer
proximity = 1 - d / layers and d is how many layers ahead of the layer now
running the expert's layer comes (0 = this layer, layers-1 = the one just
passed, needed again only next step). The +1 keeps a prefetched, not yet used
expert from scoring zero. Counts are causal: only demand accesses up to now
count (an insert at stream position t is an activation iff the stream's
expert at t is that expert; prefetch inserts are not). Tie-break: the expert
used longest ago, then the lower id. Scores change with the running layer,
so the victim is a scan over the partition's residents (a few hundred at most).
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy
from ._members import member_add, member_remove, new_members

NAME = "moe-infinity"
ORDER = 7  # its place in lists and tables


MoeInfinityState = namedtuple("MoeInfinityState", "item access_request num_experts num_layers members "
                                                  "req_count req_of global_count last clock")


def init(num_items, part_of, part_capacity, stream, params):
    top_k = max(int(stream.top_k), 1)
    access_request = np.repeat(stream.row_request.astype(np.int64), top_k)
    return MoeInfinityState(stream.item, access_request, np.int64(stream.num_experts),
                            np.int64(stream.num_layers), new_members(num_items, part_capacity),
                            np.zeros(num_items, np.float64), np.full(num_items, -1, np.int64),
                            np.zeros(num_items, np.float64), np.full(num_items, -1, np.int64),
                            np.full(1, -1, np.int64))


@njit(cache=True, _nrt=False)
def _activate(state, x, t):
    item, access_request, E, L, members, req_count, req_of, global_count, last, clock = state
    if t < 0:
        return
    clock[0] = t
    last[x] = t
    if item[t] == x:
        q = access_request[t]
        if req_of[x] != q:
            req_of[x] = q
            req_count[x] = 0.0
        req_count[x] += 1.0
        global_count[x] += 1.0


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    _activate(state, x, t)


@njit(cache=True, _nrt=False)
def on_insert(state, x, p, t):
    member_add(state.members, p, x)
    _activate(state, x, t)


@njit(cache=True, _nrt=False)
def on_evict(state, x, p):
    member_remove(state.members, p, x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy, t):
    item, access_request, E, L, members, req_count, req_of, global_count, last, clock = state
    t = clock[0]
    layer_now = item[t] // E if t >= 0 else 0
    q = access_request[t] if t >= 0 else -1
    best = -1
    best_score = 0.0
    for i in range(members.size[part]):
        x = members.slots[members.base[part] + i]
        if is_busy(busy, x):
            continue
        d = (x // E - layer_now) % L
        rc = req_count[x] if req_of[x] == q else 0.0
        score = (1.0 - d / L) * (rc + 1.0) * (global_count[x] + 1.0)
        if best < 0 or score < best_score or (score == best_score and (
                last[x] < last[best] or (last[x] == last[best] and x < best))):
            best = x
            best_score = score
    return best
