"""What a miss costs besides the copy, and what else a runtime does on one: hand-computed timed cases.

The paper hardware of test_replay_timed (1 MB experts, 1 GB/s link, 0.1 ms per expert and per dense part on
the GPU, no launch cost), with a host that reads an expert in 0.5 ms (2 GB/s) and has FLOPs to spare; ms.
"""
import dataclasses

import pytest
from helpers import make_trace
from test_replay_timed import MS, hw

import moesim
from moesim import actions


def host_hw(**figures):
    return dataclasses.replace(hw(), **{"host_flops": 1e21, "host_bandwidth": 2e9, **figures})


def test_the_host_action_computes_every_miss_on_the_host_and_caches_nothing():
    trace = make_trace([[[0]], [[0]]], num_experts=2, top_k=1)
    row = moesim.replay(trace, capacity=1, hardware=host_hw(), action="host")
    # step 0: dense ..0.1, host 0.1..0.6 (the GPU waits); step 1: dense 0.6..0.7, 0 is still not cached: host
    # 0.7..1.2
    assert (row["hits"], row["misses"], row["host_computed"]) == (0, 2, 2)
    assert row["total_s"] == pytest.approx(1.2 * MS)
    assert row["host_compute_s"] == pytest.approx(1.0 * MS)
    assert row["stall_s"] == pytest.approx(1.0 * MS)
    assert row["bytes_demand"] == 0


def test_static_placement_is_pins_on_the_gpu_and_the_host_for_the_rest():
    # llama.cpp -ot: expert 0 on the GPU, every other expert on the host, no cache
    trace = make_trace([[[0, 1]], [[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=1, pin=[(0, 0)], hardware=host_hw(), action="host")
    # each step: dense 0.1, expert 0 on the GPU 0.1 (pinned), expert 1 on the host 0.5 from routing
    assert (row["hits"], row["misses"], row["host_computed"]) == (2, 2, 2)
    assert row["total_s"] == pytest.approx(2 * 0.6 * MS)
    assert row["gpu_compute_s"] == pytest.approx(2 * 0.2 * MS)


def test_the_threshold_rule_computes_experts_with_few_tokens_on_the_host():
    # one step of two tokens (a batch): [0, 1] and [0, 2]; expert 0 serves 2 tokens, 1 and 2 one each
    trace = make_trace([[[0, 1]], [[0, 2]]], num_experts=3, top_k=2, steps=[0, 0], requests=[0, 1])
    row = moesim.replay(trace, capacity=3, hardware=host_hw(), action="threshold", host_below=2, prefill_chunk=0)
    # dense ..0.1; 0 fetched 0.1..1.1; 1 on the host 0.1..0.6, 2 after it 0.6..1.1; the GPU computes 0 at
    # 1.1..1.2 (memory-bound: 0.1 whatever the tokens)
    assert (row["misses"], row["host_computed"]) == (3, 2)
    assert row["bytes_demand"] == 1e6
    assert row["total_s"] == pytest.approx(1.2 * MS)


@pytest.mark.parametrize("host_gbps,expect_host", [(2.0, True), (0.5, False)])
def test_the_cost_rule_takes_whichever_finishes_first(host_gbps, expect_host):
    # a copy lands 1.0 ms after routing; the host finishes in 0.5 ms (2 GB/s) or 2 ms (0.5 GB/s)
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    row = moesim.replay(trace, capacity=1, hardware=host_hw(host_bandwidth=host_gbps * 1e9), action="cost")
    assert row["host_computed"] == (1 if expect_host else 0)
    assert row["total_s"] == pytest.approx((0.6 if expect_host else 1.2) * MS)


def test_miss_bookkeeping_is_paid_one_miss_after_another_before_each_copy():
    # top-2 into an empty cache, 2 copy engines, 0.2 ms of bookkeeping per miss
    trace = make_trace([[[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=2, hardware=hw(copy_engines=2), miss_overhead="200us")
    # dense ..0.1; 0 issued at 0.3, lands 1.3; 1 issued at 0.5, its bytes follow 0's: 2.3; compute ..2.4
    assert row["total_s"] == pytest.approx(2.4 * MS)
    assert row["overhead_s"] == pytest.approx(0.4 * MS)


def test_a_synchronous_read_holds_up_the_compute_it_could_have_hidden():
    # step 0: [0] fetched; step 1: [0, 1], 0 resident, 1 fetched while 0 computes (or not)
    # step 0: [0, 2] fetched; step 1: [0, 1], 0 resident, 1 fetched while 0 computes (or not)
    trace = make_trace([[[0, 2]], [[0, 1]]], num_experts=3, top_k=2)
    asynchronous = moesim.replay(trace, capacity=3, hardware=hw(copy_engines=2), per_step=True)
    synchronous = moesim.replay(trace, capacity=3, hardware=hw(copy_engines=2), overlap=0, per_step=True)
    # asynchronous: step 0: dense ..0.1, copies land 1.1 and 2.1, compute 1.1..1.2 and 2.1..2.2; step 1:
    # dense ..2.3, 0 computes 2.3..2.4 while 1's copy flows, lands 3.3, computes ..3.4
    assert asynchronous["step_s"] == pytest.approx([2.2 * MS, 1.2 * MS])
    # synchronous: the GPU waits both copies out (2.0) before computing: step 0 ends at 2.3; step 1: dense
    # ..2.4, waits 1's copy ..3.4, then computes 0 and 1: ..3.6
    assert synchronous["step_s"] == pytest.approx([2.3 * MS, 1.3 * MS])


def test_low_precision_weights_move_and_read_fewer_bytes():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)  # bf16
    full = moesim.replay(trace, capacity=1, hardware=hw())
    half = moesim.replay(trace, capacity=1, hardware=hw(), weight_bits=8)
    # bf16 -> 8 bits: the copy takes 0.5 ms instead of 1.0, the expert reads its weights in 0.05 ms
    assert full["total_s"] - half["total_s"] == pytest.approx((0.5 + 0.05) * MS)
    assert half["bytes_demand"] == 0.5e6


def test_attention_reads_more_kv_cache_as_the_context_grows():
    trace = make_trace([[[0]], [[0]], [[0]]], num_experts=2, top_k=1)
    plain = moesim.replay(trace, capacity=1, hardware=hw(), per_step=True)
    kv = moesim.replay(trace, capacity=1, hardware=hw(), kv_bytes_per_token="1MB", per_step=True)
    # token p attends over p + 1 tokens of 1 MB each at 10 GB/s: 0.1, 0.2, 0.3 ms more
    extra = [b - a for a, b in zip(plain["step_s"], kv["step_s"])]
    assert extra == pytest.approx([0.1 * MS, 0.2 * MS, 0.3 * MS])


def test_every_registered_action_rule_decides_with_the_engine():
    trace = make_trace([[[0, 1]], [[1, 2]], [[0, 2]]], num_experts=3, top_k=2)
    for name in actions.ACTIONS.names():
        row = moesim.replay(trace, capacity=2, hardware=host_hw(), action=name)
        assert row["hits"] + row["misses"] == row["accesses"]
        assert 0 <= row["host_computed"] <= row["misses"]
        assert row["bytes_demand"] == (row["misses"] - row["host_computed"]) * 1e6


def test_decode_and_prefill_hit_rates_are_reported_apart():
    # request 0: a 2-token prompt (prefill) then 2 decoded tokens
    trace = make_trace([[[0]], [[1]], [[0]], [[1]]], num_experts=2, top_k=1, phase=[0, 0, 1, 1])
    for mode in ("count", "timed"):
        row = moesim.replay(trace, capacity=2, mode=mode, hardware=hw())
        assert (row["hits_decode"], row["misses_decode"]) == (2, 0)
        assert row["hit_rate_prefill"] == 0.0 and row["hit_rate_decode"] == 1.0
