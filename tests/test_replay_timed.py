"""Timed mode on cases small enough to check on paper.

Common set-up (times in ms): an expert is 1 MB; the link moves 1 GB/s, so a
fetch takes 1 ms of bytes; HBM moves 10 GB/s, so an expert computes in
0.1 ms; each layer's dense part is 1 MB of weights, 0.1 ms; the GPU's FLOP
rate is so high that every kernel is memory-bound; no launch overhead.
"""
import numpy as np
import pytest
from helpers import make_trace

import moesim
from moesim.hardware import Hardware
from moesim.predict import Prefetch
from moesim.trace import access_stream

MS = 1e-3


def hw(latency_us=0.0, copy_engines=1, bandwidth_gbps=1.0):
    return Hardware("paper", bandwidth=bandwidth_gbps * 1e9, latency=latency_us * 1e-6, copy_engines=copy_engines,
                    gpu_flops=1e21, hbm=10e9, launch=0.0)


def test_demand_fetches_stall_the_layer():
    # one layer, top-1, one slot; tokens route to experts 0, 0, 1, 0
    trace = make_trace([[[0]], [[0]], [[1]], [[0]]], num_experts=2, top_k=1)
    row = moesim.replay(trace, capacity=1, hardware=hw())
    # step 0: dense 0.1 -> miss 0 fetched 0.1..1.1 -> compute 1.1..1.2   (stall 1.0)
    # step 1: dense 1.3 -> hit -> compute 1.3..1.4
    # step 2: dense 1.5 -> miss 1 fetched 1.5..2.5 -> compute 2.5..2.6   (stall 1.0)
    # step 3: dense 2.7 -> miss 0 fetched 2.7..3.7 -> compute 3.7..3.8   (stall 1.0)
    assert (row["hits"], row["misses"]) == (1, 3)
    assert row["total_s"] == pytest.approx(3.8 * MS)
    assert row["stall_s"] == pytest.approx(3.0 * MS)
    assert row["ttft_s"] == pytest.approx(1.2 * MS)
    assert row["tpot_s"] == pytest.approx((0.2 + 1.2 + 1.2) / 3 * MS)  # steps after the first token
    assert row["bytes_demand"] == 3e6


def test_a_resident_expert_computes_while_a_missing_one_arrives():
    # one layer, top-2, two slots: token 0 loads {0, 1}; token 1 needs {0, 2}: 0 computes during 2's fetch
    trace = make_trace([[[0, 1]], [[0, 2]]], num_experts=3, top_k=2)
    row = moesim.replay(trace, capacity=2, hardware=hw(copy_engines=2))
    # step 0: dense ->0.1; fetch 0: 0.1..1.1; fetch 1 queues behind on the link: 1.1..2.1
    #         compute 0: 1.1..1.2, compute 1: 2.1..2.2            (stall 1.0 + 0.9)
    # step 1: dense ->2.3; 2 evicts 1 (LRU); fetch 2.3..3.3; compute 0: 2.3..2.4, wait, 2: 3.3..3.4 (stall 0.9)
    assert row["total_s"] == pytest.approx(3.4 * MS)
    assert row["stall_s"] == pytest.approx(2.8 * MS)


@pytest.mark.parametrize("engines,total,stall", [(1, 3.2, 2.9), (2, 2.7, 2.4)])
def test_a_second_copy_engine_hides_latency_not_bandwidth(engines, total, stall):
    # one token, two experts missing, 0.5 ms latency per transfer
    trace = make_trace([[[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=2, hardware=hw(latency_us=500, copy_engines=engines))
    # 1 engine: fetch a 0.1+0.5..1.6; fetch b starts 1.6, +0.5 latency, bytes 2.1..3.1; compute 1.6..1.7, 3.1..3.2
    # 2 engines: b's latency overlaps a's bytes: b's bytes flow 1.6..2.6; compute 1.6..1.7, 2.6..2.7
    assert row["total_s"] == pytest.approx(total * MS)
    assert row["stall_s"] == pytest.approx(stall * MS)


def test_a_late_prefetch_still_saves_time_and_is_counted_late():
    # two layers, top-1; token 0 uses expert 0 at both layers; the plan, at layer 0, prefetches layer 1's expert 0
    trace = make_trace([[[0], [0]]], num_experts=2, top_k=1)
    stream = access_stream(trace)
    plan = Prefetch(offsets=np.array([0, 1, 1]), item=np.array([2], np.int32), target_seg=np.array([1]))
    with_pf = moesim.replay(trace, capacity=3, hardware=hw(), prefetch=plan, stream=stream)
    without = moesim.replay(trace, capacity=3, hardware=hw(), stream=stream)
    # layer 0: dense ->0.1, fetch 0.1..1.1, compute ..1.2; the prefetch waits for the link: 1.1..2.1
    # layer 1: dense ->1.3, expert in flight (late), compute 2.1..2.2
    assert with_pf["total_s"] == pytest.approx(2.2 * MS)
    # without: layer 1 routes at 1.3, fetches 1.3..2.3, computes ..2.4
    assert without["total_s"] == pytest.approx(2.4 * MS)
    assert (with_pf["prefetch_issued"], with_pf["prefetch_late"], with_pf["prefetch_used"]) == (1, 1, 0)
    assert (with_pf["hits"], with_pf["misses"]) == (1, 1)
    assert with_pf["bytes_prefetch"] == 1e6


def test_a_prefetch_that_is_never_used_is_wasted_and_can_be_harmful():
    # one layer, top-1, one slot; tokens use 0, 0. At token 0 the plan prefetches expert 1 (wrong).
    trace = make_trace([[[0]], [[0]]], num_experts=2, top_k=1)
    plan = Prefetch(offsets=np.array([0, 1, 1]), item=np.array([1], np.int32), target_seg=np.array([1]))
    row = moesim.replay(trace, capacity=1, hardware=hw(), prefetch=plan)
    # step 0: dense ->0.1, fetch 0 0.1..1.1, compute 1.1..1.2. The link is free at 1.1 but the only slot
    #   holds expert 0, in use until 1.2: the prefetch waits, then evicts 0 and moves 1.2..2.2.
    # step 1: dense ->1.3, 0 misses; the slot holds 1, in flight until 2.2: wait, evict 1 unused (wasted),
    #   fetch 0 2.2..3.2, compute ..3.3. Expert 1 pushed out 0, which was needed first: harmful.
    assert (row["prefetch_issued"], row["prefetch_wasted"], row["prefetch_harmful"]) == (1, 1, 1)
    assert (row["hits"], row["misses"]) == (0, 2)
    assert row["bytes_wasted"] == 1e6
    assert row["total_s"] == pytest.approx(3.3 * MS)
    assert row["stall_s"] == pytest.approx(1.0 * MS + 1.9 * MS)


def test_an_expert_in_use_is_never_evicted_a_layer_larger_than_the_cache_streams():
    # per-layer scope with one slot per layer but two experts per token: 0 takes the slot, and 1 (which could
    # only evict 0, in use) streams through for the layer and is not kept
    trace = make_trace([[[0, 1]], [[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity="1/layer", scope="per-layer", hardware=hw())
    # step 0: dense 0..0.1; fetch 0 0.1..1.1, fetch 1 1.1..2.1 (one engine); compute 0 1.1..1.2, 1 2.1..2.2
    # step 1: dense 2.2..2.3; 0 hits, 1 streams again 2.3..3.3; compute 0 2.3..2.4, 1 3.3..3.4
    assert (row["hits"], row["misses"]) == (1, 3)
    assert row["total_s"] == pytest.approx(3.4 * MS)
    assert row["stall_s"] == pytest.approx((1.0 + 0.9 + 0.9) * MS)
    # count mode by segment agrees; per access it is a plain cache, where 1 evicts 0 and each misses
    assert moesim.replay(trace, capacity="1/layer", scope="per-layer", mode="count")["misses"] == 3
    assert moesim.replay(trace, capacity="1/layer", scope="per-layer", mode="count",
                         accounting="access")["misses"] == 4


def test_belady_passes_over_the_expert_in_use_for_the_next_furthest():
    # capacity 2, one layer of 3 experts, top-2; stream 0 1 | 0 2 | 1 2 | 0 2
    trace = make_trace([[[0, 1]], [[0, 2]], [[1, 2]], [[0, 2]]], num_experts=3, top_k=2)
    # count mode: at 2's miss Belady evicts 0 (next use in step 3, after 1's in step 2): 1 and 2 hit in step 2,
    # then 0 misses and 1 (never used again) goes: 4 hits
    count = moesim.replay(trace, policy="belady", capacity=2, mode="count", accounting="access")
    assert (count["hits"], count["misses"]) == (4, 4)
    # timed mode: 0 is in use by the layer when 2 misses, so 1 goes instead and misses in step 2, pushing out
    # 0 (needed after 2); step 3 then misses 0 again: 3 hits
    timed = moesim.replay(trace, policy="belady", capacity=2, hardware=hw())
    assert (timed["hits"], timed["misses"]) == (3, 5)
    # count mode by segment (the default) follows the same rule
    segment = moesim.replay(trace, policy="belady", capacity=2, mode="count")
    assert (segment["hits"], segment["misses"]) == (3, 5)
