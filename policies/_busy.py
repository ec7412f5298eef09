"""Is expert x busy (in use or in flight), for a victim search.

`busy` has a byte per expert whose lowest bit says busy: timed mode passes its
per-expert state bytes (engine/experts.py), a test may pass 0s and 1s. Count
mode passes `None`: nothing is ever busy there, and this resolves at compile
time to `False`, so count mode's victim search carries no check at all.
"""
from numba.core import types
from numba.extending import overload


def is_busy(busy, x):
    return busy is not None and bool(busy[x] & 1)


@overload(is_busy)
def _is_busy(busy, x):
    if isinstance(busy, types.NoneType):
        return lambda busy, x: False
    return lambda busy, x: busy[x] & 1 != 0
