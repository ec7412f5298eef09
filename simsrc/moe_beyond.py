"""MoE-Beyond's cache experiment (arXiv 2508.17137), two ways.

The paper's simulator (cache_simulator/infinity_moe_sim.py in its repository,
`test_single_csv_predict_mode_with_predicted`) runs each test prompt alone
against a fresh LRU of 10 % of 26 x 64 experts: the first 10 tokens only warm
the cache (in fact 10 tokens and one row: its warm-up loop breaks *after*
row 26*10, so token 10's first layer is touched before being counted); then for
each (token, layer) row it *accesses* the predicted experts (an LRU touch,
uncounted) and then counts hits of the real ones.

`paper_protocol` is a re-implementation of that loop (its accesses, in its
order, through the compiled LRU), the reference. `engine_protocol` asks moesim's engine the same question: one
count-mode replay per request, the prefix of warm-up tokens replayed alone and
subtracted (LRU state after the prefix is the same either way), predictions
issued at horizon 1 for the tokens after warm-up. It differs from the paper's
loop in two ways, both counted in the README: a predicted expert that is
already resident is not touched (moesim drops resident prefetches; the paper's
access moves it to the front), and there is no extra warm-up row.
"""
from __future__ import annotations

import math
import numpy as np

from .trace import Trace, access_stream


def paper_protocol(trace: Trace, *, use_predictions: bool, capacity_fraction: float = 0.1,
                   warmup_tokens: int = 10, extra_warmup_row: bool = True) -> dict:
    """Hits and misses as the paper's simulator counts them (per-request cold LRU, pred_h0 touched first).

    extra_warmup_row=False drops the paper's off-by-one (its warm-up touches one row more than 10 tokens).
    The paper's loop becomes one access stream per request -- warm-up rows, then each row's predicted
    experts (touched, not counted) before its real ones (counted) -- replayed by the compiled LRU.
    """
    L, E = trace.meta.num_moe_layers, trace.meta.num_experts
    cap = int(L * E * capacity_fraction)
    stream = access_stream(trace, prefill_chunk=1)
    k = stream.top_k
    pred = trace.predictions(0)[stream.row_order] if use_predictions else None
    rows_req = stream.row_request
    hits = misses = 0
    bounds = np.flatnonzero(np.r_[True, rows_req[1:] != rows_req[:-1], True])
    real = stream.item.reshape(-1, k).astype(np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):
        warm = L * warmup_tokens
        # the paper's warm-up loop touches rows 0..warm inclusive (one row more than `warm`)
        warm_rows = real[a:min(a + warm + (1 if extra_warmup_row else 0), b)].reshape(-1)
        rows = real[a + warm:b]
        if pred is not None:
            guess = pred[a + warm:b].astype(np.int64)
            guess = np.where(guess >= 0, (rows[:, :1] // E) * E + guess, -1)
        else:
            guess = np.full((len(rows), 0), -1, np.int64)
        per_row = np.concatenate([guess, rows], axis=1)
        counted = np.concatenate([np.zeros_like(guess, bool), np.ones_like(rows, bool)], axis=1)
        keep = per_row.reshape(-1) >= 0
        items = np.concatenate([warm_rows, per_row.reshape(-1)[keep]]).astype(np.int32)
        counted = np.concatenate([np.zeros(len(warm_rows), bool), counted.reshape(-1)[keep]])
        hit = _lru_hits(items, L * E, cap)
        hits += int(hit[counted].sum())
        misses += int((~hit[counted]).sum())
    return {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else math.nan,
            "capacity_experts": cap}


def _lru_hits(items: np.ndarray, num_items: int, capacity: int) -> np.ndarray:
    """Which accesses of a plain LRU of `capacity` experts, cold at the start, hit (the compiled engine)."""
    from . import policies
    from .engine import Cache, PrefetchPlan, Stream, count_replay
    record = np.zeros(len(items), np.uint8)
    cache = Cache(np.zeros(num_items, np.int32), np.array([capacity], np.int64), np.zeros(num_items, np.uint8),
                  np.zeros(0, np.int32))
    state = policies.get("lru").init(num_items, cache.part_of, cache.part_capacity, None, {})
    plan = PrefetchPlan(np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), -1)
    stream = Stream(items, np.array([0, len(items)], np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64))
    count_replay(stream, cache, plan, state, 1, record=record)
    return record.astype(bool)


def engine_protocol(trace: Trace, predictor: str = "none", *, capacity: str | int | float = "10%",
                    warmup_tokens: int = 10, policy: str = "lru", train=None, top_n: int | None = None) -> dict:
    """The same experiment through moesim.replay (count mode), one cold replay per request."""
    from .predict import Prefetch, predict
    from .replay import replay
    if train is not None and not isinstance(train, Trace):
        from .trace import read_trace
        train = read_trace(train)  # once, not once per request
    hits = misses = issued = used = wasted = 0
    for q in np.unique(trace.column("request_id")):
        sub = trace.select_requests([q])
        stream = access_stream(sub, prefill_chunk=1)
        if stream.num_steps <= warmup_tokens:
            continue
        warm_segs = int(np.searchsorted(stream.seg_step, warmup_tokens))
        plan = None
        if predictor != "none":
            from .predict.plan import select, to_plan
            p = predict(sub, predictor, stream=stream, horizon=1, top_n=top_n, train=train)
            p = select(p, horizon=1).take(np.flatnonzero(p.target_seg >= warm_segs))
            plan = to_plan(p, stream.num_segments)
        full = replay(sub, policy=policy, capacity=capacity, mode="count", stream=stream, prefetch=plan,
                      predictor=predictor)
        head = replay(sub, policy=policy, capacity=capacity, mode="count", stream=stream.head(warm_segs),
                      prefetch=Prefetch.none(warm_segs))
        hits += full["hits"] - head["hits"]
        misses += full["misses"] - head["misses"]
        issued += full["prefetch_issued"]
        used += full["prefetch_used"]
        wasted += full["prefetch_wasted"]
    return {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else math.nan,
            "prefetch_issued": issued, "prefetch_used": used, "prefetch_wasted": wasted}
