"""LFU with in-cache counts: evict the expert used least often since it entered the cache.

Source: the LFU arm of the LRU-vs-LFU expert-offloading studies; the variant
is libCacheSim's LFU (LFU.c): an expert's count starts at 1 on insert, grows by
1 per hit and is forgotten on eviction. Tie-break: among equal counts the one
whose count changed longest ago goes first (libCacheSim's FIFO order inside a
frequency bucket). Matches libCacheSim exactly.

Like libCacheSim, experts sit in one list per (partition, count), so every
operation is O(1): a hit moves the expert to the tail of the next count's list,
the victim is the head of the lowest non-empty count's list.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy

NAME = "lfu"
ORDER = 2  # its place in lists and tables
LIBCACHESIM = "LFU"  # the libCacheSim class the contract tests check it against, hit for hit

LfuState = namedtuple("LfuState", "count prev nxt head tail base min_count")


@njit(cache=True)
def _uses(item, num_items):
    """Accesses per expert (np.bincount casts the stream to int64 first: 5x slower on 100 M accesses)."""
    uses = np.zeros(num_items, np.int64)
    for i in range(item.shape[0]):
        uses[item[i]] += 1
    return uses


def init(num_items, part_of, part_capacity, stream, params):
    # counts never exceed an expert's accesses in the stream (+1 for a prefetch insert)
    uses = _uses(stream.item, num_items) + 2
    most = np.zeros(len(part_capacity), np.int64)
    np.maximum.at(most, part_of, uses)
    base = np.zeros(len(part_capacity), np.int64)
    base[1:] = np.cumsum(most + 1)[:-1]
    buckets = int((most + 1).sum())
    return LfuState(np.zeros(num_items, np.int64), np.full(num_items, -1, np.int32),
                    np.full(num_items, -1, np.int32), np.full(buckets, -1, np.int32), np.full(buckets, -1, np.int32),
                    base, np.ones(len(part_capacity), np.int64))


@njit(cache=True, _nrt=False)
def _append(st, x, p):
    b = st.base[p] + st.count[x]
    t = st.tail[b]
    st.prev[x] = t
    st.nxt[x] = -1
    if t >= 0:
        st.nxt[t] = x
    else:
        st.head[b] = x
    st.tail[b] = x


@njit(cache=True, _nrt=False)
def _unlink(st, x, p):
    b = st.base[p] + st.count[x]
    p = st.prev[x]
    n = st.nxt[x]
    if p >= 0:
        st.nxt[p] = n
    else:
        st.head[b] = n
    if n >= 0:
        st.prev[n] = p
    else:
        st.tail[b] = p


@njit(cache=True, _nrt=False)
def on_hit(st, x, p, t):
    _unlink(st, x, p)
    if st.count[x] == st.min_count[p] and st.head[st.base[p] + st.count[x]] < 0:
        st.min_count[p] += 1
    st.count[x] += 1
    _append(st, x, p)


@njit(cache=True, _nrt=False)
def on_insert(st, x, p, t):
    st.count[x] = 1
    st.min_count[p] = 1
    _append(st, x, p)


@njit(cache=True, _nrt=False)
def on_evict(st, x, p):
    _unlink(st, x, p)


@njit(cache=True, _nrt=False)
def victim(st, part, busy, t):
    # the lowest count's oldest expert that is not busy; counts above min_count may be empty
    b = st.base[part]
    top = st.base[part + 1] if part + 1 < st.base.shape[0] else st.head.shape[0]
    c = b + st.min_count[part]
    below_empty = True  # every count below c holds no expert: min_count may move up to c
    while c < top:
        x = st.head[c]
        if x >= 0 and below_empty:
            st.min_count[part] = c - b
            below_empty = False
        while x >= 0:
            if not is_busy(busy, x):
                return x
            x = st.nxt[x]
        c += 1
    return -1
