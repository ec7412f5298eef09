"""Brute-force, obviously-correct Python cache simulators: the independent reference for count mode.

Each takes the access stream (item ids), each item's partition and each
partition's capacity, and returns hits per access (a list of bools). Slow on
purpose: plain dicts and linear scans, written from the policies' definitions.
"""
from __future__ import annotations


def replay_reference(items, part_of, capacity, policy: str, seed: int = 0) -> list[bool]:
    cached: dict[int, set] = {p: set() for p in range(len(capacity))}
    last: dict[int, int] = {}      # LRU: last use; LFU: time the count last changed
    inserted: dict[int, int] = {}  # FIFO
    count: dict[int, int] = {}     # LFU / LFU-DA
    prio: dict[int, float] = {}    # LFU-DA
    age = [0.0] * len(capacity)
    future: dict[int, list[int]] = {}
    for i, x in enumerate(items):
        future.setdefault(x, []).append(i)
    out = []
    for i, x in enumerate(items):
        p = part_of[x]
        if x in cached[p]:
            out.append(True)
            last[x] = i
            count[x] += 1
            prio[x] = age[p] + count[x]
            continue
        out.append(False)
        if capacity[p] == 0:
            continue
        if len(cached[p]) >= capacity[p]:
            members = sorted(cached[p])
            if policy == "lru":
                v = min(members, key=lambda y: last[y])
            elif policy == "fifo":
                v = min(members, key=lambda y: inserted[y])
            elif policy == "lfu":
                v = min(members, key=lambda y: (count[y], last[y]))
            elif policy == "lfuda":
                v = min(members, key=lambda y: (prio[y], last[y]))
                age[p] = prio[v]
            elif policy == "belady":
                def next_use(y):
                    later = [j for j in future[y] if j > i]
                    return later[0] if later else float("inf")
                v = max(members, key=next_use)
            else:
                raise ValueError(policy)
            cached[p].remove(v)
        cached[p].add(x)
        last[x] = i
        inserted[x] = i
        count[x] = 1
        prio[x] = age[p] + 1
    return out


def stack_distance_lru_hits(items, capacity: int) -> int:
    """LRU hits from a list-based recency stack (a second, differently built reference)."""
    stack: list[int] = []
    hits = 0
    for x in items:
        if x in stack:
            depth = stack.index(x)
            if depth < capacity:
                hits += 1
            stack.pop(depth)
        stack.insert(0, x)
    return hits



def segment_reference(items, seg_offsets, part_of, capacity, policy: str) -> int:
    """Hits of (step, layer) segment accounting, from its definition: a segment's distinct experts are
    looked up against the cache as the segment began; the hits are in use; each miss evicts a resident the
    segment does not use (LRU: least recent, FIFO: first in, LFU: fewest uses, then count changed longest
    ago), or, when there is none, streams through uncached. The policy is told the segment's hits, then its
    misses, each in order of first use: that is the order of recency."""
    cached: dict[int, set] = {p: set() for p in range(len(capacity))}
    last: dict[int, int] = {}
    inserted: dict[int, int] = {}
    count: dict[int, int] = {}
    hits = 0
    clock = 0
    for a, b in zip(seg_offsets[:-1], seg_offsets[1:]):
        distinct = list(dict.fromkeys(items[a:b]))
        missing = [x for x in distinct if x not in cached[part_of[x]]]
        for x in distinct:
            if x not in missing:
                hits += 1
                clock += 1
                last[x] = clock
                count[x] += 1
        for x in missing:
            p = part_of[x]
            if capacity[p] == 0:
                continue
            if len(cached[p]) >= capacity[p]:
                free = sorted(cached[p] - set(distinct))
                if not free:
                    continue
                if policy == "lru":
                    v = min(free, key=lambda y: last[y])
                elif policy == "fifo":
                    v = min(free, key=lambda y: inserted[y])
                elif policy == "lfu":
                    v = min(free, key=lambda y: (count[y], last[y]))
                else:
                    raise ValueError(policy)
                cached[p].remove(v)
            cached[p].add(x)
            clock += 1
            last[x] = inserted[x] = clock
            count[x] = 1
    return hits
