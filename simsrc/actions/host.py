"""host: compute every missing expert on the host; with pins and no cache, llama.cpp's and KTransformers' static placement."""
from collections import namedtuple

from numba import njit

from . import HOST

NAME = "host"
ORDER = 1
ALIASES = ("cpu", "static-placement")
TAKES = (HOST,)

HostRule = namedtuple("HostRule", "unused")


def init(params):
    return HostRule(0)


@njit(cache=True, _nrt=False)
def decide(rule, x, tokens, weight, fetch_done, host_done):
    return HOST
