"""LRU: evict the expert used longest ago.

Source: the classic policy; the baseline of mixtral-offloading (Eliseev & Mazur,
arXiv 2312.17238) and of the LRU-vs-LFU offloading studies. Matches
libCacheSim's LRU exactly in count mode. Tie-break: none needed (recency is a
total order); a busy tail item is skipped for the next one up.
"""

from collections import namedtuple

from numba import njit

from ._list import last_free, new_lists, push_front, unlink

NAME = "lru"
ORDER = 0  # its place in lists and tables
LIBCACHESIM = "LRU"  # the libCacheSim class the contract tests check it against, hit for hit


LruState = namedtuple("LruState", "prev nxt head tail")


def init(num_items, part_of, part_capacity, stream, params):
    return LruState(*new_lists(num_items, len(part_capacity)))


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    # move to front, written out: x is not the head, so it has a predecessor (saves the generic
    # unlink's branches and stores on the hottest path)
    prev, nxt, head, tail = state
    h = head[p]
    if h == x:
        return
    a = prev[x]
    b = nxt[x]
    nxt[a] = b
    if b >= 0:
        prev[b] = a
    else:
        tail[p] = a
    prev[x] = -1
    nxt[x] = h
    prev[h] = x
    head[p] = x


@njit(cache=True, _nrt=False)
def on_insert(state, x, p, t):
    prev, nxt, head, tail = state
    push_front(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def on_evict(state, x, p):
    prev, nxt, head, tail = state
    unlink(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy, t):
    prev, nxt, head, tail = state
    return last_free(prev, tail, part, busy)
