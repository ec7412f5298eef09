"""Count mode: hits and misses of a plain cache, transfers instant.

On the same access stream this is exactly a textbook cache simulator (and
libCacheSim): look the expert up, on a miss evict the policy's victim if the
partition is full, insert. No expert is ever busy. A prefetch plan, if given,
inserts each segment's predicted experts right after that segment's accesses
(so a prediction for layer l made at layer l-1 is in place when l routes).
"""
import numpy as np

from .experts import (NUM_COUNTERS, PF_ISSUED, PF_UNUSED, PF_USED, PINNED, RESIDENT, count_harmful, count_unused,
                      evict, evict_for_prefetch)
from .ops import compiled_loop, on_hit, on_insert, partition, partition_map, victim


def count_replay(item, seg_offsets, part_of, part_capacity, pinned, warm, num_layers,
                 pf_offsets, pf_item, state):
    """Returns (hits per layer, misses per layer, counters); see experts.py for the counter indices."""
    n = part_of.shape[0]
    # segments that prefetch, and the access after which their plan goes in
    pf_segs = np.flatnonzero(np.diff(pf_offsets)) if len(pf_item) else np.zeros(0, np.int64)
    hits_of = np.zeros(n, np.int64)
    misses_of = np.zeros(n, np.int64)
    c = np.zeros(NUM_COUNTERS, np.float64)
    parts = partition_map(part_of, part_capacity)
    _count_loop(item, seg_offsets[pf_segs + 1] - 1, pf_segs, parts, part_capacity, pinned, warm, pf_offsets,
                pf_item, state, np.zeros(n, np.uint8), np.full(n, -1, np.int32), part_capacity.copy(), hits_of,
                misses_of, c)
    # items are numbered layer-major (layer * experts + expert)
    return hits_of.reshape(num_layers, -1).sum(axis=1), misses_of.reshape(num_layers, -1).sum(axis=1), c


@compiled_loop
def _count_loop(item, pf_at, pf_segs, part_of, part_capacity, pinned, warm, pf_offsets, pf_item, state,
                flags, evictor, free, hits_of, misses_of, c):
    num_items = flags.shape[0]
    for x in range(num_items):
        if pinned[x]:
            flags[x] = RESIDENT | PINNED  # user pins sit outside the policy and its capacity
    for j in range(warm.shape[0]):
        x = warm[j]
        flags[x] = RESIDENT
        p = partition(part_of, x)
        free[p] -= 1
        on_insert(state, x, p, -1)
    # the stream in chunks that end where a segment's prefetch plan goes in (one chunk without a plan)
    start = 0
    for k in range(pf_segs.shape[0] + 1):
        end = pf_at[k] + 1 if k < pf_segs.shape[0] else item.shape[0]
        for i in range(start, end):
            x = np.uint32(item[np.uint64(i)])  # unsigned indices: numba then skips its check for a negative index
            f = flags[x]
            if f & RESIDENT:
                hits_of[x] += 1
                if f != RESIDENT:
                    if f & PF_UNUSED:
                        flags[x] = f ^ PF_UNUSED
                        c[PF_USED] += 1
                    if f & PINNED:
                        continue
                on_hit(state, x, partition(part_of, x), i)
                continue
            misses_of[x] += 1
            count_harmful(x, flags, evictor, c)
            p = partition(part_of, x)
            if free[p] == 0:
                if part_capacity[p] == 0:
                    flags[x] = 0
                    continue  # nothing can be cached in this partition: every access streams
                evict(victim(state, p, None, i), p, flags, c, state)
            else:
                free[p] -= 1
            flags[x] = RESIDENT
            on_insert(state, x, p, i)
        start = end
        if k == pf_segs.shape[0]:
            break
        clock = end - 1
        s = pf_segs[k]
        for j in range(pf_offsets[s], pf_offsets[s + 1]):
            x = pf_item[j]
            p = partition(part_of, x)
            if flags[x] & RESIDENT or part_capacity[p] == 0:
                continue
            if free[p] == 0:
                evict_for_prefetch(victim(state, p, None, clock), x, p, flags, evictor, c, state)
            else:
                free[p] -= 1
            flags[x] = RESIDENT | PF_UNUSED
            on_insert(state, x, p, clock)
            c[PF_ISSUED] += 1
    count_unused(flags, c)
