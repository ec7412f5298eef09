"""Memory tiers: GPU <- host memory <- storage.

With a host tier, experts live in storage (an NVMe drive, a phone's flash) and a host-memory cache of its own
capacity and policy holds some of them. Every expert the GPU fetches passes through it: a GPU miss looks the
expert up in the host tier; a host hit is copied over the host link as without tiers; a host miss is first
read from storage over the storage link, and its host -> GPU copy cannot start before that read ends. The
host tier is inclusive of what passes through it: an expert read from storage is kept there (the host policy
evicts to make room) whatever the GPU later does with its copy, and the GPU's evictions do not touch it (no
back-invalidation, no demotion). So the host tier sees the GPU's fetch stream in order, which is what count
mode replays too. Computing an expert on the host (the host action) needs it in host memory, so it looks it
up the same way; a low-bit copy (the lowbit action) is kept in host memory beside the tier and never read
from storage; skipped and substituted experts are read from nowhere.

Prefetches go the same path, but their lookup (and read) comes when the prefetch is planned -- at its issuing
segment's routing, if its expert is not on the GPU then, it is within the step's budget and fits -- not when
its host -> GPU copy starts: a runtime that offloads to storage reads ahead into host memory as soon as it
decides to prefetch, and copies to the GPU once a copy engine is free and the read has ended. A read once
issued stays issued: a prefetch later dropped (its expert came in meanwhile), cancelled (its layer routed
first) or held (no room on the GPU) leaves its expert in the host tier, as the read filled host memory
whatever the GPU then did. A prefetch whose expert was on the GPU when planned but has left it by the time its
copy starts is looked up then, as a demand miss is.

The storage link is scheduled as the host link is (links.py): `storage_lanes` reads under way at once, each
paying `storage_latency`, their bytes in `storage_stripes` parts on the earliest free of `storage_lanes`
pipes of storage_bandwidth / storage_lanes. The non-expert weights that do not fit in host memory are re-read
every forward pass: each segment's share is one synchronous read on that link before its dense part (page
faults, on the critical path), queued behind the expert reads under way.

The loops call the hooks below with `tiers` None when there are no tiers: each hook then compiles to nothing
(or returns its time argument), so a replay without tiers runs the code it ran before.
"""
from typing import NamedTuple

import numpy as np
from numba import types
from numba.extending import overload

from .bundles import Cache, Link
from .links import _arrival, _transfer
from .ops import compiled_loop, freed_enough, on_evict, on_hit, on_insert, seconds_of, size_of, take_room, victim

IN_HOST, HOST_PINNED = 1, 2  # the host tier's own flags, per item
# its counters: lookups that hit and missed (each miss one storage read), seconds the GPU waited while the
# expert it waited for was still being read from storage, seconds of non-expert page-ins; and a broken policy
HOST_HITS, HOST_MISSES, STORAGE_STALL_S, PAGING_S, TIER_ERROR, TIER_BAD_VICTIM = range(6)
NUM_TIER_COUNTERS = 6


class Tiers(NamedTuple):
    """The host tier and the storage link (built by moesim.replay; the loops allocate nothing)."""
    cache: Cache             # the host tier: one partition (part_of None), its capacity (slots, or bytes with
    #                          size), the host policy's pins and warm experts
    state: object            # the host policy's state
    flags: np.ndarray        # uint8 per item: IN_HOST, HOST_PINNED
    free: np.ndarray         # int64 [1]: capacity not yet taken
    link: Link               # storage -> host: transfer_s on one lane, latency, reads under way, lanes, stripes
    eng_free: np.ndarray     # float64 per read under way: when it is free
    pipe: np.ndarray         # float64 per lane: when it is free; then as many scratch entries
    avail: np.ndarray        # float64 per item: when its host copy is (or will be) there
    reads_of: np.ndarray     # int64 per item: storage reads
    seg_page_s: np.ndarray   # float64 per segment: its non-expert page-in on one lane (0: nothing to page)
    c: np.ndarray            # float64 counters (above)
    pf_here: np.ndarray      # float64 per planned prefetch: when the host copy its read brings is there (-1: no
    #                          read when planned); sized by the timed replay


def new_tiers(cache: Cache, state, link: Link, seg_page_s: np.ndarray) -> Tiers:
    n = len(cache.pinned)
    flags = np.where(cache.pinned.astype(bool), IN_HOST | HOST_PINNED, 0).astype(np.uint8)
    free = np.array([int(cache.part_capacity[0])], np.int64)
    tiers = Tiers(cache, state, flags, free, link, np.zeros(max(link.copy_engines, 1), np.float64),
                  np.zeros(2 * max(link.lanes, 1), np.float64), np.zeros(n, np.float64), np.zeros(n, np.int64),
                  np.ascontiguousarray(seg_page_s, np.float64), np.zeros(NUM_TIER_COUNTERS, np.float64),
                  np.zeros(0, np.float64))
    _place_warm(tiers)
    return tiers


@compiled_loop
def _place_warm(tiers):
    """The host policy's warm experts (a static policy's favourites) are in host memory at the start."""
    warm, size = tiers.cache.warm, tiers.cache.size
    for j in range(warm.shape[0]):
        x = warm[j]
        tiers.flags[x] = IN_HOST
        tiers.free[0] -= size_of(size, x)
        on_insert(tiers.state, x, 0, -1)


@compiled_loop  # it inlines the host policy's operations: cached under the sources digest, like the loops
def _lookup(tiers, x, t):
    """Look x up in the host tier at stream position t; on a miss, x is read from storage and kept (the
    policy's victims leave) unless it cannot fit at all. Returns whether it was a hit."""
    flags, c, state, size = tiers.flags, tiers.c, tiers.state, tiers.cache.size
    f = flags[x]
    if f & IN_HOST:
        c[HOST_HITS] += 1
        if not f & HOST_PINNED:
            on_hit(state, x, 0, t)
        return True
    c[HOST_MISSES] += 1
    tiers.reads_of[x] += 1
    need = size_of(size, x)
    if tiers.cache.part_capacity[0] < need:
        return False  # a host tier too small for x: it streams through host memory
    if tiers.free[0] < need:
        while True:  # evict until x fits (one slot per expert: one eviction)
            v = victim(state, 0, None, t)  # nothing in the host tier is ever busy
            if not (0 <= v < flags.shape[0] and flags[v] == IN_HOST):
                c[TIER_ERROR] = 1.0
                c[TIER_BAD_VICTIM] = v
                return False
            on_evict(state, v, 0)
            flags[v] = 0
            if freed_enough(size, tiers.free, 0, v, need):
                break
        take_room(size, tiers.free, 0, need)
    else:
        tiers.free[0] -= need
    flags[x] = IN_HOST
    on_insert(state, x, 0, t)
    return False


@compiled_loop
def _fetch(tiers, x, t, clock):
    """x is needed from host memory at time t: looked up (and on a miss read from storage, issued at t);
    returns when its host copy is there."""
    if _lookup(tiers, x, clock):
        return max(t, tiers.avail[x])  # a read of x still under way is waited for
    link = tiers.link
    done = _transfer(t, tiers.eng_free, tiers.pipe, link.latency_s, seconds_of(link.transfer_s, x), link.stripes)
    tiers.avail[x] = done
    return done


@compiled_loop
def _peek(tiers, x, t):
    """When x's host copy would be there if needed at t, changing nothing (what an action rule weighs)."""
    if tiers.flags[x] & IN_HOST:
        return max(t, tiers.avail[x])
    link = tiers.link
    return _arrival(t, tiers.eng_free, tiers.pipe, link.latency_s, seconds_of(link.transfer_s, x), link.stripes)


@compiled_loop
def _page_in(tiers, s, t):
    seconds = tiers.seg_page_s[s]
    if seconds <= 0.0:
        return t
    done = _transfer(t, tiers.eng_free, tiers.pipe, tiers.link.latency_s, seconds, 1)
    tiers.c[PAGING_S] += done - t
    return done


# The hooks the loops call. Plain Python here (NUMBA_DISABLE_JIT=1); compiled code takes the overloads below,
# which for tiers of None are nothing.
def host_lookup(tiers, x, t):
    """Count mode: the GPU fetches x (a demand miss or a prefetch): the host tier sees it."""
    if tiers is not None:
        _lookup(tiers, x, t)


def host_fetch(tiers, x, t, clock):
    """Timed mode: when x's host copy is there for a copy or host compute wanted at t (t without tiers)."""
    return t if tiers is None else _fetch(tiers, x, t, clock)


def host_peek(tiers, x, t):
    return t if tiers is None else _peek(tiers, x, t)


def prefetch_read(tiers, q, x, t, clock):
    """Timed mode: planned prefetch q of x, not on the GPU when planned at t, reads ahead into host memory."""
    if tiers is not None:
        tiers.pf_here[q] = _fetch(tiers, x, t, clock)


def prefetch_here(tiers, q, x, t, clock):
    """Timed mode: when prefetch q's host copy of x is there for its copy starting at t: its read ahead's, or
    (none when planned) looked up now."""
    if tiers is None:
        return t
    return max(t, tiers.pf_here[q]) if tiers.pf_here[q] >= 0.0 else _fetch(tiers, x, t, clock)


def page_in(tiers, s, t):
    """Segment s's non-expert weights that do not fit in host memory, read from storage from t; returns when
    its dense part may start."""
    return t if tiers is None else _page_in(tiers, s, t)


def storage_wait(tiers, x, t0, t1):
    """The GPU waited from t0 to t1 for x: the part of it before x's storage read ended is storage stall."""
    if tiers is not None:
        tiers.c[STORAGE_STALL_S] += max(0.0, min(tiers.avail[x], t1) - t0)


@overload(host_lookup)
def _host_lookup(tiers, x, t):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, x, t: None

    def lookup(tiers, x, t):
        _lookup(tiers, x, t)
    return lookup


@overload(host_fetch)
def _host_fetch(tiers, x, t, clock):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, x, t, clock: t
    return lambda tiers, x, t, clock: _fetch(tiers, x, t, clock)


@overload(host_peek)
def _host_peek(tiers, x, t):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, x, t: t
    return lambda tiers, x, t: _peek(tiers, x, t)


@overload(prefetch_read)
def _prefetch_read(tiers, q, x, t, clock):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, q, x, t, clock: None

    def read(tiers, q, x, t, clock):
        tiers.pf_here[q] = _fetch(tiers, x, t, clock)
    return read


@overload(prefetch_here)
def _prefetch_here(tiers, q, x, t, clock):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, q, x, t, clock: t

    def here(tiers, q, x, t, clock):
        return max(t, tiers.pf_here[q]) if tiers.pf_here[q] >= 0.0 else _fetch(tiers, x, t, clock)
    return here


@overload(page_in)
def _page_in_hook(tiers, s, t):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, s, t: t
    return lambda tiers, s, t: _page_in(tiers, s, t)


@overload(storage_wait)
def _storage_wait(tiers, x, t0, t1):
    if isinstance(tiers, types.NoneType):
        return lambda tiers, x, t0, t1: None

    def wait(tiers, x, t0, t1):
        tiers.c[STORAGE_STALL_S] += max(0.0, min(tiers.avail[x], t1) - t0)
    return wait
