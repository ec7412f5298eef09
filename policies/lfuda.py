"""LFU-DA: LFU with dynamic aging, so experts that were hot long ago fade.

Source: Arlitt et al., "Evaluating content management techniques for Web proxy
caches" (2000), with unit cost and size: priority = L + count, where L is the
priority of the last evicted expert in the partition (the cache's "age"), and
count starts at 1 on insert and grows by 1 per hit. Tie-break: equal
priorities evict the one whose priority was set longest ago. (libCacheSim's
LFUDA differs: a hit adds the cache's current minimum priority instead of 1,
so the two do not agree; tests check this module against a brute-force
reference of the definition above.)
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._heap import heap_min_free, heap_push, heap_remove, heap_update, new_heaps


LfudaState = namedtuple("LfudaState", "part_of base size heap pos prio last stack count age")


def init(num_items, part_of, part_capacity, stream, params):
    # per partition: the age L
    return LfudaState(part_of, *new_heaps(num_items, part_capacity), np.zeros(num_items, np.float64),
                      np.zeros(len(part_capacity), np.float64))


@njit(cache=True, _nrt=False)
def on_hit(state, x, t):
    part_of, base, size, heap, pos, prio, last, stack, count, age = state
    count[x] += 1.0
    prio[x] = age[part_of[x]] + count[x]
    last[x] = t
    heap_update(base, size, heap, pos, prio, last, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_insert(state, x, t):
    part_of, base, size, heap, pos, prio, last, stack, count, age = state
    count[x] = 1.0
    prio[x] = age[part_of[x]] + 1.0
    last[x] = t
    heap_push(base, size, heap, pos, prio, last, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_evict(state, x):
    part_of, base, size, heap, pos, prio, last, stack, count, age = state
    age[part_of[x]] = prio[x]
    heap_remove(base, size, heap, pos, prio, last, part_of[x], x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy):
    part_of, base, size, heap, pos, prio, last, stack, count, age = state
    return heap_min_free(base, size, heap, prio, last, stack, part, busy)
