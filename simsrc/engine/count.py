"""Count mode: hits and misses of a plain cache, transfers instant.

On the same access stream this is exactly a textbook cache simulator (and
libCacheSim): look the expert up, on a miss evict the policy's victim if the
partition is full, insert. No expert is ever busy. A prefetch plan, if given,
inserts each segment's predicted experts right after that segment's accesses
(so a prediction for layer l made at layer l-1 is in place when l routes).
"""
from typing import NamedTuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from .bundles import Cache, PrefetchPlan, Stream
from .experts import (BUSY, NUM_COUNTERS, PF_UNUSED, PF_USED, PINNED, RESIDENT, TOLD_HIT, TOLD_INSERT, count_harmful,
                      count_unused, evict, evictable, insert_plan, none_evictable, place_at_start,
                      tell_in_routing_order)
from .ops import (compiled_loop, decide, decides, freed_enough, on_hit, on_insert, partition, partition_map, size_of,
                  take_room, victim)
from .tiers import host_lookup
from .routing import (FETCH, HOST, NUM_ACTIONS, SUBSTITUTE, add_weight, count_action, mass_of, pick_substitutes,
                      weight_of)


class CountWork(NamedTuple):
    """The count loop's state and outputs (allocated by count_replay: the loop allocates nothing)."""
    flags: np.ndarray      # uint8 per item (experts.py)
    evictor: np.ndarray    # int32 per item: the prefetch that pushed it out
    free: np.ndarray       # int64 per partition: capacity not yet taken (experts, or bytes with sizes)
    hits_of: np.ndarray    # int64 per item
    misses_of: np.ndarray  # int64 per item
    seg_hits: np.ndarray   # int32 per segment (segment accounting; access accounting derives it from `record`)
    seg_misses: np.ndarray  # int32 per segment (segment accounting)
    c: np.ndarray          # float64 counters (experts.py)
    acted: np.ndarray      # int64 [MoE layer, action]: misses each action took (segment accounting)


class SegmentWork(NamedTuple):
    """Per item unless said: what segment accounting keeps of the segment it is in."""
    in_seg: np.ndarray     # int64: the item's entry in the segment's arrays (read only while it is BUSY)
    seg_items: np.ndarray  # int32: the segment's distinct experts
    seg_last: np.ndarray   # int64: each one's last access in the segment
    seg_miss: np.ndarray   # int64: the entries that missed, in order
    seg_tok: np.ndarray    # int64: tokens routed to each (with an action rule)
    seg_wmax: np.ndarray   # float64: its largest routing weight (with Stream.weight)
    seg_wsum: np.ndarray   # float64: its routing weights summed
    pick: np.ndarray       # int32 per access of the longest segment: the substitute picked for it (routing.py)
    pick_seg: np.ndarray   # int64: the segment it was picked in


def count_replay(stream: Stream, cache: Cache, plan: PrefetchPlan, state, num_layers: int, record=None,
                 accounting: str = "access", rule=None, tiers=None, segment_order: str = "hits-first"):
    """Returns (hits per layer, misses per layer, counters, hits per segment, misses per segment, misses each
    action took per layer); experts.py has the counters. Access accounting gives the per-segment counts only
    when asked to record (None otherwise).

    accounting 'access': every access looked up in stream order (a plain cache simulator, = libCacheSim);
    'segment': each (step, layer)'s distinct experts looked up together, as the layer runs (_segment_loop).
    record (access accounting): a uint8 array as long as the stream, told which accesses hit (1); None
    records nothing (the loop is then compiled without the store, so the plain replay pays nothing for it).
    rule (segment accounting): an action rule's state (moesim.actions) that decides each miss, as in timed
    mode but without a clock (fetch_done and host_done are 0); None fetches every miss. An expert computed
    on the host, skipped, substituted or fetched as a low-bit copy is not inserted.
    tiers (engine.tiers.Tiers): a host tier that sees every expert the GPU fetches (its demand misses and
    prefetches, and experts computed on the host), in order; None: no tiers.
    segment_order (segment accounting): "hits-first" tells the policy a segment's hits, then its inserted
    misses, each at first use; "routing" tells each at its last use, in that order (experts.tell_in_routing_order).
    """
    if rule is not None and accounting != "segment":
        raise ValueError("an action rule decides per (step, layer) segment: it needs segment accounting")
    n = len(cache.pinned)
    # segments that prefetch, and the access after which their plan goes in
    pf_segs = np.flatnonzero(np.diff(plan.offsets)) if len(plan.item) else np.zeros(0, np.int64)
    cache = cache._replace(part_of=partition_map(cache.part_of, cache.part_capacity))
    n_segs = len(stream.seg_layer)
    work = CountWork(np.zeros(n, np.uint8), np.full(n, -1, np.int32), cache.part_capacity.copy(),
                     np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n_segs, np.int32),
                     np.zeros(n_segs if accounting == "segment" else 0, np.int32), np.zeros(NUM_COUNTERS, np.float64),
                     np.zeros((num_layers, NUM_ACTIONS), np.int64))
    if accounting == "segment":
        weighed = n if stream.weight is not None else 0
        longest = int(np.diff(stream.seg_offsets).max()) if stream.ranked is not None and n_segs else 0
        seg = SegmentWork(np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int64),
                          np.empty(n if rule is not None else 0, np.int64), np.empty(weighed, np.float64),
                          np.empty(weighed, np.float64), np.empty(longest, np.int32), np.full(longest, -1, np.int64))
        told = np.zeros(n, np.int8) if segment_order == "routing" else None
        _segment_loop(stream, cache, plan, state, rule, work, seg, tiers, told)
    else:
        _count_loop(stream.item, stream.seg_offsets[pf_segs + 1] - 1, pf_segs, cache, plan, state, work, record,
                    tiers)
        if record is None:
            return (work.hits_of.reshape(num_layers, -1).sum(axis=1),
                    work.misses_of.reshape(num_layers, -1).sum(axis=1), work.c, None, None, work.acted)
        if n_segs:
            work.seg_hits[:] = np.add.reduceat(record, stream.seg_offsets[:-1], dtype=np.int32)
    # items are numbered layer-major (layer * experts + expert)
    seg_misses = work.seg_misses if accounting == "segment" else np.diff(stream.seg_offsets) - work.seg_hits
    return (work.hits_of.reshape(num_layers, -1).sum(axis=1), work.misses_of.reshape(num_layers, -1).sum(axis=1),
            work.c, work.seg_hits, seg_misses, work.acted)


def mark_hit(record, i):
    record[i] = 1


@overload(mark_hit)
def _mark_hit(record, i):
    if isinstance(record, types.NoneType):
        return lambda record, i: None
    return lambda record, i: mark_hit_store(record, i)


@njit(cache=True, _nrt=False)
def mark_hit_store(record, i):
    record[i] = 1


@compiled_loop
def _count_loop(item, pf_at, pf_segs, cache, plan, state, work, record, tiers):
    part_of, part_capacity, pinned, warm, size = cache
    flags, evictor, free, hits_of, misses_of, seg_hits, seg_misses, c, acted = work
    place_at_start(cache, flags, free, state)
    # the stream in chunks that end where a segment's prefetch plan goes in (one chunk without a plan)
    start = 0
    for k in range(pf_segs.shape[0] + 1):
        end = pf_at[k] + 1 if k < pf_segs.shape[0] else item.shape[0]
        for i in range(start, end):
            x = np.uint32(item[np.uint64(i)])  # unsigned indices: numba then skips its check for a negative index
            f = flags[x]
            if f & RESIDENT:
                hits_of[x] += 1
                mark_hit(record, i)
                if f != RESIDENT:
                    if f & PF_UNUSED:
                        flags[x] = f ^ PF_UNUSED
                        c[PF_USED] += 1
                    if f & PINNED:
                        continue
                on_hit(state, x, partition(part_of, x), i)
                continue
            misses_of[x] += 1
            count_harmful(x, flags, evictor, c)
            host_lookup(tiers, x, i)
            p = partition(part_of, x)
            need = size_of(size, x)
            if free[p] < need:
                if part_capacity[p] < need:
                    flags[x] = 0
                    continue  # x can never be cached in this partition: every access streams
                while True:  # evict until x fits (one slot per expert: one eviction)
                    v = victim(state, p, None, i)
                    if not evictable(v, p, part_of, flags, c):
                        return
                    evict(v, p, flags, c, state)
                    if freed_enough(size, free, p, v, need):
                        break
                take_room(size, free, p, need)
            else:
                free[p] -= need
            flags[x] = RESIDENT
            on_insert(state, x, p, i)
        start = end
        if k == pf_segs.shape[0]:
            break
        clock = end - 1
        s = pf_segs[k]
        if not insert_plan(s, clock, plan, cache, None, flags, evictor, free, c, state, tiers):
            return
    count_unused(flags, c)


@njit(cache=True, _nrt=False, inline="always")  # inlined into the loop (which carries the sources digest)
def _take_hit(x, f, t, a, flags, hits_of, c, state, part_of, told):
    """x (state f) hits at stream position t: a prefetch of it is used, and the policy is told now, or, in
    routing order (told), as the segment's entry a at the segment's end."""
    hits_of[x] += 1
    if f & PF_UNUSED:
        flags[x] = f ^ PF_UNUSED
        c[PF_USED] += 1
    if not f & PINNED:
        if told is not None:
            told[a] = TOLD_HIT
        else:
            on_hit(state, x, partition(part_of, x), t)


SEEN = 32  # a state bit of the segment loop's own (experts.py has the others): seen in this segment's gather


@compiled_loop
def _segment_loop(stream, cache, plan, state, rule, work, seg, tiers, told):
    """Count mode by (step, layer) segment, the way a layer runs: its distinct experts are looked up against
    the cache as it was when the segment began (each one lookup, however many of its tokens use it); the
    resident ones are in use, so a miss evicts one of the others; when every resident of the partition is in
    use, the missing expert streams through (loaded for this layer, not kept). Then the segment's prefetch
    plan goes in, as in _count_loop. The timed loop follows the same rule, and takes the same actions.

    BUSY marks every expert the segment routes to, resident or not, from the start: it is what keeps a hit
    from being evicted (a missing expert marked BUSY is harmless: victim searches look at residents only).
    A segment whose accesses name distinct experts (one token's: the usual count-mode stream, one token a
    step) is walked straight from the stream, each expert's first access its last; any other is gathered
    into its distinct experts first, each told at its last access, and only an action rule needs that
    gather for every segment (it counts each expert's tokens). Both make the same calls in the same order.
    With told (segment order "routing") every segment is gathered, and the policy's on_hit and on_insert
    calls wait for the end of the segment's misses, to be made in routing order (tell_in_routing_order)."""
    item, seg_offsets, seg_layer = stream.item, stream.seg_offsets, stream.seg_layer
    part_of, part_capacity, pinned, warm, size = cache
    flags, evictor, free, hits_of, misses_of, seg_hits, seg_misses, c, acted = work
    in_seg, seg_items, seg_last, seg_tok, seg_miss = seg.in_seg, seg.seg_items, seg.seg_last, seg.seg_tok, seg.seg_miss
    place_at_start(cache, flags, free, state)
    for s in range(seg_layer.shape[0]):
        lo = seg_offsets[s]
        hi = seg_offsets[s + 1]
        distinct = False
        if not decides(rule) and told is None:
            distinct = True
            for i in range(lo, hi):
                x = np.uint32(item[np.uint64(i)])
                f = flags[x]
                distinct &= (f & BUSY) == 0
                flags[x] = f | BUSY
        # the misses are listed by their stream position (the one the policy is told), without a branch: hit
        # or miss is a coin flip, and the miss pass then tests nothing
        n_miss = 0
        if distinct:
            n_seg = hi - lo
            for i in range(lo, hi):
                x = np.uint32(item[np.uint64(i)])
                f = flags[x]
                seg_miss[n_miss] = i
                n_miss += (f & RESIDENT) == 0
                if f & RESIDENT:
                    _take_hit(x, f, i, 0, flags, hits_of, c, state, part_of, None)
        else:
            n_seg = 0
            for i in range(lo, hi):
                x = np.uint32(item[np.uint64(i)])
                f = flags[x]
                if f & SEEN:
                    ax = in_seg[x]
                else:
                    flags[x] = f | SEEN | BUSY
                    ax = n_seg
                    in_seg[x] = ax
                    seg_items[ax] = x
                    n_seg += 1
                    if decides(rule):
                        seg_tok[ax] = 0
                    if told is not None:
                        told[ax] = 0
                seg_last[ax] = i  # the policy sees the segment at its last use of x (Belady: next use after)
                if decides(rule):
                    seg_tok[ax] += 1
                    add_weight(stream.weight, i, ax, seg_tok[ax] == 1, seg.seg_wmax, seg.seg_wsum)
            for a in range(n_seg):
                x = np.uint32(seg_items[a])
                f = flags[x]
                seg_miss[n_miss] = seg_last[a]
                n_miss += (f & RESIDENT) == 0
                if f & RESIDENT:
                    _take_hit(x, f, seg_last[a], a, flags, hits_of, c, state, part_of, told)
        seg_hits[s] = n_seg - n_miss
        seg_misses[s] = n_miss
        for j in range(n_miss):
            t = seg_miss[j]
            x = np.uint32(item[np.uint64(t)])
            misses_of[x] += 1
            count_harmful(x, flags, evictor, c)
            if decides(rule):
                a = in_seg[x]
                # no clock: a rule that weighs times is refused before the replay (moesim.replay)
                act = decide(rule, x, seg_tok[a], weight_of(stream.weight, seg.seg_wmax, a), 0.0, 0.0)
                if act == SUBSTITUTE and not pick_substitutes(stream.ranked, x, s, lo, hi, item, flags, seg.pick,
                                                              seg.pick_seg):
                    act = FETCH
                if act != FETCH:
                    # computed on the host, a low-bit copy used once, skipped or substituted: not inserted
                    acted[seg_layer[s], act] += 1
                    if act != HOST:
                        count_action(c, act, seg_tok[a], mass_of(stream.weight, seg.seg_wsum, a))
                    else:
                        host_lookup(tiers, x, t)  # computed on the host: it must be in host memory
                    if act == SUBSTITUTE:
                        for i2 in range(lo, hi):
                            if item[i2] != x:
                                continue
                            y = np.uint32(seg.pick[i2 - lo])
                            fy = flags[y]
                            if not fy & SEEN:  # in use for the layer from now on; the policy is not told
                                seg_items[n_seg] = y
                                if told is not None:
                                    told[n_seg] = 0
                                n_seg += 1
                                if fy & PF_UNUSED:
                                    fy ^= PF_UNUSED
                                    c[PF_USED] += 1
                                flags[y] = fy | SEEN | BUSY
                    continue
            host_lookup(tiers, x, t)
            p = partition(part_of, x)
            need = size_of(size, x)
            if free[p] < need:
                if part_capacity[p] < need:
                    continue
                fits = True
                while True:  # evict until x fits (one slot per expert: one eviction)
                    v = victim(state, p, flags, t)
                    if v < 0:
                        if not none_evictable(p, part_of, flags, c):
                            return
                        fits = False  # the segment fills its partition: x streams through
                        break
                    if not evictable(v, p, part_of, flags, c):
                        return
                    evict(v, p, flags, c, state)
                    if freed_enough(size, free, p, v, need):
                        break
                if not fits:
                    continue  # with sizes, what it evicted stays out: the room is free for the next
                take_room(size, free, p, need)
            else:
                free[p] -= need
            flags[x] = RESIDENT | BUSY | (flags[x] & SEEN)
            if told is not None:
                told[in_seg[x]] = TOLD_INSERT
            else:
                on_insert(state, x, p, t)
        if told is not None:
            tell_in_routing_order(state, part_of, seg_items, seg_last, told, n_seg, seg_miss)
        if distinct:
            for i in range(lo, hi):
                x = np.uint32(item[np.uint64(i)])
                flags[x] &= ~BUSY
        else:
            for a in range(n_seg):
                x = np.uint32(seg_items[a])
                flags[x] &= ~(BUSY | SEEN)
        # (nothing is busy now: the plan's victim searches are count mode's plain ones)
        if plan.offsets[s] < plan.offsets[s + 1]:
            if not insert_plan(s, hi - 1, plan, cache, None, flags, evictor, free, c, state, tiers):
                return
    count_unused(flags, c)
