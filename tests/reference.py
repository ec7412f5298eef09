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



def segment_reference(items, seg_offsets, part_of, capacity, policy: str, order: str = "hits-first") -> int:
    """Hits of (step, layer) segment accounting, from its definition: a segment's distinct experts are
    looked up against the cache as the segment began; the hits are in use; each miss evicts a resident the
    segment does not use (LRU: least recent, FIFO: first in, LFU: fewest uses, then count changed longest
    ago), or, when there is none, streams through uncached. The policy is told the segment's hits, then its
    inserted misses, each in order of first use (order "hits-first"), or all of them in order of their last
    use in the segment (order "routing"): that is the order of recency."""
    cached: dict[int, set] = {p: set() for p in range(len(capacity))}
    last: dict[int, int] = {}
    inserted: dict[int, int] = {}
    count: dict[int, int] = {}
    hits = 0
    clock = 0
    for a, b in zip(seg_offsets[:-1], seg_offsets[1:]):
        seg = list(items[a:b])
        distinct = list(dict.fromkeys(seg))
        missing = [x for x in distinct if x not in cached[part_of[x]]]
        hits += len(distinct) - len(missing)
        kept = []
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
            kept.append(x)
        told = [x for x in distinct if x not in missing] + kept
        if order == "routing":
            last_use = {x: i for i, x in enumerate(seg)}
            told.sort(key=lambda x: last_use[x])
        for x in told:
            clock += 1
            last[x] = clock
            if x in missing:
                inserted[x] = clock
                count[x] = 1
            else:
                count[x] += 1
    return hits


class MoeInfinityPriority:
    """MoE-Infinity's priority as policies/moe_infinity.py states it, rescored in full at every victim search:
    the least (L - d) * (rc + 1) * (g + 1) goes, then the one used longest ago, then the lower id. d: how many
    layers x's layer lies ahead of the layer of the access at t; rc: x's activations by the request of that
    access (if it was the last to use x); g: all of x's activations. An activation is a use or insert of x at a
    position t whose access is x, each position once."""

    def __init__(self, items, requests, num_layers, num_experts):
        self.item, self.request, self.L, self.E = items, requests, num_layers, num_experts
        self.rc, self.req_of, self.glob, self.last = {}, {}, {}, {}

    def activate(self, x, t):
        if t < 0:
            return
        if self.item[t] == x and self.last.get(x) != t:
            if self.req_of.get(x) != self.request[t]:
                self.req_of[x], self.rc[x] = self.request[t], 0
            self.rc[x] += 1
            self.glob[x] = self.glob.get(x, 0) + 1
        self.last[x] = t

    def key(self, x, t):
        now, q = (self.item[t] // self.E, self.request[t]) if t >= 0 else (0, None)
        d = (x // self.E - now) % self.L
        rc = self.rc[x] if self.req_of.get(x) == q else 0
        return (self.L - d) * (rc + 1) * (self.glob.get(x, 0) + 1), self.last.get(x, -1), x

    def victim(self, residents, t, busy=()):
        free = [x for x in residents if x not in busy]
        return min(free, key=lambda x: self.key(x, t)) if free else -1


def moe_infinity_reference(items, requests, seg_offsets, part_of, capacity, num_layers, num_experts,
                           accounting: str, plan=None) -> list[int]:
    """Hits per layer of MoE-Infinity's priority, from the two accountings' definitions.

    access: every access in stream order; a miss evicts the least priority for that access.
    segment: a segment's distinct experts are looked up against the cache as the segment began; the hits are
    in use and are activated first, each at its last access in the segment; then each miss, in order of first
    use, evicts the least priority for its last access among the residents the segment does not use, or, when
    there is none, streams through uncached (no activation).
    plan: (offsets, items) per segment: prefetches put in after the segment, at its last access, nothing busy.
    """
    pri = MoeInfinityPriority(items, requests, num_layers, num_experts)
    cached: dict[int, set] = {p: set() for p in range(len(capacity))}
    hits = [0] * num_layers

    def put(x, t, busy=()):
        p = part_of[x]
        if len(cached[p]) >= capacity[p]:
            v = pri.victim(cached[p], t, busy)
            if v < 0:
                return
            cached[p].remove(v)
        cached[p].add(x)
        pri.activate(x, t)

    for s, (a, b) in enumerate(zip(seg_offsets[:-1], seg_offsets[1:])):
        if accounting == "access":
            for t in range(a, b):
                x = items[t]
                if x in cached[part_of[x]]:
                    hits[x // num_experts] += 1
                    pri.activate(x, t)
                elif capacity[part_of[x]] > 0:
                    put(x, t)
        else:
            last = {x: t for t, x in enumerate(items[a:b], start=a)}  # (in order of first use)
            missing = [x for x in last if x not in cached[part_of[x]]]
            for x in last:
                if x not in missing:
                    hits[x // num_experts] += 1
                    pri.activate(x, last[x])
            for x in missing:
                if capacity[part_of[x]] > 0:
                    put(x, last[x], busy=set(last))
        if plan is not None:
            for x in plan[1][plan[0][s]:plan[0][s + 1]]:
                if x not in cached[part_of[x]] and capacity[part_of[x]] > 0:
                    put(x, b - 1)
    return hits


def access_stream_reference(trace, prefill_chunk: int = 1) -> dict:
    """The access stream's arrays by whole-array numpy sorts (lexsort, unique): the layout moesim
    built before its single compiled pass, kept as that pass's independent reference."""
    import numpy as np
    PREFILL, DECODE = 0, 1
    meta = trace.meta
    n = trace.num_rows
    step = trace.column("step").astype(np.int64)
    req = trace.column("request_id").astype(np.int64)
    pos = trace.column("token_pos").astype(np.int64)
    phase = trace.column("phase")
    layer_idx = trace.layer_index().astype(np.int64)
    sub = np.zeros(n, dtype=np.int64)
    if prefill_chunk > 0 and n:
        is_pre = phase == PREFILL
        grp = np.flatnonzero(np.r_[True, (step[1:] != step[:-1]) | (req[1:] != req[:-1])])
        first_pos = np.repeat(pos[grp], np.diff(np.r_[grp, n]))
        sub = np.where(is_pre, (pos - first_pos) // prefill_chunk, 0)
    key = step * (int(sub.max()) + 1 if n else 1) + sub
    uniq, new_step = np.unique(key, return_inverse=True)
    new_step = new_step.astype(np.int64).reshape(-1)
    order = np.lexsort((pos, req, layer_idx, new_step))
    seg_key = new_step[order] * meta.num_moe_layers + layer_idx[order]
    seg_start = np.flatnonzero(np.r_[True, seg_key[1:] != seg_key[:-1]]) if n else np.zeros(0, np.int64)
    seg_row_offsets = np.r_[seg_start, n].astype(np.int64)
    k = meta.top_k
    ids = trace.expert_ids()[order].astype(np.int32)
    item = (layer_idx[order, None] * meta.num_experts + ids).reshape(-1).astype(np.int32)
    n_steps = len(uniq)
    step_tokens = np.zeros(n_steps, dtype=np.int64)
    token_first = np.r_[True, (req[1:] != req[:-1]) | (pos[1:] != pos[:-1])] if n else np.zeros(0, bool)
    np.add.at(step_tokens, new_step[token_first], 1)
    step_has_decode = np.zeros(n_steps, dtype=bool)
    step_has_decode[new_step[phase == DECODE]] = True
    emits = (phase == DECODE) | (prefill_chunk == 1)
    step_outputs = np.zeros(n_steps, dtype=np.int64)
    np.add.at(step_outputs, new_step[token_first & emits], 1)
    n_req = int(req.max()) + 1 if n else 0
    big = np.iinfo(np.int32).max
    first_step = np.full(n_req, big, dtype=np.int64)
    np.minimum.at(first_step, req, new_step)
    first_out = np.full(n_req, big, dtype=np.int64)
    if emits.any():
        np.minimum.at(first_out, req[emits], new_step[emits])
    seen = np.zeros(n_req, bool)
    seen[req] = True
    no_emit = (first_out == big) & seen
    if no_emit.any():
        last = np.full(n_req, -1, dtype=np.int64)
        np.maximum.at(last, req, new_step)
        first_out[no_emit] = last[no_emit]
    return {
        "item": item, "seg_offsets": (seg_row_offsets * k).astype(np.int64),
        "seg_layer": layer_idx[order][seg_start].astype(np.int32),
        "seg_step": new_step[order][seg_start].astype(np.int32),
        "seg_tokens": np.diff(seg_row_offsets).astype(np.int32), "seg_row_offsets": seg_row_offsets,
        "row_order": order.astype(np.int64), "row_request": req[order].astype(np.int32),
        "step_phase": np.where(step_has_decode, DECODE, PREFILL).astype(np.uint8),
        "step_tokens": step_tokens.astype(np.int32), "step_outputs": step_outputs.astype(np.int32),
        "request_first_step": first_step.astype(np.int32), "request_first_output_step": first_out.astype(np.int32),
    }
