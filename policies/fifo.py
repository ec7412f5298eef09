"""FIFO: evict the expert that entered the cache first; hits change nothing.

Source: the classic policy; matches libCacheSim's FIFO exactly in count mode.
Tie-break: none (insertion order is total); busy items are skipped.

FIFO is LRU without the move to the front on a hit: it keeps the same list
and shares LRU's insert, evict and victim operations. Its own state type is
what sends the engine to this module's on_hit.
"""

from collections import namedtuple

from numba import njit

from ._list import new_lists
from .lru import on_evict, on_insert, victim  # noqa: F401 (the engine finds them here)

NAME = "fifo"
ORDER = 1  # its place in lists and tables
LIBCACHESIM = "FIFO"  # the libCacheSim class the contract tests check it against, hit for hit

FifoState = namedtuple("FifoState", "prev nxt head tail")


def init(num_items, part_of, part_capacity, stream, params):
    return FifoState(*new_lists(num_items, len(part_capacity)))


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    pass
