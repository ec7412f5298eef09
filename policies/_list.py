"""An intrusive doubly linked list per cache partition (LRU, FIFO, static).

Arrays indexed by item: prev, nxt; by partition: head (most recent), tail.
-1 marks "none". Shared by the list-ordered policies, as libCacheSim's list helpers are.
"""
import numpy as np
from numba import njit

from ._busy import is_busy


def new_lists(num_items: int, num_parts: int):
    return (np.full(num_items, -1, np.int32), np.full(num_items, -1, np.int32),
            np.full(num_parts, -1, np.int32), np.full(num_parts, -1, np.int32))


@njit(cache=True, _nrt=False)
def push_front(prev, nxt, head, tail, part, x):
    h = head[part]
    prev[x] = -1
    nxt[x] = h
    if h >= 0:
        prev[h] = x
    else:
        tail[part] = x
    head[part] = x


@njit(cache=True, _nrt=False)
def unlink(prev, nxt, head, tail, part, x):
    p = prev[x]
    n = nxt[x]
    if p >= 0:
        nxt[p] = n
    else:
        head[part] = n
    if n >= 0:
        prev[n] = p
    else:
        tail[part] = p
    prev[x] = -1
    nxt[x] = -1


@njit(cache=True, _nrt=False)
def last_free(prev, tail, part, busy):
    """The item nearest the tail that is not busy (in use or in flight), or -1."""
    x = tail[part]
    while x >= 0 and is_busy(busy, x):
        x = prev[x]
    return x
