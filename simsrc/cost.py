"""The cost model, in SI units: what a layer's dense part, an expert's compute and a transfer cost.

Every figure a replay charges comes from here (and from the Hardware it is given), and the engine, the
prefetch planner, the adaptive horizon and the predictor scorecard all use these same functions:

    dense part of a layer   max(tokens x 2 x dense params / gpu_flops, dense bytes / hbm) + launch
    an expert on the GPU    max(tokens x 2 x expert params / gpu_flops, expert bytes / hbm) + launch
                            (one kernel per expert; its weights are read once whatever the tokens)
    a transfer              latency + bytes / (bandwidth / lanes); `copy_engines` transfers may be under way
                            at once and their bytes take the earliest free of `lanes` pipes (one lane: they
                            share one pipe, so one transfer's latency hides behind another's bytes; the
                            engine's link, engine/timed.py); each moves its own layer's expert bytes where
                            sizes differ by layer; the GPU computes through `overlap` of it and waits out
                            the rest
    a miss                  `miss_overhead` of host bookkeeping, one miss after another, before its action
    an expert on the host   max(tokens x 2 x params / host_flops, expert bytes / host_bandwidth), on one
                            host lane beside the GPU (the host action, moesim.actions)
    a low-bit copy          params x lowbit_bits / 8 bytes, moved like an expert and read at that size on
                            the GPU, its FLOPs the expert's (the lowbit action)
    attention's KV reads    context tokens x kv_bytes_per_token / hbm per layer, with --kv-bytes-per-token
    the memory budget       gpu_memory - dense bytes x layers - kv_bytes_per_token x layers x context x batch
                            - reserve, in experts (`--capacity auto`; memory_budget)
    a storage read          storage_latency + bytes / (storage_bandwidth / storage_lanes), scheduled like a
                            transfer (storage_lanes reads under way, storage_stripes parts each): a host-tier
                            miss, before its host -> GPU copy (engine/tiers.py); the prefetch planner takes a
                            layer's reads as storage_latency + bytes / storage_bandwidth (storage_seconds)
    host memory             host_memory - dense bytes x layers - the host tier's bytes; the non-expert bytes
                            that do not fit (paged_bytes) are re-read every forward pass, a layer's share
                            (paged / layers) as one read on one storage lane before its dense part (page_seconds;
                            a step's worth on an idle link: step_page_seconds)

Params are bytes / bytes per weight of the trace's dtype. Layers without experts (DeepSeek's first
dense layers) are charged to the first MoE layer of each step, each at the dense cost plus an FFN taken
as one expert's worth of weights (the trace says nothing better), with two launches.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .hardware import Hardware, dtype_bytes


class ExpertCost(NamedTuple):
    """What the engine needs to time one expert's compute: max(tokens x per_token, floor) + launch."""
    per_token: float  # s of tensor math per routed token
    floor: float      # s to read the expert's weights once from HBM
    launch: float     # s per kernel


def expert_cost(hw: Hardware, expert_bytes: float, dtype: str, params: float | None = None) -> ExpertCost:
    """params: the expert's parameters when its bytes are not params x the dtype's size (--weight-bits)."""
    flops_per_token = 2.0 * expert_bytes / dtype_bytes(dtype) if params is None else 2.0 * params
    return ExpertCost(flops_per_token / hw.gpu_flops, expert_bytes / hw.hbm, hw.launch)


def host_expert_cost(hw: Hardware, expert_bytes: float, params: float) -> tuple[float, float]:
    """(s per routed token, s to read the weights once) of an expert computed on the host: the same
    roofline as on the GPU, with the host's FLOP rate and memory bandwidth."""
    return 2.0 * params / hw.host_flops, expert_bytes / hw.host_bandwidth


def lowbit_copy(hw: Hardware, expert_bytes: float, params: float, bits: float) -> tuple[float, float, float]:
    """(bytes, s over the link, s to read it once from HBM) of an expert's low-precision copy: its `params` at
    `bits` per weight (HOBBIT's int4/int2 copies of less important experts). A copy no smaller than the expert
    it stands for is an error."""
    nbytes = params * bits / 8
    if nbytes >= expert_bytes:
        raise ValueError(f"--lowbit-bits {bits:g}: a copy at {bits:g} bits per weight is not smaller than the "
                         f"experts it stands for ({8 * expert_bytes / params:g} bits per weight); give fewer bits, "
                         f"e.g. 4 or 2")
    return nbytes, lane_seconds(nbytes, hw), nbytes / hw.hbm


def segment_context(trace, stream) -> np.ndarray:
    """Per segment, the tokens its attention reads: each of its tokens attends over its position + 1."""
    pos = trace.column("token_pos")[stream.row_order].astype(np.float64) + 1.0
    return np.add.reduceat(pos, stream.seg_row_offsets[:-1]) if len(pos) else np.zeros(0)


def expert_seconds(tokens: np.ndarray, cost: ExpertCost) -> np.ndarray:
    """Time of one expert's kernel for each count of tokens routed to it (the engine's own formula)."""
    return np.maximum(tokens * cost.per_token, cost.floor) + cost.launch


def lane_seconds(nbytes, hw: Hardware):
    """Seconds the bytes of a transfer take on one lane of the link (bandwidth / lanes; the whole link with
    one lane). nbytes: a number or an array."""
    return nbytes / (hw.bandwidth / hw.lanes)


def storage_lane_seconds(nbytes, hw: Hardware):
    """Seconds the bytes of a storage read take on one of its lanes (storage_bandwidth / storage_lanes)."""
    return nbytes / (hw.storage_bandwidth / hw.storage_lanes)


def paged_bytes(hw: Hardware, meta, host_tier_bytes: float) -> float:
    """Non-expert bytes (dense bytes per layer x layers) that do not fit in host memory beside the host tier,
    re-read from storage every forward pass; 0 when host_memory is not given."""
    if hw.host_memory is None:
        return 0.0
    non_expert = float(meta.dense_bytes_per_layer) * meta.num_layers
    return max(0.0, non_expert - max(float(hw.host_memory) - float(host_tier_bytes), 0.0))


def page_seconds(stream, meta, hw: Hardware, paged: float) -> np.ndarray:
    """Per segment, the page-in of its layer's share of the paged bytes (paged / layers) on one storage lane,
    synchronous (page faults, one thread); the first segment of each step also pages the layers without
    experts, as dense_seconds charges their compute there."""
    if not paged:
        return np.zeros(stream.num_segments)
    per_layer = paged / meta.num_layers
    first = np.r_[True, stream.seg_step[1:] != stream.seg_step[:-1]] if stream.num_segments else np.zeros(0, bool)
    layers = 1.0 + np.where(first, meta.num_layers - meta.num_moe_layers, 0)
    return storage_lane_seconds(layers * per_layer, hw)


def transfer_seconds(nbytes: float, hw: Hardware) -> float:
    """One transfer on an idle link: latency, then the bytes on one lane."""
    return hw.latency + lane_seconds(nbytes, hw)


def storage_seconds(nbytes: float, hw: Hardware) -> float:
    """Reads of nbytes on an idle storage link, spread over its lanes: one latency, then the bytes at the
    link's whole bandwidth (what a layer's reads ahead take; the adaptive prefetch horizon)."""
    return hw.storage_latency + nbytes / hw.storage_bandwidth


def dense_seconds(stream, meta, hw: Hardware, expert_bytes: float, context: np.ndarray | None = None,
                  kv_bytes_per_token: float = 0.0) -> np.ndarray:
    """Time of each segment's dense part (attention, router, norms): a roofline of its weights, plus, with
    `kv_bytes_per_token`, reading the KV cache of each token's context (segment_context) at HBM speed."""
    dense_bytes = float(meta.dense_bytes_per_layer)
    tokens = stream.seg_tokens.astype(np.float64)
    params = dense_bytes / dtype_bytes(meta.dtype)
    t = np.maximum(tokens * 2 * params / hw.gpu_flops, dense_bytes / hw.hbm)
    t += hw.launch
    if kv_bytes_per_token and context is not None:
        t = t + context * kv_bytes_per_token / hw.hbm
    n_dense_layers = meta.num_layers - meta.num_moe_layers
    if n_dense_layers > 0:
        first = np.r_[True, stream.seg_step[1:] != stream.seg_step[:-1]]
        extra_bytes = dense_bytes + expert_bytes
        extra = np.maximum(tokens * 2 * extra_bytes / dtype_bytes(meta.dtype) / hw.gpu_flops,
                           extra_bytes / hw.hbm) + 2 * hw.launch
        t = t + np.where(first, n_dense_layers * extra, 0.0)
    return t


def segment_seconds(stream, meta, hw: Hardware, expert_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """(dense, total) seconds of each segment with every expert resident: what a prefetch can hide behind."""
    dense = dense_seconds(stream, meta, hw, expert_bytes)
    seg_of = np.repeat(np.arange(stream.num_segments, dtype=np.int64), np.diff(stream.seg_offsets))
    key, tokens = np.unique(seg_of * stream.num_items + stream.item, return_counts=True)
    t = expert_seconds(tokens, expert_cost(hw, expert_bytes, meta.dtype))
    experts = np.bincount(key // stream.num_items, weights=t, minlength=stream.num_segments)
    return dense, dense + experts


class MemoryBudget(NamedTuple):
    """What a GPU's memory leaves for experts (`--capacity auto`): every term in bytes, and how it was got."""
    gpu_memory: float
    non_expert_bytes: float   # dense bytes per layer x layers: attention, shared experts, router, norms
    kv_cache_bytes: float     # kv_bytes_per_token x layers x context x batch
    reserve_bytes: float
    bytes_per_expert: float
    num_layers: int
    dense_bytes_per_layer: float
    kv_bytes_per_token: float
    context: int
    batch: int

    @property
    def expert_bytes(self) -> float:
        return self.gpu_memory - self.non_expert_bytes - self.kv_cache_bytes - self.reserve_bytes

    @property
    def capacity_experts(self) -> int:
        return max(int(math.floor(self.expert_bytes / self.bytes_per_expert)), 0)

    def arithmetic(self) -> str:
        """The sum as a line: 'GPU 24 GiB - non-expert weights ... = ... -> N experts of ...'."""
        g = _gib
        return (f"GPU {g(self.gpu_memory)} - non-expert weights {g(self.non_expert_bytes)} ({self.num_layers} layers "
                f"x {self.dense_bytes_per_layer / 2**20:.4g} MiB) - KV cache {g(self.kv_cache_bytes)} "
                f"({self.num_layers} layers x {self.context:,} tokens x {self.batch} requests x "
                f"{self.kv_bytes_per_token:,.0f} B) - reserve {g(self.reserve_bytes)} = {g(self.expert_bytes)} "
                f"for experts -> {self.capacity_experts:,} experts of {self.bytes_per_expert / 2**20:.4g} MiB")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.4g} GiB"


def memory_budget(hw: Hardware, meta, expert_bytes: float, *, kv_bytes_per_token: float, context: int, batch: int,
                  reserve: tuple | None = None) -> MemoryBudget:
    """The experts a GPU's memory holds once the model's other weights, the KV cache of `batch` requests of
    `context` tokens and a reserve are taken out. reserve: ('fraction', f) of the GPU's memory or ('bytes', n);
    None is 10 %. A budget below zero is an error that shows the sum, never a cache clamped to fit."""
    if not expert_bytes:
        raise ValueError("--capacity auto counts experts in bytes but the trace does not say how big an expert is; "
                         "pass bytes_per_expert (--bytes-per-expert)")
    kind, value = reserve or ("fraction", 0.1)
    budget = MemoryBudget(
        gpu_memory=float(hw.gpu_memory), non_expert_bytes=float(meta.dense_bytes_per_layer) * meta.num_layers,
        kv_cache_bytes=float(kv_bytes_per_token) * meta.num_layers * context * batch,
        reserve_bytes=float(value * hw.gpu_memory if kind == "fraction" else value), bytes_per_expert=expert_bytes,
        num_layers=int(meta.num_layers), dense_bytes_per_layer=float(meta.dense_bytes_per_layer),
        kv_bytes_per_token=float(kv_bytes_per_token), context=int(context), batch=int(batch))
    if budget.expert_bytes < 0:
        raise ValueError(f"--capacity auto: {budget.arithmetic().split(' for experts')[0]}: the rest of the model and "
                         f"the KV cache do not fit in {hw.name}'s memory; shorten --context, lower --batch-size or "
                         f"--reserve, or pick a GPU with more memory (--hardware)")
    return budget


def step_page_seconds(meta, hw: Hardware, paged: float) -> float:
    """A forward pass's page-in of the `paged` non-expert bytes on an idle storage link: page_seconds' reads,
    one per MoE layer, each paying storage_latency, their bytes on one lane. 0 without paging."""
    if not paged or hw.storage_bandwidth is None:
        return 0.0
    return meta.num_moe_layers * hw.storage_latency + float(storage_lane_seconds(paged, hw))


def step_seconds_estimate(tokens: np.ndarray, meta, hw: Hardware, expert_bytes: float,
                          paged: float = 0.0) -> np.ndarray:
    """Seconds of a step of `tokens` tokens with every expert it needs resident: each MoE layer's dense part,
    and min(tokens x top_k, experts) expert kernels sharing the routed tokens; with `paged` non-expert bytes
    that do not fit in host memory (memory tiers), their page-in every step (step_page_seconds), whatever its
    tokens. The continuous-batching scheduler's clock before a replay has measured better (moesim.replay)."""
    n = np.asarray(tokens, dtype=np.float64)
    dense_bytes = float(meta.dense_bytes_per_layer)
    dense = np.maximum(n * 2 * dense_bytes / dtype_bytes(meta.dtype) / hw.gpu_flops, dense_bytes / hw.hbm) + hw.launch
    ec = expert_cost(hw, expert_bytes, meta.dtype)
    kernels = np.minimum(n * meta.top_k, meta.num_experts)
    experts = np.maximum(n * meta.top_k * ec.per_token, kernels * ec.floor) + kernels * ec.launch
    seconds = meta.num_moe_layers * (dense + experts)
    if paged:
        seconds = seconds + step_page_seconds(meta, hw, paged)
    return seconds
