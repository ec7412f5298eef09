"""An indexed binary min-heap per cache partition, keyed by (key1, key2).

Policies that evict the item with the smallest score (LFU, LFU-DA, Belady,
MoE-Infinity) keep their scores in key1 and a tie-break in key2; this file
keeps the order. Partitions share one flat `heap` array at offsets `base`.
"""
import numpy as np
from numba import njit


def new_heaps(num_items: int, part_capacity: np.ndarray):
    base = np.zeros(len(part_capacity), np.int64)
    base[1:] = np.cumsum(part_capacity)[:-1]
    total = max(int(part_capacity.sum()), 1)
    # base, size, heap, pos, key1, key2, stack (scratch for heap_min_free: the engine loop allocates nothing)
    return (base, np.zeros(len(part_capacity), np.int64), np.full(total, -1, np.int32),
            np.full(num_items, -1, np.int64), np.zeros(num_items, np.float64), np.zeros(num_items, np.int64),
            np.empty(2 * total + 1, np.int64))


@njit(cache=True, _nrt=False)
def _less(key1, key2, a, b):
    return key1[a] < key1[b] or (key1[a] == key1[b] and key2[a] < key2[b])


@njit(cache=True, _nrt=False)
def _sift_up(base, heap, pos, key1, key2, b, i):
    x = heap[b + i]
    while i > 0:
        parent = (i - 1) >> 1
        y = heap[b + parent]
        if not _less(key1, key2, x, y):
            break
        heap[b + i] = y
        pos[y] = i
        i = parent
    heap[b + i] = x
    pos[x] = i


@njit(cache=True, _nrt=False)
def _sift_down(base, heap, pos, key1, key2, b, n, i):
    x = heap[b + i]
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(key1, key2, heap[b + c + 1], heap[b + c]):
            c += 1
        y = heap[b + c]
        if not _less(key1, key2, y, x):
            break
        heap[b + i] = y
        pos[y] = i
        i = c
    heap[b + i] = x
    pos[x] = i


@njit(cache=True, _nrt=False)
def heap_push(base, size, heap, pos, key1, key2, part, x):
    b = base[part]
    i = size[part]
    size[part] = i + 1
    heap[b + i] = x
    pos[x] = i
    _sift_up(base, heap, pos, key1, key2, b, i)


@njit(cache=True, _nrt=False)
def heap_remove(base, size, heap, pos, key1, key2, part, x):
    b = base[part]
    i = pos[x]
    n = size[part] - 1
    size[part] = n
    pos[x] = -1
    if i == n:
        return
    last = heap[b + n]
    heap[b + i] = last
    pos[last] = i
    _sift_up(base, heap, pos, key1, key2, b, i)
    _sift_down(base, heap, pos, key1, key2, b, n, pos[last])


@njit(cache=True, _nrt=False)
def heap_update(base, size, heap, pos, key1, key2, part, x):
    """Restore order after x's keys changed."""
    b = base[part]
    _sift_up(base, heap, pos, key1, key2, b, pos[x])
    _sift_down(base, heap, pos, key1, key2, b, size[part], pos[x])


@njit(cache=True, _nrt=False)
def heap_min_free(base, size, heap, key1, key2, stack, part, busy):
    """The smallest item that is not busy, or -1.

    A heap node's descendants are never smaller than it, so only the children
    of busy nodes need looking at: the walk costs O(busy items), not O(heap).
    """
    b = base[part]
    n = size[part]
    if n == 0:
        return -1
    top = heap[b]
    if not busy[top]:
        return top
    sp = 0
    stack[sp] = 0
    sp += 1
    best = -1
    while sp > 0:
        sp -= 1
        i = stack[sp]
        x = heap[b + i]
        if best >= 0 and not _less(key1, key2, x, best):
            continue
        if busy[x]:
            c = 2 * i + 1
            if c < n:
                stack[sp] = c
                sp += 1
            if c + 1 < n:
                stack[sp] = c + 1
                sp += 1
        else:
            best = x
    return best
