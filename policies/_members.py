"""The experts resident in each cache partition as a dense list: O(1) add and remove.

For policies that pick a victim by looking at the residents themselves
(Random draws one, MoE-Infinity scores them all) rather than by an order.
"""
from collections import namedtuple

import numpy as np
from numba import njit

Members = namedtuple("Members", "base size slots pos")


def new_members(num_items: int, part_capacity: np.ndarray) -> Members:
    base = np.zeros(len(part_capacity), np.int64)
    base[1:] = np.cumsum(part_capacity)[:-1]
    return Members(base, np.zeros(len(part_capacity), np.int64),
                   np.full(max(int(part_capacity.sum()), 1), -1, np.int32), np.full(num_items, -1, np.int64))


@njit(cache=True, _nrt=False)
def member_add(m, part, x):
    m.slots[m.base[part] + m.size[part]] = x
    m.pos[x] = m.size[part]
    m.size[part] += 1


@njit(cache=True, _nrt=False)
def member_remove(m, part, x):
    m.size[part] -= 1
    last = m.slots[m.base[part] + m.size[part]]
    m.slots[m.base[part] + m.pos[x]] = last
    m.pos[last] = m.pos[x]
    m.pos[x] = -1
