"""cost: the sooner of fetch-and-compute and host compute, given the link's queue and the host's backlog now."""
from collections import namedtuple

from numba import njit

from . import FETCH, HOST

NAME = "cost"
ORDER = 3
ALIASES = ("cheaper",)
TAKES = (FETCH, HOST)
WEIGHS_TIMES = True  # the engine works out fetch_done only for rules that say they weigh it

CostRule = namedtuple("CostRule", "unused")


def init(params):
    return CostRule(0)


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    # fetch_done: when the copy would land (the GPU then computes it, a few µs); host_done: when the host
    # would have the result. Ties fetch, which also warms the cache.
    return HOST if host_done < fetch_done else FETCH
