"""Belady (MIN): evict the expert whose next use lies furthest in the future.

Source: Belady, "A study of replacement algorithms for a virtual-storage
computer" (1966): the offline optimum for hit count, the bound on every curve.
It reads the future from the access stream (positions of every access of each
expert), so it is an oracle, not a deployable policy. Tie-break: experts never
used again all tie at +inf; which of them goes does not change the hit count.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._heap import heap_min_free, heap_push, heap_remove, heap_update, new_heaps

NEVER = 1 << 62


BeladyState = namedtuple("BeladyState", "part_of base size heap pos key tie stack occ end cursor")


def init(num_items, part_of, part_capacity, stream, params):
    # every access position of each item, item-major (CSR); cursor walks forward
    order = np.argsort(stream.item, kind="stable")
    starts = np.zeros(num_items + 1, np.int64)
    np.cumsum(np.bincount(stream.item, minlength=num_items), out=starts[1:])
    return BeladyState(part_of, *new_heaps(num_items, part_capacity), order.astype(np.int64), starts[1:].copy(),
                       starts[:-1].copy())


@njit(cache=True, _nrt=False)
def _next_use_after(occ, end, cursor, x, t):
    c = cursor[x]
    while c < end[x] and occ[c] <= t:
        c += 1
    cursor[x] = c
    return occ[c] if c < end[x] else NEVER


@njit(cache=True, _nrt=False)
def on_hit(state, x, t):
    part_of, base, size, heap, pos, key, tie, stack, occ, end, cursor = state
    key[x] = -float(_next_use_after(occ, end, cursor, x, t))
    heap_update(base, size, heap, pos, key, tie, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_insert(state, x, t):
    part_of, base, size, heap, pos, key, tie, stack, occ, end, cursor = state
    key[x] = -float(_next_use_after(occ, end, cursor, x, t))
    tie[x] = x
    heap_push(base, size, heap, pos, key, tie, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_evict(state, x):
    part_of, base, size, heap, pos, key, tie, stack, occ, end, cursor = state
    heap_remove(base, size, heap, pos, key, tie, part_of[x], x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy):
    part_of, base, size, heap, pos, key, tie, stack, occ, end, cursor = state
    return heap_min_free(base, size, heap, key, tie, stack, part, busy)
