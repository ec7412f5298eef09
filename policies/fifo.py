"""FIFO: evict the expert that entered the cache first; hits change nothing.

Source: the classic policy; matches libCacheSim's FIFO exactly in count mode.
Tie-break: none (insertion order is total); busy items are skipped.
"""
from collections import namedtuple

from numba import njit

from ._list import last_free, new_lists, push_front, unlink


FifoState = namedtuple("FifoState", "part_of prev nxt head tail")


def init(num_items, part_of, part_capacity, stream, params):
    return FifoState(part_of, *new_lists(num_items, len(part_capacity)))


@njit(cache=True, _nrt=False)
def on_hit(state, x, t):
    pass


@njit(cache=True, _nrt=False)
def on_insert(state, x, t):
    part_of, prev, nxt, head, tail = state
    push_front(prev, nxt, head, tail, part_of[x], x)


@njit(cache=True, _nrt=False)
def on_evict(state, x):
    part_of, prev, nxt, head, tail = state
    unlink(prev, nxt, head, tail, part_of[x], x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy):
    part_of, prev, nxt, head, tail = state
    return last_free(prev, tail, part, busy)
