"""An indexed binary min-heap per cache partition, keyed by (key1, key2).

Policies that evict the item with the smallest score (LFU-DA, Belady) keep it
here. Keys sit next to the items in the heap arrays, so a sift touches one
cache line per level instead of chasing item ids; `pos[item]` is the item's
absolute slot. Partitions share the flat arrays at offsets `base`.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy

Heaps = namedtuple("Heaps", "base size item key1 key2 pos stack")


def new_heaps(num_items: int, part_capacity: np.ndarray) -> Heaps:
    base = np.zeros(len(part_capacity), np.int64)
    base[1:] = np.cumsum(part_capacity)[:-1]
    total = max(int(part_capacity.sum()), 1)
    # stack: scratch for heap_min_free (the engine loop allocates nothing)
    return Heaps(base, np.zeros(len(part_capacity), np.int64), np.full(total, -1, np.int32),
                 np.zeros(total, np.float64), np.zeros(total, np.int64), np.full(num_items, -1, np.int64),
                 np.empty(2 * total + 1, np.int64))


@njit(cache=True, _nrt=False)
def _place(h, i, x, k1, k2):
    h.item[i] = x
    h.key1[i] = k1
    h.key2[i] = k2
    h.pos[x] = i


@njit(cache=True, _nrt=False)
def _sift(h, b, n, i, x, k1, k2):
    """Put (x, k1, k2) at the right place starting from absolute slot i of the heap at b with n items."""
    while i > b:  # up
        parent = b + ((i - b - 1) >> 1)
        pk1 = h.key1[parent]
        if not (k1 < pk1 or (k1 == pk1 and k2 < h.key2[parent])):
            break
        _place(h, i, h.item[parent], pk1, h.key2[parent])
        i = parent
    while True:  # down
        c = b + 2 * (i - b) + 1
        if c >= b + n:
            break
        if c + 1 < b + n and (h.key1[c + 1] < h.key1[c] or
                              (h.key1[c + 1] == h.key1[c] and h.key2[c + 1] < h.key2[c])):
            c += 1
        ck1 = h.key1[c]
        if not (ck1 < k1 or (ck1 == k1 and h.key2[c] < k2)):
            break
        _place(h, i, h.item[c], ck1, h.key2[c])
        i = c
    _place(h, i, x, k1, k2)


@njit(cache=True, _nrt=False)
def heap_push(h, part, x, k1, k2):
    b = h.base[part]
    n = h.size[part] + 1
    h.size[part] = n
    _sift(h, b, n, b + n - 1, x, k1, k2)


@njit(cache=True, _nrt=False)
def heap_set(h, part, x, k1, k2):
    """Give x new keys and restore the order."""
    _sift(h, h.base[part], h.size[part], h.pos[x], x, k1, k2)


@njit(cache=True, _nrt=False)
def heap_remove(h, part, x):
    b = h.base[part]
    i = h.pos[x]
    n = h.size[part] - 1
    h.size[part] = n
    h.pos[x] = -1
    last = b + n
    if i != last:
        _sift(h, b, n, i, h.item[last], h.key1[last], h.key2[last])


@njit(cache=True, _nrt=False)
def heap_key1(h, x):
    return h.key1[h.pos[x]]


@njit(cache=True, _nrt=False)
def heap_min_free(h, part, busy):
    """The smallest item that is not busy, or -1.

    A heap node's descendants are never smaller than it, so only the children
    of busy nodes need looking at: the walk costs O(busy items), not O(heap).
    """
    b = h.base[part]
    n = h.size[part]
    if n == 0:
        return -1
    if not is_busy(busy, h.item[b]):
        return h.item[b]
    stack = h.stack
    sp = 1
    stack[0] = b
    best = -1
    while sp > 0:
        sp -= 1
        i = stack[sp]
        if best >= 0 and not (h.key1[i] < h.key1[best] or (h.key1[i] == h.key1[best] and h.key2[i] < h.key2[best])):
            continue
        if is_busy(busy, h.item[i]):
            c = b + 2 * (i - b) + 1
            if c < b + n:
                stack[sp] = c
                sp += 1
            if c + 1 < b + n:
                stack[sp] = c + 1
                sp += 1
        else:
            best = i
    return h.item[best] if best >= 0 else -1
