"""`moesim inspect`: what a trace holds and how cacheable its expert accesses are.

Everything is computed in one streaming pass over row batches (plus a second
pass for cross-layer coupling, whose predictor needs the whole trace's
successor counts), with numba kernels that carry their state from batch to
batch, so a multi-GB trace is never turned into Python objects.

Definitions (every figure a user sees is one of these):

- *top-10% share* of a layer: activations taken by its ceil(10% of experts)
  most used experts (at least one), over all activations of that layer.
- *experts for 90%*: fewest experts whose activations cover 90% of the layer's.
- *entropy*: Shannon entropy of the layer's expert popularity over log(E)
  (1 = uniform, 0 = one expert takes everything).
- *next-token reuse* at a layer: |A_t ∩ A_t+1| / top_k, where A_t are the
  experts of a request's token t at that layer and t+1 is the same request's
  next token; pooled over all such pairs (the pair's phase is t+1's). Also
  given as a mean over requests of each request's pooled rate.
- *reuse distance* of an access: the number of distinct other (layer, expert)
  items accessed since the previous access of the same item (the LRU stack
  distance; first accesses are cold). An access hits a global LRU cache of C
  experts exactly when its distance is < C, so the histogram *is* the LRU hit
  rate at every capacity. The stream is the file's order: tokens as processed
  (step, request, position), each token's layers in order, experts in stored
  order -- count mode's token-major stream when the trace runs one request at
  a time.
- *coupling* from layer l to l+1: for each token, score layer l+1's experts by
  how often they followed this token's layer-l experts anywhere in the trace
  (in-sample successor counts), predict the top_k best scored, and count the
  fraction of the token's real layer-l+1 experts among them. The baseline
  predicts layer l+1's top_k most popular experts for every token.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np
import pyarrow as pa
from numba import types
from numba.extending import intrinsic

from .io import Trace, iter_batches, read_meta
from .schema import DECODE, PREFILL

PHASE_NAMES = ("prefill", "decode")
# Successor tables above this many cells (layers x experts x experts) are not
# built; models with thousands of experts per layer get no coupling figure.
MAX_COUPLING_CELLS = 64_000_000
# The LRU stack's time window holds the smallest power of two of at least this many times the
# items (and one word) of last-access marks before it renumbers them; memory stays fixed however
# long the trace is.
STACK_WINDOW_FACTOR = 2
LRU_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1.0)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
STAT_COLUMNS = ["request_id", "phase", "step", "token_pos", "layer", "expert_ids"]


# ---------------------------------------------------------------- kernels
class LruStack(NamedTuple):
    """LRU stack distances by marks at each item's last-access time (Bennett and Kruskal, 1975).

    The distance of an access is the number of marks after its item's own: the distinct other
    items used since. Marks are bits of a window of times, one window per partition (a cache
    per layer has its own stack); `after` counts the marks in the words after each word, so a
    distance is one load and one popcount, and moving a mark adds one to a run of those counts.
    A full window renumbers its marks 0..m-1. On the 14.7 M-access MoE-Beyond trace this is
    0.13 s, against 0.6-1.0 s for a Fenwick tree over the times (log2 of the window per step).
    """

    words: np.ndarray   # uint64 [partitions, W/64]: bit t set when some item was last used at time t
    after: np.ndarray   # int16 or int32 [partitions, W/64]: marks in the words after this one
    owner: np.ndarray   # int32 [partitions, W]: the item marked at each time
    last: np.ndarray    # int64 [items]: the item's last-access time in its partition's window, -1 before
    clock: np.ndarray   # int64 [partitions]: the next time


def lru_stack(num_items: int, partitions: int = 1) -> LruStack:
    """An empty stack for items 0..num_items-1 spread over `partitions` equal partitions."""
    per = -(-num_items // partitions)
    window = 64
    while window < STACK_WINDOW_FACTOR * per + 1:
        window *= 2
    count = np.int16 if per < (1 << 15) else np.int32
    return LruStack(np.zeros((partitions, window // 64), np.uint64), np.zeros((partitions, window // 64), count),
                    np.zeros((partitions, window), np.int32), np.full(num_items, -1, np.int64),
                    np.zeros(partitions, np.int64))


@intrinsic
def _popcount(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.int64(types.uint64), codegen


@numba.njit(cache=True)
def _renumber(st, p):
    # Only the items' last-access times carry marks, so renumbering them 0..m-1 in time order
    # keeps every future distance and frees the window.
    words, after, owner = st.words[p], st.after[p], st.owner[p]
    one = np.uint64(1)
    m = 0
    for w in range(words.shape[0]):
        b = words[w]
        while b:
            low = b & (~b + one)
            x = owner[w * 64 + _popcount(low - one)]
            owner[m] = x
            st.last[x] = m
            m += 1
            b ^= low
    words[:] = 0
    for j in range(m):
        words[j >> 6] |= one << np.uint64(j & 63)
    for w in range(words.shape[0]):
        after[w] = max(0, m - (w + 1) * 64)
    st.clock[p] = m


SHORT_WINDOW_WORDS = 64
# STEP[SHORT_WINDOW_WORDS - k + w] is 1 when w >= k: a row's words from k on, read as a slice of int16
STEP = np.r_[np.zeros(SHORT_WINDOW_WORDS, np.int16), np.ones(SHORT_WINDOW_WORDS, np.int16)]


@numba.njit(cache=True, inline="always")
def _move_mark_short(words, after, owner, last, t, x):
    # The stack distance of an access to x at time t of its partition's window (-1 the first
    # time), and x's mark moved there: the words from the old mark's to the one before t's gain
    # a mark after them. A row of at most SHORT_WINDOW_WORDS is updated whole, without branches,
    # which vectorises (DeepSeek-V2-Lite's 64 words: twice as fast as a loop over those words).
    # The row's step is the difference of two slices of STEP, so the vector lanes stay int16: the
    # comparisons (w >= lo) & (w < t's word) compiled to 64-bit lanes packed down to 16, 0.28 ->
    # 0.13 s for the stack distances of the 14.7 M-access trace. Unsigned indices skip the
    # negative-index wraparound that would stop the loop vectorising.
    one = np.uint64(1)
    prev = last[np.uint64(x)]
    lo = 0
    d = -1
    if prev >= 0:
        w = prev >> 6
        uw = np.uint64(w)
        d = np.int64(after[uw]) + _popcount(words[uw] >> np.uint64(prev & 63) >> one)
        words[uw] &= ~(one << np.uint64(prev & 63))
        lo = w
    wt = t >> 6
    a = np.uint64(SHORT_WINDOW_WORDS - lo)
    b = np.uint64(SHORT_WINDOW_WORDS - wt)
    for w in range(words.shape[0]):
        after[w] += STEP[a + np.uint64(w)] - STEP[b + np.uint64(w)]
    words[np.uint64(wt)] |= one << np.uint64(t & 63)
    owner[np.uint64(t)] = x
    last[np.uint64(x)] = t
    return d


@numba.njit(cache=True, inline="always")
def _move_mark_long(words, after, owner, last, t, x):
    # the same for a long row, only where needed (DeepSeek-V3's 512 words: three times as fast)
    one = np.uint64(1)
    prev = last[x]
    lo = 0
    d = -1
    if prev >= 0:
        w = prev >> 6
        d = np.int64(after[w]) + _popcount(words[w] >> np.uint64(prev & 63) >> one)
        words[w] &= ~(one << np.uint64(prev & 63))
        lo = w
    wt = t >> 6
    for w in range(lo, wt):
        after[w] += 1
    words[wt] |= one << np.uint64(t & 63)
    owner[t] = x
    last[x] = t
    return d


@numba.njit(cache=True)
def stack_histogram(item, part_of, stack, hist):
    """Count the LRU stack distance of each access in `item` into hist[distance] (its last cell:
    first uses); part_of[x] is item x's partition (None: one partition)."""
    # Callers keep the clock and renumber a full window in their own loop, and choose the row
    # update outside it: inside a function of its own, or behind a test per access, each measured
    # two to three times slower.
    first = hist.shape[0] - 1
    window = stack.owner.shape[1]
    if stack.words.shape[1] <= SHORT_WINDOW_WORDS:
        for i in range(item.shape[0]):
            x = np.uint32(item[np.uint64(i)])
            p = 0 if part_of is None else part_of[x]
            t = stack.clock[p]
            if t == window:
                _renumber(stack, p)
                t = stack.clock[p]
            d = _move_mark_short(stack.words[p], stack.after[p], stack.owner[p], stack.last, t, x)
            stack.clock[p] = t + 1
            hist[d if d >= 0 else first] += 1
    else:
        for i in range(item.shape[0]):
            x = np.uint32(item[np.uint64(i)])
            p = 0 if part_of is None else part_of[x]
            t = stack.clock[p]
            if t == window:
                _renumber(stack, p)
                t = stack.clock[p]
            d = _move_mark_long(stack.words[p], stack.after[p], stack.owner[p], stack.last, t, x)
            stack.clock[p] = t + 1
            hist[d if d >= 0 else first] += 1


@numba.njit(cache=True)
def _scan(req, phase, pos, lidx, ids, num_experts,
          counts, last_ids, has_last, reuse_hits, reuse_pairs, req_hits, req_pairs,
          stack, hist, succ, prev_key, prev_ids):
    """One batch, rows in file order. State arrays are updated in place."""
    n, k = ids.shape
    num_items = stack.last.shape[0]
    window = stack.owner.shape[1]
    short = stack.words.shape[1] <= SHORT_WINDOW_WORDS
    do_succ = succ.shape[0] > 0
    for r in range(n):
        ph = phase[r]
        rq = req[r]
        l = lidx[r]
        # popularity
        for j in range(k):
            counts[ph, l, ids[r, j]] += 1
        # next-token reuse: the same request's previous token at this layer
        if has_last[rq, l]:
            hits = 0
            for j in range(k):
                e = ids[r, j]
                for i in range(k):
                    if last_ids[rq, l, i] == e:
                        hits += 1
                        break
            reuse_hits[ph, l] += hits
            reuse_pairs[ph, l] += 1
            req_hits[rq] += hits
            req_pairs[rq] += 1
        has_last[rq, l] = True
        for j in range(k):
            last_ids[rq, l, j] = ids[r, j]
        # LRU stack distance (as in stack_histogram)
        for j in range(k):
            t = stack.clock[0]
            if t == window:
                _renumber(stack, 0)
                t = stack.clock[0]
            x = l * num_experts + ids[r, j]
            if short:
                d = _move_mark_short(stack.words[0], stack.after[0], stack.owner[0], stack.last, t, x)
            else:
                d = _move_mark_long(stack.words[0], stack.after[0], stack.owner[0], stack.last, t, x)
            stack.clock[0] = t + 1
            hist[ph, d if d >= 0 else num_items] += 1
        # layer-to-layer successors within one token
        if do_succ:
            if prev_key[0] == rq and prev_key[1] == pos[r] and prev_key[2] == l - 1:
                for i in range(k):
                    a = prev_ids[i]
                    for j in range(k):
                        succ[l - 1, a, ids[r, j]] += 1
            prev_key[0] = rq
            prev_key[1] = pos[r]
            prev_key[2] = l
            for j in range(k):
                prev_ids[j] = ids[r, j]


@numba.njit(cache=True)
def _coupling(req, phase, pos, lidx, ids, succ, pop_top, hits_succ, hits_pop, pairs, prev_key, prev_ids):
    # A token's expert e at layer l is among the top k successors of its layer l-1 experts (highest summed
    # successor count, ties to the lower id) iff fewer than k experts rank above it: k counts of compares over
    # the layer's experts, which vectorise, instead of picking the top k in k branchy passes (1.22 -> 0.34 s
    # for the 14.7 M-access trace; `inspect` 2.16 -> 1.25 s, the report identical)
    n, k = ids.shape
    e_count = succ.shape[2]
    score = np.zeros(e_count, np.int64)
    for r in range(n):
        rq = req[r]
        l = lidx[r]
        if prev_key[0] == rq and prev_key[1] == pos[r] and prev_key[2] == l - 1:
            for f in range(e_count):
                score[f] = 0
            for i in range(k):
                row = succ[l - 1, prev_ids[i]]
                for f in range(e_count):
                    score[f] += row[f]
            hs = 0
            hp = 0
            for j in range(k):
                e = ids[r, j]
                se = score[e]
                above = 0
                for f in range(e_count):
                    above += (score[f] > se) | ((score[f] == se) & (f < e))
                hs += above < k
                if pop_top[l, e]:
                    hp += 1
            ph = phase[r]
            hits_succ[ph, l - 1] += hs
            hits_pop[ph, l - 1] += hp
            pairs[ph, l - 1] += 1
        prev_key[0] = rq
        prev_key[1] = pos[r]
        prev_key[2] = l
        for j in range(k):
            prev_ids[j] = ids[r, j]


# ---------------------------------------------------------------- streaming
class _Requests:
    """Dense 0..R-1 numbers for request ids, in order of first appearance."""

    def __init__(self):
        self.index: dict[int, int] = {}

    def dense(self, req: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(req, return_inverse=True)
        lut = np.empty(len(uniq), dtype=np.int32)
        for i, r in enumerate(uniq.tolist()):
            lut[i] = self.index.setdefault(r, len(self.index))
        return lut[inv]

    def __len__(self) -> int:
        return len(self.index)


def _batches(source: Trace | str | os.PathLike, batch_rows: int):
    """(meta, numpy columns) per batch, for a file (streamed) or an in-memory trace."""
    if isinstance(source, Trace):
        tables = ((source.meta, b) for b in source.table.select(STAT_COLUMNS).to_batches(max_chunksize=batch_rows))
    else:
        tables = ((m, t) for m, t, _ in iter_batches(source, columns=STAT_COLUMNS, batch_rows=batch_rows))
    for meta, t in tables:
        if t.num_rows == 0:
            continue
        col = t.column("expert_ids")
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        ids = col.flatten().to_numpy().reshape(-1, meta.top_k).astype(np.int32)
        yield meta, {
            "request_id": t.column("request_id").to_numpy(),
            "phase": t.column("phase").to_numpy().astype(np.int32),
            "step": t.column("step").to_numpy(),
            "token_pos": t.column("token_pos").to_numpy().astype(np.int64),
            "layer": t.column("layer").to_numpy(),
            "ids": ids,
        }


def inspect_trace(source: Trace | str | os.PathLike, *, batch_rows: int = 1 << 20,
                  successors: bool = False) -> dict[str, Any]:
    """Statistics of a trace (a path, streamed by row batch, or a Trace in memory). See the module doc.

    successors=True adds "successor_counts" [layers-1, experts, experts]: how often expert b ran at
    MoE layer l+1 for a token that ran expert a at layer l (the synthetic generator's coupling table).
    """
    meta = source.meta if isinstance(source, Trace) else read_meta(source)
    L, E, k = meta.num_moe_layers, meta.num_experts, meta.top_k
    num_items = L * E
    lut = meta.layer_lut()
    coupling_on = L > 1 and (L - 1) * E * E <= MAX_COUPLING_CELLS

    requests = _Requests()
    counts = np.zeros((2, L, E), np.int64)
    last_ids = np.zeros((1024, L, k), np.int32)
    has_last = np.zeros((1024, L), np.bool_)
    req_hits = np.zeros(1024, np.int64)
    req_pairs = np.zeros(1024, np.int64)
    reuse_hits = np.zeros((2, L), np.int64)
    reuse_pairs = np.zeros((2, L), np.int64)
    stack = lru_stack(num_items)
    hist = np.zeros((2, num_items + 1), np.int64)
    succ = np.zeros((L - 1, E, E) if coupling_on else (0, E, E), np.int64)
    prev_key = np.full(3, -1, np.int64)
    prev_ids = np.zeros(k, np.int32)
    tokens = np.zeros(2, np.int64)
    steps = 0
    rows = 0
    last_token = None  # (step, request, pos) of the previous batch's last row
    last_step = None
    req_tokens = [np.zeros(0, np.int64), np.zeros(0, np.int64)]  # tokens per dense request, per phase

    for _, b in _batches(source, batch_rows):
        n = len(b["layer"])
        rows += n
        req = requests.dense(b["request_id"])
        if len(requests) > last_ids.shape[0]:
            grow = max(len(requests), 2 * last_ids.shape[0])
            last_ids = np.concatenate([last_ids, np.zeros((grow - last_ids.shape[0], L, k), np.int32)])
            has_last = np.concatenate([has_last, np.zeros((grow - has_last.shape[0], L), np.bool_)])
            req_hits = np.concatenate([req_hits, np.zeros(grow - req_hits.shape[0], np.int64)])
            req_pairs = np.concatenate([req_pairs, np.zeros(grow - req_pairs.shape[0], np.int64)])
        lidx = lut[b["layer"]]
        step, pos, phase = b["step"], b["token_pos"], b["phase"]
        # a new token starts where (step, request, position) changes; rows of a token are contiguous
        new_tok = np.empty(n, bool)
        new_tok[1:] = (step[1:] != step[:-1]) | (req[1:] != req[:-1]) | (pos[1:] != pos[:-1])
        new_tok[0] = last_token != (int(step[0]), int(req[0]), int(pos[0]))
        last_token = (int(step[-1]), int(req[-1]), int(pos[-1]))
        new_step = np.empty(n, bool)
        new_step[1:] = step[1:] != step[:-1]
        new_step[0] = last_step != int(step[0])
        last_step = int(step[-1])
        steps += int(new_step.sum())
        for ph in (PREFILL, DECODE):
            sel = new_tok & (phase == ph)
            tokens[ph] += int(sel.sum())
            per_req = np.bincount(req[sel], minlength=len(requests))
            grown = np.zeros(len(requests), np.int64)
            grown[:len(req_tokens[ph])] = req_tokens[ph]
            req_tokens[ph] = grown + per_req
        _scan(req, phase, pos, lidx, b["ids"], E, counts, last_ids, has_last, reuse_hits, reuse_pairs,
              req_hits, req_pairs, stack, hist, succ, prev_key, prev_ids)

    phases = [PHASE_NAMES[p] for p in (PREFILL, DECODE) if tokens[p] > 0]
    report: dict[str, Any] = {
        "file": str(source.path) if isinstance(source, Trace) and source.path else
        (None if isinstance(source, Trace) else str(Path(source))),
        "model": meta.model,
        "revision": meta.revision,
        "dtype": meta.dtype,
        "quantization": meta.quantization,
        "source": meta.source,
        "lacks": list(meta.lacks),
        "notes": meta.notes,
        "requests": len(requests),
        "tokens": {"prefill": int(tokens[PREFILL]), "decode": int(tokens[DECODE]), "total": int(tokens.sum())},
        "steps": steps,
        "rows": rows,
        "accesses": rows * k,
        "phases": phases,
        "moe_layers": list(meta.moe_layers),
        "num_experts": E,
        "top_k": k,
        "shared_experts": meta.shared_experts,
        "bytes_per_expert": meta.bytes_per_expert,
        "request_tokens": {"prefill": req_tokens[PREFILL].tolist(), "decode": req_tokens[DECODE].tolist()},
    }
    split: dict[str, Any] = {"all": slice(None)}
    if len(phases) == 2:
        split |= {PHASE_NAMES[p]: p for p in (PREFILL, DECODE)}
    report["popularity"] = {name: _popularity(counts[sel].reshape(-1, L, E).sum(axis=0)) for name, sel in split.items()}
    report["next_token_reuse"] = {
        name: _ratio_per_layer(reuse_hits[sel].reshape(-1, L).sum(axis=0),
                               reuse_pairs[sel].reshape(-1, L).sum(axis=0), k)
        for name, sel in split.items()
    }
    report["next_token_reuse"]["uniform_baseline"] = k / E
    # the per-request average weighs short prompts as much as long ones (how MoE-Beyond's SOURCE.md counts)
    has = req_pairs > 0
    report["next_token_reuse"]["mean_over_requests"] = \
        float(np.mean(req_hits[has] / (req_pairs[has] * k))) if has.any() else None
    report["reuse_distance"] = _reuse_distance(hist, split, num_items)

    if coupling_on:
        report["coupling"] = _coupling_report(source, batch_rows, meta, lut, requests, succ, counts, split)
    else:
        why = "the model has a single MoE layer" if L <= 1 else \
            f"{L - 1} x {E} x {E} successor counts exceed {MAX_COUPLING_CELLS} cells"
        report["coupling"] = {"skipped": why}
    if successors and coupling_on:
        report["successor_counts"] = succ
    return report


def _coupling_report(source, batch_rows, meta, lut, requests, succ, counts, split):
    L, E, k = meta.num_moe_layers, meta.num_experts, meta.top_k
    total = counts.sum(axis=0)
    pop_top = np.zeros((L, E), np.bool_)
    for l in range(L):
        # ties to the lower expert id, as in the successor predictor
        pop_top[l, np.lexsort((np.arange(E), -total[l]))[:k]] = True
    hits_succ = np.zeros((2, L - 1), np.int64)
    hits_pop = np.zeros((2, L - 1), np.int64)
    pairs = np.zeros((2, L - 1), np.int64)
    prev_key = np.full(3, -1, np.int64)
    prev_ids = np.zeros(k, np.int32)
    for _, b in _batches(source, batch_rows):
        req = requests.dense(b["request_id"])
        _coupling(req, b["phase"], b["token_pos"], lut[b["layer"]], b["ids"], succ, pop_top,
                  hits_succ, hits_pop, pairs, prev_key, prev_ids)
    out = {}
    for name, sel in split.items():
        p = pairs[sel].reshape(-1, L - 1).sum(axis=0)
        out[name] = {
            "successor_topk": _ratio_per_layer(hits_succ[sel].reshape(-1, L - 1).sum(axis=0), p, k),
            "popularity_topk": _ratio_per_layer(hits_pop[sel].reshape(-1, L - 1).sum(axis=0), p, k),
        }
    return out


def _popularity(counts: np.ndarray) -> dict[str, Any]:
    """counts: [layers, experts] activations."""
    L, E = counts.shape
    top_n = max(1, math.ceil(0.1 * E))
    srt = -np.sort(-counts, axis=1)
    tot = counts.sum(axis=1)
    share, need, ent = [], [], []
    for l in range(L):
        if tot[l] == 0:
            share.append(None), need.append(None), ent.append(None)
            continue
        share.append(float(srt[l, :top_n].sum() / tot[l]))
        cum = np.cumsum(srt[l])
        # 90% in exact integer arithmetic: first m with 10 * cum >= 9 * total
        need.append(int(np.searchsorted(10 * cum, 9 * tot[l], side="left") + 1))
        p = counts[l][counts[l] > 0] / tot[l]
        ent.append(float(-(p * np.log(p)).sum() / math.log(E)) if E > 1 else 0.0)
    return {
        "top10_experts": top_n,
        "per_layer": {"top10_share": share, "experts_for_90pct": need, "entropy": ent},
        "mean": {"top10_share": _mean(share), "experts_for_90pct": _mean(need), "entropy": _mean(ent)},
        "activations": int(tot.sum()),
        "counts": counts,
    }


def _ratio_per_layer(hits: np.ndarray, pairs: np.ndarray, k: int) -> dict[str, Any]:
    per = [float(h / (p * k)) if p else None for h, p in zip(hits.tolist(), pairs.tolist())]
    tp = int(pairs.sum())
    return {"per_layer": per, "mean": float(hits.sum() / (tp * k)) if tp else None, "pairs": tp}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _reuse_distance(hist: np.ndarray, split: dict, num_items: int) -> dict[str, Any]:
    out: dict[str, Any] = {"num_items": num_items}
    for name, sel in split.items():
        h = hist[sel].reshape(-1, num_items + 1).sum(axis=0)
        total = int(h.sum())
        cold = int(h[num_items])
        reuse = h[:num_items]
        cum = np.cumsum(reuse)
        # hit rate of a global LRU cache of C experts = accesses with distance < C
        hits_by_capacity = np.r_[0, cum]
        q = {}
        for f in QUANTILES:
            q[f"p{round(f * 100):d}"] = int(np.searchsorted(cum, f * cum[-1], side="left")) if cum[-1] else None
        buckets = [(0, 1)]
        lo = 1
        while lo < num_items:
            buckets.append((lo, min(2 * lo, num_items)))
            lo *= 2
        hist_rows = [{"from": a, "to": b - 1, "accesses": int(reuse[a:b].sum())} for a, b in buckets]
        curve = []
        # floored like replay's capacity ('20%' of 1,664 experts is 332), so the two name the same cache
        for c in sorted({max(1, math.floor(f * num_items + 1e-9)) for f in LRU_FRACTIONS}):
            curve.append({"capacity": c, "fraction": c / num_items,
                          "hit_rate": float(hits_by_capacity[c] / total) if total else None})
        out[name] = {
            "accesses": total,
            "cold": cold,
            "quantiles": q,
            "histogram": hist_rows,
            "lru_curve": curve,
            "lru_hits_by_capacity": hits_by_capacity,
            "distance_counts": h,
        }
    return out


def lru_hit_rate(report: dict[str, Any], capacity: int, phase: str = "all") -> float:
    """Hit rate of a global LRU cache of `capacity` experts, read off the stack-distance histogram."""
    rd = report["reuse_distance"][phase]
    hits = rd["lru_hits_by_capacity"]
    return float(hits[min(capacity, len(hits) - 1)] / rd["accesses"])


# ---------------------------------------------------------------- text output
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def format_report(r: dict[str, Any]) -> str:
    """The report as aligned, readable tables."""
    src = r["source"] or {}
    out = [
        f"trace        {r['file'] or '<in memory>'}",
        f"model        {r['model']}" + (f" @ {r['revision']}" if r.get("revision") else "")
        + f"  ({r['dtype']}" + (f", {r['quantization']}" if r.get("quantization") else "") + ")",
        f"source       {src.get('kind', '?')}: {src.get('name', '?')}",
        f"lacks        {', '.join(r['lacks']) or 'nothing'}",
    ]
    if r["notes"]:
        out.append(f"notes        {r['notes']}")
    t = r["tokens"]
    out += [
        f"requests     {r['requests']:,}",
        f"tokens       {t['total']:,} (prefill {t['prefill']:,}, decode {t['decode']:,})",
        f"steps        {r['steps']:,}",
        f"accesses     {r['accesses']:,} ({r['rows']:,} rows x top-{r['top_k']})",
        f"MoE layers   {len(r['moe_layers'])} ({_span(r['moe_layers'])})",
        f"experts      {r['num_experts']} per layer, top-{r['top_k']}, {r['shared_experts']} shared, "
        f"{r['bytes_per_expert']:,} bytes each",
        "",
    ]
    if not r["rows"]:
        out.append("The trace holds no rows: no statistics to show.")
        return "\n".join(out)
    pop, reuse, coup = r["popularity"]["all"], r["next_token_reuse"]["all"], r["coupling"]
    has_coup = "all" in coup
    header = ["layer", "top10% share", "experts 90%", "entropy", "next-token reuse"]
    if has_coup:
        header += ["coupling", "popular top-k"]
    rows = []
    for i, layer in enumerate(r["moe_layers"]):
        row = [str(layer), _pct(pop["per_layer"]["top10_share"][i]), _fmt(pop["per_layer"]["experts_for_90pct"][i]),
               _fmt(pop["per_layer"]["entropy"][i], 3), _pct(reuse["per_layer"][i])]
        if has_coup:
            j = i - 1  # coupling into this layer from the previous MoE layer
            row += [_pct(coup["all"]["successor_topk"]["per_layer"][j]) if j >= 0 else "",
                    _pct(coup["all"]["popularity_topk"]["per_layer"][j]) if j >= 0 else ""]
        rows.append(row)
    out += ["Per layer (coupling: share of this layer's experts among the top-k successors of the previous layer's)"]
    out += _table(header, rows)
    out.append("")
    header = ["phase", "top10% share", "experts 90%", "entropy", "next-token reuse", "coupling", "popular top-k"]
    rows = []
    for name in ["all", *(p for p in PHASE_NAMES if p in r["popularity"])]:
        p, u = r["popularity"][name]["mean"], r["next_token_reuse"][name]
        c = coup.get(name)
        rows.append([name, _pct(p["top10_share"]), _fmt(p["experts_for_90pct"], 1), _fmt(p["entropy"], 3),
                     _pct(u["mean"]), _pct(c["successor_topk"]["mean"]) if c else "-",
                     _pct(c["popularity_topk"]["mean"]) if c else "-"])
    out += ["Means over layers (reuse and coupling pooled over token pairs; per-request mean reuse "
            f"{_pct(r['next_token_reuse']['mean_over_requests'])}; uniform routing would reuse "
            f"{_pct(r['next_token_reuse']['uniform_baseline'])})"]
    out += _table(header, rows)
    if not has_coup:
        out.append(f"coupling skipped: {coup['skipped']}")
    out.append("")
    rd = r["reuse_distance"]
    out.append(f"Reuse distance (distinct other experts between two uses of one; {rd['num_items']:,} (layer, expert) items)")
    names = ["all", *(p for p in PHASE_NAMES if p in rd)]
    rows = [[name, f"{rd[name]['cold']:,}", *(_fmt(v) for v in rd[name]["quantiles"].values())] for name in names]
    out += _table(["phase", "cold", *rd["all"]["quantiles"].keys()], rows)
    out.append("")
    header = ["distance", *names]
    rows = []
    for i, b in enumerate(rd["all"]["histogram"]):
        span = str(b["from"]) if b["from"] == b["to"] else f"{b['from']}-{b['to']}"
        rows.append([span, *(_pct(rd[n]["histogram"][i]["accesses"] / rd[n]["accesses"]) for n in names)])
    rows.append(["cold", *(_pct(rd[n]["cold"] / rd[n]["accesses"]) for n in names)])
    out += _table(header, rows)
    out.append("")
    out.append("LRU hit rate, one global cache (exact, from the stack distances)")
    header = ["capacity", "of all experts", *names]
    rows = []
    for i, c in enumerate(rd["all"]["lru_curve"]):
        rows.append([f"{c['capacity']:,}", _pct(c["fraction"]), *(_pct(rd[n]["lru_curve"][i]["hit_rate"]) for n in names)])
    out += _table(header, rows)
    return "\n".join(out)


def _fmt(x, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if digits else f"{x:,}" if isinstance(x, int) else f"{x:,.0f}"


def _span(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}..{layers[-1]}"
    return "layers " + ", ".join(map(str, layers))


def report_json(r: dict[str, Any]) -> dict[str, Any]:
    """The report with numpy arrays as lists (what `moesim inspect --json` prints)."""
    def plain(o):
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        return o
    return plain(r)
