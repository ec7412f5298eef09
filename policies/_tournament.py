"""A max-tournament tree over each partition's cache slots: give an expert a
key in O(log capacity), read the expert with the largest key at the root.

Belady keeps each resident's next-use position here. The tree is over slots,
not experts or stream positions, so it stays in L1 (a partition of c experts is
2 * 2^ceil(log2 c) nodes), and an eviction followed by its insert reuses one
slot: each access costs one walk from a leaf to the root, and finding the
victim costs nothing. (A removal only empties its leaf and leaves the walk
`pending`: the insert that follows takes the same slot and walks it anyway.)
In timed mode the root is often busy: the experts a layer has just used are
the ones needed furthest ahead. A busy root is *parked*: its key moves out of
the tree (its slot stays taken) until a later victim search finds it free
again, so each busy expert costs two walks, not a search per miss.
With `defer` (timed mode), a set does not walk at all: every expert a layer
touches is busy until the layer ends, so its key is parked straight away (its
leaf keeps its old key, or stays empty) and enters the tree at the first victim
search that finds it free. An expert just used then no longer becomes the
root only to be parked at the next miss (timed Belady's loop: ~20% faster).
An old key left in a leaf is harmless: by the time a search reads the root,
only busy experts still have one, and a busy root is passed over.
Partitions' trees share flat arrays at offsets `base` (nodes) and `slot_base`
(slots); node i's children are 2i and 2i+1, the root is 1. A node holds its
winner's key and slot packed in one int64 (key << SLOT_BITS | slot), so a
step of the walk is one load, one max and one store.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy

EMPTY = -1  # the key of a free slot (and its node): below every packed key
SLOT_BITS = 20  # up to 2^20 slots a partition
MAX_KEY = 1 << 42  # keys lie in [0, MAX_KEY]: packed, they stay below 2^62, so the max below cannot overflow

Tournament = namedtuple("Tournament", "base leaves slot_base node item slot_of free num_free pending "
                                       "parked parked_part parked_key num_parked defer")


def new_tournament(num_items: int, part_capacity: np.ndarray, defer: bool = False) -> Tournament:
    leaves = np.array([1 << max(int(c) - 1, 0).bit_length() for c in part_capacity], np.int64)
    base = np.zeros(len(leaves), np.int64)
    base[1:] = np.cumsum(2 * leaves)[:-1]
    slot_base = np.zeros(len(leaves), np.int64)
    slot_base[1:] = np.cumsum(leaves)[:-1]
    slots = int(leaves.sum())
    # free slots as a stack per partition, slot 0 on top
    free = np.concatenate([np.arange(L - 1, -1, -1, dtype=np.int32) for L in leaves])
    if leaves.max() > 1 << SLOT_BITS:
        raise ValueError(f"a cache partition of {int(leaves.max())} experts: Belady's tree holds at most "
                         f"{1 << SLOT_BITS}; use --scope per-layer or a smaller --capacity")
    node = np.full(2 * slots, EMPTY, np.int64)
    return Tournament(base, leaves, slot_base, node, np.full(slots, -1, np.int32),
                      np.full(num_items, -1, np.int32), free, leaves.copy(), np.full(len(leaves), -1, np.int64),
                      np.empty(num_items, np.int32), np.empty(num_items, np.int64), np.full(num_items, EMPTY, np.int64),
                      np.zeros(1, np.int64), defer)


@njit(cache=True, _nrt=False)
def _set(t, part, s, k):
    """Slot s of partition part gets key k; the path to the root is recomputed."""
    node = t.node
    one = np.uint64(1)  # unsigned node numbers: indexing then skips the check for negative indices
    b = np.uint64(t.base[part])
    i = np.uint64(t.leaves[part] + s)
    v = (k << SLOT_BITS) | s if k != EMPTY else EMPTY
    node[b + i] = v
    while i > one:
        # the larger of v and its sibling, in arithmetic: which child wins is a coin flip, and LLVM turns
        # a select here into a branch that mispredicts half the time (4x slower)
        d = v - node[b + (i ^ one)]
        v -= d & (d >> 63)
        i >>= one
        node[b + i] = v


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
    if t.parked_key[x] != EMPTY:  # parked: it keeps the key until it is back in the tree
        t.parked_key[x] = k
        return
    s = np.int64(t.slot_of[x])
    if s < 0:
        t.num_free[part] -= 1
        s = np.int64(t.free[t.slot_base[part] + t.num_free[part]])
        t.slot_of[x] = s
        t.item[t.slot_base[part] + s] = x
    if t.defer:
        _park(t, part, x, k)
    else:
        _put(t, part, s, k)


@njit(cache=True, _nrt=False)
def _put(t, part, s, k):
    if t.pending[part] == s:
        t.pending[part] = -1  # this walk settles it
    else:
        _settle(t, part)
    _set(t, part, s, k)


@njit(cache=True, _nrt=False)
def _park(t, part, x, k):
    n = t.num_parked[0]
    t.parked[n] = x
    t.parked_part[n] = part
    t.num_parked[0] = n + 1
    t.parked_key[x] = k


@njit(cache=True, _nrt=False)
def tournament_remove(t, part, x):
    if t.parked_key[x] != EMPTY:
        t.parked_key[x] = EMPTY
        n = t.num_parked[0]
        j = 0
        while t.parked[j] != x:
            j += 1
        t.parked[j] = t.parked[n - 1]
        t.parked_part[j] = t.parked_part[n - 1]
        t.num_parked[0] = n - 1
    _settle(t, part)
    s = t.slot_of[x]
    t.node[t.base[part] + t.leaves[part] + s] = EMPTY
    t.pending[part] = s
    t.slot_of[x] = -1
    t.free[t.slot_base[part] + t.num_free[part]] = s
    t.num_free[part] += 1


@njit(cache=True, _nrt=False)
def _unpark_free(t, busy):
    """Put every parked expert that is no longer busy back in its tree under its key."""
    k = 0
    for j in range(t.num_parked[0]):
        y = t.parked[j]
        p = t.parked_part[j]
        if is_busy(busy, y):
            t.parked[k] = y
            t.parked_part[k] = p
            k += 1
        else:
            _put(t, p, np.int64(t.slot_of[y]), t.parked_key[y])
            t.parked_key[y] = EMPTY
    t.num_parked[0] = k


@njit(cache=True, _nrt=False)
def tournament_max(t, part, busy):
    """The expert with the largest key that is not busy, or -1."""
    _settle(t, part)
    _unpark_free(t, busy)
    root = t.base[part] + 1
    while t.node[root] != EMPTY:
        s = t.node[root] & ((1 << SLOT_BITS) - 1)
        x = t.item[t.slot_base[part] + s]
        if not is_busy(busy, x):
            return x
        if t.parked_key[x] == EMPTY:  # (a deferred expert is parked already; its leaf holds an old key)
            _park(t, part, x, t.node[root] >> SLOT_BITS)
        _set(t, part, s, EMPTY)
    return -1
