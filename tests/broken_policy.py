"""A policy that breaks the contract on purpose: its victim search gives up (returns -1) with residents free.

It lives in tests/, not policies/, so it is never registered; test_policy_contract drives the engine with it.
"""
from collections import namedtuple

import numpy as np
from numba import njit

BrokenState = namedtuple("BrokenState", "resident")


def init(num_items, part_of, part_capacity, stream, params):
    return BrokenState(np.zeros(num_items, np.uint8))


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    pass


@njit(cache=True, _nrt=False)
def on_insert(state, x, p, t):
    state.resident[x] = 1


@njit(cache=True, _nrt=False)
def on_evict(state, x, p):
    state.resident[x] = 0


@njit(cache=True, _nrt=False)
def victim(state, part, busy, t):
    return -1
