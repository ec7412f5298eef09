"""substitute: compute a missing expert's tokens on the resident expert each token's router ranked highest among those it did not choose (cache-aware routing); fetch it where a token has none."""
from collections import namedtuple

from numba import njit

from . import FETCH, SUBSTITUTE

NAME = "substitute"
ORDER = 6
ALIASES = ("cache-aware", "max-rank")
TAKES = (FETCH, SUBSTITUTE)

SubstituteRule = namedtuple("SubstituteRule", "unused")


def init(params):
    return SubstituteRule(0)


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    # Cache-aware routing, "Max Rank" (Skliar et al., arXiv 2412.00099): a token may swap an expert that is
    # not in memory for one that is, if the router ranked it within the first --substitute-rank. The engine
    # looks the alternatives up in the trace's router_logits, best first, and fetches the expert when some
    # token of it has none resident (the token then keeps its own routing, as Max Rank does).
    return SUBSTITUTE
