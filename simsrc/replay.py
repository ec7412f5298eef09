"""replay(): join a trace, a policy, a predictor and hardware, run the engine, return one result row.

Everything a replay can be told is one ReplayConfig (config.py); what it costs comes from cost.py; the
engine (engine/) sees only the bundles built here.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from . import __version__, cost
from .hardware import dtype_bytes
from . import policies as policy_registry
from .config import ReplayConfig, row_inputs
from .engine import (BAD_VICTIM, ERR_VICTIM, ERROR, GPU_S, HOST_COMPUTED, HOST_S, LOWBIT_TOKENS, OVERHEAD_S,
                     PF_CANCELLED, PF_HARMFUL, PF_ISSUED, PF_LATE, PF_USED, PF_WASTED, Cache, Compute, Host, Link,
                     LowBit, PrefetchPlan, Stream, count_replay, timed_replay)
from .engine.tiers import (HOST_HITS, HOST_MISSES, PAGING_S, STORAGE_STALL_S, TIER_BAD_VICTIM, TIER_ERROR, Tiers,
                           new_tiers)
from .predict import Prefetch
from .trace import DECODE, AccessStream, Trace, access_stream, read_trace
from .trace.batching import batch, file_arrivals, poisson_arrivals, serve


def replay(trace: Trace | str | os.PathLike, config: ReplayConfig | None = None, *,
           stream: AccessStream | None = None, prefetch: Prefetch | None = None, **overrides) -> dict[str, Any]:
    """Replay a trace against one cache configuration; returns the result row (a flat dict).

    `config` and keyword `overrides` name the knobs of moesim.config.KNOBS (policy, capacity, scope, mode,
    predictor, hardware, bandwidth, batch_size, ...; `moesim replay --help` and the README list them with their
    units). stream: an access stream of this trace the caller keeps for more replays; prefetch: a ready plan.
    With batching knobs, a stream (and a plan) must be of the batched trace: pass the trace that
    moesim.trace.batching.batch() or serve() returned with the same knobs, and its stream.
    """
    cfg = ReplayConfig.make(config, **overrides)
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    arrivals = request_arrivals(tr, cfg)
    mark, want = tr.meta.extra.get("batching"), batching_info(cfg)
    if mark is not None or want is None:
        if mark != want:
            raise ValueError(f"{tr.path or tr.meta.model}: this trace was batched ({_said(mark)}) but the replay "
                             f"asks for {_said(want)}; give the knobs it was batched with, or the trace as recorded")
    elif stream is not None or prefetch is not None:
        raise ValueError(f"{'stream' if stream is not None else 'prefetch'}= belongs to the trace as recorded, but "
                         f"this replay batches its requests ({_said(want)}): pass the trace "
                         f"moesim.trace.batching.{'batch' if cfg.batching == 'static' else 'serve'}() returns, "
                         f"and a stream of it, or neither")
    elif cfg.batching == "static":
        tr = batch(tr, batch_size=cfg.batch_size)
    elif arrivals is None:
        tr = serve(tr, batch_size=cfg.batch_size, token_budget=cfg.token_budget, prefill_chunk=cfg.prefill_chunk)
    else:
        return _serve_with_arrivals(tr, cfg, arrivals)
    return _replay(tr, cfg, stream, prefetch, arrivals)[0]


# A continuous-batching scheduler admits the requests that have arrived when a step starts, so which tokens
# share a step depends on how long steps take, which the replay finds out. Replay up to this many times, each
# schedule clocked by the step times the replay before it measured, until the schedule repeats.
SCHEDULE_PASSES = 4


def _serve_with_arrivals(tr: Trace, cfg: ReplayConfig, arrivals: np.ndarray) -> dict[str, Any]:
    """Continuous batching with arrival times: the first schedule's clock is the cost model with every expert
    resident (and, with memory tiers, the non-expert weights paged from storage every step); each later one's
    is the step times (by tokens in the step) the previous replay measured."""
    hw = cfg.hardware_spec()
    expert_bytes, _ = expert_size(tr.meta, cfg)
    paged = 0.0
    if cfg.tiers:
        tier_bytes = host_tier_size(tr, cfg, hw, expert_bytes, layer_expert_bytes(tr.meta, cfg, hw))[2]
        paged = cost.paged_bytes(hw, tr.meta, tier_bytes)
    clock = lambda n: float(cost.step_seconds_estimate(n, tr.meta, hw, expert_bytes, paged))  # noqa: E731
    schedule, row = None, None
    for _ in range(SCHEDULE_PASSES):
        served = serve(tr, batch_size=cfg.batch_size, token_budget=cfg.token_budget,
                       prefill_chunk=cfg.prefill_chunk, arrivals=arrivals, step_seconds=clock)
        steps = served.column("step")
        if schedule is not None and np.array_equal(steps, schedule[0]) \
                and np.array_equal(served.column("request_id"), schedule[1]):
            break
        row, (tokens, seconds) = _replay(served, cfg, None, None, arrivals)
        schedule = (steps, served.column("request_id"))
        clock = measured_clock(tokens, seconds)
    return row


def measured_clock(tokens: np.ndarray, seconds: np.ndarray):
    """Seconds of a step of n tokens as a replay measured them: the mean over its steps of each token count,
    interpolated between counts (and the nearest count's outside them)."""
    counts, inverse = np.unique(tokens, return_inverse=True)
    mean = np.bincount(inverse, weights=seconds) / np.bincount(inverse)
    return lambda n: float(np.interp(n, counts, mean))


def batching_info(cfg: ReplayConfig) -> dict | None:
    """What moesim.trace.batching records in a trace it batched with these knobs (None: not batched)."""
    if not cfg.serving:
        return None
    if cfg.batching == "static":
        return {"batching": "static", "batch_size": cfg.batch_size}
    return {"batching": "continuous", "batch_size": cfg.batch_size, "token_budget": cfg.token_budget,
            "prefill_chunk": cfg.prefill_chunk}


def _said(info: dict | None) -> str:
    return "not batched" if info is None else ", ".join(f"{k} {v}" for k, v in info.items())


def request_arrivals(tr: Trace, cfg: ReplayConfig) -> np.ndarray | None:
    """Arrival seconds of each request (indexed by request id), or None when every request waits at the start."""
    if not cfg.arrival_given:
        return None
    ids = np.unique(tr.column("request_id"))
    if cfg.arrival_rate is not None:
        return poisson_arrivals(ids, cfg.arrival_rate, cfg.seed)
    return file_arrivals(cfg.arrivals, ids)


def _replay(tr: Trace, cfg: ReplayConfig, stream: AccessStream | None, prefetch: Prefetch | None,
            arrivals: np.ndarray | None):
    """The row of one replay of a trace as it stands (batched or not), and (tokens, seconds) of each step."""
    reuse_stream = stream is not None  # the caller keeps it for more replays: predictions for it may be reused
    stream = stream if stream is not None else access_stream(tr, prefill_chunk=cfg.prefill_chunk)
    hw = cfg.hardware_spec()
    expert_bytes, params = expert_size(tr.meta, cfg, hw)
    layer_bytes = layer_expert_bytes(tr.meta, cfg, hw)
    budget = None
    if cfg.capacity.kind == "auto":
        context = cfg.context or int(tr.column("token_pos").max()) + 1
        budget = cost.memory_budget(hw, tr.meta, expert_bytes, kv_bytes_per_token=hw.kv_bytes_per_token,
                                    context=context, batch=cfg.batch_size, reserve=cfg.reserve)
    cache = cache_for(tr, stream, cfg, expert_bytes, hw.gpu_memory, budget, layer_bytes=layer_bytes)
    pinned_experts = int(cache.pinned.sum())  # the user's pins (a policy's own are part of its capacity)
    state, cache = policy_state(cfg, stream, cache)
    tiers, paged, host_held = None, 0.0, None
    if cfg.tiers:
        tiers, paged = tiers_for(tr, stream, cfg, hw, expert_bytes, layer_bytes)
        host_held = _held(tiers.cache, expert_bytes)
    horizon = 0
    if prefetch is None and cfg.predictor != "none":
        from .predict import plan as prefetch_plan
        prefetch, horizon = prefetch_plan(
            tr, stream, cfg.predictor, hardware=hw, expert_bytes=expert_bytes, horizon=cfg.horizon,
            top_n=cfg.top_n, threshold=cfg.threshold, adaptive=cfg.adaptive, train=cfg.train, reuse=reuse_stream,
            step_cap_bytes=cfg.prefetch_bytes_per_step,
            host_held=1.0 if host_held is None else host_held / len(cache.pinned))
    prefetch = prefetch or Prefetch.none(stream.num_segments)
    plan = PrefetchPlan(prefetch.offsets, prefetch.item, prefetch.target_seg, int(prefetch.step_cap))
    n_items = len(cache.pinned)
    if cache.size is None:
        held = int(cache.part_capacity.sum()) + int(cache.pinned.sum())
    else:  # a cache of bytes holds as many experts as fit: reported at the mean size, as a count
        held_bytes = int(cache.part_capacity.sum()) + int(cache.size[cache.pinned.astype(bool)].sum())
        held = min(int(held_bytes // expert_bytes), n_items)
    resolved = {"horizon": horizon, "top_n": cfg.top_n if cfg.top_n is not None else
                (stream.top_k if cfg.predictor != "none" else 0), "capacity_experts": held,
                "capacity_fraction": held / n_items, "bytes_per_expert": expert_bytes,
                "pinned_experts": pinned_experts, "context": budget.context if budget else cfg.context}
    if tiers is not None:
        resolved["host_capacity_experts"] = host_held
    row = {"trace": str(tr.path) if tr.path else tr.meta.model, "model": tr.meta.model,
           **row_inputs(cfg, hw, resolved)}
    if budget is not None:
        row.update(gpu_memory=budget.gpu_memory, non_expert_bytes=budget.non_expert_bytes,
                   kv_cache_bytes=budget.kv_cache_bytes, reserve_bytes=budget.reserve_bytes,
                   memory_budget=budget.arithmetic())
    row.update({"moesim_version": __version__, "accesses": len(stream), "tokens": int(stream.step_tokens.sum()),
                "steps": stream.num_steps})
    # a global cache smaller than one token's experts over all layers thrashes under recency policies
    row["token_footprint"] = stream.num_layers * stream.top_k
    row["below_token_footprint"] = cfg.scope == "global" and 0 < held < row["token_footprint"]
    from .actions import ACTIONS, takes
    rule_takes = takes(cfg.action)
    weight, ranked = routing_columns(tr, stream, cfg, rule_takes)
    engine_stream = Stream(stream.item, stream.seg_offsets, stream.seg_layer, stream.seg_step, weight, ranked)
    rule = ACTIONS.get(cfg.action).init({"host_below": cfg.host_below, "weight_below": cfg.weight_below})
    lowbit_bytes = 0.0
    if LOWBIT in rule_takes and expert_bytes:
        lowbit_bytes = _lowbit_size(tr, cfg, hw, expert_bytes, params)[0]
    if cfg.mode == "count":
        # per access, which accesses hit is recorded only where a trace mixes prefill and decode steps
        mixed = cfg.accounting == "access" and len(np.unique(stream.step_phase)) > 1
        hits, misses, c, seg_hits, seg_misses, acted = count_replay(
            engine_stream, cache, plan, state, stream.num_layers, accounting=cfg.accounting,
            record=np.zeros(len(stream), np.uint8) if mixed else None, rule=None if cfg.action == "fetch" else rule,
            tiers=tiers, segment_order=cfg.segment_order)
        stall, step_end = None, None
    else:
        hits, misses, stall, step_end, seg_hits, seg_misses, c, acted = _timed(
            tr, stream, engine_stream, cache, plan, state, rule, rule_takes, cfg, hw, expert_bytes, params,
            layer_bytes, tiers)
    _raise_engine_error(c, cfg)
    _raise_tier_error(tiers, cfg)
    row.update(_hit_fields(hits, misses, stream, seg_hits, seg_misses))
    row.update(_time_fields(stream, step_end, stall, c, cfg.per_step, tr, cfg.prefill_chunk, arrivals))
    row.update(_transfer_fields(c, misses, expert_bytes, acted, lowbit_bytes, layer_bytes))
    row.update(_action_fields(c, acted, weights_known=weight is not None))
    row.update(_tier_fields(tiers, paged, expert_bytes, layer_bytes, stream.num_experts, timed=cfg.mode == "timed"))
    if cfg.per_layer:
        # per MoE layer, in order; moe_layers says which of the model's layers each entry is
        row.update(moe_layers=[int(n) for n in tr.meta.moe_layers], hits_per_layer=hits.tolist(),
                   misses_per_layer=misses.tolist())
        if stall is not None:
            row["stall_per_layer_s"] = stall.tolist()
        for act in rule_takes:
            if act != FETCH:
                row[f"{ACTION_COLUMNS[act]}_per_layer"] = acted[:, act].tolist()
    seconds = None if step_end is None else np.diff(np.r_[0.0, step_end])
    return row, (stream.step_tokens, seconds)


def _timed(tr, stream, engine_stream, cache, plan, state, rule, rule_takes, cfg, hw, expert_bytes, params,
           layer_bytes=None, tiers=None):
    """The timed engine's inputs from the cost model, and its run."""
    if not expert_bytes:
        raise ValueError(f"{tr.path or tr.meta.model}: the trace does not say how many bytes an expert has "
                         f"(bytes_per_expert=0); timed mode needs it: pass bytes_per_expert (--bytes-per-expert)")
    ec = cost.expert_cost(hw, expert_bytes, tr.meta.dtype, params=params)
    item_bytes = float(expert_bytes) if layer_bytes is None else np.repeat(layer_bytes, stream.num_experts)
    link = Link(cost.lane_seconds(item_bytes, hw), hw.latency, int(hw.copy_engines), int(hw.lanes),
                float(hw.overlap), int(hw.stripes))
    context = cost.segment_context(tr, stream) if hw.kv_bytes_per_token else None
    dense = cost.dense_seconds(stream, tr.meta, hw, expert_bytes, context=context,
                               kv_bytes_per_token=hw.kv_bytes_per_token or 0.0)
    host = Host(hw.miss_overhead, *cost.host_expert_cost(hw, expert_bytes, params))
    lowbit = None
    if LOWBIT in rule_takes:
        _, copy_s, floor_s = _lowbit_size(tr, cfg, hw, expert_bytes, params)
        lowbit = LowBit(link._replace(transfer_s=copy_s), floor_s)
    out, c = timed_replay(engine_stream, cache, link, Compute(dense, ec.per_token, ec.floor, ec.launch), host, plan,
                          state, rule, stream.num_layers, stream.num_steps, lowbit, tiers, cfg.segment_order)
    return out.hits, out.misses, out.stall, out.step_end, out.seg_hits, out.seg_misses, c, out.acted


# moesim.actions' numbers, and the row's names for the experts each action took
FETCH, HOST, LOWBIT, SKIP, SUBSTITUTE = range(5)
ACTION_COLUMNS = {HOST: "host_computed", LOWBIT: "lowbit_fetched", SKIP: "skipped", SUBSTITUTE: "substituted"}


def _lowbit_size(tr: Trace, cfg: ReplayConfig, hw, expert_bytes: float, params: float):
    try:
        return cost.lowbit_copy(hw, expert_bytes, params, cfg.lowbit_bits)
    except ValueError as e:
        raise ValueError(f"{tr.path or tr.meta.model}: {e}") from None


def routing_columns(tr: Trace, stream: AccessStream, cfg: ReplayConfig, rule_takes) -> tuple:
    """What an action rule reads of the router, per access in stream order (engine.Stream's weight and
    ranked), for a rule that takes an action needing it; (None, None) for the others. A rule that substitutes
    needs the trace's router_logits: without them it is refused here."""
    weight = ranked = None
    if not {LOWBIT, SKIP, SUBSTITUTE} & set(rule_takes):
        return weight, ranked
    w = tr.expert_weights()
    if w is not None:
        weight = np.ascontiguousarray(w[stream.row_order].reshape(-1), dtype=np.float32)
    if SUBSTITUTE in rule_takes:
        ranked = ranked_alternatives(tr, stream, cfg.substitute_rank)
    return weight, ranked


def ranked_alternatives(tr: Trace, stream: AccessStream, max_rank: int | None) -> np.ndarray:
    """Per stream row (token), the items of the experts its router ranked within its first `max_rank` (all:
    None) that the token did not choose, best first (router_logits; ties go to the lower expert id), padded
    with -1: the substitutes a token may take, in the order it takes them."""
    where = tr.path or tr.meta.model
    if "router_logits" not in tr.table.column_names:
        raise ValueError(f"{where}: --action substitute picks a resident expert from the router's ranking, and this "
                         f"trace has none: it needs the router_logits column (its expert_ids hold only the top-"
                         f"{tr.meta.top_k}); record one with `moesim record --record-logits`, or choose another "
                         f"--action")
    E, k = tr.meta.num_experts, tr.meta.top_k
    rank = min(max_rank or E, E)
    logits = tr.table.column("router_logits").combine_chunks().flatten().to_numpy()
    logits = logits.reshape(-1, E)[stream.row_order].astype(np.float32)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :rank]
    own = (top[:, :, None] == tr.expert_ids()[stream.row_order][:, None, :].astype(np.int64)).any(axis=2)
    # the token's own experts out, the others kept in rank order
    keep = np.argsort(own, axis=1, kind="stable")
    alt = np.take_along_axis(top, keep, axis=1)
    count = rank - own.sum(axis=1)
    width = int(count.max()) if len(count) else 0
    if len(count) and width == 0:
        raise ValueError(f"{where}: --substitute-rank {max_rank} holds only the tokens' own top-{k} experts; give "
                         f"more than {k} so a token has an alternative")
    layer = np.repeat(stream.seg_layer.astype(np.int64), np.diff(stream.seg_row_offsets))
    items = layer[:, None] * E + alt[:, :width]
    return np.where(np.arange(width)[None, :] < count[:, None], items, -1).astype(np.int32)


def expert_size(meta, cfg: ReplayConfig, hw=None) -> tuple[float, float]:
    """(bytes an expert moves and is read as, its parameters): the trace's (the mean over layers where they
    differ) or --bytes-per-expert, in the trace's dtype, or rescaled to --weight-bits (the knob, else the
    hardware file's)."""
    nbytes = cfg.bytes_per_expert if cfg.bytes_per_expert is not None else float(meta.bytes_per_expert)
    params = nbytes / dtype_bytes(meta.dtype)
    bits = (hw or cfg.hardware_spec()).weight_bits
    if bits is not None:
        nbytes = params * bits / 8
    return nbytes, params


LAYER_BYTES_KEY = "expert_bytes_per_layer"  # trace metadata (extra): one expert's bytes per MoE layer


def layer_expert_bytes(meta, cfg: ReplayConfig, hw=None) -> np.ndarray | None:
    """One expert's bytes in each MoE layer where they differ by layer (a quantised model whose layers
    mix formats: the trace's extra.expert_bytes_per_layer), rescaled like expert_size; None when every
    expert is one size, or --bytes-per-expert sets it."""
    sizes = meta.extra.get(LAYER_BYTES_KEY) if isinstance(meta.extra, dict) else None
    if cfg.bytes_per_expert is not None or sizes is None:
        return None
    sizes = np.asarray(sizes, np.float64)
    if sizes.shape != (len(meta.moe_layers),) or not (sizes > 0).all():
        raise ValueError(f"{meta.model}: the trace's {LAYER_BYTES_KEY} has {sizes.size} entries, not one "
                         f"positive size per MoE layer ({len(meta.moe_layers)}); rewrite it, or pass "
                         f"--bytes-per-expert")
    if (sizes == sizes[0]).all():
        return None
    bits = (hw or cfg.hardware_spec()).weight_bits
    if bits is not None:
        sizes = sizes / dtype_bytes(meta.dtype) * bits / 8
    return sizes


def policy_state(cfg: ReplayConfig, stream: AccessStream, cache: Cache, policy: str | None = None,
                 busy: bool | None = None):
    """The policy's initial state, and the cache with the experts the policy places before the start.
    policy: another policy than cfg's (the host tier's); busy: whether its victim searches may meet busy
    experts (default: the GPU cache's, which may in timed mode and segment accounting)."""
    policy = policy or cfg.policy
    module = policy_registry.get(policy)
    # timed: whether experts can be busy (in use by the running layer, or in flight) during a victim search
    params = {"seed": cfg.seed, "top_k": stream.top_k,
              "timed": cfg.mode == "timed" or cfg.accounting == "segment" if busy is None else busy}
    if policy == "static":
        if cfg.train is None:
            raise ValueError("the static policy pins the experts a *different* trace used most: pass train=TRACE "
                             "(--train TRACE)")
        params["train_counts"] = expert_counts(_load(cfg.train), num_layers=stream.num_layers,
                                               num_experts=stream.num_experts)
    places = hasattr(module, "warm") or hasattr(module, "pins")  # what it places must fit, whichever experts
    state = module.init(len(cache.pinned), cache.part_of, policy_slots(cache, warm=places), stream, params)
    warm = np.asarray(module.warm(state) if hasattr(module, "warm") else [], np.int32)
    cache = cache._replace(warm=warm)
    if hasattr(module, "pins"):  # the policy's own pins: held by the engine, outside the policy, like --pin
        hot = np.asarray(module.pins(state), np.int64)
        hot = hot[cache.pinned[hot] == 0]  # the user's pins are out of the capacity already
        pinned = cache.pinned.copy()
        pinned[hot] = 1
        cache = cache._replace(pinned=pinned, part_capacity=_less_pins(cache.part_capacity, cache.part_of, hot,
                                                                        cache.size))
    return state, cache


def tiers_for(tr: Trace, stream: AccessStream, cfg: ReplayConfig, hw, expert_bytes: float,
              layer_bytes: np.ndarray | None) -> tuple[Tiers, float]:
    """The host tier (one cache for all layers, of --host-capacity, under --host-policy, empty at the start:
    experts live in storage), the storage link, and the non-expert bytes that do not fit in host memory
    (paged every forward pass; their page-ins per segment in timed mode). Returns (tiers, paged bytes)."""
    n_items = stream.num_layers * stream.num_experts
    slots, size, tier_bytes = host_tier_size(tr, cfg, hw, expert_bytes, layer_bytes)
    host_cache = Cache(np.zeros(n_items, np.int32), np.array([slots], np.int64), np.zeros(n_items, np.uint8),
                       np.zeros(0, np.int32), size)
    # nothing in the host tier is ever busy: a read's slot is taken when it is issued
    state, host_cache = policy_state(cfg, stream, host_cache, policy=cfg.host_policy, busy=False)
    host_cache = host_cache._replace(part_of=None)
    paged = cost.paged_bytes(hw, tr.meta, tier_bytes)
    if hw.storage_bandwidth is None:  # count mode without a storage link: hits only
        link, page_s = Link(0.0, 0.0, 1, 1, 1.0, 1), np.zeros(stream.num_segments)
    else:
        item_bytes = float(expert_bytes) if layer_bytes is None else np.repeat(layer_bytes, stream.num_experts)
        link = Link(cost.storage_lane_seconds(item_bytes, hw), float(hw.storage_latency), int(hw.storage_lanes),
                    int(hw.storage_lanes), 1.0, int(hw.storage_stripes))
        page_s = cost.page_seconds(stream, tr.meta, hw, paged)
    return new_tiers(host_cache, state, link, page_s), paged


def host_tier_size(tr: Trace, cfg: ReplayConfig, hw, expert_bytes: float,
                   layer_bytes: np.ndarray | None) -> tuple[int, np.ndarray | None, float]:
    """The host tier from --host-capacity: (its capacity, in experts, or in bytes where a capacity in bytes meets
    sizes that differ by layer; those sizes per expert, else None; the bytes it takes of host memory)."""
    E = tr.meta.num_experts
    n_items = tr.meta.num_moe_layers * E
    cap = cfg.host_capacity
    where = tr.path or tr.meta.model
    size = None
    if cap.kind in ("bytes", "auto"):
        non_expert = float(tr.meta.dense_bytes_per_layer) * tr.meta.num_layers
        total = cap.value if cap.kind == "bytes" else max(float(hw.host_memory) - non_expert, 0.0)
        if hw.host_memory is not None and total > hw.host_memory:
            raise ValueError(f"--host-capacity {cap.text} is more than the host's {hw.host_memory / 2**30:.4g} GiB "
                             f"(--host-memory); lower one or raise the other")
        if layer_bytes is not None:  # each layer's experts at their own size, as a GPU cache of bytes fills
            size = np.repeat(np.round(layer_bytes).astype(np.int64), E)
            slots = min(int(total), int(size.sum()))
            tier_bytes = float(slots)
        else:
            if not expert_bytes:
                raise ValueError(f"{where}: --host-capacity {cap.text} is in bytes but the trace does not say how big "
                                 f"an expert is; pass --bytes-per-expert, or give the host tier in experts")
            slots = min(int(total // expert_bytes), n_items)
            tier_bytes = slots * float(expert_bytes)
    else:
        slots = min(cap.experts(num_items=n_items, num_layers=tr.meta.num_moe_layers,
                                bytes_per_expert=expert_bytes)[0], n_items)
        tier_bytes = slots * float(expert_bytes)
    return slots, size, tier_bytes


def _held(cache: Cache, expert_bytes: float) -> int:
    """Experts a cache holds: its slots and pins, or with capacities in bytes as many as fit at the mean size."""
    n_items = len(cache.pinned)
    if cache.size is None:
        return int(cache.part_capacity.sum()) + int(cache.pinned.sum())
    held_bytes = int(cache.part_capacity.sum()) + int(cache.size[cache.pinned.astype(bool)].sum())
    return min(int(held_bytes // expert_bytes), n_items)


def _tier_fields(tiers: Tiers | None, paged: float, expert_bytes: float, layer_bytes: np.ndarray | None,
                 num_experts: int, timed: bool) -> dict[str, Any]:
    """The host tier's hits (host_hit_rate: host hits / host lookups, the GPU's fetches: its fetched misses,
    its prefetches and the experts it computed on the host), the storage reads and bytes they cost, the stall
    spent waiting on storage reads, and the non-expert page-ins (paged_bytes per forward pass)."""
    if tiers is None:
        return {"host_hits": 0, "host_misses": 0, "host_hit_rate": math.nan, "storage_reads": 0,
                "storage_bytes": 0.0, "storage_stall_s": 0.0 if timed else math.nan,
                "paging_s": 0.0 if timed else math.nan, "paged_bytes": 0.0}
    c = tiers.c
    hits, misses = int(c[HOST_HITS]), int(c[HOST_MISSES])
    reads = tiers.reads_of
    nbytes = float(reads.sum()) * expert_bytes if layer_bytes is None else \
        float(reads.reshape(-1, num_experts).sum(axis=1) @ layer_bytes)
    return {"host_hits": hits, "host_misses": misses,
            "host_hit_rate": hits / (hits + misses) if hits + misses else math.nan,
            "storage_reads": misses, "storage_bytes": nbytes,
            "storage_stall_s": float(c[STORAGE_STALL_S]) if timed else math.nan,
            "paging_s": float(c[PAGING_S]) if timed else math.nan, "paged_bytes": float(paged)}


def _raise_tier_error(tiers: Tiers | None, cfg: ReplayConfig) -> None:
    if tiers is not None and tiers.c[TIER_ERROR]:
        raise RuntimeError(f"host policy {cfg.host_policy!r} broke the policy contract: its victim() returned "
                           f"{int(tiers.c[TIER_BAD_VICTIM])}, which is not a resident, unpinned expert of the host "
                           f"tier; see moesim.policies for the contract")


def cache_for(trace: Trace, stream: AccessStream, cfg: ReplayConfig, expert_bytes: float,
              gpu_memory: float | None = None, budget: cost.MemoryBudget | None = None, *,
              layer_bytes: np.ndarray | None = None) -> Cache:
    """The engine's cache for a config: partitions and their capacity in experts, pins taken out of them;
    budget: the GPU memory budget `--capacity auto` takes its experts from (cost.memory_budget).
    layer_bytes (layer_expert_bytes): with a capacity in bytes (or auto), the cache fills by bytes, each
    layer's experts at their own size, and its capacities are bytes."""
    L, E = stream.num_layers, stream.num_experts
    n_items = L * E
    cap, _ = cfg.capacity.experts(num_items=n_items, num_layers=L, bytes_per_expert=expert_bytes,
                                  gpu_memory=gpu_memory, budget=budget)
    if layer_bytes is not None and cfg.capacity.kind in ("bytes", "auto"):
        return _byte_cache(trace, stream, cfg, layer_bytes, budget)
    if cfg.capacity.kind == "layers":  # a budget per MoE layer (moesim plan --target dynamic)
        part_of = np.repeat(np.arange(L, dtype=np.int32), E)
        part_cap = np.array(cfg.capacity.per_moe_layer(trace.meta.moe_layers, E), np.int64)
    else:
        part_of, part_cap = partitions(stream, cfg.scope, cap)
    pinned = _pins(trace, cfg, n_items)
    return Cache(part_of, _less_pins(part_cap, part_of, pinned.astype(bool)), pinned, np.zeros(0, np.int32))


def _byte_cache(trace: Trace, stream: AccessStream, cfg: ReplayConfig, layer_bytes: np.ndarray,
                budget: cost.MemoryBudget | None) -> Cache:
    """A cache whose capacity is bytes: each partition holds what fits of its budget, pins taken out."""
    L, E = stream.num_layers, stream.num_experts
    size = np.repeat(np.round(layer_bytes).astype(np.int64), E)
    total = int(budget.expert_bytes if cfg.capacity.kind == "auto" else cfg.capacity.value)
    if cfg.scope == "global":
        part_of = np.zeros(L * E, np.int32)
        part_cap = np.array([min(total, int(size.sum()))], np.int64)
    else:
        part_of = np.repeat(np.arange(L, dtype=np.int32), E)
        part_cap = np.minimum(total // L, size.reshape(L, E).sum(axis=1)).astype(np.int64)
    pinned = _pins(trace, cfg, L * E)
    return Cache(part_of, _less_pins(part_cap, part_of, pinned.astype(bool), size), pinned, np.zeros(0, np.int32),
                 size)


def _less_pins(part_capacity: np.ndarray, part_of: np.ndarray, pins: np.ndarray, size: np.ndarray | None = None):
    """Each partition's capacity less what its pins take (pins use cache memory: the policy gets the rest): a
    slot each, or their bytes when capacities are bytes. pins: a mask or the pinned items."""
    left = part_capacity.copy()
    np.subtract.at(left, part_of[pins], 1 if size is None else size[pins])
    return np.maximum(left, 0)


def policy_slots(cache: Cache, warm: bool = False) -> np.ndarray:
    """Per partition, the experts a policy may have to keep track of: its capacity in experts, or with
    capacities in bytes the most that fit (its smallest experts first). warm: the fewest that fit (its
    largest first), so that any set of that many experts a policy places before the start fits."""
    if cache.size is None:
        return cache.part_capacity
    part_of = np.zeros(len(cache.size), np.int32) if cache.part_of is None else cache.part_of
    free = ~cache.pinned.astype(bool)
    out = np.zeros(len(cache.part_capacity), np.int64)
    for p, cap in enumerate(cache.part_capacity):
        sizes = np.sort(cache.size[free & (part_of == p)])
        if warm:
            sizes = sizes[::-1]
        out[p] = int(np.searchsorted(np.cumsum(sizes), cap, side="right"))
    return out


def partitions(stream: AccessStream, scope: str, capacity_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(partition of each item, capacity of each partition in experts)."""
    L, E = stream.num_layers, stream.num_experts
    if scope == "global":
        return np.zeros(L * E, np.int32), np.array([min(capacity_experts, L * E)], np.int64)
    return np.repeat(np.arange(L, dtype=np.int32), E), np.full(L, min(capacity_experts // L, E), np.int64)


def _pins(trace: Trace, cfg: ReplayConfig, n_items: int) -> np.ndarray:
    """uint8 per item: pinned by --pin or --pin-file."""
    pinned = np.zeros(n_items, np.uint8)
    for layer, expert in cfg.pin or ():
        pinned[_item(trace.meta, layer, expert)] = 1
    for layer, expert in cfg.pin_file.pins if cfg.pin_file else ():
        try:
            pinned[_item(trace.meta, layer, expert)] = 1
        except ValueError as e:
            raise ValueError(f"--pin-file {cfg.pin_file.path}: {e}") from None
    return pinned


def _raise_engine_error(c: np.ndarray, cfg: ReplayConfig) -> None:
    if c[ERROR] == ERR_VICTIM:
        raise RuntimeError(f"policy {cfg.policy!r} broke the policy contract: its victim() returned "
                           f"{int(c[BAD_VICTIM])}, which is not a resident, unpinned, idle expert of the partition "
                           f"(or returned -1 while one was); see moesim.policies for the contract")


def _load(trace: Trace | str | os.PathLike) -> Trace:
    return trace if isinstance(trace, Trace) else read_trace(trace)


def _item(meta, layer: int, expert: int) -> int:
    if layer not in meta.moe_layers:
        raise ValueError(f"pin ({layer}, {expert}): layer {layer} is not a MoE layer ({meta.moe_layers})")
    if not 0 <= expert < meta.num_experts:
        raise ValueError(f"pin ({layer}, {expert}): expert out of range 0..{meta.num_experts - 1}")
    return meta.moe_layers.index(layer) * meta.num_experts + expert


def expert_counts(trace: Trace, *, num_layers: int, num_experts: int) -> np.ndarray:
    """Activations of each (layer, expert) in a trace, as a flat per-item array."""
    trace.check_same_model(num_layers, num_experts)
    return trace.expert_counts().reshape(-1).astype(np.float64)


def _transfer_fields(c: np.ndarray, misses: np.ndarray, expert_bytes: float, acted: np.ndarray,
                     lowbit_bytes: float, layer_bytes: np.ndarray | None = None) -> dict[str, Any]:
    """Prefetch counts and bytes over the link: every fetched miss is a demand fetch, every prefetch one more.
    With sizes by layer a fetched miss moves its layer's bytes; prefetches count at the mean (the engine
    counts them, not their layers)."""
    # a miss computed on the host, skipped or substituted moves nothing; a low-bit copy moves its own bytes
    fetched = misses - acted[:, 1:].sum(axis=1)
    demand = float(fetched.sum()) * expert_bytes if layer_bytes is None else float(fetched @ layer_bytes)
    if acted[:, LOWBIT].any():
        demand += float(acted[:, LOWBIT].sum()) * lowbit_bytes
    prefetch = c[PF_ISSUED] * expert_bytes
    return {"prefetch_issued": int(c[PF_ISSUED]), "prefetch_used": int(c[PF_USED]), "prefetch_late": int(c[PF_LATE]),
            "prefetch_wasted": int(c[PF_WASTED]), "prefetch_harmful": int(c[PF_HARMFUL]),
            "prefetch_cancelled": int(c[PF_CANCELLED]),
            "bytes_demand": demand, "bytes_prefetch": prefetch, "bytes_wasted": c[PF_WASTED] * expert_bytes,
            "bytes_moved": demand + prefetch}


def _action_fields(c: np.ndarray, acted: np.ndarray, weights_known: bool) -> dict[str, Any]:
    """What the misses that were not fetched did: experts per action; for a low-bit copy, a skip or a
    substitute also the tokens it concerned and the routing weight those tokens gave the missing expert (the
    quality at stake), NaN where the trace has no expert_weights."""
    fields = {"host_computed": int(acted[:, HOST].sum())}
    for act in (LOWBIT, SKIP, SUBSTITUTE):
        name, n = ACTION_COLUMNS[act], int(acted[:, act].sum())
        k = LOWBIT_TOKENS + 2 * (act - LOWBIT)
        fields[name] = n
        fields[f"{name.split('_')[0]}_tokens"] = int(c[k])
        fields[f"{name.split('_')[0]}_weight"] = float(c[k + 1]) if weights_known or not n else math.nan
    return fields


def _hit_fields(hits, misses, stream, seg_hits, seg_misses) -> dict[str, Any]:
    """Hits and misses, all and by phase (a step is prefill or decode); a late prefetch (still in flight
    when its layer routed, so it stalls) counts as a hit here and in prefetch_late."""
    h, m = int(hits.sum()), int(misses.sum())
    rate = (lambda a, b: a / (a + b) if a + b else math.nan)
    if seg_hits is None:  # one phase throughout (count mode per access records nothing then)
        decode = bool(len(stream.step_phase)) and bool(stream.step_phase[0] == 1)
        hd, md = (h, m) if decode else (0, 0)
        return {"hits": h, "misses": m, "hit_rate": rate(h, m), "hits_decode": hd, "misses_decode": md,
                "hit_rate_decode": rate(hd, md), "hit_rate_prefill": rate(h - hd, m - md)}
    decode = stream.step_phase[stream.seg_step] == 1
    hd, md = int(seg_hits[decode].sum()), int(seg_misses[decode].sum())
    hp, mp = h - hd, m - md
    return {"hits": h, "misses": m, "hit_rate": rate(h, m), "hits_decode": hd, "misses_decode": md,
            "hit_rate_decode": rate(hd, md), "hit_rate_prefill": rate(hp, mp)}


def _time_fields(stream: AccessStream, step_end, stall, c, per_step: bool, trace: Trace, prefill_chunk: int,
                 arrivals: np.ndarray | None) -> dict[str, Any]:
    if step_end is None:  # count mode: no time
        return {k: math.nan for k in ("stall_s", "total_s", "tpot_s", "ttft_s")}
    step_start = np.r_[0.0, step_end[:-1]]
    step_time = step_end - step_start
    # a step cannot start before its requests have arrived: shifted by the GPU's idle time so far (0 without
    # arrivals, which leaves every time as the engine gave it, bit for bit)
    idle = _idle_before(stream, step_end, arrivals)
    end, start = step_end + idle, step_start + idle
    valid = stream.request_first_step < stream.num_steps  # request ids with no rows are gaps
    first_out = stream.request_first_output_step[valid]
    if arrivals is None:
        # time to first token: from the request's first step starting to its first token's step ending
        ttft = end[first_out] - start[stream.request_first_step[valid]]
    else:
        ttft = end[first_out] - arrivals[np.flatnonzero(valid)]
    emitting = stream.step_outputs > 0
    later = emitting.copy()
    later[first_out] = False
    tpot_steps = later if later.any() else emitting
    total = float(end[-1]) if len(end) else 0.0
    fields = {
        "total_s": total,
        "stall_s": float(stall.sum()),
        "ttft_s": float(np.mean(ttft)) if len(ttft) else math.nan,
        "tpot_s": float(step_time[tpot_steps].mean()) if tpot_steps.any() else math.nan,
        "output_tokens": int(stream.step_outputs.sum()),
        "gpu_compute_s": float(c[GPU_S]), "host_compute_s": float(c[HOST_S]), "overhead_s": float(c[OVERHEAD_S]),
        "host_computed": int(c[HOST_COMPUTED]),
    }
    tpot = _request_tpot(stream, end, trace, prefill_chunk, valid)
    for name, values in (("ttft", ttft), ("tpot", tpot)):
        q = np.percentile(values, PERCENTILES) if len(values) else [math.nan] * len(PERCENTILES)
        fields.update({f"{name}_p{p}_s": float(v) for p, v in zip(PERCENTILES, q)})
    fields["tokens_per_s"] = fields["output_tokens"] / total if total > 0 else math.nan
    fields["idle_s"] = float(idle[-1]) if len(idle) else 0.0
    if per_step:
        fields["step_s"] = step_time.tolist()
    return fields


PERCENTILES = (50, 90, 99)  # of per-request TTFT and TPOT; numpy's default (linear between order statistics)


def _idle_before(stream: AccessStream, step_end: np.ndarray, arrivals: np.ndarray | None) -> np.ndarray:
    """Per step, the GPU's idle time before it waiting for requests to arrive, summed over the steps so far.

    Step s starts at max(end of step s-1, the last arrival among its requests) and lasts what the engine
    timed; so its end is step_end[s] + g[s], g[s] = max(0, max over j <= s of arrival(j) - step_end[j-1]).
    (The engine's link does not work ahead while the GPU waits: an approximation that can only add time.)
    """
    if arrivals is None or not len(step_end):
        return np.zeros(len(step_end))
    row_step = np.repeat(stream.seg_step.astype(np.int64), np.diff(stream.seg_row_offsets))
    step_arrival = np.zeros(len(step_end))
    np.maximum.at(step_arrival, row_step, arrivals[stream.row_request])
    ready = step_arrival - np.r_[0.0, step_end[:-1]]
    return np.maximum.accumulate(np.maximum(ready, 0.0))


def _request_tpot(stream: AccessStream, end: np.ndarray, trace: Trace, prefill_chunk: int,
                  valid: np.ndarray) -> np.ndarray:
    """Per request with two tokens out or more: (its last token's step end - its first's) / (tokens - 1),
    the time per output token a user sees (vLLM's benchmark defines it so)."""
    req = trace.column("request_id").astype(np.int64)
    pos = trace.column("token_pos")
    step_of_row = np.full(len(req), -1, np.int64)
    step_of_row[stream.row_order] = np.repeat(stream.seg_step.astype(np.int64), np.diff(stream.seg_row_offsets))
    # a token's rows are adjacent in the trace's order; a token is out when decoded (or replayed as decoded)
    first = np.r_[True, (req[1:] != req[:-1]) | (pos[1:] != pos[:-1])] if len(req) else np.zeros(0, bool)
    out = first & (step_of_row >= 0) & ((trace.column("phase") == DECODE) | (prefill_chunk == 1))
    n_req = len(valid)
    tokens = np.bincount(req[out], minlength=n_req)[:n_req]
    last = np.full(n_req, -1, np.int64)
    np.maximum.at(last, req[out], step_of_row[out])
    first_out = stream.request_first_output_step
    ok = valid & (tokens >= 2)
    return (end[last[ok]] - end[first_out[ok]]) / (tokens[ok] - 1)
