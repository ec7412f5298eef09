"""Compiled passes over a trace's rows: the read checks' fast path and the access-stream layout.

Both walk the rows once in file order. Reading a trace and laying it out used
to be a dozen numpy passes (sorts included) that cost ten times the replay
they fed; here each is one loop over the columns as Parquet gives them.
"""
from __future__ import annotations

import numba
import numpy as np

INT32_MAX = np.iinfo(np.int32).max
# The layout indexes its arrays unsigned (U): numba then drops its negative-index wrap-around (a test, the array's
# length and an add at every load and store; with ~25 arrays their lengths sat on the stack): 0.061 -> 0.036 s for
# the 14.7 M-access trace, the same stream to the byte
U = np.uint64
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
                  decode, item, row_order, row_request, seg_row_offsets, seg_offsets, seg_layer, seg_step,
                  seg_tokens, step_phase, step_tokens, step_outputs, first_step, first_out, sub, local):
    """The access stream of rows in canonical (file) order, in one pass over the recorded steps; see
    stream.access_stream for the order. Returns (segments, replay steps).

    A recorded step's rows come before the next one's in the stream too, and are grouped by request,
    so the stream order -- (replay step, layer, request, token) -- is a stable sort of each recorded
    step's rows by (replay step, layer); within a recorded step that key spans few values: a counting
    sort, skipped when the rows are already in order (one token per step, as in every prefill-only
    trace replayed as decoded). Each step's rows are laid out while they are still in cache.

    The outputs are the caller's, filled here: numpy asks the kernel for huge pages where numba's
    allocator does not, and faulting in 4 KiB pages cost about as much as the pass. Segment and step
    arrays are sized for one per row (there are at most that many), filled to the counts returned;
    first_step and first_out [requests] come filled with int32 max; sub and local [rows] are scratch, of
    which only as much as the longest recorded step is touched.
    """
    n = layer.shape[0]
    L = num_layers
    chunked = prefill_chunk > 0
    # per recorded step: each row's chunk (its rank among the request's tokens in the step, // chunk),
    # replay step and place; replay steps number the (recorded step, chunk) pairs present, in order
    max_sub, first_pos = 0, 0
    if chunked:
        for r in range(n):
            if r == 0 or step[U(r)] != step[U(r - 1)] or req[U(r)] != req[U(r - 1)]:
                first_pos = pos[U(r)]
            if phase[U(r)] != decode:
                c = (np.int64(pos[U(r)]) - first_pos) // prefill_chunk
                if c > max_sub:
                    max_sub = c
    present = np.zeros(max_sub + 1, np.int64)  # chunk -> its rank within the recorded step, +1
    count = np.zeros((max_sub + 1) * L + 1, np.int64)
    last_step = np.full(first_step.shape[0], -1, np.int32)
    base = 0
    s = -1  # segment
    a = 0
    while a < n:
        b = a
        top = 0
        while b < n and step[U(b)] == step[U(a)]:
            if b > a and (req[U(b)] < req[U(b - 1)] or (req[U(b)] == req[U(b - 1)] and (
                    pos[U(b)] < pos[U(b - 1)] or (pos[U(b)] == pos[U(b - 1)] and layer[U(b)] <= layer[U(b - 1)])))):
                raise ValueError(NOT_CANONICAL)
            if b == a or req[U(b)] != req[U(b - 1)]:
                first_pos = pos[U(b)]
            c = 0
            if chunked and phase[U(b)] != decode:
                c = (np.int64(pos[U(b)]) - first_pos) // prefill_chunk
            sub[U(b - a)] = c
            present[U(c)] = 1
            if c > top:
                top = c
            b += 1
        if b < n and step[U(b)] < step[U(a)]:
            raise ValueError(NOT_CANONICAL)
        ranks = 0
        for c in range(top + 1):
            if present[U(c)]:
                ranks += 1
                present[U(c)] = ranks
        in_order = True
        prev = -1
        for r in range(a, b):
            rank = present[sub[U(r - a)]] - 1
            key = rank * L + layer_lut[layer[U(r)]]
            local[U(r - a)] = key
            if key < prev:
                in_order = False
            prev = key
            # per step and per request; a row is a token's first when (request, position) changes
            t = base + rank
            q = req[U(r)]
            emits = phase[U(r)] == decode or prefill_chunk == 1
            if r == 0 or req[U(r)] != req[U(r - 1)] or pos[U(r)] != pos[U(r - 1)]:
                step_tokens[U(t)] += 1
                if emits:
                    step_outputs[U(t)] += 1
            if phase[U(r)] == decode:
                step_phase[U(t)] = decode
            if t < first_step[U(q)]:
                first_step[U(q)] = t
            if emits and t < first_out[U(q)]:
                first_out[U(q)] = t
            if t > last_step[U(q)]:
                last_step[U(q)] = t
        if in_order:
            for r in range(a, b):
                row_order[U(r)] = r
        else:
            buckets = ranks * L
            count[:buckets + 1] = 0
            for r in range(a, b):
                count[local[U(r - a)] + 1] += 1
            for i in range(buckets):
                count[U(i + 1)] += count[U(i)]
            for r in range(a, b):
                key = local[U(r - a)]
                row_order[a + count[U(key)]] = r
                count[U(key)] += 1
        # the stream of this recorded step: a segment starts where (replay step, layer) changes
        prev = -1
        for i in range(a, b):
            r = row_order[U(i)]
            key = local[U(r - a)]
            lidx = layer_lut[layer[U(r)]]
            if key != prev:
                if s >= 0:
                    seg_tokens[U(s)] = i - seg_row_offsets[U(s)]
                s += 1
                seg_row_offsets[U(s)] = i
                seg_offsets[U(s)] = np.int64(i) * top_k
                seg_layer[U(s)] = lidx
                seg_step[U(s)] = base + key // L
                prev = key
            row_request[U(i)] = req[U(r)]
            off = np.int32(lidx * num_experts)
            for j in range(top_k):
                item[U(i * top_k + j)] = off + np.int32(ids[U(r * top_k + j)])
        for c in range(top + 1):
            present[U(c)] = 0
        base += ranks
        a = b
    num_segments = s + 1
    if s >= 0:
        seg_tokens[U(s)] = n - seg_row_offsets[U(s)]
    seg_row_offsets[U(num_segments)] = n
    seg_offsets[U(num_segments)] = np.int64(n) * top_k
    # a request whose prompt is processed as one chunk emits its first token at the end of it;
    # request ids with no rows (gaps) keep int32 max in both arrays
    for q in range(first_out.shape[0]):
        if first_out[U(q)] == INT32_MAX and last_step[U(q)] >= 0:
            first_out[U(q)] = last_step[U(q)]
    return num_segments, base
