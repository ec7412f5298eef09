"""fetch: copy every missing expert to the GPU (offloading runtimes with an expert cache)."""
from collections import namedtuple

from numba import njit

NAME = "fetch"
ORDER = 0
MAY_HOST = False  # the engine then leaves the host lane out of the loop it compiles for this rule

FetchRule = namedtuple("FetchRule", "unused")


def init(params):
    return FetchRule(0)


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, fetch_done, host_done):
    return 0  # FETCH
