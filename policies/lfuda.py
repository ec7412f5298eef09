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

from ._heap import heap_key1, heap_min_free, heap_push, heap_remove, heap_set, new_heaps

NAME = "lfuda"
ORDER = 3  # its place in lists and tables
ALIASES = ("lfu-da",)

LfudaState = namedtuple("LfudaState", "heaps count age")


def init(num_items, part_of, part_capacity, stream, params):
    return LfudaState(new_heaps(num_items, part_capacity), np.zeros(num_items, np.float64),
                      np.zeros(len(part_capacity), np.float64))


@njit(cache=True, _nrt=False)
def on_hit(st, x, p, t):
    st.count[x] += 1.0
    heap_set(st.heaps, p, x, st.age[p] + st.count[x], t)


@njit(cache=True, _nrt=False)
def on_insert(st, x, p, t):
    st.count[x] = 1.0
    heap_push(st.heaps, p, x, st.age[p] + 1.0, t)


@njit(cache=True, _nrt=False)
def on_evict(st, x, p):
    st.age[p] = heap_key1(st.heaps, x)
    heap_remove(st.heaps, p, x)


@njit(cache=True, _nrt=False)
def victim(st, part, busy, t):
    return heap_min_free(st.heaps, part, busy)
