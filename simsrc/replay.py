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
from .engine import (BAD_VICTIM, ERR_VICTIM, ERROR, GPU_S, HOST_COMPUTED, HOST_S, OVERHEAD_S, PF_CANCELLED,
                     PF_HARMFUL, PF_ISSUED, PF_LATE, PF_USED, PF_WASTED, Cache, Compute, Host, Link, PrefetchPlan,
                     Stream, count_replay, timed_replay)
from .predict import Prefetch
from .trace import AccessStream, Trace, access_stream, read_trace


def replay(trace: Trace | str | os.PathLike, config: ReplayConfig | None = None, *,
           stream: AccessStream | None = None, prefetch: Prefetch | None = None, **overrides) -> dict[str, Any]:
    """Replay a trace against one cache configuration; returns the result row (a flat dict).

    `config` and keyword `overrides` name the knobs of moesim.config.KNOBS (policy, capacity, scope, mode,
    predictor, hardware, bandwidth, ...; `moesim replay --help` and the README list them with their units).
    stream: an access stream of this trace the caller keeps for more replays; prefetch: a ready plan.
    """
    cfg = ReplayConfig.make(config, **overrides)
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    reuse_stream = stream is not None  # the caller keeps it for more replays: predictions for it may be reused
    stream = stream if stream is not None else access_stream(tr, prefill_chunk=cfg.prefill_chunk)
    hw = cfg.hardware_spec()
    expert_bytes, params = expert_size(tr.meta, cfg)
    cache = cache_for(tr, stream, cfg, expert_bytes, hw.gpu_memory)
    state, cache = policy_state(cfg, stream, cache)
    horizon = 0
    if prefetch is None and cfg.predictor != "none":
        from .predict import plan as prefetch_plan
        prefetch, horizon = prefetch_plan(
            tr, stream, cfg.predictor, hardware=hw, expert_bytes=expert_bytes, horizon=cfg.horizon,
            top_n=cfg.top_n, threshold=cfg.threshold, adaptive=cfg.adaptive, train=cfg.train, reuse=reuse_stream,
            step_cap_bytes=cfg.prefetch_bytes_per_step)
    prefetch = prefetch or Prefetch.none(stream.num_segments)
    plan = PrefetchPlan(prefetch.offsets, prefetch.item, prefetch.target_seg, int(prefetch.step_cap))
    n_items, held = len(cache.pinned), int(cache.part_capacity.sum()) + int(cache.pinned.sum())
    resolved = {"horizon": horizon, "top_n": cfg.top_n if cfg.top_n is not None else
                (stream.top_k if cfg.predictor != "none" else 0), "capacity_experts": held,
                "capacity_fraction": held / n_items, "bytes_per_expert": expert_bytes,
                "pinned_experts": int(cache.pinned.sum())}
    row = {"trace": str(tr.path) if tr.path else tr.meta.model, "model": tr.meta.model,
           **row_inputs(cfg, hw, resolved), "moesim_version": __version__, "accesses": len(stream),
           "tokens": int(stream.step_tokens.sum()), "steps": stream.num_steps}
    # a global cache smaller than one token's experts over all layers thrashes under recency policies
    row["token_footprint"] = stream.num_layers * stream.top_k
    row["below_token_footprint"] = cfg.scope == "global" and 0 < held < row["token_footprint"]
    engine_stream = Stream(stream.item, stream.seg_offsets, stream.seg_layer, stream.seg_step)
    if cfg.mode == "count":
        # per access, which accesses hit is recorded only where a trace mixes prefill and decode steps
        mixed = cfg.accounting == "access" and len(np.unique(stream.step_phase)) > 1
        hits, misses, c, seg_hits, seg_misses = count_replay(engine_stream, cache, plan, state, stream.num_layers,
                                                 accounting=cfg.accounting,
                                                 record=np.zeros(len(stream), np.uint8) if mixed else None)
        stall, step_end = None, None
    else:
        hits, misses, stall, step_end, seg_hits, seg_misses, c = _timed(tr, stream, engine_stream, cache, plan,
                                                                        state, cfg, hw, expert_bytes, params)
    _raise_engine_error(c, cfg)
    row.update(_hit_fields(hits, misses, stream, seg_hits, seg_misses))
    row.update(_time_fields(stream, step_end, stall, c, cfg.per_step))
    row.update(_transfer_fields(c, misses, expert_bytes))
    if cfg.per_layer:
        # per MoE layer, in order; moe_layers says which of the model's layers each entry is
        row.update(moe_layers=[int(n) for n in tr.meta.moe_layers], hits_per_layer=hits.tolist(),
                   misses_per_layer=misses.tolist())
        if stall is not None:
            row["stall_per_layer_s"] = stall.tolist()
    return row


def _timed(tr, stream, engine_stream, cache, plan, state, cfg, hw, expert_bytes, params):
    """The timed engine's inputs from the cost model, and its run."""
    if not expert_bytes:
        raise ValueError(f"{tr.path or tr.meta.model}: the trace does not say how many bytes an expert has "
                         f"(bytes_per_expert=0); timed mode needs it: pass bytes_per_expert (--bytes-per-expert)")
    from .actions import ACTIONS
    ec = cost.expert_cost(hw, expert_bytes, tr.meta.dtype, params=params)
    link = Link(expert_bytes / hw.bandwidth, hw.latency, int(hw.copy_engines), float(hw.overlap))
    context = cost.segment_context(tr, stream) if cfg.kv_bytes_per_token else None
    dense = cost.dense_seconds(stream, tr.meta, hw, expert_bytes, context=context,
                               kv_bytes_per_token=cfg.kv_bytes_per_token or 0.0)
    host = Host(hw.miss_overhead, *cost.host_expert_cost(hw, expert_bytes, params))
    rule = ACTIONS.get(cfg.action).init({"host_below": cfg.host_below})
    out, c = timed_replay(engine_stream, cache, link, Compute(dense, ec.per_token, ec.floor, ec.launch), host, plan,
                          state, rule, stream.num_layers, stream.num_steps)
    return out.hits, out.misses, out.stall, out.step_end, out.seg_hits, out.seg_misses, c


def expert_size(meta, cfg: ReplayConfig) -> tuple[float, float]:
    """(bytes an expert moves and is read as, its parameters): the trace's or --bytes-per-expert, in the
    trace's dtype, or rescaled to --weight-bits."""
    nbytes = cfg.bytes_per_expert if cfg.bytes_per_expert is not None else float(meta.bytes_per_expert)
    params = nbytes / dtype_bytes(meta.dtype)
    if cfg.weight_bits is not None:
        nbytes = params * cfg.weight_bits / 8
    return nbytes, params


def policy_state(cfg: ReplayConfig, stream: AccessStream, cache: Cache):
    """The policy's initial state, and the cache with the experts the policy places before the start."""
    module = policy_registry.get(cfg.policy)
    # timed: whether experts can be busy (in use by the running layer, or in flight) during a victim search
    params = {"seed": cfg.seed, "top_k": stream.top_k, "timed": cfg.mode == "timed" or cfg.accounting == "segment"}
    if cfg.policy == "static":
        if cfg.train is None:
            raise ValueError("the static policy pins the experts a *different* trace used most: pass train=TRACE "
                             "(--train TRACE)")
        params["train_counts"] = expert_counts(_load(cfg.train), num_layers=stream.num_layers,
                                               num_experts=stream.num_experts)
    state = module.init(len(cache.pinned), cache.part_of, cache.part_capacity, stream, params)
    warm = np.asarray(module.warm(state) if hasattr(module, "warm") else [], np.int32)
    return state, cache._replace(warm=warm)


def cache_for(trace: Trace, stream: AccessStream, cfg: ReplayConfig, expert_bytes: float,
              gpu_memory: float | None = None) -> Cache:
    """The engine's cache for a config: partitions and their capacity in experts, pins taken out of them."""
    L, E = stream.num_layers, stream.num_experts
    n_items = L * E
    cap, _ = cfg.capacity.experts(num_items=n_items, num_layers=L, bytes_per_expert=expert_bytes,
                                  gpu_memory=gpu_memory)
    if cfg.capacity.kind == "layers":  # a budget per MoE layer (moesim plan --target dynamic)
        part_of = np.repeat(np.arange(L, dtype=np.int32), E)
        part_cap = np.array(cfg.capacity.per_moe_layer(trace.meta.moe_layers, E), np.int64)
    else:
        part_of, part_cap = partitions(stream, cfg.scope, cap)
    pinned = np.zeros(n_items, np.uint8)
    for layer, expert in cfg.pin or ():
        pinned[_item(trace.meta, layer, expert)] = 1
    for layer, expert in cfg.pin_file.pins if cfg.pin_file else ():
        try:
            pinned[_item(trace.meta, layer, expert)] = 1
        except ValueError as e:
            raise ValueError(f"--pin-file {cfg.pin_file.path}: {e}") from None
    # pins use cache memory: the policy gets what is left in each partition
    np.subtract.at(part_cap, part_of[pinned.astype(bool)], 1)
    part_cap = np.maximum(part_cap, 0)
    return Cache(part_of, part_cap, pinned, np.zeros(0, np.int32))


def partitions(stream: AccessStream, scope: str, capacity_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(partition of each item, capacity of each partition in experts)."""
    L, E = stream.num_layers, stream.num_experts
    if scope == "global":
        return np.zeros(L * E, np.int32), np.array([min(capacity_experts, L * E)], np.int64)
    return np.repeat(np.arange(L, dtype=np.int32), E), np.full(L, min(capacity_experts // L, E), np.int64)


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


def _transfer_fields(c: np.ndarray, misses: np.ndarray, expert_bytes: float) -> dict[str, Any]:
    """Prefetch counts and bytes over the link: every fetched miss is a demand fetch, every prefetch one more."""
    # a miss computed on the host moves nothing
    demand, prefetch = (float(misses.sum()) - c[HOST_COMPUTED]) * expert_bytes, c[PF_ISSUED] * expert_bytes
    return {"prefetch_issued": int(c[PF_ISSUED]), "prefetch_used": int(c[PF_USED]), "prefetch_late": int(c[PF_LATE]),
            "prefetch_wasted": int(c[PF_WASTED]), "prefetch_harmful": int(c[PF_HARMFUL]),
            "prefetch_cancelled": int(c[PF_CANCELLED]),
            "bytes_demand": demand, "bytes_prefetch": prefetch, "bytes_wasted": c[PF_WASTED] * expert_bytes,
            "bytes_moved": demand + prefetch}


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


def _time_fields(stream: AccessStream, step_end, stall, c, per_step: bool) -> dict[str, Any]:
    if step_end is None:  # count mode: no time
        return {k: math.nan for k in ("stall_s", "total_s", "tpot_s", "ttft_s")}
    step_start = np.r_[0.0, step_end[:-1]]
    step_time = step_end - step_start
    valid = stream.request_first_step < stream.num_steps  # request ids with no rows are gaps
    first_out = stream.request_first_output_step[valid]
    # time to first token: from the request's first step starting to its first token's step ending
    ttft = step_end[first_out] - step_start[stream.request_first_step[valid]]
    emitting = stream.step_outputs > 0
    later = emitting.copy()
    later[first_out] = False
    tpot_steps = later if later.any() else emitting
    fields = {
        "total_s": float(step_end[-1]) if len(step_end) else 0.0,
        "stall_s": float(stall.sum()),
        "ttft_s": float(np.mean(ttft)) if len(ttft) else math.nan,
        "tpot_s": float(step_time[tpot_steps].mean()) if tpot_steps.any() else math.nan,
        "output_tokens": int(stream.step_outputs.sum()),
        "gpu_compute_s": float(c[GPU_S]), "host_compute_s": float(c[HOST_S]), "overhead_s": float(c[OVERHEAD_S]),
        "host_computed": int(c[HOST_COMPUTED]),
    }
    if per_step:
        fields["step_s"] = step_time.tolist()
    return fields
