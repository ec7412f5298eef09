"""What an action rule reads of the router besides the experts, for both loops: each missing expert's routing
weight in its segment, and the resident experts its tokens could take instead (moesim.actions).

The stream carries them only for a rule that takes them (Stream.weight, Stream.ranked); otherwise they are
None, and these functions compile to nothing (weights) or to a refusal (substitutes), so a loop compiled
for the plain fetch rule is the loop it was.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from .experts import LOWBIT_TOKENS, RESIDENT

FETCH, HOST, LOWBIT, SKIP, SUBSTITUTE = range(5)  # moesim.actions' numbers (the engine imports nothing above it)
NUM_ACTIONS = 5
NO_WEIGHT = -1.0  # what a rule sees without routing weights: below every threshold


@njit(cache=True, _nrt=False)
def count_action(c, action, tokens, mass):
    """A low-bit, skipped or substituted expert's tokens, and the routing weight they gave it."""
    k = LOWBIT_TOKENS + 2 * (action - LOWBIT)
    c[k] += tokens
    c[k + 1] += mass


def add_weight(weight, i, ax, first, seg_wmax, seg_wsum):
    """Access i (of the segment's entry ax; first: its first access) adds its routing weight to the entry."""
    if weight is None:
        return
    _add_weight(weight, i, ax, first, seg_wmax, seg_wsum)


@njit(cache=True, _nrt=False)
def _add_weight(weight, i, ax, first, seg_wmax, seg_wsum):
    v = np.float64(weight[i])
    if first:
        seg_wmax[ax] = v
        seg_wsum[ax] = v
    else:
        seg_wmax[ax] = max(seg_wmax[ax], v)
        seg_wsum[ax] += v


@overload(add_weight)
def _add_weight_overload(weight, i, ax, first, seg_wmax, seg_wsum):
    if isinstance(weight, types.NoneType):
        return lambda weight, i, ax, first, seg_wmax, seg_wsum: None
    return lambda weight, i, ax, first, seg_wmax, seg_wsum: _add_weight(weight, i, ax, first, seg_wmax, seg_wsum)


def weight_of(weight, seg_wmax, a):
    """The largest routing weight entry a has among its tokens (what a rule weighs), or NO_WEIGHT."""
    return NO_WEIGHT if weight is None else seg_wmax[a]


@overload(weight_of)
def _weight_of(weight, seg_wmax, a):
    if isinstance(weight, types.NoneType):
        return lambda weight, seg_wmax, a: NO_WEIGHT
    return lambda weight, seg_wmax, a: seg_wmax[a]


def mass_of(weight, seg_wsum, a):
    """Entry a's routing weight summed over its tokens (what skipping or substituting it gives up), or 0."""
    return 0.0 if weight is None else seg_wsum[a]


@overload(mass_of)
def _mass_of(weight, seg_wsum, a):
    if isinstance(weight, types.NoneType):
        return lambda weight, seg_wsum, a: 0.0
    return lambda weight, seg_wsum, a: seg_wsum[a]


def pick_substitutes(ranked, x, s, lo, hi, item, flags, pick, pick_seg):
    if ranked is None:
        return False
    return _pick_substitutes(ranked, x, s, lo, hi, item, flags, pick, pick_seg)


@njit(cache=True, _nrt=False)
def _pick_substitutes(ranked, x, s, lo, hi, item, flags, pick, pick_seg):
    """For each access i of expert x in segment s (accesses lo..hi), the resident expert its token's router
    ranked highest among those the token did not choose and no other of its missing experts took already:
    pick[i - lo], marked pick_seg[i - lo] = s. True if every token of x has one; else nothing is picked."""
    top_k = item.shape[0] // ranked.shape[0]
    for i in range(lo, hi):
        if item[i] != x:
            continue
        row = i // top_k
        first = row * top_k
        chosen = -1
        for j in range(ranked.shape[1]):
            y = ranked[row, j]
            if y < 0:  # the token's alternatives within the rank end here
                break
            if not flags[y] & RESIDENT:
                continue
            taken = False
            for sib in range(first, first + top_k):  # the token's other accesses (a row lies in one segment)
                if sib != i and pick_seg[sib - lo] == s and pick[sib - lo] == y:
                    taken = True
            if not taken:
                chosen = y
                break
        if chosen < 0:
            for i2 in range(lo, i):
                if item[i2] == x:
                    pick_seg[i2 - lo] = -1
            return False
        pick[i - lo] = chosen
        pick_seg[i - lo] = s
    return True


@overload(pick_substitutes)
def _pick_substitutes_overload(ranked, x, s, lo, hi, item, flags, pick, pick_seg):
    if isinstance(ranked, types.NoneType):
        return lambda ranked, x, s, lo, hi, item, flags, pick, pick_seg: False
    return lambda ranked, x, s, lo, hi, item, flags, pick, pick_seg: _pick_substitutes(
        ranked, x, s, lo, hi, item, flags, pick, pick_seg)
