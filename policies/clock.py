"""CLOCK: FIFO with a second chance; an expert used since it was last passed over is kept one more round.

Source: Corbató, "A paging experiment with the Multics system" (1968), the one-bit CLOCK of operating-
system page caches; matches libCacheSim's Clock (its default one-bit counter) exactly in count mode.
The cache is a queue (head: newest). A hit sets the expert's bit and moves nothing. The victim search
looks at the tail: an expert with its bit set has it cleared and goes to the head; the first one found
without it is the victim. Tie-break: none (queue order is total). Busy experts (timed mode) are passed
over without losing their bit; if every resident is busy, the search gives -1.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy
from ._list import new_lists, push_front, unlink

NAME = "clock"
ORDER = 8
LIBCACHESIM = "Clock"  # the libCacheSim class the contract tests check it against, hit for hit

ClockState = namedtuple("ClockState", "prev nxt head tail used")


def init(num_items, part_of, part_capacity, stream, params):
    return ClockState(*new_lists(num_items, len(part_capacity)), np.zeros(num_items, np.uint8))


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    state.used[x] = 1


@njit(cache=True, _nrt=False)
def on_insert(state, x, p, t):
    prev, nxt, head, tail, used = state
    used[x] = 0
    push_front(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def on_evict(state, x, p):
    prev, nxt, head, tail, used = state
    unlink(prev, nxt, head, tail, p, x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy, t):
    prev, nxt, head, tail, used = state
    x = tail[part]
    # a second chance moves x to the head, so after one pass every idle expert's bit is clear; a second
    # pass that still finds nothing means every resident is busy
    passes = 0
    while passes < 2:
        while x >= 0:
            before = prev[x]
            if not is_busy(busy, x):
                if used[x] == 0:
                    return x
                used[x] = 0
                unlink(prev, nxt, head, tail, part, x)
                push_front(prev, nxt, head, tail, part, x)
            x = before
        passes += 1
        x = tail[part]
    return -1
