"""Belady (MIN): evict the expert whose next use lies furthest in the future.

Source: Belady, "A study of replacement algorithms for a virtual-storage
computer" (1966): the offline optimum for hit count, the bound on every curve.
It reads the future from the access stream, so it is an oracle, not a
deployable policy. Tie-break: experts never used again go first, the one
that entered that state earliest first; which of them goes does not change
the hit count.

Each access's next use is read off a chain built in one backward pass over
the stream; residents sit in a max-tournament tree keyed by next use, so the
victim is the tree's root.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ._tournament import MAX_KEY, new_tournament, tournament_max, tournament_remove, tournament_set

NAME = "belady"
ORDER = 4  # its place in lists and tables
LIBCACHESIM = "Belady"  # the libCacheSim class the contract tests check it against, hit for hit

NEVER = MAX_KEY - 1  # key base of "never used again" (NEVER - t): above every position, earliest entry largest;
# a warm insert (t = -1) gets the largest key the tree takes

BeladyState = namedtuple("BeladyState", "item next_use first_use last_pos tree")


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
    return BeladyState(item, next_use, first_use, np.full(num_items, -1, np.int64),
                       new_tournament(num_items, part_capacity, defer=bool(params.get("timed", False))))


@njit(cache=True, _nrt=False)
def _next_use(st, x, t):
    """The key of x's first use after stream position t."""
    n = st.item.shape[0]
    if t >= 0 and st.item[t] == x:  # a demand access: its next use is on the chain, read in stream order
        u = st.next_use[t]
        st.last_pos[x] = t
    else:  # a prefetch (or warm) insert: walk x's chain from its last access to just past t
        last = st.last_pos[x]
        u = st.first_use[x] if last < 0 else st.next_use[last]
        while u < n and u <= t:
            u = st.next_use[u]
    return u if u < n else NEVER - t


@njit(cache=True, _nrt=False)
def on_hit(st, x, p, t):
    # a hit is always a demand access (item[t] == x): its next use is the chain's next link
    u = st.next_use[t]
    st.last_pos[x] = t
    tournament_set(st.tree, p, x, u if u < st.item.shape[0] else NEVER - t)


@njit(cache=True, _nrt=False)
def on_insert(st, x, p, t):
    tournament_set(st.tree, p, x, _next_use(st, x, t))


@njit(cache=True, _nrt=False)
def on_evict(st, x, p):
    tournament_remove(st.tree, p, x)


@njit(cache=True, _nrt=False)
def victim(st, part, busy, t):
    return tournament_max(st.tree, part, busy)
