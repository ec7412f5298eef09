"""Memory tiers, GPU <- host <- storage: a host-tier cache in front of storage, the storage link, paged
non-expert weights.

Timed cases use test_replay_timed's paper hardware (1 MB experts, a 1 GB/s host link: 1 ms a copy; 0.1 ms per
expert and per dense part on the GPU) with a storage link of its own; times in ms.
"""
import dataclasses
import importlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from helpers import make_trace, random_routes
from test_replay_timed import MS, hw

import moesim
from moesim import cost
from moesim.config import ReplayConfig

ROOT = Path(__file__).resolve().parents[1]
replay_module = importlib.import_module("moesim.replay")  # the module (moesim.replay is also the function)


def storage_hw(bandwidth_gbps=0.5, latency_us=0.0, lanes=1, stripes=1, **figures):
    """The paper hardware with a storage link: 0.5 GB/s reads an expert in 2 ms."""
    return dataclasses.replace(hw(), storage_bandwidth=bandwidth_gbps * 1e9, storage_latency=latency_us * 1e-6,
                               storage_lanes=lanes, storage_stripes=stripes, **figures)


def two_level_reference(items, gpu_capacity, host_capacity, gpu_policy, host_policy):
    """(GPU hits, host hits, host misses) of a GPU cache in front of a host cache, per access, written from the
    definition: a GPU miss looks in the host cache; a host miss reads storage and the host keeps the expert
    (evicting its own victim); the GPU inserts every miss; neither cache tells the other of its evictions."""
    def touch(cache, x, policy):
        if policy == "lru":
            cache.move_to_end(x)

    def insert(cache, x, capacity):
        if capacity == 0:
            return
        if len(cache) >= capacity:
            cache.popitem(last=False)  # the oldest: least recently used (lru) or first in (fifo)
        cache[x] = True

    gpu, host = OrderedDict(), OrderedDict()
    gpu_hits = host_hits = host_misses = 0
    for x in items:
        if x in gpu:
            gpu_hits += 1
            touch(gpu, x, gpu_policy)
            continue
        if x in host:
            host_hits += 1
            touch(host, x, host_policy)
        else:
            host_misses += 1
            insert(host, x, host_capacity)
        insert(gpu, x, gpu_capacity)
    return gpu_hits, host_hits, host_misses


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gpu_policy,host_policy", [("lru", "lru"), ("fifo", "lru"), ("lru", "fifo")])
def test_count_mode_hits_per_tier_equal_a_brute_force_two_level_cache(seed, gpu_policy, host_policy):
    rng = np.random.default_rng(seed)
    layers, experts, top_k = 3, 8, 2
    trace = make_trace(random_routes(rng, 40, layers, experts, top_k), num_experts=experts, top_k=top_k)
    stream = moesim.trace.access_stream(trace)
    gpu_cap = int(rng.integers(1, 10))
    host_cap = int(rng.integers(0, 24))
    row = moesim.replay(trace, mode="count", accounting="access", policy=gpu_policy, capacity=gpu_cap,
                        host_capacity=host_cap, host_policy=host_policy)
    gpu_hits, host_hits, host_misses = two_level_reference(stream.item.tolist(), gpu_cap, host_cap, gpu_policy,
                                                           host_policy)
    assert (row["hits"], row["host_hits"], row["host_misses"]) == (gpu_hits, host_hits, host_misses)
    assert row["host_hits"] + row["host_misses"] == row["misses"]
    assert row["storage_reads"] == host_misses
    assert row["storage_bytes"] == host_misses * 1e6
    assert row["host_hit_rate"] == pytest.approx(host_hits / row["misses"])


@pytest.mark.parametrize("accounting", ["access", "segment"])
@pytest.mark.parametrize("mode", ["count", "timed"])
def test_an_unbounded_host_tier_reads_each_expert_from_storage_once(mode, accounting):
    if mode == "timed" and accounting == "access":
        pytest.skip("timed mode runs by segment")
    trace = moesim.read_trace(ROOT / "traces" / "synthetic-zipf.parquet")
    knobs = dict(mode=mode, accounting=accounting, capacity="10%", bytes_per_expert="4MB")
    tiered = moesim.replay(trace, **knobs, host_capacity="100%", hardware=storage_hw())
    plain = moesim.replay(trace, **knobs)
    # the host tier never evicts: after its first touch an expert is a host hit for good, as with no tier
    touched = len(np.unique(moesim.trace.access_stream(trace).item))
    assert tiered["hits"] == plain["hits"] and tiered["misses"] == plain["misses"]
    assert tiered["storage_reads"] == touched
    assert tiered["host_hits"] == plain["misses"] - touched


@pytest.mark.parametrize("mode", ["count", "timed"])
def test_a_host_tier_of_nothing_reads_every_gpu_miss_from_storage(mode):
    trace = moesim.read_trace(ROOT / "traces" / "synthetic-zipf.parquet")
    row = moesim.replay(trace, mode=mode, capacity="10%", bytes_per_expert="4MB", host_capacity=0,
                        hardware=storage_hw())
    assert row["host_hits"] == 0
    assert row["storage_reads"] == row["host_misses"] == row["misses"]
    assert row["host_hit_rate"] == 0.0


def test_a_miss_from_storage_costs_the_read_then_the_host_copy():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    row = moesim.replay(trace, capacity=1, host_capacity=1, hardware=storage_hw(latency_us=500))
    # dense ->0.1; read 0: latency 0.1..0.6, bytes 0.6..2.6 (0.5 GB/s); copy 2.6..3.6; compute 3.6..3.7
    assert row["total_s"] == pytest.approx(3.7 * MS)
    assert row["stall_s"] == pytest.approx(3.5 * MS)
    assert row["storage_stall_s"] == pytest.approx(2.5 * MS)  # the wait until the read ended
    assert (row["storage_reads"], row["storage_bytes"]) == (1, 1e6)


def test_a_host_hit_is_copied_as_without_tiers():
    # GPU of one slot, host of two: 0, 1, then 0 again, which the GPU evicted and the host kept
    trace = make_trace([[[0]], [[1]], [[0]]], num_experts=2, top_k=1)
    row = moesim.replay(trace, capacity=1, host_capacity=2, hardware=storage_hw())
    # step 0: dense ->0.1, read 0.1..2.1, copy 2.1..3.1, compute ->3.2
    # step 1: dense ->3.3, read 3.3..5.3, copy 5.3..6.3, compute ->6.4
    # step 2: dense ->6.5, host hit: copy 6.5..7.5, compute ->7.6
    assert (row["hits"], row["misses"], row["host_hits"], row["host_misses"]) == (0, 3, 1, 2)
    assert row["total_s"] == pytest.approx(7.6 * MS)
    assert row["storage_stall_s"] == pytest.approx(4.0 * MS)
    assert row["host_hit_rate"] == pytest.approx(1 / 3)
    # the same replay without tiers: every copy starts at routing
    plain = moesim.replay(trace, capacity=1, hardware=hw())
    assert plain["total_s"] == pytest.approx(3 * 1.2 * MS)


@pytest.mark.parametrize("lanes,total", [(1, 3.2), (2, 4.2)])
def test_storage_lanes_split_the_bandwidth_between_reads_side_by_side(lanes, total):
    # one token needs two experts; storage 1 GB/s in all
    trace = make_trace([[[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=2, host_capacity=2, hardware=storage_hw(bandwidth_gbps=1.0, lanes=lanes))
    # 1 lane: reads one after another at 1 GB/s: 0.1..1.1, 1.1..2.1; copies 1.1..2.1, 2.1..3.1; compute ->3.2
    # 2 lanes: side by side at 0.5 GB/s each: both 0.1..2.1; copies 2.1..3.1, 3.1..4.1; compute ->4.2
    assert row["total_s"] == pytest.approx(total * MS)


def test_a_prefetch_reads_storage_when_planned_and_copies_once_the_read_and_an_engine_are_done():
    # an oracle prefetch of layer 1's expert (item 3), planned at layer 0's routing, while layer 0's demand
    # miss of 0 holds the one copy engine
    trace = make_trace([[[0], [1]]], num_experts=2, top_k=1)
    knobs = dict(capacity=2, predictor="oracle", horizon=1, hardware=storage_hw())
    tiered = moesim.replay(trace, **knobs, host_capacity=2)
    plain = moesim.replay(trace, **knobs)
    assert tiered["prefetch_issued"] == plain["prefetch_issued"] == 1
    assert tiered["host_misses"] == 2 and tiered["storage_reads"] == 2
    # layer 0: dense ->0.1; read 0 0.1..2.1, copy 2.1..3.1, compute ->3.2. The prefetch of 3 reads from its
    # planning at 0.1, behind read 0: 2.1..4.1 (not from 3.1, when the engine frees: that was 3.1..5.1), and
    # copies once both are done: 4.1..5.1. Layer 1: dense ->3.3, waits for 3 until 5.1, computes ->5.2
    assert tiered["total_s"] == pytest.approx(5.2 * MS)
    assert tiered["storage_stall_s"] == pytest.approx((2.0 + 0.8) * MS)  # 0.1..2.1 and 3.3..4.1
    assert plain["total_s"] == pytest.approx(2.2 * MS)  # copies 0.1..1.1, 1.1..2.1: layer 1 waits to 2.1


def test_a_cancelled_prefetch_keeps_its_read_in_the_host_tier():
    # one token on experts 0 and 1 at both layers (items 0, 1, then 2, 3); the oracle plans 2 and 3 for layer 1
    trace = make_trace([[[0, 1], [0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=4, predictor="oracle", horizon=1, host_capacity=4, hardware=storage_hw())
    # layer 0: dense ->0.1; reads 0.1..2.1, 2.1..4.1 (one storage lane); copies 2.1..3.1, 4.1..5.1; computes
    # 3.1..3.2 and 5.1..5.2. The plan's reads, issued at 0.1 behind those: 4.1..6.1 and 6.1..8.1. The first
    # prefetch's copy waits for its engine (5.1) and its read: 6.1..7.1. The second's would start at 7.1,
    # after layer 1 routes (5.3): its expert is a demand miss then, a host hit that waits for the read under
    # way (8.1), copied 8.1..9.1; its prefetch is cancelled. Layer 1: 7.1..7.2, 9.1..9.2
    assert row["total_s"] == pytest.approx(9.2 * MS)
    assert (row["prefetch_issued"], row["prefetch_cancelled"], row["prefetch_late"]) == (1, 1, 1)
    assert (row["host_hits"], row["host_misses"], row["storage_reads"]) == (1, 4, 4)
    assert row["stall_s"] == pytest.approx((3.0 + 1.9 + 1.8 + 1.9) * MS)
    # waiting on a read: 0.1..2.1, 3.2..4.1; then 5.3..6.1, 7.2..8.1
    assert row["storage_stall_s"] == pytest.approx((2.0 + 0.9 + 0.8 + 0.9) * MS)


def test_the_host_action_waits_for_the_expert_to_be_read_into_host_memory():
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    fast_host = dict(host_flops=1e21, host_bandwidth=2e9)  # 0.5 ms to compute an expert on the host
    row = moesim.replay(trace, capacity=1, action="host", host_capacity=1, hardware=storage_hw(**fast_host))
    # dense ->0.1; read 0.1..2.1; host compute 2.1..2.6
    assert row["total_s"] == pytest.approx(2.6 * MS)
    assert (row["host_computed"], row["storage_reads"], row["bytes_demand"]) == (1, 1, 0)
    assert row["storage_stall_s"] == pytest.approx(2.0 * MS)


@pytest.mark.parametrize("paged_mb", [0.0, 0.25, 0.5, 1.0])
def test_paging_time_is_linear_in_the_bytes_that_do_not_fit(paged_mb):
    # 3 layers of 1 MB dense weights each (one of them MoE), host memory 2 MB short of paged_mb: every step
    # re-reads paged_mb from storage before its first layer runs; one expert, resident after step 0
    steps = 4
    trace = make_trace([[[0]]] * steps, num_experts=2, top_k=1, num_layers=3)
    host = 1e6  # the host tier: one expert
    row = moesim.replay(trace, capacity=1, host_capacity="1MB",
                        hardware=storage_hw(host_memory=3e6 + host - paged_mb * 1e6))
    assert row["paged_bytes"] == pytest.approx(paged_mb * 1e6)
    assert row["paging_s"] == pytest.approx(steps * paged_mb * 2 * MS)  # 0.5 GB/s: 2 ms a MB
    no_paging = moesim.replay(trace, capacity=1, host_capacity="1MB", hardware=storage_hw())
    assert row["total_s"] - no_paging["total_s"] == pytest.approx(row["paging_s"])
    assert row["gpu_compute_s"] == pytest.approx(no_paging["gpu_compute_s"])


def test_the_first_schedule_of_continuous_batching_pays_the_paging_every_step(tmp_path, monkeypatch):
    # two requests of 2 tokens on expert 0, request 1 arriving at 0.5 ms, batches of 2; one layer of 1 MB
    # dense weights, host memory 0.5 MB short of them: 0.5 MB paged every step, 1 ms at 0.5 GB/s
    trace = make_trace([[[0]]] * 4, num_experts=2, top_k=1, requests=[0, 0, 1, 1])
    paging = storage_hw(host_memory=1e6 + 0.5e6)
    meta = trace.meta
    assert cost.step_seconds_estimate(1, meta, paging, 1e6) == pytest.approx(0.2 * MS)  # dense 0.1, expert 0.1
    assert cost.step_seconds_estimate(1, meta, paging, 1e6, paged=0.5e6) == pytest.approx(1.2 * MS)
    # each MoE layer's page-in is a read of its own, paying the storage latency
    slow = dataclasses.replace(paging, storage_latency=0.3 * MS)
    assert cost.step_seconds_estimate(1, meta, slow, 1e6, paged=0.5e6) == pytest.approx(1.5 * MS)
    schedules, replays = [], []
    serve, replay_once = replay_module.serve, replay_module._replay
    monkeypatch.setattr(replay_module, "serve", lambda *a, **k: schedules.append(serve(*a, **k)) or schedules[-1])
    monkeypatch.setattr(replay_module, "_replay", lambda *a, **k: replays.append(1) or replay_once(*a, **k))
    arrivals = tmp_path / "arrivals.csv"
    arrivals.write_text("request_id,arrival_s\n0,0\n1,0.0005\n")
    row = moesim.replay(trace, capacity=1, host_capacity="1MB", hardware=paging, batching="continuous",
                        batch_size=2, arrivals=str(arrivals))
    assert row["paged_bytes"] == pytest.approx(0.5e6)
    # the first schedule, at 1.2 ms a step (not 0.2, when request 1 would not yet be there for step 1):
    # request 0's first token alone, then its second beside request 1's first, then request 1's second
    first = schedules[0]
    assert first.column("step").tolist() == [0, 1, 1, 2]
    assert first.column("request_id").tolist() == [0, 0, 1, 1]
    # replayed: step 0 pages 0..1, dense ->1.1, reads 0 1.1..3.1, copies it ->4.1, computes ->4.2; steps 1 and
    # 2 hit: 1.2 each. Clocked by those times, the second schedule is the first: one replay stands
    assert row["total_s"] == pytest.approx((4.2 + 1.2 + 1.2) * MS)
    assert len(replays) == 1 and len(schedules) == 2


def test_host_capacity_auto_is_what_host_memory_leaves_after_the_non_expert_weights():
    trace = make_trace([[[0]], [[1]], [[2]]], num_experts=4, top_k=1, num_layers=2)  # 2 MB of dense weights
    row = moesim.replay(trace, mode="count", capacity=1, host_capacity="auto", host_memory="5MB")
    assert row["host_capacity_experts"] == 3 and row["paged_bytes"] == 0.0
    short = moesim.replay(trace, mode="count", capacity=1, host_capacity="auto", host_memory="1.5MB")
    assert short["host_capacity_experts"] == 0 and short["paged_bytes"] == pytest.approx(0.5e6)


def test_replays_without_tiers_give_the_rows_they_gave_before_tiers():
    """Rows main wrote before tiers existed (tests/fixtures/tiers): every column they had is unchanged, bit for
    bit; the tier columns are there with what no tier means."""
    cases = json.loads((ROOT / "tests" / "fixtures" / "tiers" / "rows_without_tiers.json").read_text())
    same = (lambda a, b: a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)))
    for case in cases:
        row = moesim.replay(ROOT / case["trace"], **case["knobs"])
        row["trace"] = case["trace"]
        before = case["row"]
        changed = [k for k in before if k != "moesim_version" and not same(before[k], row[k])]
        assert not changed, (case["knobs"], changed)
        assert (row["host_capacity"], row["storage_reads"], row["paged_bytes"]) == (None, 0, 0.0)
        assert math.isnan(row["host_hit_rate"])


def test_tier_knobs_without_a_host_tier_are_refused():
    with pytest.raises(ValueError, match="--storage-bandwidth .*add --host-capacity"):
        ReplayConfig.make(storage_bandwidth="7GB/s")
    with pytest.raises(ValueError, match="no storage link: give --storage"):
        ReplayConfig.make(host_capacity="50%")
    with pytest.raises(ValueError, match="give --host-memory"):
        ReplayConfig.make(host_capacity="auto", mode="count")
    with pytest.raises(ValueError, match="unknown storage device 'nvme'"):
        ReplayConfig.make(host_capacity="50%", storage="nvme")
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    with pytest.raises(ValueError, match="more than the host's"):
        moesim.replay(trace, mode="count", host_capacity="8MB", host_memory="4MB")


def test_a_storage_preset_fills_the_storage_link_and_a_figure_overrides_it():
    cfg = ReplayConfig.make(host_capacity="50%", storage="ufs4", storage_lanes=2)
    hw_ = cfg.hardware_spec()
    assert (hw_.storage_bandwidth, hw_.storage_lanes, hw_.storage_stripes) == (4.2e9, 2, 3)
    assert "UFS 4.0" in hw_.source


def test_a_hardware_file_keeps_its_storage_link(tmp_path):
    from moesim.hardware import read_hardware_file
    hw_ = storage_hw(lanes=4, stripes=3, latency_us=45, host_memory=12e9)
    path = tmp_path / "box.toml"
    path.write_text(hw_.to_toml())
    assert read_hardware_file(path) == hw_
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    assert moesim.replay(trace, capacity=1, host_capacity=1, hardware=str(path))["storage_reads"] == 1


def test_the_cli_replays_with_tiers_and_prints_them(tmp_path):
    from click.testing import CliRunner

    from moesim.cli import main
    out = CliRunner().invoke(main, ["replay", str(ROOT / "traces" / "dsv2lite-moebeyond-sample.parquet"),
                                    "--mode", "count", "--capacity", "10%", "--host-capacity", "40%"])
    assert out.exit_code == 0, out.output
    assert "host-tier hit rate" in out.output and "storage reads" in out.output


@pytest.mark.parametrize("action", ["fetch", "threshold"])
def test_count_and_timed_mode_count_the_same_host_tier_hits(action):
    # the host tier sees the GPU's fetches in the same order in both modes, so its hits agree as the GPU's do
    trace = moesim.read_trace(ROOT / "traces" / "synthetic-zipf.parquet")
    knobs = dict(capacity="10%", bytes_per_expert="4MB", host_capacity="25%", hardware=storage_hw(), action=action,
                 host_below=2)
    count = moesim.replay(trace, mode="count", **knobs)
    timed = moesim.replay(trace, mode="timed", **knobs)
    assert (count["hits"], count["host_hits"], count["host_misses"]) == \
        (timed["hits"], timed["host_hits"], timed["host_misses"])
    assert count["host_hits"] > 0 and count["host_misses"] > 0


@pytest.mark.parametrize("host_policy", moesim.policies.names())
def test_every_policy_serves_as_the_host_tier_s(host_policy):
    trace = moesim.read_trace(ROOT / "traces" / "synthetic-zipf.parquet")
    # count mode for each (the host tier's code is the same in both; timed mode compiles a loop per policy)
    for mode in ("count", "timed") if host_policy == "belady" else ("count",):
        row = moesim.replay(trace, mode=mode, capacity="5%", bytes_per_expert="4MB", host_capacity="20%",
                            host_policy=host_policy, train=trace, hardware=storage_hw())
        assert row["host_hits"] + row["host_misses"] == row["misses"]
        assert 0 < row["host_hits"] < row["misses"]
        # a host tier of 20 % holds no more than a fifth of the experts: it cannot beat reading each once
        assert row["storage_reads"] >= len(np.unique(moesim.trace.access_stream(trace).item))


@pytest.mark.parametrize("stripes,total", [(1, 3.2), (2, 2.2)])
def test_storage_stripes_spread_one_read_over_free_lanes(stripes, total):
    # one expert; storage 1 GB/s on two lanes of 0.5 GB/s
    trace = make_trace([[[0]]], num_experts=2, top_k=1)
    row = moesim.replay(trace, capacity=1, host_capacity=1,
                        hardware=storage_hw(bandwidth_gbps=1.0, lanes=2, stripes=stripes))
    # 1 stripe: one lane reads it all, 0.1..2.1; 2 stripes: each lane reads half, 0.1..1.1; then copy 1 ms, compute
    assert row["total_s"] == pytest.approx(total * MS)
