"""Random: evict an expert chosen uniformly at random (seeded, reproducible).

Source: the classic baseline. Draws come from a splitmix64 stream seeded by
`seed`, so a run is identical everywhere. Tie-break: a busy draw is redrawn;
after 64 busy draws the first free member is taken.
"""
from collections import namedtuple

import numpy as np
from numba import njit


USES_SEED = True  # the grid replays seed-only variants of other policies once

RandomState = namedtuple("RandomState", "part_of base size members pos rng")


def init(num_items, part_of, part_capacity, stream, params):
    base = np.zeros(len(part_capacity), np.int64)
    base[1:] = np.cumsum(part_capacity)[:-1]
    members = np.full(max(int(part_capacity.sum()), 1), -1, np.int32)
    rng = np.array([(int(params.get("seed", 0)) * 0x9E3779B97F4A7C15 + 1) % 2**64], np.uint64)
    return RandomState(part_of, base, np.zeros(len(part_capacity), np.int64), members,
                       np.full(num_items, -1, np.int64), rng)


@njit(cache=True, _nrt=False)
def _draw(rng, n):
    z = rng[0] + np.uint64(0x9E3779B97F4A7C15)
    rng[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.int64(z % np.uint64(n))


@njit(cache=True, _nrt=False)
def on_hit(state, x, t):
    pass


@njit(cache=True, _nrt=False)
def on_insert(state, x, t):
    part_of, base, size, members, pos, rng = state
    p = part_of[x]
    members[base[p] + size[p]] = x
    pos[x] = size[p]
    size[p] += 1


@njit(cache=True, _nrt=False)
def on_evict(state, x):
    part_of, base, size, members, pos, rng = state
    p = part_of[x]
    size[p] -= 1
    last = members[base[p] + size[p]]
    members[base[p] + pos[x]] = last
    pos[last] = pos[x]
    pos[x] = -1


@njit(cache=True, _nrt=False)
def victim(state, part, busy):
    part_of, base, size, members, pos, rng = state
    n = size[part]
    if n == 0:
        return -1
    for _ in range(64):
        x = members[base[part] + _draw(rng, n)]
        if not busy[x]:
            return x
    for i in range(n):
        x = members[base[part] + i]
        if not busy[x]:
            return x
    return -1
