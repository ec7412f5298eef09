"""What both replay modes keep per expert, the counters they return, and eviction.

An expert's state is one byte, so the hot loops read one array per access.
BUSY is the lowest bit so that the same bytes serve as the `busy` argument of
a policy's victim search (policies test it with `_busy.is_busy`).
"""
from numba import njit

from .ops import compiled_loop, freed_enough, on_evict, on_hit, on_insert, partition, size_of, take_room, victim
from .tiers import host_lookup

BUSY, RESIDENT, PINNED, PF_UNUSED, PF_VICTIM = 1, 2, 4, 8, 16
# BUSY: in use by the current layer, or in flight (segment accounting and timed mode)
# PINNED: a user pin, outside the policy and its capacity
# PF_VICTIM: pushed out by a prefetch that `evictor` names

# indices of the counters array both modes return
PF_ISSUED, PF_USED, PF_LATE, PF_WASTED, PF_HARMFUL, PF_CANCELLED, ERROR, BAD_VICTIM = range(8)
# timed mode's time split and actions: GPU kernel seconds, host seconds, miss bookkeeping seconds, experts
# computed on the host
GPU_S, HOST_S, OVERHEAD_S, HOST_COMPUTED = range(8, 12)
# the other actions (moesim.actions): tokens served by a low-bit copy, skipped, or moved to a substitute, and
# the routing weight those tokens gave the missing expert (each action's experts are counted per layer)
LOWBIT_TOKENS, LOWBIT_WEIGHT, SKIP_TOKENS, SKIP_WEIGHT, SUB_TOKENS, SUB_WEIGHT = range(12, 18)
NUM_COUNTERS = 18
ERR_VICTIM = 2.0    # the policy's victim() broke its contract; BAD_VICTIM holds what it returned


@njit(cache=True, _nrt=False)
def count_harmful(x, flags, evictor, c):
    """x misses: if a prefetch pushed it out and is still unused, that prefetch was harmful."""
    if flags[x] & PF_VICTIM and flags[evictor[x]] & PF_UNUSED:
        c[PF_HARMFUL] += 1


@compiled_loop  # it inlines the policy's on_evict: cached under the sources digest, like the loops
def evict(v, p, flags, c, state):
    """v leaves the cache; a prefetch of it never used was wasted."""
    if flags[v] & PF_UNUSED:
        c[PF_WASTED] += 1
    on_evict(state, v, p)
    flags[v] = 0


TOLD_HIT, TOLD_INSERT = 1, 2  # what a segment's expert is told to the policy as, in routing order (0: nothing)


@njit(cache=True, _nrt=False, inline="always")
def insert_by(order, m, a, key):
    """order[:m] holds entries sorted by key; put entry a in its place (insertion sort: a segment has few)."""
    b = m
    while b > 0 and key[order[b - 1]] > key[a]:
        order[b] = order[b - 1]
        b -= 1
    order[b] = a


@compiled_loop  # it inlines the policy's on_hit and on_insert: cached under the sources digest, like the loops
def tell_in_routing_order(state, part_of, seg_items, seg_last, told, n_seg, order):
    """The segment's hits and inserted misses, told to the policy at their last use in the segment in the
    order of those uses (segment order "routing"); the loops held the calls back until the segment's misses
    were placed. Victims do not change: the segment's experts are busy while it runs; what changes is the
    order the policy sees them in (LRU: which of them is least recent afterwards). order: scratch, >= n_seg."""
    m = 0
    for a in range(n_seg):
        if told[a] != 0:
            insert_by(order, m, a, seg_last)
            m += 1
    for j in range(m):
        a = order[j]
        x = seg_items[a]
        if told[a] == TOLD_HIT:
            on_hit(state, x, partition(part_of, x), seg_last[a])
        else:
            on_insert(state, x, partition(part_of, x), seg_last[a])


@compiled_loop
def evict_for_prefetch(v, x, p, flags, evictor, c, state):
    """The prefetch of x takes v's place: remember it, to tell later whether it was harmful."""
    evict(v, p, flags, c, state)
    flags[v] = PF_VICTIM
    evictor[v] = x


@njit(cache=True, _nrt=False)
def count_unused(flags, c):
    """At the end of the replay, prefetched experts never used were wasted too."""
    for x in range(flags.shape[0]):
        if flags[x] & PF_UNUSED:
            c[PF_WASTED] += 1


@njit(cache=True, _nrt=False)
def evictable(v, p, part_of, flags, c):
    """Whether the policy's victim v may leave partition p: resident there, not pinned, not busy.

    Anything else breaks the policy contract (policies/__init__.py); the loop stops and replay() names the
    policy, instead of counting hits of a cache that no longer holds what it says.
    """
    if 0 <= v < flags.shape[0] and flags[v] & RESIDENT and not flags[v] & (PINNED | BUSY) and \
            partition(part_of, v) == p:
        return True
    c[ERROR] = ERR_VICTIM
    c[BAD_VICTIM] = v
    return False


@njit(cache=True, _nrt=False)
def none_evictable(p, part_of, flags, c):
    """A victim search found nothing: true only if every resident of p is pinned or busy (else a broken policy)."""
    for x in range(flags.shape[0]):
        if flags[x] & RESIDENT and not flags[x] & (PINNED | BUSY) and partition(part_of, x) == p:
            c[ERROR] = ERR_VICTIM
            c[BAD_VICTIM] = -1
            return False
    return True


@compiled_loop  # it inlines the policy's on_insert: cached under the sources digest, like the loops
def place_at_start(cache, flags, free, state):
    """Before the first access: pins resident outside the policy and its capacity; the policy's warm experts
    resident in their partitions (what every loop starts from)."""
    part_of, part_capacity, pinned, warm, size = cache
    for x in range(flags.shape[0]):
        if pinned[x]:
            flags[x] = RESIDENT | PINNED
    for j in range(warm.shape[0]):
        x = warm[j]
        p = partition(part_of, x)
        flags[x] = RESIDENT
        free[p] -= size_of(size, x)
        on_insert(state, x, p, -1)


@compiled_loop  # it inlines the policy's victim and on_insert
def insert_plan(s, clock, plan, cache, busy, flags, evictor, free, c, state, tiers=None):
    """Count mode: segment s's prefetch plan goes in at once, after its accesses (clock: the last of them);
    each prefetched expert passes through the host tier (tiers.py) when there is one.
    Returns False when the policy's victim broke its contract (the loop then stops)."""
    part_of, part_capacity, pinned, warm, size = cache
    for j in range(plan.offsets[s], plan.offsets[s + 1]):
        x = plan.item[j]
        p = partition(part_of, x)
        need = size_of(size, x)
        if flags[x] & RESIDENT or part_capacity[p] < need:
            continue
        host_lookup(tiers, x, clock)
        if free[p] < need:
            while True:  # evict until x fits (one slot per expert: one eviction)
                v = victim(state, p, busy, clock)
                if not evictable(v, p, part_of, flags, c):
                    return False
                evict_for_prefetch(v, x, p, flags, evictor, c, state)
                if freed_enough(size, free, p, v, need):
                    break
            take_room(size, free, p, need)
        else:
            free[p] -= need
        flags[x] = RESIDENT | PF_UNUSED
        on_insert(state, x, p, clock)
        c[PF_ISSUED] += 1
    return True
