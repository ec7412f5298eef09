"""skip: drop a missing expert whose routing weight is below --weight-below and renormalise its tokens' other experts, else fetch it (expert skipping)."""
from collections import namedtuple

import numpy as np
from numba import njit

from . import FETCH, SKIP

NAME = "skip"
ORDER = 5
ALIASES = ("drop", "adapmoe")
TAKES = (FETCH, SKIP)

SkipRule = namedtuple("SkipRule", "below")


def init(params):
    return SkipRule(np.float64(params["weight_below"]))


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    # Expert skipping (AdapMoE, Zhong et al., arXiv 2408.10284; Lu et al., arXiv 2402.14800): an expert
    # the router weighs little is left out and the token's other experts renormalised. Those papers skip by
    # a sensitivity estimate or by the ratio to the top expert's weight, whether or not it is cached; this
    # rule skips only a miss, by its own routing weight (the largest among its tokens). Without routing
    # weights (-1) every miss is skipped: the bound of a cache that never loads.
    return SKIP if weight < rule.below else FETCH
