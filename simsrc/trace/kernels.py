"""Compiled passes over a trace's rows: the read checks' fast path and the access-stream layout.

Both walk the rows once in file order. Reading a trace and laying it out used
to be a dozen numpy passes (sorts included) that cost ten times the replay
they fed; here each is one loop over the columns as Parquet gives them.
"""
from __future__ import annotations

import numba
import numpy as np

INT32_MAX = np.iinfo(np.int32).max
NOT_CANONICAL = ("the trace's rows are not in canonical order (step, request_id, token_pos, layer); build it with "
                 "Trace.from_arrays, which sorts them, or read it with read_trace, which checks them")


@numba.njit(cache=True)
def rows_ok(step, req, pos, layer, phase, ids, top_k, known_layer, num_experts, last_key):
    """True when every row passes the value checks of schema.check_rows (layer, phase, expert ids,
    distinct experts) and the order checks of schema.check_order. False says only *that* a row
    fails: the numpy checks then run to name it, so the messages stay theirs.

    last_key: int64 [max request id + 1], filled with -1 (each request's last (token_pos, layer)).
    """
    n = layer.shape[0]
    seen = np.zeros(num_experts, np.int64)  # seen[e] = row + 1 when row named e
    for r in range(n):
        lay = layer[r]
        if lay >= known_layer.shape[0] or not known_layer[lay]:
            return False
        if phase[r] > 1:
            return False
        for j in range(top_k):
            e = ids[r * top_k + j]
            if e >= num_experts or seen[e] == r + 1:
                return False
            seen[e] = r + 1
        if r > 0:
            if step[r] < step[r - 1] or (step[r] == step[r - 1] and req[r] < req[r - 1]):
                return False
        # within a request, (token_pos, layer) strictly increases in file order
        key = np.int64(pos[r]) * 65536 + lay
        q = req[r]
        if key <= last_key[q]:
            return False
        last_key[q] = key
    return True


@numba.njit(cache=True)
def stream_layout(step, req, pos, phase, layer, layer_lut, ids, top_k, num_experts, num_layers, prefill_chunk,
                  num_requests, decode):
    """The access stream of rows in canonical (file) order; see stream.access_stream for the order.

    A step's rows are grouped by request, so the stream order -- (replay step, layer, request,
    token) -- is a stable sort of each recorded step's rows by (replay step, layer), and within a
    recorded step that key spans few values: a counting sort, skipped when the rows are already in
    order (one token per step, as in every prefill-only trace replayed as decoded).
    """
    n = layer.shape[0]
    L = num_layers
    # replay step of each row: a recorded prefill step splits into chunks of prefill_chunk tokens of
    # each request (a token's chunk is its rank among the request's tokens in the step, // chunk);
    # replay steps number the (recorded step, chunk) pairs present, in order
    sub = np.zeros(n, np.int32)
    max_sub = 0
    if prefill_chunk > 0:
        first_pos = 0
        for r in range(n):
            if r == 0 or step[r] != step[r - 1] or req[r] != req[r - 1]:
                first_pos = pos[r]
            if phase[r] != decode:
                s = (np.int64(pos[r]) - first_pos) // prefill_chunk
                sub[r] = s
                if s > max_sub:
                    max_sub = s
    present = np.zeros(max_sub + 1, np.int64)  # chunk -> its rank within the recorded step, +1
    new_step = np.empty(n, np.int32)
    order = np.empty(n, np.int64)
    count = np.zeros(0, np.int64)
    base = 0
    a = 0
    while a < n:
        b = a
        top = 0
        while b < n and step[b] == step[a]:
            if b > a and (req[b] < req[b - 1] or (req[b] == req[b - 1] and (
                    pos[b] < pos[b - 1] or (pos[b] == pos[b - 1] and layer[b] <= layer[b - 1])))):
                raise ValueError(NOT_CANONICAL)
            present[sub[b]] = 1
            if sub[b] > top:
                top = sub[b]
            b += 1
        if b < n and step[b] < step[a]:
            raise ValueError(NOT_CANONICAL)
        ranks = 0
        for s in range(top + 1):
            if present[s]:
                ranks += 1
                present[s] = ranks
        in_order = True
        prev = -1
        for r in range(a, b):
            local = (present[sub[r]] - 1) * L + layer_lut[layer[r]]
            new_step[r] = base + present[sub[r]] - 1
            if local < prev:
                in_order = False
            prev = local
        if in_order:
            for r in range(a, b):
                order[r] = r
        else:
            buckets = ranks * L
            if count.shape[0] < buckets + 1:
                count = np.zeros(buckets + 1, np.int64)
            else:
                count[:buckets + 1] = 0
            for r in range(a, b):
                count[(new_step[r] - base) * L + layer_lut[layer[r]] + 1] += 1
            for i in range(buckets):
                count[i + 1] += count[i]
            for r in range(a, b):
                key = (new_step[r] - base) * L + layer_lut[layer[r]]
                order[a + count[key]] = r
                count[key] += 1
        for s in range(top + 1):
            present[s] = 0
        base += ranks
        a = b
    num_steps = base

    # per step and per request, in file order
    step_tokens = np.zeros(num_steps, np.int32)
    step_outputs = np.zeros(num_steps, np.int32)
    step_phase = np.zeros(num_steps, np.uint8)
    first_step = np.full(num_requests, INT32_MAX, np.int32)
    first_out = np.full(num_requests, INT32_MAX, np.int32)
    last_step = np.full(num_requests, -1, np.int32)
    for r in range(n):
        t = new_step[r]
        q = req[r]
        # a row is a token's first when (request, position) changes from the row before
        emits = phase[r] == decode or prefill_chunk == 1
        if r == 0 or req[r] != req[r - 1] or pos[r] != pos[r - 1]:
            step_tokens[t] += 1
            if emits:
                step_outputs[t] += 1
        if phase[r] == decode:
            step_phase[t] = decode
        if t < first_step[q]:
            first_step[q] = t
        if emits and t < first_out[q]:
            first_out[q] = t
        if t > last_step[q]:
            last_step[q] = t
    # a request whose prompt is processed as one chunk emits its first token at the end of it;
    # request ids with no rows (gaps) keep int32 max in both arrays
    for q in range(num_requests):
        if first_out[q] == INT32_MAX and last_step[q] >= 0:
            first_out[q] = last_step[q]

    # the stream itself, in stream order
    num_segments = 0
    prev_key = -1
    for i in range(n):
        r = order[i]
        key = np.int64(new_step[r]) * L + layer_lut[layer[r]]
        if key != prev_key:
            num_segments += 1
            prev_key = key
    item = np.empty(n * top_k, np.int32)
    row_request = np.empty(n, np.int32)
    seg_row_offsets = np.empty(num_segments + 1, np.int64)
    seg_layer = np.empty(num_segments, np.int32)
    seg_step = np.empty(num_segments, np.int32)
    s = -1
    prev_key = -1
    for i in range(n):
        r = order[i]
        lidx = layer_lut[layer[r]]
        key = np.int64(new_step[r]) * L + lidx
        if key != prev_key:
            s += 1
            seg_row_offsets[s] = i
            seg_layer[s] = lidx
            seg_step[s] = new_step[r]
            prev_key = key
        row_request[i] = req[r]
        off = lidx * num_experts
        for j in range(top_k):
            item[i * top_k + j] = off + ids[r * top_k + j]
    seg_row_offsets[num_segments] = n
    return (item, seg_row_offsets, seg_layer, seg_step, order, row_request, step_phase, step_tokens,
            step_outputs, first_step, first_out)
