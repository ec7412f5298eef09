"""Belady (MIN): evict the expert whose next use lies furthest in the future.

Source: Belady, "A study of replacement algorithms for a virtual-storage
computer" (1966): the offline optimum for hit count, the bound on every curve.
It reads the future from the access stream, so it is an oracle, not a
deployable policy. Tie-break: experts never used again go first, the one
that entered that state earliest first; which of them goes does not change
the hit count.

Each resident's next use is a stream position, and no two residents share
one, so the residents sit in a bitmap over positions (per partition, over the
positions of that partition's accesses): the victim is its largest member.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._bitmap import bitmap_add, bitmap_below, bitmap_discard, new_bitmap
from ._busy import is_busy
from ._list import new_lists, push_front, unlink

NEVER = -1

BeladyState = namedtuple("BeladyState", "item next_use first_use last_pos key_of_pos pos_of_key part_end key "
                                        "bitmap never_prev never_next never_head never_tail")


@njit(cache=True)
def _group_positions(group, num_groups, out):
    """Positions 0..n-1 grouped by group[p], in order within a group (a stable counting sort, O(n))."""
    fill = np.zeros(num_groups + 1, np.int64)
    for p in range(group.shape[0]):
        fill[group[p] + 1] += 1
    for g in range(num_groups):
        fill[g + 1] += fill[g]
    starts = fill.copy()
    for p in range(group.shape[0]):
        g = group[p]
        out[fill[g]] = p
        fill[g] += 1
    return starts


@njit(cache=True)
def _link_next_uses(item, next_use, first_use):
    """next_use[i]: the next position of item[i] after i (n: none); first_use[x]: x's first position."""
    for i in range(item.shape[0] - 1, -1, -1):
        x = item[i]
        next_use[i] = first_use[x]
        first_use[x] = i


def init(num_items, part_of, part_capacity, stream, params):
    item = stream.item
    n = len(item)
    idx = np.int32 if n < 2**31 - 1 else np.int64
    next_use = np.empty(n, idx)
    first_use = np.full(num_items, n, idx)
    _link_next_uses(item, next_use, first_use)
    parts = len(part_capacity)
    if parts == 1:  # a position is its own key
        key_of_pos = pos_of_key = np.zeros(0, idx)
        part_end = np.array([n], np.int64)
    else:  # keys: positions renumbered partition by partition
        pos_of_key = np.empty(n, idx)
        part_end = _group_positions(part_of[item], parts, pos_of_key)[1:]
        key_of_pos = np.empty(n, idx)
        key_of_pos[pos_of_key] = np.arange(n, dtype=idx)
    return BeladyState(item, next_use, first_use, np.full(num_items, -1, np.int64), key_of_pos, pos_of_key,
                       part_end, np.full(num_items, NEVER, np.int64), new_bitmap(n), *new_lists(num_items, parts))


@njit(cache=True, _nrt=False)
def _remember_next_use(st, x, p, t):
    """Find x's first use after position t and file x under it (or under 'never')."""
    n = st.item.shape[0]
    if t >= 0 and st.item[t] == x:  # a demand access: its next use is on the (sequential) chain
        u = st.next_use[t]
        st.last_pos[x] = t
    else:  # a prefetch (or warm) insert: walk x's chain from its last access on to just after t
        last = st.last_pos[x]
        u = st.first_use[x] if last < 0 else st.next_use[last]
        while u < n and u <= t:
            u = st.next_use[u]
    if u < n:
        k = st.key_of_pos[u] if st.key_of_pos.shape[0] else u
        st.key[x] = k
        bitmap_add(st.bitmap, k)
    else:
        st.key[x] = NEVER
        push_front(st.never_prev, st.never_next, st.never_head, st.never_tail, p, x)


@njit(cache=True, _nrt=False)
def _forget(st, x, p):
    if st.key[x] == NEVER:
        unlink(st.never_prev, st.never_next, st.never_head, st.never_tail, p, x)
    else:
        bitmap_discard(st.bitmap, st.key[x])


@njit(cache=True, _nrt=False)
def on_hit(st, x, p, t):
    _forget(st, x, p)
    _remember_next_use(st, x, p, t)


@njit(cache=True, _nrt=False)
def on_insert(st, x, p, t):
    _remember_next_use(st, x, p, t)


@njit(cache=True, _nrt=False)
def on_evict(st, x, p):
    _forget(st, x, p)


@njit(cache=True, _nrt=False)
def victim(st, part, busy):
    x = st.never_tail[part]
    while x >= 0:
        if not is_busy(busy, x):
            return x
        x = st.never_prev[x]
    low = st.part_end[part - 1] if part > 0 else 0
    k = bitmap_below(st.bitmap, st.part_end[part])
    while k >= low:
        x = st.item[st.pos_of_key[k] if st.pos_of_key.shape[0] else k]
        if not is_busy(busy, x):
            return x
        k = bitmap_below(st.bitmap, k)
    return -1
