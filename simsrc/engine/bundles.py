"""What the compiled loops take: named bundles of arrays and numbers, so a reader sees `link.latency_s`,
not the 23rd positional argument. Built by replay() from the trace, the config and the cost model."""
from typing import NamedTuple

import numpy as np


class Stream(NamedTuple):
    """The accesses the loops walk, in (step, layer) segments."""
    item: np.ndarray         # int32 per access: layer_index * num_experts + expert
    seg_offsets: np.ndarray  # int64 [segments + 1]: each segment's slice of `item`
    seg_layer: np.ndarray    # MoE layer index of each segment
    seg_step: np.ndarray     # step of each segment
    # what an action rule reads besides the experts (replay() fills them only for a rule that takes them)
    weight: object = None    # float32 per access: the router's weight of the access's expert for its token
    ranked: object = None    # int32 [rows, ranks]: per token (stream row, top_k accesses each), the items (layer x
    #                          experts + expert) its router ranked highest among those it did not choose, best
    #                          first, -1 past the last within --substitute-rank (from router_logits)


class Cache(NamedTuple):
    """The GPU expert cache: partitions, their capacity, pins, what is resident at start, and expert sizes.

    With `size` None every expert takes one slot and capacities count experts; with a size per item
    (experts whose quantised sizes differ by layer), capacities are bytes and a miss evicts until its
    expert fits."""
    part_of: object          # int32 partition of each item, or None when the whole cache is one partition
    part_capacity: np.ndarray  # int64 per partition, experts (size None) or bytes; pins already taken out
    pinned: np.ndarray       # uint8 per item: resident throughout, outside the policy
    warm: np.ndarray         # int32 items the policy places before the replay starts
    size: object = None      # int64 bytes of each item, or None: every expert one slot


class Link(NamedTuple):
    """The host -> GPU link as the timed loop sees it (cost.py says how these are derived)."""
    transfer_s: object       # s of an expert's bytes on one lane (bytes / (bandwidth / lanes)): a float when
                             # every expert is one size, else float64 per item
    latency_s: float         # per transfer, before its bytes flow
    copy_engines: int        # transfers under way at once
    lanes: int               # byte pipes: a transfer's bytes take the earliest free one (1: all share one pipe)
    overlap: float           # fraction of a transfer the GPU computes through (1: asynchronous)
    stripes: int = 1         # equal parts a transfer's bytes are split into, each taken by the earliest free lane


class Host(NamedTuple):
    """The host CPU: its bookkeeping per miss, and its time to compute one expert (the host action)."""
    miss_overhead_s: float   # per miss, one after another, before the miss's action starts
    per_token_s: float       # s of host math per routed token
    floor_s: float           # s to read the expert's weights once from host memory


class Compute(NamedTuple):
    """GPU time: each segment's dense part, and one expert's kernel = max(tokens x per_token_s, floor_s) + launch_s."""
    seg_dense_s: np.ndarray  # float64 per segment
    per_token_s: float
    floor_s: float
    launch_s: float


class PrefetchPlan(NamedTuple):
    """Per issuing segment, the experts to prefetch (in issue order) and the segment that needs each."""
    offsets: np.ndarray      # int64 [segments + 1]
    item: np.ndarray         # int32
    target_seg: np.ndarray   # int64
    step_cap: int            # most prefetches started per step (-1: no cap)


class LowBit(NamedTuple):
    """The low-precision copy of an expert (the lowbit action): its transfer, and its weights' read on the GPU."""
    link: Link               # the host link, with transfer_s of the copy's bytes
    floor_s: float           # s to read the copy's weights once from HBM (replaces Compute.floor_s)
