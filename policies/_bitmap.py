"""A set of integers in [0, n) as a 64-ary tree of bit words: add, discard, and
"largest member below i" in O(log64 n) word operations.

Belady keeps its residents' next-use positions here: positions are distinct,
so "the expert needed furthest in the future" is the largest member, found in
four or five word steps instead of a heap's branchy sifts.
"""
from collections import namedtuple

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

Bitmap = namedtuple("Bitmap", "words offsets")


def new_bitmap(n: int) -> Bitmap:
    sizes = []
    m = max(n, 1)
    while True:
        m = (m + 63) // 64
        sizes.append(m)
        if m == 1:
            break
    offsets = np.zeros(len(sizes) + 1, np.int64)
    offsets[1:] = np.cumsum(sizes)
    return Bitmap(np.zeros(int(offsets[-1]), np.uint64), offsets)


@njit(cache=True, _nrt=False)
def _highest(word):
    return 63 - leading_zeros(word)


@njit(cache=True, _nrt=False)
def bitmap_add(bm, i):
    for lev in range(bm.offsets.shape[0] - 1):
        w = bm.offsets[lev] + (i >> 6)
        was = bm.words[w]
        bm.words[w] = was | (np.uint64(1) << np.uint64(i & 63))
        if was != 0:
            return  # the levels above already know this word is not empty
        i >>= 6


@njit(cache=True, _nrt=False)
def bitmap_discard(bm, i):
    for lev in range(bm.offsets.shape[0] - 1):
        w = bm.offsets[lev] + (i >> 6)
        now = bm.words[w] & ~(np.uint64(1) << np.uint64(i & 63))
        bm.words[w] = now
        if now != 0:
            return
        i >>= 6


@njit(cache=True, _nrt=False)
def bitmap_below(bm, i):
    """The largest member < i, or -1."""
    levels = bm.offsets.shape[0] - 1
    for lev in range(levels):
        w = i >> 6
        b = i & 63
        word = bm.words[bm.offsets[lev] + w] & ((np.uint64(1) << np.uint64(b)) - np.uint64(1)) if b else np.uint64(0)
        if word != 0:
            j = (w << 6) | _highest(word)
            for down in range(lev - 1, -1, -1):
                j = (j << 6) | _highest(bm.words[bm.offsets[down] + j])
            return j
        i = w
        if i == 0:
            return -1
    return -1
