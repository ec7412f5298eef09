"""threshold: compute a missing expert on the host when it serves fewer than --host-below tokens, else fetch it (Fiddler)."""
from collections import namedtuple

import numpy as np
from numba import njit

NAME = "threshold"
ORDER = 2
ALIASES = ("fiddler",)

ThresholdRule = namedtuple("ThresholdRule", "below")


def init(params):
    return ThresholdRule(np.int64(params["host_below"]))


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, fetch_done, host_done):
    # Fiddler (Kamahori et al., arXiv 2402.07033): with few tokens, moving the weights costs more than
    # computing them where they are
    return 1 if tokens < rule.below else 0
