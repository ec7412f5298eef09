"""MoE-Beyond's cache experiment (arXiv 2508.17137), two ways.

The paper's simulator (cache_simulator/infinity_moe_sim.py in its repository,
`test_single_csv_predict_mode_with_predicted`) runs each test prompt alone
against a fresh LRU of 10 % of 26 x 64 experts: the first 10 tokens only warm
the cache (in fact 10 tokens and one row: its warm-up loop breaks *after*
row 26*10, so token 10's first layer is touched before being counted); then for
each (token, layer) row it *accesses* the predicted experts (an LRU touch,
uncounted) and then counts hits of the real ones.

`paper_protocol` is a plain re-implementation of that loop (OrderedDict LRU),
the reference. `engine_protocol` asks moesim's engine the same question: one
count-mode replay per request, the prefix of warm-up tokens replayed alone and
subtracted (LRU state after the prefix is the same either way), predictions
issued at horizon 1 for the tokens after warm-up. It differs from the paper's
loop in two ways, both counted in the README: a predicted expert that is
already resident is not touched (moesim drops resident prefetches; the paper's
access moves it to the front), and there is no extra warm-up row.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..trace import Trace, access_stream


def paper_protocol(trace: Trace, *, use_predictions: bool, capacity_fraction: float = 0.1,
                   warmup_tokens: int = 10, extra_warmup_row: bool = True) -> dict:
    """Hits and misses as the paper's simulator counts them (per-request cold LRU, pred_h0 touched first).

    extra_warmup_row=False drops the paper's off-by-one (its warm-up touches one row more than 10 tokens).
    """
    L, E = trace.meta.num_moe_layers, trace.meta.num_experts
    cap = int(L * E * capacity_fraction)
    stream = access_stream(trace, prefill_chunk=1)
    k = stream.top_k
    pred = trace.predictions(0)[stream.row_order] if use_predictions else None
    rows_req = stream.row_request
    hits = misses = 0
    bounds = np.flatnonzero(np.r_[True, rows_req[1:] != rows_req[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        cache: OrderedDict = OrderedDict()

        def access(x):
            if x in cache:
                cache.move_to_end(x)
                return True
            if len(cache) >= cap:
                cache.popitem(last=False)
            cache[x] = True
            return False

        warm = L * warmup_tokens
        for r in range(a, b if warm or extra_warmup_row else a):  # the paper's loop: rows 0..warm inclusive
            for x in stream.item[r * k:(r + 1) * k].tolist():
                access(x)
            if r - a >= warm - (0 if extra_warmup_row else 1):
                break
        for r in range(a + warm, b):
            layer_base = (stream.item[r * k] // E) * E
            if pred is not None:
                for e in pred[r].tolist():
                    if e >= 0:
                        access(layer_base + e)
            for x in stream.item[r * k:(r + 1) * k].tolist():
                if access(x):
                    hits += 1
                else:
                    misses += 1
    return {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else math.nan,
            "capacity_experts": cap}


def engine_protocol(trace: Trace, predictor: str = "none", *, capacity: str | int | float = "10%",
                    warmup_tokens: int = 10, policy: str = "lru", train=None, top_n: int | None = None) -> dict:
    """The same experiment through moesim.replay (count mode), one cold replay per request."""
    from ..replay import Prefetch, replay
    from . import predict
    if train is not None and not isinstance(train, Trace):
        from ..trace import read_trace
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
            from .plan import select, to_plan
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
