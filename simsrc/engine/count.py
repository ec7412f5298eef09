"""Count mode: hits and misses of a plain cache, transfers instant.

On the same access stream this is exactly a textbook cache simulator (and
libCacheSim): look the expert up, on a miss evict the policy's victim if the
partition is full, insert. No expert is ever busy. A prefetch plan, if given,
inserts each segment's predicted experts right after that segment's accesses
(so a prediction for layer l made at layer l-1 is in place when l routes).
"""
import numpy as np
from numba import njit

from .ops import on_hit, on_insert, victim
from .timed import NUM_COUNTERS, PF_ISSUED, PF_USED, PF_WASTED, _evict, _miss_after_prefetch


def count_replay(item, seg_offsets, seg_layer, part_of, part_capacity, pinned, warm, num_layers,
                 pf_offsets, pf_item, state):
    """Returns (hits per layer, misses per layer, counters); see timed.py for the counter indices."""
    n = part_of.shape[0]
    hits = np.zeros(num_layers, np.int64)
    misses = np.zeros(num_layers, np.int64)
    c = np.zeros(NUM_COUNTERS, np.float64)
    _count_loop(item, seg_offsets, seg_layer, part_of, part_capacity, pinned, warm, pf_offsets, pf_item, state,
                np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.full(n, -1, np.int32),
                part_capacity.copy(), hits, misses, c)
    return hits, misses, c


# _nrt=False: no reference counting in the loop. With it, numba increfs and
# decrefs the policy's state arrays on every access (~10x slower); so the loop
# allocates nothing and gets its work arrays from count_replay.
@njit(cache=True, _nrt=False)
def _count_loop(item, seg_offsets, seg_layer, part_of, part_capacity, pinned, warm, pf_offsets, pf_item, state,
                resident, busy, pf_unused, evictor, free, hits, misses, c):
    num_items = part_of.shape[0]
    for x in range(num_items):
        if pinned[x]:
            resident[x] = 1  # user pins sit outside the policy and its capacity
    for j in range(warm.shape[0]):
        x = warm[j]
        resident[x] = 1
        free[part_of[x]] -= 1
        on_insert(state, x, -1)
    for s in range(seg_layer.shape[0]):
        layer = seg_layer[s]
        h = 0
        m = 0
        for i in range(seg_offsets[s], seg_offsets[s + 1]):
            x = item[i]
            if resident[x]:
                h += 1
                if pf_unused[x]:
                    pf_unused[x] = 0
                    c[PF_USED] += 1
                if not pinned[x]:
                    on_hit(state, x, i)
                continue
            m += 1
            _miss_after_prefetch(x, evictor, pf_unused, c)
            p = part_of[x]
            if part_capacity[p] == 0:
                continue  # nothing can be cached in this partition: every access streams
            if free[p] == 0:
                _evict(victim(state, p, busy), resident, pf_unused, c, 0.0, state)
            else:
                free[p] -= 1
            resident[x] = 1
            on_insert(state, x, i)
        hits[layer] += h
        misses[layer] += m
        clock = seg_offsets[s + 1] - 1
        for j in range(pf_offsets[s], pf_offsets[s + 1]):
            x = pf_item[j]
            p = part_of[x]
            if resident[x] or part_capacity[p] == 0:
                continue
            if free[p] == 0:
                v = victim(state, p, busy)
                _evict(v, resident, pf_unused, c, 0.0, state)
                evictor[v] = x
            else:
                free[p] -= 1
            resident[x] = 1
            pf_unused[x] = 1
            evictor[x] = -1
            on_insert(state, x, clock)
            c[PF_ISSUED] += 1
    for x in range(num_items):
        if pf_unused[x]:
            c[PF_WASTED] += 1
