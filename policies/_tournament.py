"""A max-tournament tree over each partition's cache slots: give an expert a
key in O(log capacity), read the expert with the largest key at the root.

Belady keeps each resident's next-use position here. The tree is over slots,
not experts or stream positions, so it stays in L1 (a partition of c experts is
2 * 2^ceil(log2 c) nodes), and an eviction followed by its insert reuses one
slot: each access costs one walk from a leaf to the root, and finding the
victim costs nothing. (A removal only empties its leaf and leaves the walk
`pending`: the insert that follows takes the same slot and walks it anyway.)
Partitions' trees share flat arrays at offsets `base` (nodes) and `slot_base`
(slots); node i's children are 2i and 2i+1, the root is 1.
Node i keeps its key at node[2i] and the slot holding it at node[2i+1].
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy

EMPTY = -1  # the key of a free slot

Tournament = namedtuple("Tournament", "base leaves slot_base node item slot_of free num_free pending stack")


def new_tournament(num_items: int, part_capacity: np.ndarray) -> Tournament:
    leaves = np.array([1 << max(int(c) - 1, 0).bit_length() for c in part_capacity], np.int64)
    base = np.zeros(len(leaves), np.int64)
    base[1:] = np.cumsum(2 * leaves)[:-1]
    slot_base = np.zeros(len(leaves), np.int64)
    slot_base[1:] = np.cumsum(leaves)[:-1]
    slots = int(leaves.sum())
    # free slots as a stack per partition, slot 0 on top
    free = np.concatenate([np.arange(L - 1, -1, -1, dtype=np.int32) for L in leaves])
    node = np.zeros(4 * slots, np.int64)
    node[0::2] = EMPTY
    return Tournament(base, leaves, slot_base, node, np.full(slots, -1, np.int32),
                      np.full(num_items, -1, np.int32), free, leaves.copy(), np.full(len(leaves), -1, np.int64),
                      np.zeros(2 * 64 + 2, np.int64))  # stack: tournament_max's search (depth < 64)


@njit(cache=True, _nrt=False)
def _set(t, part, s, k):
    """Slot s of partition part gets key k; the path to the root is recomputed."""
    node = t.node
    b = t.base[part]
    i = t.leaves[part] + s
    node[2 * (b + i)] = k
    node[2 * (b + i) + 1] = s
    while i > 1:
        sib = 2 * (b + (i ^ 1))
        ks = node[sib]
        # the larger key and its slot, in arithmetic: which child wins is a coin flip, and LLVM turns
        # a select here into a branch that mispredicts half the time (4x slower); keys differ by < 2^63
        d = k - ks
        m = d >> 63  # all ones if the sibling wins
        k -= d & m
        s ^= (s ^ node[sib + 1]) & m
        i >>= 1
        node[2 * (b + i)] = k
        node[2 * (b + i) + 1] = s


@njit(cache=True, _nrt=False)
def _settle(t, part):
    """Finish a removal's walk to the root, unless the slot was taken again meanwhile."""
    s = t.pending[part]
    if s >= 0:
        t.pending[part] = -1
        _set(t, part, s, EMPTY)


@njit(cache=True, _nrt=False)
def tournament_set(t, part, x, k):
    """Expert x gets key k; an expert not in the tree takes a free slot."""
    s = np.int64(t.slot_of[x])
    if s < 0:
        t.num_free[part] -= 1
        s = np.int64(t.free[t.slot_base[part] + t.num_free[part]])
        t.slot_of[x] = s
        t.item[t.slot_base[part] + s] = x
    if t.pending[part] == s:
        t.pending[part] = -1  # this walk settles it
    else:
        _settle(t, part)
    _set(t, part, s, k)


@njit(cache=True, _nrt=False)
def tournament_remove(t, part, x):
    _settle(t, part)
    s = t.slot_of[x]
    t.node[2 * (t.base[part] + t.leaves[part] + s)] = EMPTY
    t.pending[part] = s
    t.slot_of[x] = -1
    t.free[t.slot_base[part] + t.num_free[part]] = s
    t.num_free[part] += 1


@njit(cache=True, _nrt=False)
def tournament_max(t, part, busy):
    """The expert with the largest key that is not busy, or -1."""
    _settle(t, part)
    root = 2 * (t.base[part] + 1)
    if t.node[root] == EMPTY:
        return -1
    x = t.item[t.slot_base[part] + t.node[root + 1]]
    if not is_busy(busy, x):
        return x
    # timed mode: the best is in use or in flight (often: an expert this layer just used may be needed
    # furthest ahead). Search down from the root, larger child first, and prune every subtree whose
    # best key cannot beat the best free expert found so far: O((busy experts + 1) x depth).
    b = t.base[part]
    L = t.leaves[part]
    best = -1
    best_key = EMPTY
    stack = t.stack
    stack[0] = 1
    top = 1
    while top > 0:
        top -= 1
        i = stack[top]
        if t.node[2 * (b + i)] <= best_key:
            continue
        if i >= L:
            y = t.item[t.slot_base[part] + i - L]
            if not is_busy(busy, y):
                best = y
                best_key = t.node[2 * (b + i)]
            continue
        big = 2 * i if t.node[2 * (b + 2 * i)] >= t.node[2 * (b + 2 * i + 1)] else 2 * i + 1
        stack[top] = big ^ 1  # the smaller child waits below the larger one
        stack[top + 1] = big
        top += 2
    return best
