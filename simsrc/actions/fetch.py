"""fetch: copy every missing expert to the GPU (offloading runtimes with an expert cache)."""
from collections import namedtuple

from numba import njit

from . import FETCH

NAME = "fetch"
ORDER = 0
TAKES = (FETCH,)  # the engine then compiles the plain fetch path: no decision, no host lane

FetchRule = namedtuple("FetchRule", "unused")


def init(params):
    return FetchRule(0)


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    return FETCH
