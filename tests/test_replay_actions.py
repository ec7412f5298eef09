"""What a miss costs besides the copy, and what else a runtime does on one: hand-computed timed cases.

The paper hardware of test_replay_timed (1 MB experts, 1 GB/s link, 0.1 ms per expert and per dense part on
the GPU, no launch cost), with a host that reads an expert in 0.5 ms (2 GB/s) and has FLOPs to spare; ms.
"""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import make_trace
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replay_timed import MS, hw

import moesim
from moesim import actions
from moesim.trace import Trace


def host_hw(**figures):
    return dataclasses.replace(hw(), **{"host_flops": 1e21, "host_bandwidth": 2e9, **figures})


def routed(routes, *, num_experts, top_k, weights=None, logits=None, steps=None, requests=None, phase=1):
    """make_trace's trace, with the router's weights ([token][layer] -> top_k) and logits ([token][layer] ->
    num_experts) where given."""
    base = make_trace(routes, num_experts=num_experts, top_k=top_k, steps=steps, requests=requests, phase=phase)
    t = base.table
    cols = {name: t.column(name).to_numpy() for name in ("request_id", "phase", "step", "token_pos", "layer")}
    flat = (lambda v, width: None if v is None else np.asarray(v, np.float64).reshape(-1, width))
    return Trace.from_arrays(base.meta, **cols, expert_ids=base.expert_ids(), expert_weights=flat(weights, top_k),
                             router_logits=flat(logits, num_experts))


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
    routes = [[[0, 1]], [[1, 2]], [[0, 2]]]
    trace = routed(routes, num_experts=3, top_k=2, weights=[[[0.7, 0.3]]] * 3,
                   logits=[[[3, 2, 1]], [[1, 3, 2]], [[3, 1, 2]]])
    for name in actions.ACTIONS.names():
        row = moesim.replay(trace, capacity=2, hardware=host_hw(), action=name, lowbit_bits=4)
        assert row["hits"] + row["misses"] == row["accesses"]
        took = {a: row[a] for a in ("host_computed", "lowbit_fetched", "skipped", "substituted")}
        assert all(n >= 0 for n in took.values()) and sum(took.values()) <= row["misses"]
        fetched = row["misses"] - sum(took.values())
        assert row["bytes_demand"] == fetched * 1e6 + row["lowbit_fetched"] * 0.25e6
        # a rule takes only the actions its module declares
        declared = {actions.ACTION_NAMES[a] for a in actions.takes(name)}
        names = {"host_computed": "host", "lowbit_fetched": "lowbit", "skipped": "skip", "substituted": "substitute"}
        assert {names[a] for a, n in took.items() if n} <= declared


def test_decode_and_prefill_hit_rates_are_reported_apart():
    # request 0: a 2-token prompt (prefill) then 2 decoded tokens
    trace = make_trace([[[0]], [[1]], [[0]], [[1]]], num_experts=2, top_k=1, phase=[0, 0, 1, 1])
    for mode in ("count", "timed"):
        row = moesim.replay(trace, capacity=2, mode=mode, hardware=hw())
        assert (row["hits_decode"], row["misses_decode"]) == (2, 0)
        assert row["hit_rate_prefill"] == 0.0 and row["hit_rate_decode"] == 1.0


# ---- low-bit copies, skipping and substitutes: hand-computed timed cases (ms), the hardware above

# one layer, top-2: token 0 routes to 0 (weight 0.9) and 1 (0.1), token 1 to 1 (0.8) and 0 (0.2)
WEIGHED = dict(routes=[[[0, 1]], [[1, 0]]], num_experts=2, top_k=2, weights=[[[0.9, 0.1]], [[0.8, 0.2]]])


def test_a_miss_the_router_weighs_little_fetches_a_low_bit_copy_that_is_not_kept():
    trace = routed(**WEIGHED)
    row = moesim.replay(trace, capacity=2, hardware=hw(), action="lowbit", lowbit_bits=4, weight_below=0.2,
                        per_step=True, per_layer=True)
    # step 0: dense ..0.1; 0 (0.9) fetched 0.1..1.1; 1 (0.1 < 0.2) as a 4-bit copy of a bf16 expert, 0.25 MB:
    # 1.1..1.35; 0 computes 1.1..1.2, the copy 1.35..1.375 (0.25 MB from HBM)
    # step 1: dense ..1.475; 0 hits; 1 was not kept and now weighs 0.8: fetched whole 1.475..2.475; 0 computes
    # 1.475..1.575, 1 2.475..2.575
    assert row["step_s"] == pytest.approx([1.375 * MS, 1.2 * MS])
    assert (row["hits"], row["misses"], row["lowbit_fetched"], row["lowbit_tokens"]) == (1, 3, 1, 1)
    assert row["lowbit_weight"] == pytest.approx(0.1)
    assert row["bytes_demand"] == 2e6 + 0.25e6
    assert row["lowbit_fetched_per_layer"] == [1]
    count = moesim.replay(trace, capacity=2, mode="count", action="lowbit", lowbit_bits=4, weight_below=0.2)
    assert (count["hits"], count["lowbit_fetched"], count["bytes_demand"]) == (1, 1, 2.25e6)


def test_a_skipped_miss_moves_and_computes_nothing_and_reports_the_weight_given_up():
    trace = routed(**WEIGHED)
    row = moesim.replay(trace, capacity=2, hardware=hw(), action="skip", weight_below=0.2, per_step=True)
    # step 0: 0 fetched 0.1..1.1, computes ..1.2; 1 skipped. step 1: dense ..1.3, 0 hits, 1 (0.8) fetched
    # 1.3..2.3; 0 computes 1.3..1.4, 1 2.3..2.4
    assert row["step_s"] == pytest.approx([1.2 * MS, 1.2 * MS])
    assert (row["hits"], row["misses"], row["skipped"], row["skipped_tokens"]) == (1, 3, 1, 1)
    assert row["skipped_weight"] == pytest.approx(0.1)
    assert row["bytes_demand"] == 2e6


def test_without_routing_weights_every_miss_is_below_the_threshold_and_its_weight_unknown():
    trace = make_trace([[[0]], [[0]]], num_experts=2, top_k=1)
    skip = moesim.replay(trace, capacity=1, hardware=hw(), action="skip")
    # nothing is ever loaded: each step is its dense part
    assert (skip["hits"], skip["skipped"], skip["skipped_tokens"]) == (0, 2, 2)
    assert math.isnan(skip["skipped_weight"])
    assert skip["total_s"] == pytest.approx(0.2 * MS) and skip["bytes_moved"] == 0
    low = moesim.replay(trace, capacity=1, hardware=hw(), action="lowbit", lowbit_bits=2)
    # 2-bit copies of bf16: 0.125 MB, 0.125 ms over the link and 0.0125 ms from HBM, each step
    assert low["lowbit_fetched"] == 2 and math.isnan(low["lowbit_weight"])
    assert low["total_s"] == pytest.approx(2 * (0.1 + 0.125 + 0.0125) * MS)
    # a rule that skips nothing reports no weight given up, weights or not
    assert moesim.replay(trace, capacity=1, hardware=hw())["skipped_weight"] == 0.0


def test_a_low_bit_copy_must_be_smaller_than_the_expert():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)  # bf16: 16 bits per weight
    with pytest.raises(ValueError, match="--lowbit-bits 16.*not smaller"):
        moesim.replay(trace, capacity=1, hardware=hw(), action="lowbit", lowbit_bits=16)


# one layer, four experts, top-1; the logits rank token 0's choices 0 > 2 > 1 > 3, tokens 1 and 2's 1 > 3 > 0 > 2
RANKED = dict(routes=[[[0]], [[1]], [[1]]], num_experts=4, top_k=1, weights=[[[1.0]]] * 3,
              logits=[[[4, 2, 3, 1]], [[2, 4, 1, 3]], [[2, 4, 1, 3]]])


def test_a_substitute_is_the_best_ranked_resident_expert_and_nothing_moves():
    trace = routed(**RANKED)
    row = moesim.replay(trace, capacity=2, hardware=hw(), action="substitute", per_step=True)
    # step 0: none of 2, 1, 3 is resident: 0 is fetched 0.1..1.1, computes ..1.2
    # steps 1 and 2: 1 misses; of its alternatives 3, 0, 2 only 0 is resident: 0 computes the token (0.1 + 0.1)
    assert row["step_s"] == pytest.approx([1.2 * MS, 0.2 * MS, 0.2 * MS])
    assert (row["hits"], row["misses"], row["substituted"], row["substituted_tokens"]) == (0, 3, 2, 2)
    assert row["substituted_weight"] == pytest.approx(2.0)
    assert row["bytes_demand"] == 1e6


def test_a_substitute_must_rank_within_the_max_rank_else_the_expert_is_fetched():
    trace = routed(**RANKED)
    row = moesim.replay(trace, capacity=2, hardware=hw(), action="substitute", substitute_rank=2, per_step=True)
    # token 1's first two ranks are 1 and 3; 3 is not resident: 1 is fetched (1.3..2.3) and then hits
    assert row["step_s"] == pytest.approx([1.2 * MS, 1.2 * MS, 0.2 * MS])
    assert (row["hits"], row["substituted"]) == (1, 0)
    with pytest.raises(ValueError, match="--substitute-rank 1 holds only the tokens' own top-1"):
        moesim.replay(trace, capacity=2, hardware=hw(), action="substitute", substitute_rank=1)


def test_two_missing_experts_of_one_token_never_take_the_same_substitute():
    # five experts, top-2. Step 0: token a loads 0 and 4. Step 1: token b routes to 2 and 3; within its first
    # three ranks (2, 3, 0) only 0 is an alternative: 2 takes it, and 3, left with none, is fetched
    trace = routed([[[0, 4]], [[2, 3]]], num_experts=5, top_k=2, weights=[[[0.6, 0.4]], [[0.7, 0.3]]],
                   logits=[[[5, 1, 2, 3, 4]], [[3, 1, 5, 4, 2]]])
    row = moesim.replay(trace, capacity=3, hardware=hw(), action="substitute", substitute_rank=3)
    assert (row["substituted"], row["substituted_tokens"]) == (1, 1)
    assert row["substituted_weight"] == pytest.approx(0.7)
    assert row["bytes_demand"] == 3e6  # 0, 4, then 3


def test_a_batch_of_tokens_substitutes_token_by_token():
    # one step of two tokens (a batch) after token a loaded 0 and 1: b routes to 2, 3 (ranks 2 3 0 1), c to 0, 2
    # (ranks 0 2 1 3). 2 misses: b's best resident alternative is 0, c's is 1 (0 is c's own); 3 misses: b's
    # is 0, which b's 2 already took, then 1. Nothing moves in step 1: 0 and 1 compute the tokens
    trace = routed([[[0, 1]], [[2, 3]], [[0, 2]]], num_experts=4, top_k=2, steps=[0, 1, 1], requests=[0, 1, 2],
                   weights=[[[0.5, 0.5]], [[0.6, 0.4]], [[0.9, 0.1]]],
                   logits=[[[4, 3, 2, 1]], [[2, 1, 4, 3]], [[4, 2, 3, 1]]])
    row = moesim.replay(trace, capacity=3, hardware=hw(), action="substitute", prefill_chunk=0, per_step=True)
    assert (row["hits"], row["misses"], row["substituted"], row["substituted_tokens"]) == (1, 4, 2, 3)
    assert row["substituted_weight"] == pytest.approx(0.6 + 0.1 + 0.4)
    # step 0: 0 lands 1.1, 1 2.1; computes ..2.2. Step 1: dense ..2.3, then 0 and 1 (memory-bound) ..2.5
    assert row["step_s"] == pytest.approx([2.2 * MS, 0.3 * MS])
    assert row["bytes_demand"] == 2e6


def test_substitution_needs_the_routers_ranking():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    for mode in ("count", "timed"):
        with pytest.raises(ValueError, match="needs the router_logits column"):
            moesim.replay(trace, capacity=1, hardware=hw(), action="substitute", mode=mode)


# ---- prefill chunks go through the same rule


def test_a_prompts_experts_are_streamed_fetched_or_computed_on_the_host_by_the_same_rule():
    # a 4-token prompt routing to experts 0, 0, 0, 1, then one decoded token routing to 1; threshold 2 tokens
    trace = make_trace([[[0]], [[0]], [[0]], [[1]], [[1]]], num_experts=2, top_k=1, phase=[0, 0, 0, 0, 1],
                       steps=[0, 0, 0, 0, 1])
    kw = dict(hardware=host_hw(), prefill_chunk=0, per_step=True)
    whole = moesim.replay(trace, capacity=2, action="threshold", host_below=2, **kw)
    # the prompt is one step: dense ..0.1; 0 serves 3 tokens: fetched 0.1..1.1, computes ..1.2 (memory-bound);
    # 1 serves 1: on the host 0.1..0.6. Decode: dense ..1.3, 1 (1 token) on the host 1.3..1.8
    assert whole["step_s"] == pytest.approx([1.2 * MS, 0.6 * MS])
    assert (whole["host_computed"], whole["bytes_demand"]) == (2, 1e6)
    # one token per step, every expert serves one token: all on the host, 0 four times
    chunked = moesim.replay(trace, capacity=2, action="threshold", host_below=2, **{**kw, "prefill_chunk": 1})
    assert (chunked["host_computed"], chunked["bytes_demand"]) == (5, 0)
    # streaming: no cache, every expert the prompt uses is moved for it: 0 0.1..1.1, 1 1.1..2.1, computes
    # ..1.2 and ..2.2; decode: 1 again 2.3..3.3, ..3.4
    streamed = moesim.replay(trace, capacity=0, **kw)
    assert streamed["step_s"] == pytest.approx([2.2 * MS, 1.2 * MS])
    assert streamed["bytes_demand"] == 3e6
    host = moesim.replay(trace, capacity=0, action="host", **kw)
    # the host computes 0 (3 tokens) and 1 one after another: 0.1..0.6..1.1; decode: 1.2..1.7
    assert host["step_s"] == pytest.approx([1.1 * MS, 0.6 * MS])


# ---- count mode takes the same actions: a brute-force reference, and count == timed for every rule

def actions_reference(trace, rule: str, capacity: int, weight_below: float, max_rank=None) -> dict:
    """Global LRU by (step, layer) segment with an action rule, from the definitions: a segment's distinct
    experts are looked up as it began; the hits are in use; each miss, in order of first use, is decided:
    host, low-bit and skip leave it out of the cache; substitute gives each of its tokens the resident expert
    the token's logits rank highest (within max_rank) among those it did not choose and its other missing
    experts did not take, or fetches it if some token has none; fetch evicts the least recent expert the
    segment does not use (or streams through)."""
    from moesim.trace import access_stream
    stream = access_stream(trace, prefill_chunk=0)
    k, E = trace.meta.top_k, trace.meta.num_experts
    weights = trace.expert_weights()
    logits = (trace.table.column("router_logits").combine_chunks().flatten().to_numpy().reshape(-1, E)
              if "router_logits" in trace.table.column_names else None)
    ids = trace.expert_ids()
    item = stream.item.tolist()
    recency: list[int] = []  # least recent first
    out = {"hits": 0, "host_computed": 0, "lowbit_fetched": 0, "skipped": 0, "substituted": 0}
    mass = {"lowbit_fetched": 0.0, "skipped": 0.0, "substituted": 0.0}
    for s in range(stream.num_segments):
        lo, hi = int(stream.seg_offsets[s]), int(stream.seg_offsets[s + 1])
        distinct = list(dict.fromkeys(item[lo:hi]))
        missing = [x for x in distinct if x not in recency]
        in_use = set(distinct) - set(missing)
        for x in distinct:
            if x in in_use:
                out["hits"] += 1
                recency.remove(x)
                recency.append(x)
        picks: dict[int, int] = {}
        for x in missing:
            mine = [i for i in range(lo, hi) if item[i] == x]
            row_w = [float(weights[stream.row_order[i // k], i % k]) for i in mine] if weights is not None else []
            weight = max(row_w) if row_w else -1.0
            action = {"fetch": "fetch", "host": "host_computed",
                      "threshold": "host_computed" if len(mine) < 4 else "fetch",
                      "lowbit": "lowbit_fetched" if weight < weight_below else "fetch",
                      "skip": "skipped" if weight < weight_below else "fetch", "substitute": "substituted"}[rule]
            if action == "substituted":
                mine_picks = {}
                for i in mine:
                    r = i // k
                    row = stream.row_order[r]
                    ranking = sorted(range(E), key=lambda e: (-float(logits[row, e]), e))[:max_rank or E]
                    taken = {picks[j] for j in range(r * k, r * k + k) if j in picks}
                    base = x - x % E
                    found = [base + e for e in ranking if e not in ids[row] and base + e in recency
                             and base + e not in taken]
                    if not found:
                        break
                    mine_picks[i] = found[0]
                if len(mine_picks) < len(mine):
                    action = "fetch"
                else:
                    picks.update(mine_picks)
                    in_use |= set(mine_picks.values())
            if action != "fetch":
                out[action] += 1
                if action in mass:
                    mass[action] += sum(row_w)
                continue
            in_use.add(x)
            if capacity == 0:
                continue
            if len(recency) >= capacity:
                free = [y for y in recency if y not in in_use]
                if not free:
                    continue
                recency.remove(free[0])
            recency.append(x)
    return out | {f"{a.split('_')[0]}_weight": m for a, m in mass.items()}


@st.composite
def router_traces(draw):
    """Random routes with weights and logits; some steps hold two tokens (a batch)."""
    layers, experts = draw(st.integers(1, 2)), draw(st.integers(3, 6))
    top_k = draw(st.integers(1, 2))
    tokens = draw(st.integers(1, 14))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.normal(size=(tokens, layers, experts)).round(2)
    routes = np.argsort(-logits, axis=2, kind="stable")[:, :, :top_k]
    w = np.exp(np.take_along_axis(logits, routes, axis=2))
    w /= w.sum(axis=2, keepdims=True)
    steps = np.cumsum([0] + [draw(st.booleans()) for _ in range(tokens - 1)])
    requests = np.zeros(tokens, int)
    for s in np.unique(steps):  # the tokens of a step are a batch: one request each
        requests[steps == s] = np.arange((steps == s).sum())
    return routed(routes.tolist(), num_experts=experts, top_k=top_k, weights=w.tolist(), logits=logits.tolist(),
                  steps=steps, requests=requests)


CLOCKLESS = [name for name in actions.ACTIONS.names() if not actions.weighs_times(name)]


@pytest.mark.parametrize("rule", CLOCKLESS)
@settings(max_examples=30, deadline=None)
@given(trace=router_traces(), capacity=st.integers(0, 8), weight_below=st.sampled_from([0.0, 0.3, 0.6]),
       max_rank=st.sampled_from([None, 3]))
def test_count_mode_takes_each_rules_actions_as_the_reference_does(rule, trace, capacity, weight_below, max_rank):
    if max_rank is not None and max_rank <= trace.meta.top_k:
        max_rank = None
    kw = dict(capacity=capacity, action=rule, weight_below=weight_below, substitute_rank=max_rank, prefill_chunk=0)
    want = actions_reference(trace, rule, capacity, weight_below, max_rank)
    count = moesim.replay(trace, mode="count", **kw)
    assert {a: count[a] for a in want if not a.endswith("_weight")} == \
        {a: n for a, n in want.items() if not a.endswith("_weight")}
    for a in ("lowbit", "skipped", "substituted"):
        assert count[f"{a}_weight"] == pytest.approx(want[f"{a}_weight"], rel=1e-5)


@pytest.mark.parametrize("rule, policy", [(rule, ("lru", "lfu", "belady")[i % 3])
                                          for i, rule in enumerate(actions.ACTIONS.names())])
@settings(max_examples=20, deadline=None)
@given(trace=router_traces(), capacity=st.integers(0, 8), scope=st.sampled_from(["global", "per-layer"]))
def test_count_and_timed_mode_count_the_same_hits_and_actions_for_every_rule(rule, policy, trace, capacity, scope):
    # the policy contract's count == timed (test_policy_contract), over the action rules: a rule decides each
    # miss the same way in both modes (count mode has no clock, and refuses a rule that needs one). Policies of
    # three kinds in turn, one a rule: each loop compiles once per policy, rule and scope (all three with
    # every rule were 4 of a clean run's 12 minutes)
    kw = dict(capacity=capacity, action=rule, policy=policy, scope=scope, prefill_chunk=0, weight_below=0.3,
              hardware=host_hw())
    timed = moesim.replay(trace, mode="timed", **kw)
    if actions.weighs_times(rule):
        with pytest.raises(ValueError, match="count mode has no clock"):
            moesim.replay(trace, mode="count", **kw)
        return
    count = moesim.replay(trace, mode="count", **kw)
    keys = ("hits", "misses", "host_computed", "lowbit_fetched", "skipped", "substituted", "substituted_tokens")
    assert {k: count[k] for k in keys} == {k: timed[k] for k in keys}


def test_rules_refuse_what_they_cannot_replay():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    with pytest.raises(ValueError, match="count mode has no clock"):
        moesim.replay(trace, capacity=1, mode="count", action="cost")
    with pytest.raises(ValueError, match="--accounting access is a plain cache simulator"):
        moesim.replay(trace, capacity=1, mode="count", accounting="access", action="skip")
    with pytest.raises(ValueError, match="--weight-below"):
        moesim.replay(trace, capacity=1, action="skip", weight_below=-0.1)


MIXTRAL = Path(__file__).resolve().parents[1] / "traces" / "mixtral-8x7b-speculative-decode.parquet"


def test_the_readme_table_of_actions_is_what_replays_of_the_mixtral_sample_give():
    rows = {a: moesim.replay(MIXTRAL, capacity="25%", action=a) for a in ("fetch", "lowbit", "skip")}
    assert {a: round(r["hit_rate"] * 100, 2) for a, r in rows.items()} == {"fetch": 37.33, "lowbit": 34.29,
                                                                           "skip": 34.29}
    assert {a: round(r["total_s"], 1) for a, r in rows.items()} == {"fetch": 165.7, "lowbit": 160.0, "skip": 146.7}
    assert (rows["lowbit"]["lowbit_fetched"], rows["skip"]["skipped"]) == (3809, 3809)
    assert rows["skip"]["skipped_weight"] == pytest.approx(465.5, abs=0.05)
    assert rows["skip"]["tokens"] * 32 == 18464  # Mixtral's weights sum to 1 per token and layer


def test_the_cli_replays_an_action_and_prints_what_it_gave_up():
    from click.testing import CliRunner
    from moesim.cli import main
    out = CliRunner().invoke(main, ["replay", str(MIXTRAL), "--capacity", "25%", "--action", "skip",
                                    "--weight-below", "0.3"])
    assert out.exit_code == 0, out.output
    assert "skipped" in out.output and "their routing weight" in out.output
    refused = CliRunner().invoke(main, ["replay", str(MIXTRAL), "--action", "substitute"])
    assert refused.exit_code != 0 and "needs the router_logits column" in refused.output
