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
All of it lives in one int64 array (`ints`): a header, a record per partition,
then the regions (each partition's nodes, slot owners and free-slot stack, and
per expert its slot and parked key, and the parked list). A call that is not
inlined passes a policy's state field by field, each array as 7 words: with
the tree's 12 arrays, Belady's victim search (out of line wherever experts are
busy) pushed ~100 words a call, which cost about as much as the search itself.
In a partition's nodes, node i's children are 2i and 2i+1, the root is 1. A
node holds its winner's key and slot packed in one int64 (key << SLOT_BITS |
slot), so a step of the walk is one load, one max and one store.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy

EMPTY = -1  # the key of a free slot (and its node): below every packed key
SLOT_BITS = 20  # up to 2^20 slots a partition
MAX_KEY = 1 << 42  # keys lie in [0, MAX_KEY]: packed, they stay below 2^62, so the max below cannot overflow

# the header of `ints`: parked experts now; where the partitions' records, the experts' slots, the parked keys,
# the parked list (expert, partition pairs) start
H_NUM_PARKED, H_PARTS, H_SLOT_OF, H_PARKED_KEY, H_PARKED, HEADER = range(6)
# per partition: where its nodes start (node i at NODES + i), where its slots' owners and its free-slot stack
# start, its leaves, free slots, and the slot whose removal's walk is pending (-1: none)
P_NODES, P_ITEMS, P_FREE, P_LEAVES, P_NUM_FREE, P_PENDING, P_INTS = range(7)

Tournament = namedtuple("Tournament", "ints defer")

U = np.uint64  # unsigned positions: indexing then skips numba's negative-index fix-up


def new_tournament(num_items: int, part_capacity: np.ndarray, defer: bool = False) -> Tournament:
    leaves = np.array([1 << max(int(c) - 1, 0).bit_length() for c in part_capacity], np.int64)
    if leaves.max() > 1 << SLOT_BITS:
        raise ValueError(f"a cache partition of {int(leaves.max())} experts: Belady's tree holds at most "
                         f"{1 << SLOT_BITS}; use --scope per-layer or a smaller --capacity")
    n_parts = len(leaves)
    o_parts = HEADER
    o_slot_of = o_parts + n_parts * P_INTS
    o_parked_key = o_slot_of + num_items
    o_parked = o_parked_key + num_items
    o_trees = o_parked + 2 * num_items
    size = 4 * leaves  # per partition: 2 * leaves nodes, then its slots' owners, then its free-slot stack
    start = o_trees + np.r_[0, np.cumsum(size)[:-1]].astype(np.int64)
    ints = np.full(o_trees + int(size.sum()), -1, np.int64)  # (EMPTY nodes, no owners, no slots, no keys)
    ints[:HEADER] = [0, o_parts, o_slot_of, o_parked_key, o_parked]
    parts = np.zeros((n_parts, P_INTS), np.int64)
    parts[:, P_NODES] = start
    parts[:, P_ITEMS] = start + 2 * leaves
    parts[:, P_FREE] = start + 3 * leaves
    parts[:, P_LEAVES] = parts[:, P_NUM_FREE] = leaves
    parts[:, P_PENDING] = -1
    ints[o_parts:o_slot_of] = parts.ravel()
    for p, L in enumerate(leaves):  # free slots as a stack, slot 0 on top
        ints[parts[p, P_FREE]:parts[p, P_FREE] + L] = np.arange(L - 1, -1, -1)
    return Tournament(ints, defer)


@njit(cache=True, _nrt=False, inline="always")
def _pi(ints, part):
    """Where partition part's record starts."""
    return HEADER + P_INTS * np.int64(part)


@njit(cache=True, _nrt=False)
def _set(ints, pi, s, k):
    """Slot s of the partition whose record starts at pi gets key k; the path to the root is recomputed."""
    one = U(1)
    b = U(ints[U(pi + P_NODES)])
    i = U(ints[U(pi + P_LEAVES)] + s)
    v = (k << SLOT_BITS) | s if k != EMPTY else EMPTY
    ints[b + i] = v
    while i > one:
        # the larger of v and its sibling, in arithmetic: which child wins is a coin flip, and LLVM turns
        # a select here into a branch that mispredicts half the time (4x slower)
        d = v - ints[b + (i ^ one)]
        v -= d & (d >> 63)
        i >>= one
        ints[b + i] = v


@njit(cache=True, _nrt=False)
def _settle(ints, pi):
    """Finish a removal's walk to the root, unless the slot was taken again meanwhile."""
    s = ints[U(pi + P_PENDING)]
    if s >= 0:
        ints[U(pi + P_PENDING)] = -1
        _set(ints, pi, s, EMPTY)


@njit(cache=True, _nrt=False)
def tournament_set(t, part, x, k):
    """Expert x gets key k; an expert not in the tree takes a free slot."""
    ints = t.ints
    kx = U(ints[H_PARKED_KEY] + x)
    if ints[kx] != EMPTY:  # parked: it keeps the key until it is back in the tree
        ints[kx] = k
        return
    pi = _pi(ints, part)
    sx = U(ints[H_SLOT_OF] + x)
    s = ints[sx]
    if s < 0:
        n = ints[U(pi + P_NUM_FREE)] - 1
        ints[U(pi + P_NUM_FREE)] = n
        s = ints[U(ints[U(pi + P_FREE)] + n)]
        ints[sx] = s
        ints[U(ints[U(pi + P_ITEMS)] + s)] = x
    if t.defer:
        _park(ints, part, x, k)
    else:
        _put(ints, pi, s, k)


@njit(cache=True, _nrt=False)
def _put(ints, pi, s, k):
    if ints[U(pi + P_PENDING)] == s:
        ints[U(pi + P_PENDING)] = -1  # this walk settles it
    else:
        _settle(ints, pi)
    _set(ints, pi, s, k)


@njit(cache=True, _nrt=False)
def _park(ints, part, x, k):
    n = ints[H_NUM_PARKED]
    j = U(ints[H_PARKED] + 2 * n)
    ints[j] = x
    ints[j + U(1)] = part
    ints[H_NUM_PARKED] = n + 1
    ints[U(ints[H_PARKED_KEY] + x)] = k


@njit(cache=True, _nrt=False)
def tournament_remove(t, part, x):
    ints = t.ints
    pi = _pi(ints, part)
    kx = U(ints[H_PARKED_KEY] + x)
    if ints[kx] != EMPTY:
        ints[kx] = EMPTY
        n = ints[H_NUM_PARKED]
        o = ints[H_PARKED]
        j = o
        while ints[j] != x:
            j += 2
        ints[j] = ints[o + 2 * n - 2]
        ints[j + 1] = ints[o + 2 * n - 1]
        ints[H_NUM_PARKED] = n - 1
    _settle(ints, pi)
    sx = U(ints[H_SLOT_OF] + x)
    s = ints[sx]
    ints[U(ints[U(pi + P_NODES)] + ints[U(pi + P_LEAVES)] + s)] = EMPTY
    ints[U(pi + P_PENDING)] = s
    ints[sx] = -1
    n = ints[U(pi + P_NUM_FREE)]
    ints[U(ints[U(pi + P_FREE)] + n)] = s
    ints[U(pi + P_NUM_FREE)] = n + 1


@njit(cache=True, _nrt=False)
def _unpark_free(ints, busy):
    """Put every parked expert that is no longer busy back in its tree under its key."""
    o = U(ints[H_PARKED])
    keys = U(ints[H_PARKED_KEY])
    slots = U(ints[H_SLOT_OF])
    k = U(0)
    for j in range(U(0), U(2 * ints[H_NUM_PARKED]), U(2)):
        y = ints[o + j]
        p = ints[o + j + U(1)]
        if is_busy(busy, U(y)):
            ints[o + k] = y
            ints[o + k + U(1)] = p
            k += U(2)
        else:
            _put(ints, _pi(ints, p), ints[slots + U(y)], ints[keys + U(y)])
            ints[keys + U(y)] = EMPTY
    ints[H_NUM_PARKED] = k // U(2)


@njit(cache=True, _nrt=False)
def tournament_max(t, part, busy):
    """The expert with the largest key that is not busy, or -1."""
    ints = t.ints
    pi = _pi(ints, part)
    _settle(ints, pi)
    _unpark_free(ints, busy)
    b = U(ints[U(pi + P_NODES)])
    items = U(ints[U(pi + P_ITEMS)])
    while ints[b + U(1)] != EMPTY:
        root = ints[b + U(1)]
        s = root & ((1 << SLOT_BITS) - 1)
        x = ints[items + U(s)]
        if not is_busy(busy, U(x)):
            return x
        if ints[U(ints[H_PARKED_KEY] + x)] == EMPTY:  # (a deferred expert is parked already; its leaf holds an old key)
            _park(ints, part, x, root >> SLOT_BITS)
        _set(ints, pi, s, EMPTY)
    return -1
