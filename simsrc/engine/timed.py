"""Timed mode: a discrete-event replay of one GPU stream, a host link and a host lane.

Per step, per layer (a *segment*):
  1. the layer's dense part runs; routing is known when it ends;
  2. queued prefetches that start before then go first, each decided at its own start time; transfers
     landed by routing free their experts;
  3. the segment's distinct experts are looked up together: the resident ones are hits and in use; each
     missing one pays the host's bookkeeping (`miss_overhead`, one miss after another), then the action
     rule decides: fetch it (demand fetches go before queued prefetches, never interrupting a transfer
     under way; a miss evicts an expert the layer does not use, or streams through when the layer fills
     its partition) or compute it on the host lane;
  4. the GPU waits out the part of its copies it cannot compute through (1 - `overlap`), then computes
     the layer's experts one after another as they become resident (resident first); it waits -- a
     *stall* -- for the ones still in flight, and at the end for the host's;
  5. the segment's prefetch plan joins the link queue behind its demand fetches. With memory tiers, each
     planned prefetch whose expert is not on the GPU then (and that is within the step's budget and fits)
     issues its storage read at once, at the segment's routing, as a runtime reading ahead into host memory
     does; its copy still waits in the queue for a copy engine, and starts no earlier than the read's end. A
     read once issued stays issued: a prefetch later dropped, cancelled or held leaves its expert in the host
     tier (tiers.py).
The link: `copy_engines` transfers may be under way at once; each pays `latency` before its bytes flow,
then its bytes, in `stripes` equal parts, are taken by the earliest free of `lanes` pipes, each
`bandwidth / lanes` (one lane: every transfer's bytes share one pipe of `bandwidth`, so with two or more
engines one transfer's latency hides behind another's bytes; four lanes: four reads flow side by side, each
at a quarter of the rate, as a phone's flash serves four read threads; three stripes: an expert's three
projection tensors read as three jobs). A transfer moves its own expert's bytes. With sizes per expert
(cache.size), capacities are bytes and a miss evicts until its expert fits. An expert in use by the current
layer or still in flight is never evicted.
With memory tiers (tiers.py), every expert fetched or computed on the host is looked up in the host tier
first; a host miss's storage read starts when the miss is issued (a prefetch's: when it is planned, point 5),
and its copy waits for the read; each segment's non-expert page-in, if any, comes before its dense part.
Times are float64 seconds.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from .bundles import Cache, Compute, Host, Link, LowBit, PrefetchPlan, Stream
from .experts import (BUSY, ERROR, GPU_S, HOST_COMPUTED, HOST_S, NUM_COUNTERS, OVERHEAD_S, PF_CANCELLED, PF_ISSUED,
                      PF_LATE, PF_UNUSED, PF_USED,
                      PINNED, RESIDENT, TOLD_HIT, TOLD_INSERT, count_harmful, count_unused, evict,
                      evict_for_prefetch, evictable, insert_by, none_evictable, place_at_start,
                      tell_in_routing_order)
from .links import _arrival, _first_free_engine, _transfer
from .ops import (compiled_loop, decide, decides, freed_enough, may_host, may_lowbit, on_hit, on_insert, partition,
                  partition_map, seconds_of, size_of, take_room, victim, weighs_times)
from .routing import (FETCH, HOST, LOWBIT, NUM_ACTIONS, SUBSTITUTE, add_weight, count_action, mass_of,
                      pick_substitutes, weight_of)
from .tiers import host_fetch, host_peek, page_in, prefetch_here, prefetch_read, storage_wait


class TimedWork(NamedTuple):
    """The timed loop's state, per item unless said (allocated by timed_replay: the loop allocates nothing)."""
    flags: np.ndarray       # uint8 (experts.py)
    ready: np.ndarray       # float64: when the expert is (or will be) resident
    in_seg: np.ndarray      # int64: its entry in the current segment's arrays, or -1
    evictor: np.ndarray     # int32: the prefetch that pushed it out
    target: np.ndarray      # int64 per planned prefetch: its target segment (-1: over the step's budget)
    free: np.ndarray        # int64 per partition: capacity not yet taken (experts, or bytes with sizes)
    eng_free: np.ndarray    # float64 per copy engine: when it is free
    pipe: np.ndarray        # float64 per lane: when it is free; then as many scratch entries
    inflight: np.ndarray    # int32: experts in flight (first n_inflight)
    seg_items: np.ndarray   # int32: the segment's distinct experts
    seg_tok: np.ndarray     # int64: tokens routed to each
    seg_ready: np.ndarray   # float64: when each is resident
    seg_last: np.ndarray    # int64: its last access in the segment (what the policy is told)
    waiting: np.ndarray     # int32: the segment's experts still in flight, by arrival
    route_t: np.ndarray     # float64 per segment: when its routing was known
    hold: np.ndarray        # float64 [1]: the earliest the prefetch at the queue's head may start
    seg_host: np.ndarray    # uint8: the GPU does not compute the segment's expert: the host does (the layer waits
    #                         for its seg_ready), or nobody (skipped, or its tokens went to substitutes: ready at 0)
    cpu: np.ndarray         # float64 [2]: when the host's bookkeeping thread, and its compute lane, are free
    c: np.ndarray           # float64 counters (experts.py)


class ActionWork(NamedTuple):
    """What the action rules need per segment. Apart from TimedWork, which the prefetch code takes too, so that
    code keeps its signature and stays out of line (with these arrays in TimedWork, LLVM inlined it)."""
    seg_low: np.ndarray     # uint8 per item: the segment's expert is a low-bit copy (its weights read at that size)
    seg_wmax: np.ndarray    # float64 per item: its largest routing weight among its tokens (with Stream.weight)
    seg_wsum: np.ndarray    # float64: its routing weights summed over its tokens
    pick: np.ndarray        # int32 per access of the longest segment: the substitute picked for it (routing.py)
    pick_seg: np.ndarray    # int64: the segment it was picked in


class TimedOut(NamedTuple):
    hits: np.ndarray        # int64 per MoE layer
    misses: np.ndarray      # int64 per MoE layer
    stall: np.ndarray       # float64 s per MoE layer
    step_end: np.ndarray    # float64 s: when each step ends
    seg_hits: np.ndarray    # int32 per segment
    seg_misses: np.ndarray  # int32 per segment
    acted: np.ndarray       # int64 [MoE layer, action]: misses each action took (moesim.actions' numbers)


@njit(cache=True, _nrt=False)
def _settle(t, flags, ready, in_seg, inflight, n_inflight):
    """Transfers landed by time t free their experts for eviction (unless the running layer uses them);
    returns how many are still in flight. Decisions are taken in time order, each after settling to its time."""
    k = 0
    for j in range(n_inflight):
        x = np.uint32(inflight[j])
        if ready[x] <= t:
            if in_seg[x] < 0:
                flags[x] &= ~BUSY
        else:
            inflight[k] = x
            k += 1
    return k


@compiled_loop  # it inlines the policy's victim and on_insert: cached under the sources digest
def _start_prefetches(until_t, min_target, clock, q, q_end, n_inflight, plan, cache, link, state, w, tiers):
    """Start queued prefetches (FIFO) whose start time is <= until_t; returns (q, n_inflight).

    A prefetch is dropped if its expert is already resident, and cancelled if
    its target layer has already routed (target < min_target) or it was over
    budget. If every slot it could take is in use or in flight, it waits at the
    head of the queue (hold[0]: the earliest it may start) and is tried again.
    With tiers, its copy also waits for the storage read it issued when planned (a read that stays issued
    whatever happens to the copy), or, with none issued then, for one issued at its start.
    """
    part_of, part_capacity, size = cache.part_of, cache.part_capacity, cache.size
    flags, c = w.flags, w.c
    while q < q_end:
        q_seg = np.searchsorted(plan.offsets, q, side="right") - 1  # the segment that issued it
        start = max(w.route_t[q_seg], w.eng_free[_first_free_engine(w.eng_free)], w.hold[0])
        if start > until_t:
            break
        x = plan.item[q]
        p = partition(part_of, x)
        need = size_of(size, x)
        # too late (its layer has routed), over budget, or nowhere to go: cancelled, whether or not x is here
        if w.target[q] < min_target or part_capacity[p] < need:
            q += 1
            c[PF_CANCELLED] += 1
            continue
        if flags[x] & RESIDENT:
            q += 1
            continue
        n_inflight = _settle(start, flags, w.ready, w.in_seg, w.inflight, n_inflight)
        if w.free[p] < need:
            held = False
            while True:  # evict until x fits (one slot per expert: one eviction)
                v = victim(state, p, flags, clock)
                if v < 0:
                    if not none_evictable(p, part_of, flags, c):
                        return q_end, n_inflight
                    w.hold[0] = until_t
                    held = True
                    break
                if not evictable(v, p, part_of, flags, c):
                    return q_end, n_inflight
                evict_for_prefetch(v, x, p, flags, w.evictor, c, state)
                if freed_enough(size, w.free, p, v, need):
                    break
            if held:
                break
            take_room(size, w.free, p, need)
        else:
            w.free[p] -= need
        # through the host tier: its copy starts when its storage read, if any, has ended
        w.ready[x] = _transfer(prefetch_here(tiers, q, x, start, clock), w.eng_free, w.pipe, link.latency_s,
                               seconds_of(link.transfer_s, x), link.stripes)
        flags[x] = RESIDENT | BUSY | PF_UNUSED
        w.inflight[n_inflight] = x
        n_inflight += 1
        on_insert(state, x, p, clock)
        q += 1
        c[PF_ISSUED] += 1
    return q, n_inflight


def timed_replay(stream: Stream, cache: Cache, link: Link, compute: Compute, host: Host, plan: PrefetchPlan,
                 state, rule, num_layers: int, num_steps: int, lowbit: LowBit | None = None, tiers=None,
                 segment_order: str = "hits-first"):
    """Returns (TimedOut, counters). host: bookkeeping per miss and the host's compute; rule: an action
    rule's state (moesim.actions), which decides what each miss does; lowbit: its low-precision copy (for a
    rule that takes LOWBIT); tiers (tiers.py): the host tier and storage link every fetch passes through, and
    the non-expert page-ins (None: every expert in host memory); segment_order: as count_replay's."""
    lowbit = lowbit or LowBit(link, compute.floor_s)
    n = len(cache.pinned)
    cache = cache._replace(part_of=partition_map(cache.part_of, cache.part_capacity))
    n_segs = len(stream.seg_layer)
    out = TimedOut(np.zeros(num_layers, np.int64), np.zeros(num_layers, np.int64), np.zeros(num_layers, np.float64),
                   np.zeros(num_steps, np.float64), np.zeros(n_segs, np.int32), np.zeros(n_segs, np.int32),
                   np.zeros((num_layers, NUM_ACTIONS), np.int64))
    longest = int(np.diff(stream.seg_offsets).max()) if stream.ranked is not None and n_segs else 0
    work = TimedWork(np.zeros(n, np.uint8), np.zeros(n, np.float64), np.full(n, -1, np.int64),
                     np.full(n, -1, np.int32), plan.target_seg.copy(), cache.part_capacity.copy(),
                     np.zeros(max(link.copy_engines, 1), np.float64), np.zeros(2 * max(link.lanes, 1), np.float64),
                     np.empty(n, np.int32),
                     np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.float64), np.empty(n, np.int64),
                     np.empty(n, np.int32), np.zeros(len(stream.seg_layer), np.float64), np.zeros(1, np.float64),
                     np.zeros(n, np.uint8), np.zeros(2, np.float64), np.zeros(NUM_COUNTERS, np.float64))
    weighed = n if stream.weight is not None else 0
    acting = ActionWork(np.zeros(n if may_lowbit(rule) else 0, np.uint8), np.empty(weighed, np.float64),
                        np.empty(weighed, np.float64), np.empty(longest, np.int32),
                        np.full(longest, -1, np.int64))
    told = np.zeros(n, np.int8) if segment_order == "routing" else None
    if tiers is not None:
        tiers = tiers._replace(pf_here=np.full(len(plan.item), -1.0))
    _timed_loop(stream, cache, link, compute, host, lowbit, plan, state, rule, out, work, acting, tiers, told)
    return out, work.c


@compiled_loop
def _timed_loop(stream, cache, link, compute, host, lowbit, plan, state, rule, out, w, aw, tiers, told):
    item, seg_offsets, seg_layer, seg_step = stream.item, stream.seg_offsets, stream.seg_layer, stream.seg_step
    part_of, part_capacity, pinned, warm, size = cache
    seg_dense_s, token_s, weights_s, launch_s = compute
    hits, misses, stall, step_end, seg_hits, seg_misses, acted = out
    seg_host, cpu = w.seg_host, w.cpu
    flags, ready, in_seg, c = w.flags, w.ready, w.in_seg, w.c
    seg_items, seg_tok, seg_ready, waiting, inflight = w.seg_items, w.seg_tok, w.seg_ready, w.waiting, w.inflight
    seg_last = w.seg_last
    num_segments = seg_layer.shape[0]
    place_at_start(cache, flags, w.free, state)
    n_inflight = 0
    q = 0
    step_pf = 0
    gpu_t = 0.0
    gpu_s = 0.0  # the time split, kept in registers and stored once at the end
    overhead_s = 0.0

    for s in range(num_segments):
        layer = seg_layer[s]
        if s > 0 and seg_step[s] != seg_step[s - 1]:
            step_pf = 0
        gpu_t = page_in(tiers, s, gpu_t)  # non-expert weights not in host memory, read before the layer runs
        gpu_t += seg_dense_s[s]
        gpu_s += seg_dense_s[s]
        now = gpu_t
        w.route_t[s] = now
        # queued prefetches that start before routing (each decided at its own start time), then the
        # transfers landed by now free their experts
        if q < plan.offsets[s]:
            q, n_inflight = _start_prefetches(now, s, seg_offsets[s] - 1, q, plan.offsets[s], n_inflight, plan,
                                              cache, link, state, w, tiers)
            if c[ERROR] != 0:
                return
        n_inflight = _settle(now, flags, ready, in_seg, inflight, n_inflight)

        # demand, by segment: the layer's distinct experts are looked up against the cache as it stands when
        # routing is known (one lookup each, however many tokens use it); the resident ones are in use from
        # then on, so a miss never evicts another expert this layer needs
        n_seg = 0
        h = 0
        m = 0
        for i in range(seg_offsets[s], seg_offsets[s + 1]):
            x = np.uint32(item[np.uint64(i)])  # unsigned indices: numba then skips its check for a negative index
            if in_seg[x] < 0:  # x's first access in this segment
                in_seg[x] = n_seg
                seg_items[n_seg] = x
                seg_tok[n_seg] = 0
                if told is not None:
                    told[n_seg] = 0
                n_seg += 1
            ax = np.uint32(in_seg[x])  # x's entry in the segment's arrays
            seg_tok[ax] += 1
            seg_last[ax] = i
            add_weight(stream.weight, i, ax, seg_tok[ax] == 1, aw.seg_wmax, aw.seg_wsum)
        for a in range(n_seg):
            x = np.uint32(seg_items[a])
            f = flags[x]
            if f & RESIDENT:
                h += 1
                if f & PF_UNUSED:
                    f ^= PF_UNUSED
                    if ready[x] <= now:
                        c[PF_USED] += 1
                    else:
                        c[PF_LATE] += 1
                if not f & PINNED:
                    if told is not None:  # told at the end of the segment's misses, in routing order
                        told[a] = TOLD_HIT
                    else:
                        on_hit(state, x, partition(part_of, x), seg_last[a])
                flags[x] = f | BUSY
                seg_ready[a] = ready[x]
        sync_s = 0.0
        for a in range(n_seg):
            x = np.uint32(seg_items[a])
            if flags[x] & RESIDENT:
                continue
            i = seg_last[a]
            m += 1
            count_harmful(x, flags, w.evictor, c)
            # the host's bookkeeping takes the misses one after another; each action starts after its own
            issue = now
            if host.miss_overhead_s > 0.0:
                issue = max(cpu[0], now) + host.miss_overhead_s
                cpu[0] = issue
                overhead_s += host.miss_overhead_s
            if decides(rule):
                here = host_peek(tiers, x, issue)  # when x is in host memory (later than issue if read from storage)
                host_s = max(seg_tok[a] * host.per_token_s, host.floor_s) if may_host(rule) else 0.0
                host_done = max(cpu[1], here) + host_s if may_host(rule) else 0.0
                # what a copy issued now would take is worked out only for a rule that weighs it
                fetch_done = _arrival(here, w.eng_free, w.pipe, link.latency_s, seconds_of(link.transfer_s, x),
                                      link.stripes) if weighs_times(rule) else 0.0
                act = decide(rule, x, seg_tok[a], weight_of(stream.weight, aw.seg_wmax, a), fetch_done, host_done)
                if act == SUBSTITUTE and not pick_substitutes(stream.ranked, x, s, seg_offsets[s], seg_offsets[s + 1],
                                                              item, flags, aw.pick, aw.pick_seg):
                    act = FETCH  # some token of x has no resident alternative: it keeps its routing
                if act != FETCH:
                    acted[layer, act] += 1
                    if act == HOST:
                        host_fetch(tiers, x, issue, i)  # x is brought to host memory as host_done assumed
                        cpu[1] = host_done
                        c[HOST_S] += host_s
                        c[HOST_COMPUTED] += 1
                        seg_host[a] = 1
                        seg_ready[a] = host_done
                        continue
                    count_action(c, act, seg_tok[a], mass_of(stream.weight, aw.seg_wsum, a))
                    if act == LOWBIT:
                        # the copy is used for this layer and not kept (as an expert that streams through)
                        copy_s = seconds_of(lowbit.link.transfer_s, x)
                        sync_s += (1.0 - lowbit.link.overlap) * copy_s
                        ready[x] = _transfer(issue, w.eng_free, w.pipe, lowbit.link.latency_s, copy_s,
                                             lowbit.link.stripes)
                        flags[x] = BUSY
                        inflight[n_inflight] = x
                        n_inflight += 1
                        seg_ready[a] = ready[x]
                        aw.seg_low[a] = 1
                        continue
                    seg_host[a] = 1  # skipped, or substituted: nobody computes x, nothing to wait for
                    seg_ready[a] = 0.0
                    if act == SUBSTITUTE:
                        # each token of x goes to its pick, which is in use for the layer from now on (the
                        # policy is not told: a substitute is not a routed access)
                        lo = seg_offsets[s]
                        for i2 in range(lo, seg_offsets[s + 1]):
                            if item[i2] != x:
                                continue
                            y = np.uint32(aw.pick[i2 - lo])
                            if in_seg[y] < 0:
                                in_seg[y] = n_seg
                                seg_items[n_seg] = y
                                seg_tok[n_seg] = 0
                                seg_ready[n_seg] = ready[y]
                                seg_last[n_seg] = i2
                                if told is not None:
                                    told[n_seg] = 0
                                n_seg += 1
                                fy = flags[y]
                                if fy & PF_UNUSED:
                                    fy ^= PF_UNUSED
                                    c[PF_USED if ready[y] <= now else PF_LATE] += 1
                                flags[y] = fy | BUSY
                            seg_tok[in_seg[y]] += 1
                    continue
            here = host_fetch(tiers, x, issue, i)  # its storage read, if any, starts now, slot or no slot
            sync_s += (1.0 - link.overlap) * seconds_of(link.transfer_s, x)
            p = partition(part_of, x)
            f = BUSY  # with no room in its partition, x streams through for this layer and is not kept
            need = size_of(size, x)
            if part_capacity[p] >= need:
                keep = True
                if w.free[p] < need:
                    while True:  # evict until x fits (one slot per expert: one eviction)
                        v = victim(state, p, flags, i)
                        while v < 0:
                            if not none_evictable(p, part_of, flags, c):
                                return
                            # wait for the earliest transfer this layer does not need, then take its slot
                            wx = -1
                            for j in range(n_inflight):
                                y = inflight[j]
                                if flags[y] & BUSY and in_seg[y] < 0 and partition(part_of, y) == p and \
                                        (wx < 0 or ready[y] < ready[wx]):
                                    wx = y
                            if wx < 0:
                                keep = False  # the layer's own experts fill the partition: x streams through
                                break
                            issue = max(issue, ready[wx])
                            flags[wx] &= ~BUSY
                            v = victim(state, p, flags, i)
                        if not keep:
                            break
                        if not evictable(v, p, part_of, flags, c):
                            return
                        evict(v, p, flags, c, state)
                        if freed_enough(size, w.free, p, v, need):
                            break
                    if keep:
                        take_room(size, w.free, p, need)
                else:
                    w.free[p] -= need
                if keep:
                    f = RESIDENT | BUSY
                    if told is not None:
                        told[a] = TOLD_INSERT
                    else:
                        on_insert(state, x, p, i)
            ready[x] = _transfer(max(issue, here), w.eng_free, w.pipe, link.latency_s,
                                 seconds_of(link.transfer_s, x), link.stripes)
            flags[x] = f
            inflight[n_inflight] = x
            n_inflight += 1
            seg_ready[a] = ready[x]
        if told is not None:
            tell_in_routing_order(state, part_of, seg_items, seg_last, told, n_seg, waiting)
        hits[layer] += h
        misses[layer] += m
        seg_hits[s] = h
        seg_misses[s] = m
        # the part of each transfer the GPU cannot compute through (a synchronous read) holds it up
        if sync_s > 0.0:
            stall[layer] += sync_s
            gpu_t += sync_s

        # compute: the experts already here first (in any order: none waits), then the others in order of
        # arrival (insertion sort: a layer has few)
        here_t = gpu_t
        n_wait = 0
        host_end = 0.0
        host_last = 0  # the host's expert that ends last
        for a in range(n_seg):
            if seg_host[a]:
                if seg_ready[a] > host_end:
                    host_end = seg_ready[a]
                    host_last = a
                seg_host[a] = 0
                continue
            if seg_ready[a] <= here_t:
                floor_s = weights_s
                if may_lowbit(rule) and aw.seg_low[a]:  # (a constant False for a rule that never takes LOWBIT)
                    floor_s = lowbit.floor_s
                    aw.seg_low[a] = 0
                k_s = max(seg_tok[a] * token_s, floor_s) + launch_s
                gpu_t += k_s
                gpu_s += k_s
                continue
            insert_by(waiting, n_wait, a, seg_ready)
            n_wait += 1
        for j in range(n_wait):
            a = waiting[j]
            if seg_ready[a] > gpu_t:
                stall[layer] += seg_ready[a] - gpu_t
                storage_wait(tiers, seg_items[a], gpu_t, seg_ready[a])
                gpu_t = seg_ready[a]
            floor_s = weights_s
            if may_lowbit(rule) and aw.seg_low[a]:
                floor_s = lowbit.floor_s
                aw.seg_low[a] = 0
            k_s = max(seg_tok[a] * token_s, floor_s) + launch_s
            gpu_t += k_s
            gpu_s += k_s
        # the layer ends when the host's experts are done too
        if host_end > gpu_t:
            stall[layer] += host_end - gpu_t
            storage_wait(tiers, seg_items[host_last], gpu_t, host_end)
            gpu_t = host_end

        # this segment's prefetch plan joins the queue behind its demand, within the per-step cap
        for j in range(plan.offsets[s], plan.offsets[s + 1]):
            if plan.step_cap >= 0 and step_pf >= plan.step_cap:
                w.target[j] = -1
            else:
                step_pf += 1
                if tiers is not None:  # (pruned without tiers) read ahead from storage, decided at routing
                    px = np.uint32(plan.item[j])
                    if w.target[j] > s and not flags[px] & RESIDENT and \
                            part_capacity[partition(part_of, px)] >= size_of(size, px):
                        prefetch_read(tiers, j, px, w.route_t[s], seg_offsets[s + 1] - 1)
        # prefetches that start while this layer computes must not evict its experts
        if q < plan.offsets[s + 1]:
            q, n_inflight = _start_prefetches(gpu_t, s + 1, seg_offsets[s + 1] - 1, q, plan.offsets[s + 1],
                                              n_inflight, plan, cache, link, state, w, tiers)
            if c[ERROR] != 0:
                return
        for a in range(n_seg):
            x = np.uint32(seg_items[a])
            in_seg[x] = -1
            if ready[x] <= gpu_t:
                flags[x] &= ~BUSY
        step_end[seg_step[s]] = gpu_t

    c[GPU_S] = gpu_s
    c[OVERHEAD_S] = overhead_s
    count_unused(flags, c)
