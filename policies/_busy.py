"""Is expert x busy (in use or in flight), for a victim search.

Count mode passes no busy array (`None`): nothing is ever busy there, and
this resolves at compile time to `False`, so count mode's victim search
carries no check at all.
"""
from numba.core import types
from numba.extending import overload


def is_busy(busy, x):
    return busy is not None and bool(busy[x])


@overload(is_busy)
def _is_busy(busy, x):
    if isinstance(busy, types.NoneType):
        return lambda busy, x: False
    return lambda busy, x: busy[x] != 0
