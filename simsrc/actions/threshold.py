"""threshold: compute a missing expert on the host when it serves fewer than --host-below tokens, else fetch it (Fiddler)."""
from collections import namedtuple

import numpy as np
from numba import njit

from . import FETCH, HOST

NAME = "threshold"
ORDER = 2
ALIASES = ("fiddler",)
TAKES = (FETCH, HOST)

ThresholdRule = namedtuple("ThresholdRule", "below")


def init(params):
    return ThresholdRule(np.int64(params["host_below"]))


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    # Fiddler (Kamahori et al., arXiv 2402.07033): with few tokens, moving the weights costs more than
    # computing them where they are
    return HOST if tokens < rule.below else FETCH
