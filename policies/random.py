"""Random: evict an expert chosen uniformly at random (seeded, reproducible).

Source: the classic baseline. Draws come from a splitmix64 stream seeded by
`seed`, so a run is identical everywhere. Tie-break: a busy draw is redrawn;
after 64 busy draws the first free member is taken.
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ._busy import is_busy
from ._members import member_add, member_remove, new_members

NAME = "random"
ORDER = 5  # its place in lists and tables


USES_SEED = True  # the grid replays seed-only variants of other policies once

RandomState = namedtuple("RandomState", "members rng")


def init(num_items, part_of, part_capacity, stream, params):
    rng = np.array([(int(params.get("seed", 0)) * 0x9E3779B97F4A7C15 + 1) % 2**64], np.uint64)
    return RandomState(new_members(num_items, part_capacity), rng)


@njit(cache=True, _nrt=False)
def _draw(rng, n):
    z = rng[0] + np.uint64(0x9E3779B97F4A7C15)
    rng[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.int64(z % np.uint64(n))


@njit(cache=True, _nrt=False)
def on_hit(state, x, p, t):
    pass


@njit(cache=True, _nrt=False)
def on_insert(state, x, p, t):
    member_add(state.members, p, x)


@njit(cache=True, _nrt=False)
def on_evict(state, x, p):
    member_remove(state.members, p, x)


@njit(cache=True, _nrt=False)
def victim(state, part, busy, t):
    m = state.members
    n = m.size[part]
    if n == 0:
        return -1
    for _ in range(64):
        x = m.slots[m.base[part] + _draw(state.rng, n)]
        if not is_busy(busy, x):
            return x
    for i in range(n):
        x = m.slots[m.base[part] + i]
        if not is_busy(busy, x):
            return x
    return -1
