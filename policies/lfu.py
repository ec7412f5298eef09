"""LFU with in-cache counts: evict the expert used least often since it entered the cache.

Source: the LFU arm of the LRU-vs-LFU expert-offloading studies; the variant
is libCacheSim's LFU (LFU.c): an expert's count starts at 1 on insert, grows by
1 per hit and is forgotten on eviction. Tie-break: among equal counts the one
whose count changed longest ago goes first (libCacheSim's FIFO order inside a
frequency bucket, which is LRU order among equals). Matches libCacheSim exactly.
"""
from collections import namedtuple

from numba import njit

from ._heap import heap_min_free, heap_push, heap_remove, heap_update, new_heaps


LfuState = namedtuple("LfuState", "part_of base size heap pos count last stack")


def init(num_items, part_of, part_capacity, stream, params):
    return LfuState(part_of, *new_heaps(num_items, part_capacity))


@njit(cache=True, _nrt=False)
def on_hit(state, x, t):
    part_of, base, size, heap, pos, count, last, stack = state
    count[x] += 1.0
    last[x] = t
    heap_update(base, size, heap, pos, count, last, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_insert(state, x, t):
    part_of, base, size, heap, pos, count, last, stack = state
    count[x] = 1.0
    last[x] = t
    heap_push(base, size, heap, pos, count, last, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_evict(state, x):
    part_of, base, size, heap, pos, count, last, stack = state
    heap_remove(base, size, heap, pos, count, last, part_of[x], x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy):
    part_of, base, size, heap, pos, count, last, stack = state
    return heap_min_free(base, size, heap, count, last, stack, part, busy)
