"""Serving workloads from single-request traces (static and continuous batching, arrivals) and the GPU memory
budget (`--capacity auto`): which tokens share which step, the time a user sees, and the memory arithmetic, each
worked out by hand.

Timed cases use the paper hardware of test_replay_timed (1 MB experts, 1 GB/s link: 1 ms a transfer; 0.1 ms per
expert and per dense part, no launch cost); times in ms.
"""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_trace, random_routes
from reference import replay_reference, segment_reference
from test_replay_timed import MS, hw

import moesim
from moesim.cli import main
from moesim.config import ReplayConfig
from moesim.hardware import Hardware
from moesim.trace import TraceMeta, access_stream
from moesim.trace.batching import batch, poisson_arrivals, read_arrivals, serve

ROOT = Path(__file__).resolve().parents[1]


def tokens_by_step(trace, prefill_chunk=1):
    """[(request, token_pos), ...] per replay step, as the access stream lays the trace out."""
    stream = access_stream(trace, prefill_chunk=prefill_chunk)
    pos = trace.column("token_pos")[stream.row_order]
    out = [set() for _ in range(stream.num_steps)]
    for seg in range(stream.num_segments):
        a, b = stream.seg_row_offsets[seg], stream.seg_row_offsets[seg + 1]
        out[stream.seg_step[seg]].update(zip(stream.row_request[a:b].tolist(), pos[a:b].tolist()))
    return [sorted(s) for s in out]


def prompts(lengths, decode=None, layers=1):
    """One request per entry: a prompt of `lengths[r]` tokens (one recorded prefill step), then `decode[r]`
    decode tokens, one recorded step each; requests one after another, as single-request traces hold them."""
    decode = decode or [0] * len(lengths)
    routes, req, phase, steps, step = [], [], [], [], 0
    for r, (p, d) in enumerate(zip(lengths, decode)):
        for i in range(p + d):
            routes.append([[(r + i) % 4] for _ in range(layers)])
            req.append(r)
            phase.append(0 if i < p else 1)
            steps.append(step if i < p else step + i - p + 1)
        step += d + 1
    return make_trace(routes, num_experts=4, top_k=1, requests=req, phase=np.array(phase), steps=steps)


# ---------------------------------------------------------------- static batching

def test_static_batches_share_each_prompts_jth_token_when_prompts_replay_as_decoded():
    trace = batch(prompts([2, 3, 1]), batch_size=2)
    trace.validate("batched")
    # requests 0 and 1 are one batch: token j of each prompt shares step j, until the longer prompt ends;
    # request 2 starts when that batch has ended
    assert tokens_by_step(trace) == [[(0, 0), (1, 0)], [(0, 1), (1, 1)], [(1, 2)], [(2, 0)]]
    # a whole prompt per step (prefill_chunk 0): the batch's two prompts are one step
    assert tokens_by_step(trace, prefill_chunk=0) == [[(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)], [(2, 0)]]
    assert trace.meta.extra["batching"] == {"batching": "static", "batch_size": 2}


def test_static_batches_align_each_requests_own_recorded_steps():
    # prompt then decode: request 0 has 1 prompt token + 2 decode tokens, 1 has 2 + 1, 2 has 1 + 1
    trace = batch(prompts([1, 2, 1], decode=[2, 1, 1]), batch_size=2)
    assert tokens_by_step(trace, prefill_chunk=0) == [
        [(0, 0), (1, 0), (1, 1)],     # both prompts
        [(0, 1), (1, 2)],             # each one's first decode step
        [(0, 2)],                     # request 1 is done; its slot idles until the batch ends
        [(2, 0)], [(2, 1)]]
    # a batch size of at least the requests puts every request in one batch
    assert tokens_by_step(batch(prompts([1, 1]), batch_size=8)) == [[(0, 0), (1, 0)]]


def test_a_batchs_repeated_expert_is_one_lookup_by_segment_and_several_per_access():
    # one layer, decode; request 0 routes to 0 then 1, request 1 to 0 then 2; batched by 2, capacity 2
    trace = make_trace([[[0]], [[1]], [[0]], [[2]]], num_experts=3, top_k=1, requests=[0, 0, 1, 1])
    seg = moesim.replay(trace, capacity=2, mode="count", batch_size=2)
    # step 0 needs {0}: 1 miss; step 1 needs {1, 2}: 2 misses
    assert (seg["hits"], seg["misses"], seg["steps"]) == (0, 3, 2)
    per_access = moesim.replay(trace, capacity=2, mode="count", accounting="access", batch_size=2)
    # step 0: 0 misses, then request 1's 0 hits; step 1: 1 and 2 miss
    assert (per_access["hits"], per_access["misses"]) == (1, 3)


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu"])
@pytest.mark.parametrize("batch_size", [2, 3])
def test_a_batched_replay_matches_a_brute_force_cache_on_the_batched_order(policy, batch_size):
    # the stream of a static batch, built here from the definition: batch by batch, each batch's k-th token
    # step by step, layers in order, the batch's requests in id order, each token's experts in order
    rng = np.random.default_rng(batch_size)
    layers, experts, k = 3, 8, 2
    lengths = [3, 5, 2, 4, 1]
    routes = random_routes(rng, sum(lengths), layers, experts, k)
    req = np.repeat(np.arange(len(lengths)), lengths)
    trace = make_trace(routes, num_experts=experts, top_k=k, requests=req, phase=1)
    start = np.r_[0, np.cumsum(lengths)]
    items, seg_offsets = [], [0]
    for b in range(0, len(lengths), batch_size):
        members = range(b, min(b + batch_size, len(lengths)))
        for j in range(max(lengths[r] for r in members)):
            for layer in range(layers):
                for r in members:
                    if j < lengths[r]:
                        items += [layer * experts + e for e in routes[start[r] + j][layer]]
                seg_offsets.append(len(items))
    part_of, capacity = [0] * (layers * experts), [6]
    row = moesim.replay(trace, policy=policy, capacity=6, mode="count", accounting="access", batch_size=batch_size)
    assert row["hits"] == sum(replay_reference(items, part_of, capacity, policy))
    row = moesim.replay(trace, policy=policy, capacity=6, mode="count", batch_size=batch_size)
    assert row["hits"] == segment_reference(items, np.array(seg_offsets), part_of, capacity, policy)


# ---------------------------------------------------------------- continuous batching

def test_continuous_batching_runs_decodes_first_then_chunks_prompts_within_the_token_budget():
    # prompts of 3, 2, 1 tokens, then 2, 1, 2 decode tokens; at most 2 running, 3 tokens a step
    trace = serve(prompts([3, 2, 1], decode=[2, 1, 2]), batch_size=2, token_budget=3, prefill_chunk=0)
    trace.validate("served")
    assert tokens_by_step(trace, prefill_chunk=0) == [
        [(0, 0), (0, 1), (0, 2)],     # request 0's whole prompt takes the budget
        [(0, 3), (1, 0), (1, 1)],     # its first decode token, then request 1's prompt in what is left
        [(0, 4), (1, 2)],             # both decode and end; request 2 waits: 2 are running
        [(2, 0)], [(2, 1)], [(2, 2)]]


def test_a_prompt_larger_than_the_budget_is_chunked_across_steps():
    trace = serve(prompts([5, 1], decode=[1, 0]), batch_size=2, token_budget=2, prefill_chunk=0)
    assert tokens_by_step(trace, prefill_chunk=0) == [
        [(0, 0), (0, 1)], [(0, 2), (0, 3)],
        [(0, 4), (1, 0)],             # the prompt's last token, then request 1 in the budget left
        [(0, 5)]]
    # prefill_chunk 2 caps a prompt's chunk at 2 tokens even where the budget has room
    capped = serve(prompts([5]), batch_size=1, token_budget=8, prefill_chunk=2)
    assert [len(s) for s in tokens_by_step(capped, prefill_chunk=2)] == [2, 2, 1]


def test_continuous_batching_replays_prompts_as_decoded_one_token_a_step_and_fills_a_free_slot_at_once():
    trace = serve(prompts([3, 2, 1]), batch_size=2, prefill_chunk=1)
    assert tokens_by_step(trace) == [[(0, 0), (1, 0)], [(0, 1), (1, 1)],
                                     [(0, 2), (2, 0)]]  # request 1 left after step 1: request 2 takes its slot


def test_the_scheduler_admits_only_requests_that_have_arrived_by_its_clock():
    # one second a step; request 0 at 0 s, requests 1 and 2 at 2.5 s
    trace = serve(prompts([3, 2, 1]), batch_size=2, prefill_chunk=1, arrivals=np.array([0.0, 2.5, 2.5]),
                  step_seconds=lambda n: 1.0)
    # steps start at 0, 1, 2 (request 0 alone), 3 (1 and 2 have arrived), 4
    assert tokens_by_step(trace) == [[(0, 0)], [(0, 1)], [(0, 2)], [(1, 0), (2, 0)], [(1, 1)]]
    # with nobody running and nobody here, the clock jumps to the next arrival
    late = serve(prompts([1, 1]), batch_size=2, arrivals=np.array([0.0, 10.0]), step_seconds=lambda n: 1.0)
    assert tokens_by_step(late) == [[(0, 0)], [(1, 0)]]


# ---------------------------------------------------------------- time a user sees

def test_percentiles_throughput_and_a_step_that_waits_for_its_request(tmp_path):
    # two decode requests of 2 tokens, both on expert 0; request 1 arrives at 5 ms; capacity 1
    trace = make_trace([[[0]]] * 4, num_experts=2, top_k=1, requests=[0, 0, 1, 1])
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text("request_id,arrival_s\n0,0\n1,0.005\n")
    row = moesim.replay(trace, capacity=1, hardware=hw(), batching="continuous", batch_size=2,
                        arrivals=str(arrivals))
    # the schedule: request 0 at steps 0, 1; request 1 (not here before 5 ms) at steps 2, 3.
    # engine: step 0 dense ..0.1, miss 0 fetched ..1.1, compute ..1.2; steps 1-3 hit, 0.2 each
    # step 2 waits for request 1: starts at 5, ends 5.2; step 3 ends 5.4; the GPU idled 5 - 1.4 = 3.6
    assert row["steps"] == 4
    assert row["total_s"] == pytest.approx(5.4 * MS)
    assert row["idle_s"] == pytest.approx(3.6 * MS)
    # TTFT from arrival: request 0 1.2 ms, request 1 5.2 - 5 = 0.2 ms; TPOT: 0.2 ms each
    assert row["ttft_s"] == pytest.approx(0.7 * MS)
    assert row["ttft_p50_s"] == pytest.approx(0.7 * MS)
    assert row["ttft_p90_s"] == pytest.approx((0.2 + 0.9 * 1.0) * MS)   # linear between the two
    assert row["ttft_p99_s"] == pytest.approx((0.2 + 0.99 * 1.0) * MS)
    assert (row["tpot_p50_s"], row["tpot_p99_s"]) == (pytest.approx(0.2 * MS), pytest.approx(0.2 * MS))
    assert row["tokens_per_s"] == pytest.approx(4 / (5.4 * MS))


def test_a_static_batch_starts_when_its_last_request_has_arrived(tmp_path):
    trace = make_trace([[[0]]] * 4, num_experts=2, top_k=1, requests=[0, 0, 1, 1])
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text("request_id,arrival_s\n1,0.005\n0,0\n")
    row = moesim.replay(trace, capacity=1, hardware=hw(), batch_size=2, arrivals=str(arrivals))
    # one batch of both: step 0 (tokens 0 of both, expert 0 missed: 1.2) waits until 5; step 1 hits: 0.2
    assert row["total_s"] == pytest.approx(6.4 * MS) and row["idle_s"] == pytest.approx(5 * MS)
    # request 0 waited 5 ms for request 1: TTFT 6.2 ms; request 1: 1.2 ms
    assert row["ttft_s"] == pytest.approx(3.7 * MS)
    assert row["ttft_p99_s"] == pytest.approx((1.2 + 0.99 * 5) * MS)
    assert row["tpot_p50_s"] == pytest.approx(0.2 * MS)


def test_per_request_percentiles_on_a_tiny_trace_by_hand():
    # three decode requests of 2, 3 and 4 tokens, one after another (batch 1), each on its own expert, capacity
    # 3: each request's first step misses (1.2 ms), its others hit (0.2 ms)
    trace = make_trace([[[0]]] * 2 + [[[1]]] * 3 + [[[2]]] * 4, num_experts=3, top_k=1,
                       requests=[0] * 2 + [1] * 3 + [2] * 4)
    row = moesim.replay(trace, capacity=3, hardware=hw())
    # TTFT = 1.2 ms for each; TPOT = 0.2 ms for each; tpot_s: mean over the 6 later steps, 0.2 ms
    assert [row[f"ttft_p{p}_s"] for p in (50, 90, 99)] == [pytest.approx(1.2 * MS)] * 3
    assert row["tpot_p50_s"] == pytest.approx(0.2 * MS) and row["tpot_s"] == pytest.approx(0.2 * MS)
    assert row["total_s"] == pytest.approx((3 * 1.2 + 6 * 0.2) * MS)
    assert row["tokens_per_s"] == pytest.approx(9 / ((3 * 1.2 + 6 * 0.2) * MS))
    assert row["idle_s"] == 0.0
    # batched by 3, continuous: step 0 needs 0, 1, 2 (three misses: dense 0.1, fetches end 1.1, 2.1, 3.1, each
    # computes 0.1 after it: 3.2); steps 1 and 2 hit every expert left (dense 0.1 + 0.1 per expert)
    both = moesim.replay(trace, capacity=3, hardware=hw(), batching="continuous", batch_size=3)
    assert both["steps"] == 4
    assert both["total_s"] == pytest.approx((3.2 + 0.4 + 0.3 + 0.2) * MS)
    # per request: TTFT 3.2 ms each; TPOT: request 0 (3.6 - 3.2) / 1, 1 (3.9 - 3.2) / 2, 2 (4.1 - 3.2) / 3
    assert both["ttft_p50_s"] == pytest.approx(3.2 * MS)
    assert both["tpot_p50_s"] == pytest.approx(0.35 * MS)
    assert both["tpot_p90_s"] == pytest.approx((0.35 + 0.8 * 0.05) * MS)


def test_calibration_reschedules_with_the_step_times_the_replay_measured(tmp_path):
    # two requests of 2 tokens, on experts 0 and 1, request 1 arriving at 0.5 ms; capacity 0: every step misses
    trace = make_trace([[[0]], [[0]], [[1]], [[1]]], num_experts=2, top_k=1, requests=[0, 0, 1, 1])
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text("request_id,arrival_s\n0,0\n1,0.0005\n")
    row = moesim.replay(trace, capacity=0, hardware=hw(), batching="continuous", batch_size=2,
                        arrivals=str(arrivals))
    # first schedule, clocked by the cost model with experts resident (0.2 ms a step): request 1 is not here
    # at 0.2 ms, so request 0 runs alone, then request 1: 4 steps of 1.2 ms each as replayed.
    # second, clocked 1.2 ms a step: request 1 joins at step 1 (1.2 ms): steps of 1.2, 2.2 (two fetches on one
    # engine: 0.1 + 1 + 1 + 0.1), 1.2 ms. The third schedule is the second again: that replay stands.
    assert row["steps"] == 3 and row["total_s"] == pytest.approx(4.6 * MS)
    # TTFT: request 0 1.2 ms; request 1 3.4 - 0.5 = 2.9 ms
    assert row["ttft_s"] == pytest.approx((1.2 + 2.9) / 2 * MS)
    assert row["idle_s"] == 0.0


# ---------------------------------------------------------------- arrivals

def test_poisson_arrivals_are_seeded_start_at_zero_and_have_the_rate():
    a = poisson_arrivals(np.arange(20_000), 4.0, seed=3)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert np.mean(np.diff(a)) == pytest.approx(0.25, rel=0.03)
    assert np.array_equal(a, poisson_arrivals(np.arange(20_000), 4.0, seed=3))
    assert not np.array_equal(a, poisson_arrivals(np.arange(20_000), 4.0, seed=4))


def test_bad_arrival_files_are_one_clear_error(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("id,t\n0,0\n")
    with pytest.raises(ValueError, match=r"a.csv: the first line must be the header request_id,arrival_s"):
        read_arrivals(str(f))
    f.write_text("request_id,arrival_s\n0,-1\n")
    with pytest.raises(ValueError, match=r"line 2: request 0 at -1.0 s"):
        read_arrivals(str(f))
    f.write_text("request_id,arrival_s\n0,zero\n")
    with pytest.raises(ValueError, match=r"line 2: '0,zero' is not REQUEST_ID,SECONDS"):
        read_arrivals(str(f))
    with pytest.raises(ValueError, match=r"no such file"):
        read_arrivals(str(tmp_path / "none.csv"))
    f.write_text("request_id,arrival_s\n0,0\n")
    trace = prompts([1, 1])
    with pytest.raises(ValueError, match=r"no arrival time for request 1 \(1 of the trace's 2 requests missing\)"):
        moesim.replay(trace, batch_size=2, arrivals=str(f), bytes_per_expert="1MB")


@pytest.mark.parametrize("knobs, message", [
    ({"token_budget": 8}, "--token-budget caps continuous batching's steps; add --batching continuous"),
    ({"batching": "continuous", "batch_size": 4, "token_budget": 2}, "--token-budget 2 is less than --batch-size 4"),
    ({"arrival_rate": 2, "mode": "count"}, "arrival times need a clock: count mode has none"),
    ({"context": 4096}, "--context sizes the memory budget of --capacity auto"),
    ({"reserve": "2GiB"}, "--reserve sizes the memory budget of --capacity auto"),
    ({"capacity": "auto"}, "--capacity auto keeps room for the KV cache: give --kv-bytes-per-token"),
    ({"arrival_rate": 0}, "--arrival-rate: 0: write requests per second"),
])
def test_rules_between_serving_knobs_name_the_fix(knobs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReplayConfig.make(**knobs)


def test_two_sources_of_arrival_times_are_refused(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("request_id,arrival_s\n0,0\n")
    with pytest.raises(ValueError, match="--arrival-rate and --arrivals both say when requests arrive; keep one"):
        ReplayConfig.make(arrival_rate=2, arrivals=str(f))


def test_a_stream_of_the_recorded_trace_is_refused_when_the_replay_batches():
    trace = prompts([2, 2])
    with pytest.raises(ValueError, match=r"stream= belongs to the trace as recorded, but this replay batches"):
        moesim.replay(trace, stream=access_stream(trace), batch_size=2)
    # the batched trace and its own stream: the same row as batching inside replay
    batched = batch(trace, batch_size=2)
    row = moesim.replay(batched, stream=access_stream(batched), batch_size=2, capacity=1)
    assert same(row, moesim.replay(trace, batch_size=2, capacity=1))
    with pytest.raises(ValueError, match=r"this trace was batched \(batching static, batch_size 2\) but the replay "
                                         r"asks for not batched"):
        moesim.replay(batched)


def test_batch_size_one_keeps_the_recorded_steps_bit_for_bit():
    trace = prompts([3, 2], decode=[2, 2])
    assert same(moesim.replay(trace, capacity=2), moesim.replay(trace, capacity=2, batch_size=1, batching="static"))


def same(a: dict, b: dict) -> bool:
    """Rows equal value for value, NaN equal to NaN (a phase a trace lacks has a NaN hit rate)."""
    return list(a) == list(b) and all(x == y or (x != x and y != y) for x, y in zip(a.values(), b.values()))


def test_a_grid_sweeps_batch_sizes_as_direct_replays_do(tmp_path):
    from moesim.grid import read_results, run_grid
    mixtral = moesim.read_trace(ROOT / "traces" / "mixtral-8x7b-speculative-decode.parquet")
    spec = tmp_path / "g.toml"
    spec.write_text(f'trace = "{mixtral.path}"\nbatch_size = [1, 4]\ncapacity = "25%"\nmode = "count"\n')
    run_grid(spec, tmp_path / "r.parquet", jobs=1)
    df = read_results(tmp_path / "r.parquet").sort_values("batch_size")
    for _, r in df.iterrows():
        direct = moesim.replay(mixtral, capacity="25%", mode="count", batch_size=int(r["batch_size"]))
        assert (r["hits"], r["misses"], r["steps"]) == (direct["hits"], direct["misses"], direct["steps"])
    assert df["steps"].tolist()[0] > df["steps"].tolist()[1]


def test_a_grid_reads_arrival_files_beside_its_spec_and_draws_arrivals_per_seed(tmp_path):
    import pandas as pd
    from moesim.grid import read_results, run_grid
    trace = make_trace([[[0]], [[0]], [[1]], [[1]]], num_experts=2, top_k=1, requests=[0, 0, 1, 1])
    path = tmp_path / "t.parquet"
    moesim.write_trace(trace, path)
    (tmp_path / "a.csv").write_text("request_id,arrival_s\n0,0\n1,0.0005\n")
    base = 'trace = "t.parquet"\nbatching = "continuous"\nbatch_size = 2\ncapacity = 0\nhardware = "a100-pcie4"\n'
    (tmp_path / "file.toml").write_text(base + 'arrivals = "a.csv"\n')
    (tmp_path / "rate.toml").write_text(base + 'arrival_rate = 100.0\nseed = [0, 1]\n')
    run_grid(tmp_path / "file.toml", tmp_path / "file.parquet", jobs=1)
    run_grid(tmp_path / "rate.toml", tmp_path / "rate.parquet", jobs=1)
    df = pd.concat([read_results(tmp_path / "file.parquet"), read_results(tmp_path / "rate.parquet")])
    assert df["error"].isna().all() and len(df) == 3
    from_file = df[df["arrivals"].notna()].iloc[0]
    assert from_file["arrivals"] == str(tmp_path / "a.csv")
    direct = moesim.replay(trace, batching="continuous", batch_size=2, capacity=0, arrivals=str(tmp_path / "a.csv"))
    assert from_file["ttft_s"] == direct["ttft_s"]
    # LRU ignores the seed, but the arrivals it draws do not: two seeds, two replays
    poisson = df[df["arrival_rate"].notna()].sort_values("seed")
    assert poisson["run_s"].gt(0).all()
    for _, r in poisson.iterrows():
        assert r["ttft_s"] == moesim.replay(trace, batching="continuous", batch_size=2, capacity=0,
                                            arrival_rate=100.0, seed=int(r["seed"]))["ttft_s"]


# ---------------------------------------------------------------- the GPU memory budget

def small_gpu(gpu_memory=100e6):
    return Hardware("small", bandwidth=1e9, latency=0.0, copy_engines=1, gpu_flops=1e21, hbm=10e9, launch=0.0,
                    gpu_memory=gpu_memory)


def card_trace():
    # 4 layers, 32 experts each, 1 MB experts, 1 MB of other weights a layer; requests of 3 tokens
    meta_trace = make_trace([[[0]] * 4] * 6, num_experts=32, top_k=1, requests=[0, 0, 0, 1, 1, 1])
    assert isinstance(meta_trace.meta, TraceMeta)
    return meta_trace


def test_capacity_auto_is_what_the_gpu_leaves_for_experts():
    row = moesim.replay(card_trace(), capacity="auto", hardware=small_gpu(), kv_bytes_per_token=1000, context=1000,
                        batch_size=2, mode="count")
    # 100 MB - 4 layers x 1 MB - KV 1000 B x 4 layers x 1000 tokens x 2 requests (8 MB) - 10 % (10 MB) = 78 MB
    assert (row["gpu_memory"], row["non_expert_bytes"], row["kv_cache_bytes"], row["reserve_bytes"]) == \
        (100e6, 4e6, 8e6, 10e6)
    assert row["capacity_experts"] == 78 and row["capacity"] == "auto" and row["context"] == 1000
    assert row["reserve"] == "10%"
    # a reserve in bytes, and the context taken from the trace's longest request (3 tokens)
    row = moesim.replay(card_trace(), capacity="auto", hardware=small_gpu(), kv_bytes_per_token=1e6, reserve="2MB",
                        mode="count")
    # 100 - 4 - 1e6 x 4 x 3 x 1 (12 MB) - 2 = 82 MB: 82 experts, of the trace's 128
    assert row["context"] == 3 and row["kv_cache_bytes"] == 12e6 and row["capacity_experts"] == 82
    # experts at 4 bits of the trace's bf16 weigh 0.25 MB: 328 of them fit, and the trace has 128
    row = moesim.replay(card_trace(), capacity="auto", hardware=small_gpu(), kv_bytes_per_token=1e6, reserve="2MB",
                        weight_bits=4, mode="count")
    assert row["capacity_experts"] == 128


def test_a_budget_below_zero_is_an_error_that_shows_the_arithmetic():
    with pytest.raises(ValueError) as e:
        moesim.replay(card_trace(), capacity="auto", hardware=small_gpu(), kv_bytes_per_token=1000, context=20_000,
                      batch_size=2, mode="count")
    text = str(e.value)
    # 100 MB = 0.09313 GiB; KV 1000 x 4 x 20,000 x 2 = 160 MB = 0.149 GiB
    assert "GPU 0.09313 GiB - non-expert weights 0.003725 GiB (4 layers x 0.9537 MiB) - KV cache 0.149 GiB " \
           "(4 layers x 20,000 tokens x 2 requests x 1,000 B) - reserve 0.009313 GiB = -0.06892 GiB" in text
    assert "shorten --context, lower --batch-size" in text
    runner = CliRunner().invoke(main, ["replay", str(ROOT / "traces" / "switch-base-8-stratamoe.parquet"), "--capacity", "auto",
                                       "--kv-bytes-per-token", "1GiB", "--hardware", "rtx4090-pcie4"])
    assert runner.exit_code == 1 and "Traceback" not in runner.output and "= -" in runner.output


def test_the_cli_prints_the_memory_arithmetic_and_the_serving_numbers():
    out = CliRunner().invoke(main, ["replay", str(ROOT / "traces" / "mixtral-8x7b-speculative-decode.parquet"), "--capacity", "auto",
                                    "--kv-bytes-per-token", "4KiB", "--context", "4096", "--batch-size", "4",
                                    "--hardware", "rtx4090-pcie4"])
    assert out.exit_code == 0, out.output
    # 24 GiB - 32 x 41,984,000 B (1.251 GiB) - 32 x 4096 x 4 x 4 KiB (2 GiB) - 2.4 GiB = 18.35 GiB
    # -> 111 experts of 176,160,768 B
    assert ("capacity auto: GPU 24 GiB - non-expert weights 1.251 GiB (32 layers x 40.04 MiB) - KV cache 2 GiB "
            "(32 layers x 4,096 tokens x 4 requests x 4,096 B) - reserve 2.4 GiB = 18.35 GiB for experts -> 111 "
            "experts of 168 MiB") in out.output
    assert "batching static, batch size 4" in out.output and "TTFT p50 / p90 / p99" in out.output
