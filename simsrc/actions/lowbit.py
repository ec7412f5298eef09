"""lowbit: fetch a low-precision copy of a missing expert whose routing weight is below --weight-below, else the expert itself (HOBBIT)."""
from collections import namedtuple

import numpy as np
from numba import njit

from . import FETCH, LOWBIT

NAME = "lowbit"
ORDER = 4
ALIASES = ("hobbit", "mixed-precision")
TAKES = (FETCH, LOWBIT)

LowbitRule = namedtuple("LowbitRule", "below")


def init(params):
    return LowbitRule(np.float64(params["weight_below"]))


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    # HOBBIT (Tang et al., arXiv 2411.01433): a cache-miss expert the router weighs little contributes
    # little to its token's output, so a low-precision copy of it serves nearly as well and moves a
    # fraction of the bytes. weight is the largest the expert has among its tokens: one token that weighs
    # it heavily gets the full expert. Without routing weights (-1) every miss counts as unimportant.
    return LOWBIT if weight < rule.below else FETCH
