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

from .io import Trace
from .schema import DECODE, PREFILL


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


def access_stream(trace: Trace, *, prefill_chunk: int = 1) -> AccessStream:
    """Lay out a trace for replay.

    prefill_chunk: prefill tokens per replay step. 1 (the default) replays a
    prompt as if it were decoded, one token per step -- what most public,
    prefill-only traces need, and the token-major stream of count mode.
    0 keeps the steps as recorded (a whole prompt, or the recorder's chunk).
    """
    if prefill_chunk < 0:
        raise ValueError(f"prefill_chunk must be >= 0, got {prefill_chunk}")
    meta = trace.meta
    n = trace.num_rows
    step = trace.column("step").astype(np.int64)
    req = trace.column("request_id").astype(np.int64)
    pos = trace.column("token_pos").astype(np.int64)
    phase = trace.column("phase")
    layer_idx = trace.layer_index().astype(np.int64)

    # Split recorded prefill steps into chunks: a prefill token's sub-step is
    # its rank among its request's prefill tokens in that step, // chunk.
    sub = np.zeros(n, dtype=np.int64)
    if prefill_chunk > 0 and n:
        is_pre = phase == PREFILL
        # canonical order groups (step, request) rows together, positions ascending
        grp = np.flatnonzero(np.r_[True, (step[1:] != step[:-1]) | (req[1:] != req[:-1])])
        first_pos = np.repeat(pos[grp], np.diff(np.r_[grp, n]))
        sub = np.where(is_pre, (pos - first_pos) // prefill_chunk, 0)
    key = step * (int(sub.max()) + 1 if n else 1) + sub
    uniq, new_step = np.unique(key, return_inverse=True)
    new_step = new_step.astype(np.int64)

    order = np.lexsort((pos, req, layer_idx, new_step))
    seg_key = new_step[order] * meta.num_moe_layers + layer_idx[order]
    seg_start = np.flatnonzero(np.r_[True, seg_key[1:] != seg_key[:-1]]) if n else np.zeros(0, np.int64)
    seg_row_offsets = np.r_[seg_start, n].astype(np.int64)
    k = meta.top_k
    ids = trace.expert_ids()[order].astype(np.int32)
    item = (layer_idx[order, None] * meta.num_experts + ids).reshape(-1).astype(np.int32)

    n_steps = len(uniq)
    step_tokens_rows = np.zeros(n_steps, dtype=np.int64)
    # tokens per step = distinct (request, token) pairs = rows of the step's first layer seen
    token_first = np.r_[True, (req[1:] != req[:-1]) | (pos[1:] != pos[:-1])] if n else np.zeros(0, bool)
    np.add.at(step_tokens_rows, new_step[token_first], 1)
    step_has_decode = np.zeros(n_steps, dtype=bool)
    step_has_decode[new_step[phase == DECODE]] = True
    step_phase = np.where(step_has_decode, DECODE, PREFILL).astype(np.uint8)

    # A step emits a token to a user for each decode token it holds; a trace
    # replayed as decoded (chunk 1) emits one per prefill token too.
    emits = (phase == DECODE) | (prefill_chunk == 1)
    step_outputs = np.zeros(n_steps, dtype=np.int64)
    np.add.at(step_outputs, new_step[token_first & emits], 1)

    n_req = int(req.max()) + 1 if n else 0
    first_step = np.full(n_req, np.iinfo(np.int32).max, dtype=np.int64)
    np.minimum.at(first_step, req, new_step)
    first_out = np.full(n_req, np.iinfo(np.int32).max, dtype=np.int64)
    if emits.any():
        np.minimum.at(first_out, req[emits], new_step[emits])
    # a request whose prompt is processed as one chunk emits its first token at the end of it;
    # request ids with no rows (gaps) keep int32 max in both arrays
    seen = np.zeros(n_req, bool)
    seen[req] = True
    no_emit = (first_out == np.iinfo(np.int32).max) & seen
    if no_emit.any():
        last = np.full(n_req, -1, dtype=np.int64)
        np.maximum.at(last, req, new_step)
        first_out[no_emit] = last[no_emit]

    return AccessStream(
        item=item,
        seg_offsets=(seg_row_offsets * k).astype(np.int64),
        seg_layer=layer_idx[order][seg_start].astype(np.int32),
        seg_step=new_step[order][seg_start].astype(np.int32),
        seg_tokens=np.diff(seg_row_offsets).astype(np.int32),
        seg_row_offsets=seg_row_offsets,
        row_order=order.astype(np.int64),
        row_request=req[order].astype(np.int32),
        step_phase=step_phase,
        step_tokens=step_tokens_rows.astype(np.int32),
        step_outputs=step_outputs.astype(np.int32),
        request_first_step=first_step.astype(np.int32),
        request_first_output_step=first_out.astype(np.int32),
        num_layers=meta.num_moe_layers,
        num_experts=meta.num_experts,
        top_k=k,
    )
