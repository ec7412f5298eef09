"""Accounting by (step, layer) segment: a layer's experts are needed together, so none evicts another.

Hand-computed cases use the paper hardware of test_replay_timed (1 MB experts, 1 GB/s link, 0.1 ms per
expert and per dense part, no launch cost); times in ms.
"""
import numpy as np
import pytest
from helpers import make_trace, random_routes
from reference import segment_reference
from test_replay_timed import MS, hw

import moesim
from moesim.replay import partitions
from moesim.trace import access_stream


@pytest.mark.parametrize("second", [[0, 1], [1, 0]])
def test_the_layers_own_experts_are_never_evicted_whatever_the_router_rank(second):
    # one layer, 3 experts, top-2: tokens [1, 2] then [0, 1] (or [1, 0]), capacity 2, one copy engine.
    # Step 1's expert 1 is resident when the layer routes and in use: 0 evicts 2, not 1. 3 misses either way.
    trace = make_trace([[[1, 2]], [second]], num_experts=3, top_k=2)
    row = moesim.replay(trace, capacity=2, hardware=hw(latency_us=10))
    assert (row["hits"], row["misses"]) == (1, 3)
    # step 0: dense ..0.1, fetch 1 0.1..1.11, fetch 2 1.11..2.12; compute 1 1.11..1.21, 2 2.12..2.22
    # step 1: dense ..2.32; 1 hits (2.32..2.42); fetch 0 2.32..3.33, compute ..3.43
    assert row["total_s"] == pytest.approx(3.43 * MS)
    count = moesim.replay(trace, capacity=2, mode="count")
    assert (count["hits"], count["misses"]) == (1, 3)


def test_a_held_prefetch_is_decided_at_its_own_start_and_never_evicts_a_transfer_in_flight():
    # one layer, top-1, tokens 0 1 2 0 1, capacity 2, 400 GB/s, 1 ms latency, 2 engines, oracle horizon 2
    trace = make_trace([[[e]] for e in (0, 1, 2, 0, 1)], num_experts=3, top_k=1)
    row = moesim.replay(trace, capacity=2, hardware=hw(latency_us=1000, copy_engines=2, bandwidth_gbps=400),
                        predictor="oracle", horizon=2)
    assert (row["hits"], row["prefetch_harmful"]) == (4, 0)


def test_a_prefetch_whose_layer_has_routed_is_cancelled_even_if_its_expert_is_resident():
    # one layer, top-2, tokens [0, 1] then [2, 3], capacity 4, oracle: the prediction of step 1 issued at
    # step 0 waits behind step 0's two demand fetches and starts after step 1 has routed
    trace = make_trace([[[0, 1]], [[2, 3]]], num_experts=4, top_k=2)
    row = moesim.replay(trace, capacity=4, hardware=hw(), predictor="oracle")
    assert row["prefetch_cancelled"] == 1


def test_with_no_cache_each_expert_a_segment_needs_is_fetched_once():
    # a 3-token prompt routing [0, 1] each, kept as one step (prefill_chunk=0), capacity 0: two transfers
    trace = make_trace([[[0, 1]]] * 3, num_experts=3, top_k=2, phase=0, steps=[0, 0, 0])
    row = moesim.replay(trace, capacity=0, hardware=hw(), prefill_chunk=0)
    assert row["misses"] == 2 and row["bytes_demand"] == 2e6
    # dense ..0.1; fetch 0 ..1.1, 1 ..2.1; compute 0 (3 tokens, memory-bound 0.1) ..1.2, 1 ..2.2
    assert row["stall_s"] == pytest.approx((1.0 + 0.9) * MS)


def test_an_expert_used_by_several_tokens_of_a_step_is_one_lookup():
    trace = make_trace([[[0, 1]], [[0, 2]]], num_experts=3, top_k=2, steps=[0, 0], requests=[0, 1])
    count = moesim.replay(trace, capacity=3, mode="count", prefill_chunk=0)
    assert (count["hits"], count["misses"]) == (0, 3)
    per_access = moesim.replay(trace, capacity=3, mode="count", prefill_chunk=0, accounting="access")
    assert (per_access["hits"], per_access["misses"]) == (1, 3)


@pytest.mark.parametrize("order", ["hits-first", "routing"])
@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu"])
@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_segment_accounting_matches_a_brute_force_replay_of_its_definition(policy, scope, order):
    rng = np.random.default_rng(17)
    routes = random_routes(rng, tokens=90, layers=3, experts=8, top_k=2)
    # batches of 1 to 4 requests per step (each token its own request), so segments hold repeated experts
    steps = np.repeat(np.arange(40), rng.integers(1, 5, 40))[:90]
    trace = make_trace(routes, num_experts=8, top_k=2, steps=steps, requests=np.arange(90))
    stream = access_stream(trace, prefill_chunk=0)
    for capacity in (0, 2, 4, 6, 9, 15, 24):
        part_of, part_cap = partitions(stream, scope, capacity)
        want = segment_reference(stream.item.tolist(), stream.seg_offsets.tolist(), part_of.tolist(),
                                 part_cap.tolist(), policy, order)
        got = moesim.replay(trace, policy=policy, capacity=capacity, scope=scope, mode="count", stream=stream,
                            segment_order=order)
        assert got["hits"] == want, (policy, scope, capacity)
        timed = moesim.replay(trace, policy=policy, capacity=capacity, scope=scope, stream=stream,
                              segment_order=order)
        assert timed["hits"] == want, ("timed", policy, scope, capacity)


def test_routing_order_makes_a_layers_experts_recent_as_they_are_routed():
    """Capacity 3, LRU, one token a step: [0, 1], [2, 0], [3, 1], [0, 2], [3, 4]. At step 2 expert 0 hits and 2
    is inserted; hits first leaves 0 older than 2, routing order (2 routed before 0) leaves 2 older. So step 3's
    miss evicts 0 under hits-first and 2 under routing, and the caches part ways: 4 hits against 3 (worked out
    by hand in the order the policy is told)."""
    trace = make_trace([[[0, 1]], [[2, 0]], [[3, 1]], [[0, 2]], [[3, 4]]], num_experts=5, top_k=2)
    for order, hits in (("hits-first", 4), ("routing", 3)):
        for mode in ("count", "timed"):
            assert moesim.replay(trace, capacity=3, mode=mode, segment_order=order)["hits"] == hits, (order, mode)
    # hits-first does not depend on the order of a token's experts; routing does
    swapped = make_trace([[[1, 0]], [[0, 2]], [[1, 3]], [[2, 0]], [[4, 3]]], num_experts=5, top_k=2)
    assert moesim.replay(swapped, capacity=3, mode="count")["hits"] == 4
    assert moesim.replay(swapped, capacity=3, mode="count", segment_order="routing")["hits"] == 4
    with pytest.raises(ValueError, match="segment-order routing"):
        moesim.replay(trace, capacity=3, mode="count", accounting="access", segment_order="routing")


def test_timed_mode_refuses_per_access_accounting():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    with pytest.raises(ValueError, match="count mode's"):
        moesim.replay(trace, accounting="access")
