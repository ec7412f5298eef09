"""replay(): join a trace, a policy, a predictor and hardware, run the engine, return one result row."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import __version__
from . import policies as policy_registry
from .engine import (ERR_CAPACITY, ERROR, PF_CANCELLED, PF_HARMFUL, PF_ISSUED, PF_LATE, PF_USED, PF_WASTED,
                     count_replay, timed_replay)
from .hardware import (Hardware, dtype_bytes, get_hardware, parse_bandwidth_gbps, parse_bytes, parse_seconds,
                       parse_tflops)
from .trace import AccessStream, Trace, access_stream, read_trace

MODES = ("timed", "count")
SCOPES = ("global", "per-layer")


@dataclass
class Prefetch:
    """A prefetch plan for the engine: per segment, the experts to fetch and the segment that needs them."""

    offsets: np.ndarray     # int64 [segments+1]
    item: np.ndarray        # int32: layer_index * num_experts + expert
    target_seg: np.ndarray  # int64: segment whose layer the prediction is for
    step_cap: int = -1      # most prefetches started per step (-1: no cap)

    @classmethod
    def none(cls, num_segments: int) -> "Prefetch":
        return cls(np.zeros(num_segments + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))


def parse_capacity(capacity: str | int | float, *, num_items: int, num_layers: int,
                   bytes_per_expert: float) -> tuple[int, bool]:
    """Capacity as experts -> (experts, per_layer_given).

    '10%' of all experts; '166' experts; '12GiB' of expert memory; '4/layer' experts per layer.
    """
    if isinstance(capacity, (int, np.integer)):
        return int(capacity), False
    if isinstance(capacity, float):
        # a float is a fraction of all experts (0.25, 1.0); a count is an int, so 1.0 cannot mean "1 expert"
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity {capacity!r}: a float is a fraction of all experts, in (0, 1]; "
                             f"write an expert count as an integer (166) or a percentage ('10%')")
        return int(math.floor(capacity * num_items + 1e-9)), False
    text = str(capacity).strip()
    m = re.fullmatch(r"([0-9.]+)\s*%", text)
    if m:
        return int(math.floor(float(m.group(1)) / 100 * num_items + 1e-9)), False
    m = re.fullmatch(r"([0-9]+)\s*/\s*layer", text)
    if m:
        return int(m.group(1)) * num_layers, True
    if re.fullmatch(r"[0-9]+", text):
        return int(text), False
    if not bytes_per_expert:
        raise ValueError(f"capacity {text!r} is in bytes but the trace does not say how big an expert is; "
                         f"pass bytes_per_expert (--bytes-per-expert)")
    try:
        return int(parse_bytes(text) // bytes_per_expert), False
    except ValueError:
        raise ValueError(f"cannot read capacity {text!r}; write 10%, 166 (experts), 4/layer or 12GiB") from None


def partitions(stream: AccessStream, scope: str, capacity_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(partition of each item, capacity of each partition)."""
    L, E = stream.num_layers, stream.num_experts
    if scope == "global":
        return np.zeros(L * E, np.int32), np.array([min(capacity_experts, L * E)], np.int64)
    if scope == "per-layer":
        per = min(capacity_experts // L, E)
        return np.repeat(np.arange(L, dtype=np.int32), E), np.full(L, per, np.int64)
    raise ValueError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")


def _load(trace: Trace | str | os.PathLike) -> Trace:
    return trace if isinstance(trace, Trace) else read_trace(trace)


def replay(
    trace: Trace | str | os.PathLike,
    *,
    policy: str = "lru",
    capacity: str | int | float = "10%",
    scope: str = "global",
    mode: str = "timed",
    hardware: str | Hardware = "a100-pcie4",
    prefill_chunk: int = 1,
    predictor: str = "none",
    prefetch: Prefetch | None = None,
    bandwidth: str | float | None = None,
    latency: str | float | None = None,
    copy_engines: int | None = None,
    gpu_tflops: str | float | None = None,
    hbm: str | float | None = None,
    bytes_per_expert: str | int | None = None,
    pin: list[tuple[int, int]] | None = None,
    train: Trace | str | os.PathLike | None = None,
    seed: int = 0,
    per_layer: bool = False,
    stream: AccessStream | None = None,
    horizon: int = 1,
    top_n: int | None = None,
    threshold: float | None = None,
    prefetch_bytes_per_step: str | float | None = None,
    adaptive: bool = False,
) -> dict[str, Any]:
    """Replay a trace against one cache configuration; returns the result row (a flat dict).

    policy: a name in moesim.policies (lru, fifo, lfu, lfuda, belady, random, static).
    capacity: '10%', 166 (experts), '12GiB', or '4/layer'. scope: 'global' or 'per-layer'.
    mode: 'timed' (discrete-event, with the link and compute) or 'count' (hits only).
    prefill_chunk: prefill tokens per step; 1 replays prompts as if decoded, 0 keeps recorded steps.
    pin: (layer, expert) pairs resident throughout, outside the policy and its capacity.
    train: a different trace whose expert frequencies drive the 'static' policy (and the
    moe-infinity and frequency predictors).
    predictor: none, previous, recorded, moe-infinity, learned:MODEL, frequency, oracle (moesim.predict);
    it builds the prefetch plan unless `prefetch` is given. horizon: layers ahead (the cap when adaptive);
    top_n: experts per target layer (default top-k); threshold: least score; prefetch_bytes_per_step:
    most prefetch bytes started per step; adaptive: pick the horizon that lands prefetches just in time.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    tr = _load(trace)
    meta = tr.meta
    reuse_stream = stream is not None  # the caller keeps it for more replays: predictions for it may be reused
    if stream is None:
        stream = access_stream(tr, prefill_chunk=prefill_chunk)
    L, E = stream.num_layers, stream.num_experts
    n_items = L * E
    hw = hardware if isinstance(hardware, Hardware) else get_hardware(hardware)
    hw = hw.with_overrides(
        bandwidth_gbps=None if bandwidth is None else parse_bandwidth_gbps(bandwidth),
        latency_us=None if latency is None else parse_seconds(latency) * 1e6,
        copy_engines=copy_engines, gpu_tflops=None if gpu_tflops is None else parse_tflops(gpu_tflops),
        hbm_gbps=None if hbm is None else parse_bandwidth_gbps(hbm))
    expert_bytes = float(parse_bytes(bytes_per_expert)) if bytes_per_expert is not None else float(meta.bytes_per_expert)

    cap_experts, _ = parse_capacity(capacity, num_items=n_items, num_layers=L, bytes_per_expert=expert_bytes)
    part_of, part_cap = partitions(stream, scope, cap_experts)
    pinned = np.zeros(n_items, np.uint8)
    if pin:
        for layer, expert in pin:
            pinned[_item(meta, layer, expert)] = 1
        # pins use cache memory: the policy gets what is left in each partition
        np.subtract.at(part_cap, part_of[pinned.astype(bool)], 1)
        part_cap = np.maximum(part_cap, 0)

    module = policy_registry.get(policy)
    policy = policy_registry.canonical(policy)
    params: dict[str, Any] = {"seed": seed, "top_k": stream.top_k, "timed": mode == "timed"}
    if policy == "static":
        if train is None:
            raise ValueError("the static policy pins the experts a *different* trace used most: pass train=TRACE "
                             "(--train TRACE)")
        params["train_counts"] = expert_counts(_load(train), num_layers=L, num_experts=E)
    state = module.init(n_items, part_of, part_cap, stream, params)
    warm = (module.warm(state) if hasattr(module, "warm") else np.zeros(0, np.int32)).astype(np.int32)
    horizon_used = 0
    if prefetch is None and predictor != "none":
        from .predict import plan as prefetch_plan
        prefetch, horizon_used = prefetch_plan(
            tr, stream, predictor, hardware=hw, expert_bytes=expert_bytes, horizon=horizon, top_n=top_n,
            threshold=threshold, adaptive=adaptive, train=train, reuse=reuse_stream,
            step_cap_bytes=None if prefetch_bytes_per_step is None else parse_bytes(prefetch_bytes_per_step))
    if prefetch is None:
        prefetch = Prefetch.none(stream.num_segments)

    row: dict[str, Any] = {
        "trace": str(tr.path) if tr.path else meta.model,
        "model": meta.model,
        "policy": policy,
        "predictor": predictor,
        "horizon": horizon_used,
        "top_n": top_n if top_n is not None else (stream.top_k if predictor != "none" else 0),
        "threshold": threshold,
        "prefetch_bytes_per_step": None if prefetch_bytes_per_step is None else str(prefetch_bytes_per_step),
        "adaptive": adaptive,
        "capacity": str(capacity),
        "capacity_experts": int(part_cap.sum()) + int(pinned.sum()),
        "capacity_fraction": (int(part_cap.sum()) + int(pinned.sum())) / n_items,
        "scope": scope,
        "mode": mode,
        "prefill_chunk": prefill_chunk,
        "seed": seed,
        "hardware": hw.name,
        "bandwidth_gbps": hw.bandwidth_gbps,
        "latency_us": hw.latency_us,
        "copy_engines": hw.copy_engines,
        "gpu_tflops": hw.gpu_tflops,
        "hbm_gbps": hw.hbm_gbps,
        "bytes_per_expert": expert_bytes,
        "pinned_experts": int(pinned.sum()),
        "moesim_version": __version__,
        "accesses": len(stream),
        "tokens": int(stream.step_tokens.sum()),
        "steps": stream.num_steps,
    }
    if mode == "count":
        hits, misses, c = count_replay(stream.item, stream.seg_offsets, part_of, part_cap,
                                       pinned, warm, L, prefetch.offsets, prefetch.item, state)
        row.update(_hit_fields(hits, misses))
        row.update({k: math.nan for k in ("stall_s", "total_s", "tpot_s", "ttft_s")})
        row.update(_transfer_fields(c, misses, expert_bytes))
        if per_layer:
            row["hits_per_layer"] = hits.tolist()
            row["misses_per_layer"] = misses.tolist()
        return row

    if not expert_bytes:
        raise ValueError(f"{row['trace']}: the trace does not say how many bytes an expert has "
                         f"(bytes_per_expert=0); timed mode needs it: pass bytes_per_expert (--bytes-per-expert)")
    seg_dense = dense_seconds(stream, meta, hw, expert_bytes)
    flops_per_token = 2.0 * expert_bytes / dtype_bytes(meta.dtype)
    hits, misses, stall, step_end, c = timed_replay(
        stream.item, stream.seg_offsets, stream.seg_layer, stream.seg_step, seg_dense, stream.num_steps,
        part_of, part_cap, pinned, warm, L,
        expert_bytes, hw.bandwidth_gbps * 1e9, hw.latency_us * 1e-6, int(hw.copy_engines),
        flops_per_token, hw.gpu_tflops * 1e12, hw.hbm_gbps * 1e9, hw.launch_us * 1e-6,
        prefetch.offsets, prefetch.item, prefetch.target_seg, int(prefetch.step_cap),
        state)
    if c[ERROR] == ERR_CAPACITY:
        raise ValueError(f"capacity too small: a layer of {row['trace']} needs more experts resident at once than "
                         f"a {scope} partition of {int(part_cap.min())} experts holds; raise --capacity, use "
                         f"--scope global, or replay with --prefill-chunk 1")
    row.update(_hit_fields(hits, misses))
    row.update(_time_fields(stream, step_end, stall))
    row.update(_transfer_fields(c, misses, expert_bytes))
    if per_layer:
        row["hits_per_layer"] = hits.tolist()
        row["misses_per_layer"] = misses.tolist()
        row["stall_per_layer_s"] = stall.tolist()
    return row


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


def dense_seconds(stream: AccessStream, meta, hw: Hardware, expert_bytes: float) -> np.ndarray:
    """Time of each segment's dense part (attention, router, norms): a roofline of its weights.

    Layers without experts (e.g. DeepSeek's first dense layers) are charged to the
    first MoE layer of each step, at the same dense cost plus their FFN, taken
    as one expert's worth of weights per layer when the trace says nothing better.
    """
    dense_bytes = float(meta.dense_bytes_per_layer)
    params = dense_bytes / dtype_bytes(meta.dtype)
    tokens = stream.seg_tokens.astype(np.float64)
    t = np.maximum(tokens * 2 * params / (hw.gpu_tflops * 1e12), dense_bytes / (hw.hbm_gbps * 1e9))
    t += hw.launch_us * 1e-6
    n_dense_layers = meta.num_layers - meta.num_moe_layers
    if n_dense_layers > 0:
        first = np.r_[True, stream.seg_step[1:] != stream.seg_step[:-1]]
        extra_bytes = dense_bytes + expert_bytes
        extra = np.maximum(tokens * 2 * extra_bytes / dtype_bytes(meta.dtype) / (hw.gpu_tflops * 1e12),
                           extra_bytes / (hw.hbm_gbps * 1e9)) + 2 * hw.launch_us * 1e-6
        t = t + np.where(first, n_dense_layers * extra, 0.0)
    return t


def _transfer_fields(c: np.ndarray, misses: np.ndarray, expert_bytes: float) -> dict[str, Any]:
    """Prefetch counts and bytes over the link: every miss is a demand fetch, every issued prefetch one more."""
    demand, prefetch = float(misses.sum()) * expert_bytes, c[PF_ISSUED] * expert_bytes
    return {"prefetch_issued": int(c[PF_ISSUED]), "prefetch_used": int(c[PF_USED]), "prefetch_late": int(c[PF_LATE]),
            "prefetch_wasted": int(c[PF_WASTED]), "prefetch_harmful": int(c[PF_HARMFUL]),
            "prefetch_cancelled": int(c[PF_CANCELLED]),
            "bytes_demand": demand, "bytes_prefetch": prefetch, "bytes_wasted": c[PF_WASTED] * expert_bytes,
            "bytes_moved": demand + prefetch}


def _hit_fields(hits: np.ndarray, misses: np.ndarray) -> dict[str, Any]:
    h, m = int(hits.sum()), int(misses.sum())
    return {"hits": h, "misses": m, "hit_rate": h / (h + m) if h + m else math.nan}


def _time_fields(stream: AccessStream, step_end: np.ndarray, stall: np.ndarray) -> dict[str, Any]:
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
    return {
        "total_s": float(step_end[-1]) if len(step_end) else 0.0,
        "stall_s": float(stall.sum()),
        "ttft_s": float(np.mean(ttft)) if len(ttft) else math.nan,
        "tpot_s": float(step_time[tpot_steps].mean()) if tpot_steps.any() else math.nan,
        "output_tokens": int(stream.step_outputs.sum()),
    }
