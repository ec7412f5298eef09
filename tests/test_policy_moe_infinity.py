"""The MoE-Infinity eviction policy against a brute-force reference of its documented rule, in both accountings.

The reference (tests/reference.py) rescores every resident at every victim search with Python integers,
exactly as the policy's docstring states the rule, and replays each accounting from its definition; the
compiled policy keeps sorted per-layer cells and skips most searches, and must agree decision for decision.
"""
import numpy as np
import pytest
from helpers import make_trace
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import MoeInfinityPriority, moe_infinity_reference

import moesim
from moesim.policies import moe_infinity
from moesim.replay import Prefetch
from moesim.trace import access_stream

from conftest import TRACES

ACCOUNTINGS = ["access", "segment"]


def partitions(num_layers, num_experts, capacity, scope):
    if scope == "global":
        return [0] * (num_layers * num_experts), [capacity]
    return [x // num_experts for x in range(num_layers * num_experts)], [capacity // num_layers] * num_layers


def reference_hits(stream, capacity, scope, accounting, plan=None):
    part_of, cap = partitions(stream.num_layers, stream.num_experts, capacity, scope)
    return moe_infinity_reference(stream.item.tolist(), np.repeat(stream.row_request, stream.top_k).tolist(),
                                  stream.seg_offsets.tolist(), part_of, cap, stream.num_layers, stream.num_experts,
                                  accounting, None if plan is None else (plan.offsets.tolist(), plan.item.tolist()))


@st.composite
def traces(draw):
    """Small traces: 1-4 layers, 2-5 experts, top-1 or 2, 1-3 requests that may share steps (batching)."""
    L = draw(st.integers(1, 4))
    E = draw(st.integers(2, 5))
    k = draw(st.integers(1, min(2, E)))
    tokens = []  # (step, request)
    for r in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 6))
        tokens += [(start + j, r) for j in range(draw(st.integers(1, 8)))]
    tokens.sort()
    expert = st.lists(st.integers(0, E - 1), min_size=k, max_size=k, unique=True)
    routes = [[draw(expert) for _ in range(L)] for _ in tokens]
    trace = make_trace(routes, num_experts=E, top_k=k, requests=[r for _, r in tokens],
                       steps=[s for s, _ in tokens])
    return trace, L, E


@pytest.mark.parametrize("accounting", ACCOUNTINGS)
@settings(max_examples=150, deadline=None)
@given(case=traces(), data=st.data())
def test_count_mode_matches_the_reference_hit_for_hit(accounting, case, data):
    trace, L, E = case
    scope = data.draw(st.sampled_from(["global", "per-layer"]))
    capacity = data.draw(st.integers(1, L * E))
    stream = access_stream(trace)
    row = moesim.replay(trace, policy="moe-infinity", mode="count", accounting=accounting, capacity=capacity,
                        scope=scope, stream=stream, per_layer=True)
    assert row["hits_per_layer"] == reference_hits(stream, capacity, scope, accounting)


@pytest.mark.parametrize("accounting", ACCOUNTINGS)
@settings(max_examples=100, deadline=None)
@given(case=traces(), data=st.data())
def test_count_mode_with_prefetches_matches_the_reference(accounting, case, data):
    trace, L, E = case
    capacity = data.draw(st.integers(1, L * E))
    stream = access_stream(trace)
    per_seg = [data.draw(st.lists(st.integers(0, L * E - 1), max_size=3, unique=True))
               for _ in range(stream.num_segments)]
    plan = Prefetch(offsets=np.r_[0, np.cumsum([len(p) for p in per_seg])].astype(np.int64),
                    item=np.array([x for p in per_seg for x in p], np.int32),
                    target_seg=np.array([s for s, p in enumerate(per_seg) for _ in p], np.int64))
    row = moesim.replay(trace, policy="moe-infinity", mode="count", accounting=accounting, capacity=capacity,
                        stream=stream, prefetch=plan, per_layer=True)
    assert row["hits_per_layer"] == reference_hits(stream, capacity, "global", accounting, plan)


@settings(max_examples=150, deadline=None)
@given(traces(), st.data())
def test_timed_mode_matches_the_segment_reference_hit_for_hit(case, data):
    # with no prefetch nothing else is in flight, so timed mode makes segment accounting's decisions
    trace, L, E = case
    scope = data.draw(st.sampled_from(["global", "per-layer"]))
    capacity = data.draw(st.integers(1, L * E))
    stream = access_stream(trace)
    row = moesim.replay(trace, policy="moe-infinity", mode="timed", capacity=capacity, scope=scope,
                        stream=stream, per_layer=True)
    assert row["hits_per_layer"] == reference_hits(stream, capacity, scope, "segment")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_victim_matches_the_reference_whatever_is_busy(data):
    # the policy's operations driven directly, as both engines may call them: demand accesses and prefetch
    # inserts at stream positions that mostly go forward but step back too (segment accounting tells a layer's
    # experts each at its last access there, hits first), evictions, and victim searches with any experts busy
    L, E = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 4))
    n_items = L * E
    n = 40
    item = np.array(data.draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), np.int32)
    rows_request = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int32)
    stream = type("Stream", (), dict(item=item, row_request=rows_request, top_k=1, num_layers=L, num_experts=E))
    scope = data.draw(st.sampled_from(["global", "per-layer"]))
    per = data.draw(st.integers(1, E))
    part_of, cap = partitions(L, E, per * L, scope)
    state = moe_infinity.init(n_items, np.array(part_of, np.int32), np.array(cap, np.int64), stream, {})
    ref = MoeInfinityPriority(item.tolist(), rows_request.tolist(), L, E)
    cached = [set() for _ in cap]
    t = -1
    for _ in range(data.draw(st.integers(1, 80))):
        t = min(max(t + data.draw(st.integers(-3, 3)), 0), n - 1)
        x = data.draw(st.integers(0, n_items - 1))
        p = part_of[x]
        op = data.draw(st.sampled_from(["insert", "hit", "evict", "victim"]))
        if op == "insert" and x not in cached[p] and len(cached[p]) < cap[p]:
            cached[p].add(x)
            moe_infinity.on_insert(state, x, p, t)
            ref.activate(x, t)
        elif op == "hit" and x in cached[p]:
            moe_infinity.on_hit(state, x, p, t)
            ref.activate(x, t)
        elif op == "evict" and x in cached[p]:
            cached[p].remove(x)
            moe_infinity.on_evict(state, x, p)
        elif op == "victim":
            busy = np.array(data.draw(st.lists(st.booleans(), min_size=n_items, max_size=n_items)), np.uint8)
            assert moe_infinity.victim(state, p, busy, t) == ref.victim(cached[p], t, set(np.flatnonzero(busy)))
            assert moe_infinity.victim(state, p, None, t) == ref.victim(cached[p], t)


def test_the_victim_is_judged_from_the_layer_that_needs_the_slot():
    # The case: 3 layers x 2 experts, top-1, capacity 2; two tokens of one request use expert 0 at every
    # layer: items 0 2 4 | 0 2 4. At the miss of item 4 (layer 2), item 0 (layer 0) is 1 layer ahead,
    # (3 - 1) * 2 * 2 = 8; item 2 (layer 1) was just passed, 1 * 2 * 2 = 4: it goes, and token 1's item 0 hits.
    # Judged from layer 1 (the access before, as the policy did), item 0 would score 1 * 4 and go instead: no
    # hit at all. Each token is its own step, so every segment holds one access and segment accounting makes
    # the same calls as per-access accounting: 1 hit in both, and timed.
    trace = make_trace([[[0], [0], [0]]] * 2, num_experts=2, top_k=1)
    for mode, accounting in (("count", "access"), ("count", "segment"), ("timed", "segment")):
        row = moesim.replay(trace, policy="moe-infinity", mode=mode, accounting=accounting, capacity=2,
                            per_layer=True)
        assert row["hits_per_layer"] == [1, 0, 0], (mode, accounting)
    # The same two tokens in one step (a prompt kept whole): per segment each layer looks expert 0 up once, so
    # 3 misses and no hit; per access the second token's use hits at every layer.
    whole = make_trace([[[0], [0], [0]]] * 2, num_experts=2, top_k=1, phase=0, steps=[0, 0])
    for accounting, hits in (("segment", [0, 0, 0]), ("access", [1, 1, 1])):
        row = moesim.replay(whole, policy="moe-infinity", mode="count", accounting=accounting, capacity=2,
                            prefill_chunk=0, per_layer=True)
        assert row["hits_per_layer"] == hits, accounting


@pytest.mark.parametrize("accounting", ACCOUNTINGS)
def test_a_new_request_is_judged_by_its_own_counts(accounting):
    # one layer of 3 experts, top-1, capacity 2. Request 0 uses 0 0 0, request 1 uses 1 1, request 2 uses 2 0.
    # At request 2's first access (a miss of 2), its own counts are all zero: item 0 scores 1 * (3 + 1) = 4,
    # item 1 scores 1 * (2 + 1) = 3, so 1 goes and request 2's 0 hits. Judged with request 1's counts (the
    # access before), item 1 would score (2 + 1) * (2 + 1) = 9 and 0 would go: one hit fewer.
    trace = make_trace([[[0]], [[0]], [[0]], [[1]], [[1]], [[2]], [[0]]], num_experts=3, top_k=1,
                       requests=[0, 0, 0, 1, 1, 2, 2])
    for mode in ("count", "timed"):
        if mode == "timed" and accounting == "access":
            continue
        row = moesim.replay(trace, policy="moe-infinity", mode=mode, accounting=accounting, capacity=2)
        assert (row["hits"], row["misses"]) == (4, 3), mode


def test_in_a_shared_step_a_miss_is_judged_by_its_own_requests_counts():
    # one layer of 4 experts, top-1, capacity 3; requests A (0) and B (1). A uses 1; B uses 2, then 0; then one
    # step holds A's use of 3 and B's use of 0; then A uses 1. Per segment, B's hit on 0 (the later access) is
    # told first; A's miss of 3 is then judged by A's counts: item 1 scores (1 + 1) * (1 + 1) = 4, item 2
    # 1 * (1 + 1) = 2 (B's use), 0 is in use: 2 goes and A's 1 hits. Judged by B's counts (the last access
    # told, as the policy did), 1 would score 2 and 2 would score 4: 1 would go, one hit fewer.
    trace = make_trace([[[1]], [[2]], [[0]], [[3]], [[0]], [[1]]], num_experts=4, top_k=1,
                       requests=[0, 1, 1, 0, 1, 0], steps=[0, 1, 2, 3, 3, 4])
    for mode in ("count", "timed"):
        row = moesim.replay(trace, policy="moe-infinity", mode=mode, capacity=3)
        assert (row["hits"], row["misses"]) == (2, 4), mode
    row = moesim.replay(trace, policy="moe-infinity", mode="count", accounting="access", capacity=3)
    assert (row["hits"], row["misses"]) == (2, 4)


def _state(item, L, E, capacity, request=None):
    """The policy's state over a hand-written top-1 stream of items, one global partition."""
    item = np.array(item, np.int32)
    request = np.zeros(len(item), np.int32) if request is None else np.array(request, np.int32)
    stream = type("Stream", (), dict(item=item, row_request=request, top_k=1, num_layers=L, num_experts=E))
    return moe_infinity.init(L * E, np.zeros(L * E, np.int32), np.array([capacity], np.int64), stream, {})


def test_exact_ties_go_to_the_expert_used_longest_ago():
    # 5 layers x 2 experts; the stream is 6 2 2 2 | 4: at the miss of item 4 (layer 2), item 6 (layer 3, one
    # ahead) scores (5 - 1) * (1 + 1) * (1 + 1) = 16 and item 2 (layer 1, just passed) 1 * (3 + 1) * (3 + 1) = 16.
    # A tie: item 6, used longest ago, goes. (In floating point, (1 - 4/5) * 4 * 4 = 3.1999999999999993 and
    # (1 - 1/5) * 2 * 2 = 3.2: rounding, not the tie-break, would have picked item 2.)
    state = _state([6, 2, 2, 2, 4], L=5, E=2, capacity=2)
    moe_infinity.on_insert(state, 6, 0, 0)
    moe_infinity.on_insert(state, 2, 0, 1)
    moe_infinity.on_hit(state, 2, 0, 2)
    moe_infinity.on_hit(state, 2, 0, 3)
    assert moe_infinity.victim(state, 0, None, 4) == 6


def test_an_insert_into_another_layer_is_seen_by_the_running_layers_next_miss():
    # 3 layers x 3 experts, one partition. Layer 1 holds items 3 and 4 (weight 3 * 3 each), layer 0 item 0
    # (4 * 4). At the miss of item 6 (layer 2) the layer just passed goes first: item 3 (factor 1, 9; used
    # before 4). Then a prefetch puts item 1 into layer 0 (no activation: weight 1 * 1, priority 2 * 1 = 2),
    # and at layer 2's next miss item 1, not item 4 (1 * 9), is the victim: the search's shortcut for the
    # layer's later misses must notice an insert outside the layer it was made for.
    state = _state([3, 3, 4, 4, 0, 0, 0, 6, 7], L=3, E=3, capacity=9)
    for t, x in enumerate([3, 3, 4, 4, 0, 0, 0]):
        (moe_infinity.on_hit if t in (1, 3, 5, 6) else moe_infinity.on_insert)(state, x, 0, t)
    assert moe_infinity.victim(state, 0, None, 7) == 3
    moe_infinity.on_evict(state, 3, 0)
    moe_infinity.on_insert(state, 6, 0, 7)
    moe_infinity.on_insert(state, 1, 0, 7)  # the prefetch, issued after position 7
    assert moe_infinity.victim(state, 0, None, 8) == 1


def test_a_weight_that_falls_in_another_layer_is_seen_by_the_running_layers_next_miss():
    # 3 layers x 3 experts, one partition; request A uses items 3 (once), 4 (3 times), 0 (twice), 1 (3 times).
    # At the miss of item 6 (layer 2) item 3 goes (layer 1, factor 1, 2 * 2 = 4), and the search notes that
    # layer 0 holds nothing under 2 * (2 + 1) * (2 + 1) = 18. Then request B uses item 0: its request count is
    # B's now, and under A's counts it weighs 1 * (3 + 1) = 4, priority 8. A uses item 1 again, and at layer
    # 2's next miss item 0 (8), not item 4 (16), is the victim: the shortcut for a layer's later misses must
    # notice a weight that fell in a layer it had bounded.
    state = _state([3, 4, 4, 4, 0, 0, 1, 1, 1, 6, 0, 1, 7], L=3, E=3, capacity=9, request=[0] * 10 + [1, 0, 0])
    for t, x in enumerate([3, 4, 4, 4, 0, 0, 1, 1, 1]):
        (moe_infinity.on_insert if t in (0, 1, 4, 6) else moe_infinity.on_hit)(state, x, 0, t)
    assert moe_infinity.victim(state, 0, None, 9) == 3
    moe_infinity.on_evict(state, 3, 0)
    moe_infinity.on_hit(state, 0, 0, 10)
    moe_infinity.on_hit(state, 1, 0, 11)
    assert moe_infinity.victim(state, 0, None, 12) == 0


def test_a_stream_position_counts_once():
    # one layer of 3 experts, stream 0 1 2. Item 0 is used at position 0, pushed out, and put back by a prefetch
    # issued after position 0: that insert adds no activation, so items 0 and 1 weigh the same,
    # (1 + 1) * (1 + 1), and item 0, used longer ago, goes. Counted twice, item 0 would weigh 3 * 3 and stay.
    state = _state([0, 1, 2], L=1, E=3, capacity=2)
    moe_infinity.on_insert(state, 0, 0, 0)
    moe_infinity.on_evict(state, 0, 0)
    moe_infinity.on_insert(state, 0, 0, 0)
    moe_infinity.on_insert(state, 1, 0, 1)
    assert moe_infinity.victim(state, 0, None, 2) == 0


@pytest.mark.parametrize("requests", [3, 12])
def test_a_real_trace_matches_the_reference(requests):
    tr = moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(requests))
    stream = access_stream(tr)
    for mode, accounting in (("count", "access"), ("count", "segment"), ("timed", "segment")):
        row = moesim.replay(tr, policy="moe-infinity", mode=mode, accounting=accounting, capacity=40, stream=stream,
                            per_layer=True)
        assert row["hits_per_layer"] == reference_hits(stream, 40, "global", accounting), (mode, accounting)


def test_a_batched_real_trace_matches_the_reference():
    # four prompts decoded together: every segment holds four requests' experts, told to the policy out of
    # stream order
    from moesim.trace.batching import batch
    tr = batch(moesim.read_trace(TRACES / "dsv2lite-moebeyond-test-predicted.parquet").select_requests(range(8)),
               batch_size=4)
    stream = access_stream(tr)
    for accounting in ACCOUNTINGS:
        row = moesim.replay(tr, policy="moe-infinity", mode="count", accounting=accounting, capacity=60,
                            batch_size=4, stream=stream, per_layer=True)
        assert row["hits_per_layer"] == reference_hits(stream, 60, "global", accounting), accounting
