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

