"""The access stream: a trace laid out as the engine walks it.

Order (DESIGN.md, "Replay semantics"): steps in order; within a step, layers in
order; within a layer, the step's requests in id order, their tokens in
position order, each token's experts in stored order. At batch size 1 with one
token per step this is the token-major stream a plain cache simulator sees.

A *segment* is one (step, layer): the unit whose experts must all be resident
before that layer's experts compute.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import cache
from .io import Trace
from .schema import DECODE


@dataclass
class AccessStream:
    item: np.ndarray            # int32 [accesses]: layer_index * num_experts + expert
    seg_offsets: np.ndarray     # int64 [segments+1]: each segment's slice of `item`
    seg_layer: np.ndarray       # int32 [segments]: dense MoE layer index
    seg_step: np.ndarray        # int32 [segments]: replay step (0..steps-1)
    seg_tokens: np.ndarray      # int32 [segments]: tokens (rows) in the segment
    seg_row_offsets: np.ndarray  # int64 [segments+1]: each segment's slice of `row_order`
    row_order: np.ndarray       # int64 [rows]: trace rows in stream order
    row_request: np.ndarray     # int32 [rows]: request id of each row, in stream order
    step_phase: np.ndarray      # uint8 [steps]: DECODE if the step holds any decode token
    step_tokens: np.ndarray     # int32 [steps]: tokens processed in the step
    step_outputs: np.ndarray    # int32 [steps]: tokens the step emits to users (decode, or replayed-as-decoded)
    request_first_step: np.ndarray  # int32 [requests]
    request_first_output_step: np.ndarray  # int32 [requests]: step that emits the request's first token
    num_layers: int
    num_experts: int
    top_k: int

    @property
    def num_items(self) -> int:
        return self.num_layers * self.num_experts

    @property
    def num_segments(self) -> int:
        return len(self.seg_layer)

    @property
    def num_steps(self) -> int:
        return len(self.step_phase)

    def __len__(self) -> int:
        return len(self.item)

    def head(self, num_segments: int) -> "AccessStream":
        """The first `num_segments` segments as a stream of their own (e.g. a warm-up prefix)."""
        cut = int(self.seg_offsets[num_segments])
        rows = int(self.seg_row_offsets[num_segments])
        steps = int(self.seg_step[num_segments - 1]) + 1 if num_segments else 0
        gap = np.iinfo(np.int32).max  # requests that have not started (or emitted) within the head
        return dataclasses.replace(
            self, item=self.item[:cut], seg_offsets=self.seg_offsets[:num_segments + 1],
            seg_layer=self.seg_layer[:num_segments], seg_step=self.seg_step[:num_segments],
            seg_tokens=self.seg_tokens[:num_segments], seg_row_offsets=self.seg_row_offsets[:num_segments + 1],
            row_order=self.row_order[:rows], row_request=self.row_request[:rows],
            step_phase=self.step_phase[:steps], step_tokens=self.step_tokens[:steps],
            step_outputs=self.step_outputs[:steps],
            request_first_step=np.where(self.request_first_step < steps, self.request_first_step, gap).astype(np.int32),
            request_first_output_step=np.where(self.request_first_output_step < steps,
                                               self.request_first_output_step, gap).astype(np.int32))


_ARRAYS = ("item", "seg_offsets", "seg_layer", "seg_step", "seg_tokens", "seg_row_offsets", "row_order",
           "row_request", "step_phase", "step_tokens", "step_outputs", "request_first_step",
           "request_first_output_step")
_SCALARS = ("num_layers", "num_experts", "top_k")


def access_stream(trace: Trace, *, prefill_chunk: int = 1) -> AccessStream:
    """Lay out a trace for replay.

    prefill_chunk: prefill tokens per replay step. 1 (the default) replays a
    prompt as if it were decoded, one token per step -- what most public,
    prefill-only traces need, and the token-major stream of count mode.
    0 keeps the steps as recorded (a whole prompt, or the recorder's chunk).

    A trace read from a file that passed read_trace's checks has its stream
    cached on disk (trace.cache): the next call, in any process, maps it.
    """
    if prefill_chunk < 0:
        raise ValueError(f"prefill_chunk must be >= 0, got {prefill_chunk}")
    source = trace.source
    sha = None
    options = {"chunk": int(prefill_chunk)}
    if source is not None and source.checked and cache.cache_dir() is not None:
        sha = source.content_sha256()
        fields = cache.load_stream(sha, options) if sha else None
        if fields is not None:
            return AccessStream(**fields)
    stream = _layout(trace, prefill_chunk)
    if sha:
        cache.save_stream(sha, options, {k: getattr(stream, k) for k in _ARRAYS},
                          {k: int(getattr(stream, k)) for k in _SCALARS})
        cache.remember_checked(source.state, sha)
    return stream


def _layout(trace: Trace, prefill_chunk: int) -> AccessStream:
    from .kernels import INT32_MAX, stream_layout
    meta = trace.meta
    n = trace.num_rows
    k = meta.top_k
    req = trace.column("request_id")
    num_requests = int(req.max()) + 1 if n else 0
    # every array of a size in rows is allocated here, not in the kernel (see stream_layout), segment
    # and step arrays for one per row, and cut to size after
    item, row_order, row_request = np.empty(n * k, np.int32), np.empty(n, np.int64), np.empty(n, np.int32)
    seg_row_offsets, seg_offsets = np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)
    seg_layer, seg_step, seg_tokens = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int32)
    step_phase, step_tokens, step_outputs = np.zeros(n, np.uint8), np.zeros(n, np.int32), np.zeros(n, np.int32)
    first_step, first_out = np.full(num_requests, INT32_MAX, np.int32), np.full(num_requests, INT32_MAX, np.int32)
    segs, steps = stream_layout(
        trace.column("step"), req, trace.column("token_pos"), trace.column("phase"), trace.column("layer"),
        meta.layer_lut(), trace.expert_ids().reshape(-1), k, meta.num_experts, meta.num_moe_layers, prefill_chunk,
        DECODE, item, row_order, row_request, seg_row_offsets, seg_offsets, seg_layer, seg_step, seg_tokens,
        step_phase, step_tokens, step_outputs, first_step, first_out, np.empty(n, np.int64), np.empty(n, np.int64))
    return AccessStream(
        item=item,
        seg_offsets=seg_offsets[:segs + 1],
        seg_layer=seg_layer[:segs],
        seg_step=seg_step[:segs],
        seg_tokens=seg_tokens[:segs],
        seg_row_offsets=seg_row_offsets[:segs + 1],
        row_order=row_order,
        row_request=row_request,
        step_phase=step_phase[:steps],
        step_tokens=step_tokens[:steps],
        step_outputs=step_outputs[:steps],
        request_first_step=first_step,
        request_first_output_step=first_out,
        num_layers=meta.num_moe_layers,
        num_experts=meta.num_experts,
        top_k=k,
    )
