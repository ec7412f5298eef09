"""Properties every replay must keep, on traces hypothesis makes up."""
import numpy as np
from helpers import make_trace
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim.trace import access_stream


@st.composite
def traces(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, min(2, experts)))
    tokens = draw(st.integers(1, 25))
    routes = [[draw(st.lists(st.integers(0, experts - 1), min_size=top_k, max_size=top_k, unique=True))
               for _ in range(layers)] for _ in range(tokens)]
    return make_trace(routes, num_experts=experts, top_k=top_k)


POLICIES = ["lru", "fifo", "lfu", "lfuda", "random"]
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(traces(), st.integers(0, 20), st.sampled_from(["global", "per-layer"]))
def test_belady_never_loses_to_any_policy(trace, capacity, scope):
    best = moesim.replay(trace, policy="belady", capacity=capacity, scope=scope, mode="count")["hits"]
    for policy in POLICIES:
        assert moesim.replay(trace, policy=policy, capacity=capacity, scope=scope, mode="count")["hits"] <= best


@FAST
@given(traces())
def test_lru_hits_never_fall_as_capacity_grows(trace):
    n_items = trace.meta.num_moe_layers * trace.meta.num_experts
    hits = [moesim.replay(trace, capacity=c, mode="count")["hits"] for c in range(n_items + 1)]
    assert hits == sorted(hits)


@FAST
@given(traces(), st.integers(0, 20), st.sampled_from(POLICIES + ["belady"]), st.sampled_from(["count", "timed"]))
def test_every_access_is_a_hit_or_a_miss(trace, capacity, policy, mode):
    top_k = trace.meta.top_k
    scope = "global"
    capacity = max(capacity, top_k)  # timed mode needs a layer's experts resident at once
    row = moesim.replay(trace, policy=policy, capacity=capacity, scope=scope, mode=mode)
    assert row["hits"] + row["misses"] == row["accesses"] == trace.num_rows * top_k


@FAST
@given(traces(), st.sampled_from(POLICIES + ["belady"]), st.sampled_from(["count", "timed"]))
def test_room_for_every_expert_leaves_only_compulsory_misses(trace, policy, mode):
    n_items = trace.meta.num_moe_layers * trace.meta.num_experts
    row = moesim.replay(trace, policy=policy, capacity=n_items, mode=mode)
    assert row["misses"] == len(np.unique(access_stream(trace).item))


@FAST
@given(traces(), st.integers(0, 20), st.sampled_from(POLICIES + ["belady"]))
def test_an_infinitely_fast_link_never_stalls(trace, capacity, policy):
    capacity = max(capacity, trace.meta.top_k)
    row = moesim.replay(trace, policy=policy, capacity=capacity, bandwidth=float("inf"), latency=0)
    assert row["stall_s"] == 0.0


@FAST
@given(traces(), st.integers(0, 20))
def test_timed_lru_counts_the_same_hits_as_count_mode(trace, extra):
    # LRU's victim is never an expert the current layer uses while the cache holds more than one layer's
    # experts, so the in-use rule of timed mode changes nothing.
    capacity = trace.meta.top_k + 1 + extra
    count = moesim.replay(trace, capacity=capacity, mode="count")
    timed = moesim.replay(trace, capacity=capacity, mode="timed")
    assert (timed["hits"], timed["misses"]) == (count["hits"], count["misses"])


@FAST
@given(traces(), st.integers(1, 6))
def test_a_slower_link_never_makes_a_token_faster(trace, factor):
    capacity = trace.meta.top_k
    fast = moesim.replay(trace, capacity=capacity, bandwidth=25.0)
    slow = moesim.replay(trace, capacity=capacity, bandwidth=25.0 / (factor + 1))
    assert slow["total_s"] >= fast["total_s"]
    assert slow["stall_s"] >= fast["stall_s"]
