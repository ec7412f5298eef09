"""Exact count-mode LRU hits at every capacity in one pass, in both accountings, split by layer and phase.

**Per access** LRU is a stack algorithm (Mattson et al., 1970): an access hits a cache of C experts exactly
when fewer than C distinct other experts of its partition were used since its expert's last use (its stack
distance), so one pass of distances gives every capacity.

**Per segment** (the engine's _segment_loop: a (step, layer)'s distinct experts are looked up together
against the cache as the segment began, hits first, then misses, each in order of first use; a miss evicts
the least recent expert the segment does not use, or streams through when the segment fills its partition)
LRU is *not* a stack algorithm: which of a segment's experts end up more recent than which depends on
which of them hit, and so on the capacity. In tests/test_curve.py one layer of 5 experts looks up [4, 2, 3],
[0, 3, 1], [2], [3]: at 2 experts, 3 misses in the second segment and goes in after 0, so 2's miss evicts 0;
at 3 experts, 3 hits, 0 and 1 go in after it, and 2's miss evicts 3. The last lookup hits at 2, misses at 3
and hits at 4: the cache of 3 experts does not hold the cache of 2, so no stack distance says when it hits.
What stays true, for a lookup of expert x at segment s whose last use was segment r (the engine's
rule, proved by following the recency list, and checked against it at every capacity):

    x hits at capacity C  <=>  x was kept at r (not streamed through)  and  D + g_C(x) < C

D is the number of distinct experts of the partition used in the segments between r and s (all of them
more recent than x in the list, whatever the capacity), g_C(x) the number of r's experts not used since
that the list holds ahead of x at C: at r, the misses that went in, then the hits, each group in reverse
order of first use, are ahead of what follows; so g_C(x) depends only on which of r's experts hit at r at
the same capacity C. So each capacity is its own lane, and the lanes of a lookup differ only where
C - D is at most the size of segment r: below D + 1 every lane misses, above D + max(|G|, |r| - 1) every
lane hits (G: r's experts not used since, x apart). A lookup's answer is then stored as a window
(lo, w, mask): miss below lo, the mask's bits in [lo, lo + w), hit from lo + w; at most |r| - 1 <= 63 bits
for segments of up to MAX_SEGMENT experts (every expert of a DeepSeek-V2-Lite layer; larger segments make
the pass answer None and callers replay). Computing one window reads the windows of r's experts at the
lanes it has: O(|r|) per lookup for up to 8 lanes when no expert of r kept a window (a byte a lane, no
branch on the data: 85 % of lookups on the 14.7 M-access MoE-Beyond trace), O(|r|^2) otherwise. Segment r's
windows stay in a slot while one of its experts has not been used since, so the pass reads a few hundred
kilobytes whatever the trace's length. Each capacity being a cache of its own, a pass may follow only the
capacities a curve asks for: a window then spans those of them between D + 1 and the top of its lanes, and
with 100 capacities of the 1,664 a lookup has one of them there or none.

Distances D come from marks at each item's last lookup (trace.stats.LruStack, Bennett and Kruskal 1975),
one time per lookup in first-use order, so the marks after x's are D plus r's experts after x that G holds.
Pinned experts are outside the policy (the engine takes them out of the partition's capacity): their
lookups are always hits and leave the stack alone.
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .trace.stats import (SHORT_WINDOW_WORDS, _move_mark_long, _move_mark_short, _popcount, _renumber,
                          lru_stack, stack_histogram)

# the most distinct experts of one segment the pass takes: a uint64 holds a bit for each (and a lookup's
# window of uncertain capacities, at most one fewer)
MAX_SEGMENT = 64
# Indices into the pass's arrays are unsigned (U): numba then drops its negative-index wrap-around, a test, the
# array's length and an add at each of the ~40 loads and stores of a lookup, and with ~30 arrays live those lengths
# sat on the stack (per segment, 100 capacities of the 14.7 M-access trace: 0.40 -> 0.29 s global, 0.82 -> 0.57 s
# per layer)
U = np.uint64


class LruCounts(NamedTuple):
    """Hits of the LRU policy at every capacity, per MoE layer and phase (0 prefill, 1 decode)."""
    hits: np.ndarray     # int64 [layers, 2, max_capacity + 1]: when the layer's partition holds c policy experts
    lookups: np.ndarray  # int64 [layers, 2]: lookups of unpinned experts (accesses, or a segment's distinct experts)
    pinned: np.ndarray   # int64 [layers, 2]: lookups of pinned experts, all hits
    accounting: str

    def layer_hits(self, part_capacity: np.ndarray, part_of_layer: np.ndarray) -> np.ndarray:
        """int64 [layers, 2]: hits per layer and phase when partition p holds part_capacity[p] policy experts
        (pins apart; part_of_layer[l]: layer l's partition)."""
        cap = np.minimum(np.asarray(part_capacity, np.int64)[part_of_layer], self.hits.shape[2] - 1)
        return self.hits[np.arange(self.hits.shape[0]), :, cap] + self.pinned


def lru_counts(stream, part_of: np.ndarray, pinned: np.ndarray, accounting: str,
               max_capacity: int) -> LruCounts | None:
    """LRU hits of `stream` (a moesim.trace AccessStream) for every per-partition capacity 0..max_capacity,
    by layer and phase. part_of: int32 partition of each item (every segment's items share one); pinned:
    uint8 per item. None when a segment has more than MAX_SEGMENT distinct experts (segment accounting
    only): then no window holds a lookup, and callers replay."""
    L = stream.num_layers
    phase = stream.step_phase[stream.seg_step].astype(np.int64)
    got = lru_group_counts(stream, part_of, pinned, accounting, max_capacity,
                           stream.seg_layer.astype(np.int64) * 2 + phase, 2 * L)
    if got is None:
        return None
    hits, lookups, pins = got
    return LruCounts(hits.reshape(L, 2, -1), lookups.reshape(L, 2), pins.reshape(L, 2), accounting)


def lru_group_counts(stream, part_of: np.ndarray, pinned: np.ndarray, accounting: str, max_capacity: int,
                     seg_group: np.ndarray, groups: int, capacities=None):
    """(hits [groups, max_capacity + 1], lookups [groups], pinned lookups [groups]) of LRU, each segment's
    lookups counted in its group seg_group[s] (a layer and phase, a request, ...); hits exclude pins. The
    capacity is per partition: group counts mean something only for groups within one partition, or for a
    cache whose partitions are all that size. None as in lru_counts.

    capacities: per segment, only these capacities (per partition) are followed, and the hits at the others
    are -1. Each capacity is a cache of its own, so a lookup's answer at C depends on earlier answers at C
    alone; with capacities far apart a lookup's few uncertain capacities hold one of them or none (100 of
    the 1,664 of the real trace: 0.58 s for the curve instead of 0.95)."""
    if accounting not in ("access", "segment"):
        raise ValueError(f"accounting {accounting!r}: choose access or segment")
    n_items = stream.num_layers * stream.num_experts
    part_of = np.ascontiguousarray(part_of, np.int32)
    parts = int(part_of.max()) + 1 if n_items else 1
    per = int(np.bincount(part_of, minlength=parts).max()) if n_items else 0
    maxc = int(min(max(max_capacity, 0), per))
    seg_group = np.ascontiguousarray(seg_group, np.int64)
    pinned = np.ascontiguousarray(pinned, np.uint8)
    stack = lru_stack(n_items, parts)
    # the capacities followed (per segment: all of them, unless told), in order
    followed = np.arange(maxc + 1, dtype=np.int64)
    if capacities is not None and accounting == "segment":
        followed = np.unique(np.r_[np.minimum(np.asarray(capacities, np.int64).ravel(), maxc), 0])
        if followed[0] < 0:
            raise ValueError(f"capacities {capacities!r}: counts of experts, 0 or more")
    n_cap = len(followed)
    frm = np.zeros((groups, n_cap + 1), np.int64)    # lookups that hit from this capacity on
    point = np.zeros((groups, n_cap + 1), np.int64)  # lookups that hit at this capacity alone (window bits)
    lookups = np.zeros(groups, np.int64)
    pins = np.zeros(groups, np.int64)
    if accounting == "access" and groups == 1 and not pinned.any():
        # one count for all accesses: trace.stats' own loop (what `inspect` runs), one partition folded in
        hist = np.zeros(per + 1, np.int64)
        stack_histogram(stream.item, None if parts == 1 else part_of, stack, hist)
        frm[0, 1:maxc + 1] = hist[:maxc]
        lookups[0] = len(stream.item)
    elif accounting == "access":
        _access_pass(stream.item, stream.seg_offsets, seg_group, part_of, pinned, maxc, stack, frm, lookups, pins)
    else:
        seg_len = np.diff(stream.seg_offsets)
        widest = int(min(seg_len.max(), stream.num_experts)) if len(seg_len) else 0
        if widest > MAX_SEGMENT:
            widest = int(segment_lookups(stream).max())
            if widest > MAX_SEGMENT:
                return None
        width = max(widest, 1)
        slots = n_items + 2  # a live segment holds at least one expert's last lookup, and one more is being read
        # from[c]: the first followed capacity of at least c; span[j]: bytes i = 0..7, the capacities from the
        # j-th followed to the (j + i)-th, at most 64 (more than any lookup's uncertain capacities reach)
        from_cap = np.searchsorted(followed, np.arange(maxc + 2)).astype(np.int64)
        ahead = np.minimum(np.r_[followed, np.full(8, followed[-1] + 64)][np.arange(n_cap)[:, None] + np.arange(8)]
                           - followed[:, None], 64)
        span = (ahead.astype(np.uint64) << (8 * np.arange(8, dtype=np.uint64))).sum(axis=1).astype(np.uint64)
        _segment_pass(stream.item, stream.seg_offsets, seg_group, part_of, pinned, maxc, followed, from_cap, span,
                      stack, _row_kind(stack),
                      np.full(n_items, -1, np.int64), np.zeros(n_items, np.int32), np.zeros(n_items, np.int32),
                      np.zeros(slots, np.uint64), np.arange(slots, dtype=np.int32), np.zeros(slots, np.int32),
                      np.zeros(slots, np.uint8),
                      np.zeros(slots * width, np.int32), np.zeros(slots * width, np.int32),
                      np.zeros(slots * width, np.uint64), np.zeros(slots * width, np.int32), width,
                      np.empty(MAX_SEGMENT, np.uint64), frm, point, lookups, pins)
    at = np.cumsum(frm[:, :n_cap], axis=1) + point[:, :n_cap]
    if n_cap == maxc + 1:
        return at, lookups, pins
    hits = np.full((groups, maxc + 1), -1, np.int64)
    hits[:, followed] = at
    return hits, lookups, pins


@numba.njit(cache=True, _nrt=False, inline="always")
def _marks_after(words, after, prev):
    # marks later than time prev in a partition's window: one load and one popcount
    w = np.uint64(prev >> 6)
    return np.int64(after[w]) + _popcount(words[w] >> np.uint64(prev & 63) >> np.uint64(1))


class _ShortRow(NamedTuple):
    """Marks move by trace.stats' short-row update (a window of at most SHORT_WINDOW_WORDS words)."""
    words: int


class _LongRow(NamedTuple):
    """Marks move by the long-row update."""
    words: int


def _row_kind(stack):
    # the update is chosen by the type of this argument, when the loop compiles: a test per access measured
    # two to three times slower in trace.stats, and both updates in one loop 28-40 % slower here
    n = stack.words.shape[1]
    return _ShortRow(n) if n <= SHORT_WINDOW_WORDS else _LongRow(n)


def _move(row, words, after, owner, last, t, x):
    mover = _move_mark_short if isinstance(row, _ShortRow) else _move_mark_long
    return mover(words, after, owner, last, t, x)


@overload(_move, inline="always")
def _move_compiled(row, words, after, owner, last, t, x):
    if getattr(row, "instance_class", None) is _ShortRow:
        return lambda row, words, after, owner, last, t, x: _move_mark_short(words, after, owner, last, t, x)
    return lambda row, words, after, owner, last, t, x: _move_mark_long(words, after, owner, last, t, x)


def _access_pass(item, seg_offsets, seg_group, part_of, pinned, maxc, stack, frm, lookups, pins):
    _access_loop(item, seg_offsets, seg_group, part_of, pinned, maxc, stack, _row_kind(stack), frm, pins)
    np.add.at(lookups, seg_group, np.diff(seg_offsets))
    lookups -= pins


@numba.njit(cache=True, _nrt=False)
def _access_loop(item, seg_offsets, seg_group, part_of, pinned, maxc, stack, row, frm, pins):
    # trace.stats.stack_histogram's loop, counted by group
    window = stack.owner.shape[1]
    for s in range(seg_group.shape[0]):
        grp = seg_group[s]
        i0, i1 = seg_offsets[s], seg_offsets[s + 1]
        if i0 == i1:
            continue
        p = part_of[item[i0]]  # a segment's experts share a partition
        for i in range(i0, i1):
            x = np.uint32(item[np.uint64(i)])
            if pinned[x]:
                pins[grp] += 1
                continue
            t = stack.clock[p]
            if t == window:  # renumbered in the loop: a helper function for these lines measured 4x slower
                _renumber(stack, p)
                t = stack.clock[p]
            d = _move(row, stack.words[p], stack.after[p], stack.owner[p], stack.last, t, x)
            stack.clock[p] = t + 1
            if 0 <= d < maxc:
                frm[grp, d + 1] += 1


ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
# up to 8 lanes counted at once, a byte a lane: each byte's top bit, ones, and the multiplier that gathers bit 0
# of each byte into bits 56..63
BYTE_TOPS = np.uint64(0x8080808080808080)
BYTE_ONES = np.uint64(0x0101010101010101)
GATHER = np.uint64(0x0102040810204080)
# BYTES_BELOW[t]: a one in each of the bytes (lanes) below t
BYTES_BELOW = np.array([(1 << (8 * t)) - 1 & 0x0101010101010101 for t in range(9)], np.uint64)


@numba.njit(cache=True, _nrt=False, inline="always")
def _ones_from(k):
    # lanes k and up
    if k <= 0:
        return ALL
    if k >= 64:
        return np.uint64(0)
    return ALL << np.uint64(k)


@numba.njit(cache=True, _nrt=False, inline="always")
def _lane_hits(lo, end, mask, k, first):
    # the lanes (bit i: capacity first + i) at which the lookup stored at k hit: its window's bits, and all lanes
    # from its end
    out = _ones_from(np.int64(end[k]) - first)
    bits = mask[k]
    if bits:
        shift = np.int64(lo[k]) - first
        if shift >= 0:
            if shift < 64:
                out |= bits << np.uint64(shift)
        elif -shift < 64:
            out |= bits >> np.uint64(-shift)
    return out


@numba.njit(cache=True, _nrt=False, inline="always")
def _at_most(counts, limits):
    # lanes 0..7 (bit i) whose count (byte i, below 128) is at most its limit (byte i, below 128): each byte of
    # (limit | 0x80) - count keeps its top bit when limit >= count, and a multiply gathers the top bits
    top = ((limits | BYTE_TOPS) - counts) & BYTE_TOPS
    return ((top >> np.uint64(7)) * GATHER) >> np.uint64(56)


@intrinsic
def _leading_zeros(typingctx, x):
    # 64 for 0
    def codegen(context, builder, signature, args):
        return builder.zext(builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0)), ir.IntType(64))
    return types.int64(types.uint64), codegen


@numba.njit(cache=True, _nrt=False)
def _lanes(lo, end, mask, base, nr, px, gbits, d, followed, j0, lanes, hb):
    """The lanes (bit i: the followed capacity j0 + i) at which the lookup of the expert last looked up as
    lookup px of segment r (its lookups stored from base, nr of them) hits, d distinct others since, gbits the
    lookups of r not used since."""
    one = np.uint64(1)
    full = ALL >> np.uint64(64 - lanes)
    hx = _lane_hits(lo, end, mask, base + px, j0) & full
    for m in range(nr):
        hb[m] = _lane_hits(lo, end, mask, base + m, j0)
    bits = np.uint64(0)
    for i in range(lanes):
        c = followed[j0 + i]
        lane = one << np.uint64(i)
        xh = (hx & lane) != 0
        g = 0
        if c >= nr:
            b = gbits
            while b:
                low = b & (~b + one)
                m = _popcount(low - one)
                if hb[m] & lane:
                    g += xh and m > px
                else:
                    g += xh or m > px
                b ^= low
        else:
            # r filled the partition at c: its hits stayed, then its first (c - hits) misses went in, the rest
            # streamed through; x must have gone in, and g counts those of G that did ahead of it
            room = c
            for m in range(nr):
                room -= (hb[m] & lane) != 0
            k = 0
            kept = True
            for m in range(nr):
                h = (hb[m] & lane) != 0
                went_in = not h and k < room
                k += not h
                if m == px:
                    kept = h or went_in
                elif (gbits >> np.uint64(m)) & one:
                    if xh:
                        g += went_in or (h and m > px)
                    else:
                        g += went_in and m > px
            if not kept:
                continue
        if d + g < c:
            bits |= lane
    return bits


@numba.njit(cache=True, _nrt=False)
def _segment_pass(item, seg_offsets, seg_group, part_of, pinned, maxc, followed, from_cap, span, stack, row, seen,
                  slot_of, pos, live, free, size, windowed, lo, end, mask, own, width, hb, frm, point, lookups, pins):
    """Every segment's lookups (its distinct unpinned experts in order of first use) against the cache as the
    segment began, each answered as a window of capacities, counted, and the marks moved.

    A segment's answers are kept in a slot (`width` lookups: lo, end, mask, and the expert `own`) for as long
    as one of its experts has not been used since (`live`): that is the segment r every later lookup of the
    expert reads. Slots are recycled from `free`, so all the pass reads stays a few hundred kilobytes however
    long the trace is (a window per lookup of the trace, with the lookups listed by a pass of their own first,
    was 1.3x slower on the real trace)."""
    never = followed.shape[0]  # windows are kept in followed capacities' indices
    one = np.uint64(1)
    window = stack.owner.shape[1]
    n_free = free.shape[0]
    for s in range(seg_group.shape[0]):
        i0 = seg_offsets[U(s)]
        i1 = seg_offsets[U(s + 1)]
        grp = seg_group[U(s)]
        n_free -= 1
        cur = free[U(n_free)]
        cb = cur * width
        # the segment's lookups, in order of first use
        n = 0
        for i in range(i0, i1):
            x = item[U(i)]
            if seen[U(x)] == s:
                continue
            seen[U(x)] = s
            if pinned[U(x)]:
                pins[grp] += 1
            else:
                own[U(cb + n)] = x
                n += 1
        if n == 0:
            n_free += 1
            continue
        lookups[grp] += n
        p = part_of[own[U(cb)]]  # a segment's experts share a partition
        # every lookup against the stack as the segment began
        for j in range(n):
            x = own[U(cb + j)]
            k = cb + j
            lo[U(k)] = never
            end[U(k)] = never
            mask[U(k)] = 0
            prev = stack.last[U(x)]
            if prev < 0:
                continue  # first use: a miss at every capacity
            r = slot_of[U(x)]
            base = r * width
            px = pos[U(x)]
            nr = size[U(r)]
            # G: r's experts not used since (x apart), as bits of r's lookups
            gbits = live[U(r)] & ~(one << np.uint64(px))
            d = _marks_after(stack.words[U(p)], stack.after[U(p)], prev) - _popcount(gbits >> np.uint64(px))
            first = d + 1
            if first > maxc:
                continue
            g_n = _popcount(gbits)
            top = min(max(d + g_n, nr - 1), maxc)
            # the followed capacities where x's answer depends on r's: first to top, at most 63 of them
            j0 = from_cap[U(first)]
            lanes = from_cap[U(top + 1)] - j0
            if lanes <= 0:
                lo[U(k)] = j0
                end[U(k)] = j0
                continue
            if first >= nr and lanes <= 8 and not windowed[U(r)]:
                # No lane where r streamed, and no window at r: r's misses went in ahead of its hits, each group
                # in reverse order of first use, so with A the experts of G looked up after x at r, B before,
                #   x missed at r: g = misses of A;   x hit at r: g = |A| + misses of B,
                # and x hits at capacity c when g <= c - first: up to 8 lanes at once, a byte a lane, without a
                # branch on the data (a loop over lanes and experts measured 110 ns a lookup, mostly
                # mispredicted branches)
                miss_a = np.uint64(0)
                miss_b = np.uint64(0)
                n_a = np.uint64(0)
                for m in range(nr):
                    below = BYTES_BELOW[min(max(np.int64(end[U(base + m)]) - j0, 0), 8)]  # lanes m missed at
                    in_g = (gbits >> np.uint64(m)) & one
                    in_a = in_g & np.uint64(m > px)
                    miss_a += below * in_a
                    miss_b += below * (in_g ^ in_a)
                    n_a += in_a
                full = (one << np.uint64(lanes)) - one
                hx = full & ~((one << np.uint64(min(max(np.int64(end[U(base + px)]) - j0, 0), 8))) - one)
                limits = span[U(j0)] + np.uint64(followed[U(j0)] - first) * BYTE_ONES  # c - first, lane by lane
                bits = ((_at_most(miss_a, limits) & ~hx) | (_at_most(miss_b + n_a * BYTE_ONES, limits) & hx)) & full
            elif lanes <= 8 and top < 120 and not windowed[U(r)]:
                # Some lanes where r filled the partition (c < |r|): r's hits stayed, then its first c - hits
                # misses went in, in order of first use, the rest streamed through. x must have gone in, and
                #   x missed at r: g = A that went in;   x hit at r: g = G that went in + A that hit,
                # counted as above; a miss went in when fewer misses came before it at r than c - hits
                ones_x = np.uint64(0)
                misses = np.uint64(0)
                for m in range(nr):
                    misses += BYTES_BELOW[min(max(np.int64(end[U(base + m)]) - j0, 0), 8)]
                limits = span[U(j0)] + np.uint64(followed[U(j0)] - first) * BYTE_ONES  # c - first, lane by lane
                room = limits + np.uint64(first) * BYTE_ONES + misses - np.uint64(nr) * BYTE_ONES
                rank = np.uint64(0)
                went_a = np.uint64(0)
                went_g = np.uint64(0)
                hit_a = np.uint64(0)
                for m in range(nr):
                    miss = BYTES_BELOW[min(max(np.int64(end[U(base + m)]) - j0, 0), 8)]
                    went = miss & ((((room | BYTE_TOPS) - (rank + BYTE_ONES)) & BYTE_TOPS) >> np.uint64(7))
                    rank += miss
                    in_g = (gbits >> np.uint64(m)) & one
                    in_a = in_g & np.uint64(m > px)
                    went_a += went * in_a
                    went_g += went * in_g
                    hit_a += (miss ^ BYTE_ONES) * in_a
                    ones_x |= ((miss ^ BYTE_ONES) | went) * np.uint64(m == px)  # x stayed or went in
                full = (one << np.uint64(lanes)) - one
                kept = ((ones_x & BYTE_ONES) * GATHER) >> np.uint64(56)
                hx = full & ~((one << np.uint64(min(max(np.int64(end[U(base + px)]) - j0, 0), 8))) - one)
                bits = ((_at_most(went_a, limits) & ~hx) | (_at_most(went_g + hit_a, limits) & hx)) & kept & full
            else:
                bits = _lanes(lo, end, mask, base, nr, px, gbits, d, followed, j0, lanes, hb)
            # hits at the top of the lanes fold into "hit from here on"; misses at the bottom move lo up
            full = ALL >> np.uint64(64 - lanes)
            n_bits = 64 - _leading_zeros(~bits & full)  # up to the highest miss
            bits &= ~(ALL << np.uint64(n_bits)) if n_bits < 64 else ALL
            skip = min(_popcount((bits & (~bits + one)) - one), n_bits)  # the misses below the lowest hit
            lo[U(k)] = j0 + skip
            end[U(k)] = j0 + n_bits
            mask[U(k)] = bits >> np.uint64(skip)
        size[U(cur)] = n
        windows = np.uint64(0)
        for k in range(cb, cb + n):
            windows |= mask[U(k)]
        windowed[U(cur)] = windows != 0
        # count, then move the segment's marks, in order of first use
        for j in range(n):
            k = cb + j
            x = own[U(k)]
            start = lo[U(k)]
            if start < never:
                stop = end[U(k)]
                if stop < never:
                    frm[U(grp), U(stop)] += 1
                bits = mask[U(k)]
                while bits:
                    low = bits & (~bits + one)
                    point[U(grp), U(start + _popcount(low - one))] += 1
                    bits ^= low
            t = stack.clock[U(p)]
            if t == window:
                _renumber(stack, p)
                t = stack.clock[U(p)]
            prev = stack.last[U(x)]
            _move(row, stack.words[U(p)], stack.after[U(p)], stack.owner[U(p)], stack.last, t, x)
            stack.clock[U(p)] = t + 1
            if prev >= 0:
                r = slot_of[U(x)]
                live[U(r)] &= ~(one << np.uint64(pos[U(x)]))
                if live[U(r)] == 0:
                    free[U(n_free)] = r
                    n_free += 1
            slot_of[U(x)] = cur
            pos[U(x)] = j
        live[U(cur)] = ALL >> np.uint64(64 - n)


def segment_lookups(stream) -> np.ndarray:
    """int64 per segment: its distinct experts, what segment accounting looks up."""
    out = np.zeros(len(stream.seg_layer), np.int64)
    _distinct_per_segment(stream.item, stream.seg_offsets, np.zeros(stream.num_layers * stream.num_experts, np.uint8),
                          out)
    return out


@numba.njit(cache=True, _nrt=False)
def _distinct_per_segment(item, seg_offsets, seen, out):
    for s in range(seg_offsets.shape[0] - 1):
        n = 0
        for i in range(seg_offsets[s], seg_offsets[s + 1]):
            x = item[i]
            n += seen[x] == 0
            seen[x] = 1
        for i in range(seg_offsets[s], seg_offsets[s + 1]):
            seen[item[i]] = 0
        out[s] = n
