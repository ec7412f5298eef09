"""fetch: copy every missing expert to the GPU (offloading runtimes with an expert cache)."""
from collections import namedtuple

from numba import njit

NAME = "fetch"
ORDER = 0

FetchRule = namedtuple("FetchRule", "unused")


def init(params):
    return FetchRule(0)


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, fetch_done, host_done):
    return 0  # FETCH
