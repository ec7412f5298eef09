"""Experts whose sizes differ by layer (quantised models mix formats by layer) and a link of several lanes.

A capacity in bytes fills by bytes, each layer's experts at their own size; a miss evicts until its expert
fits; a transfer moves its own layer's bytes. Hand-computed cases use the paper hardware of
test_replay_timed (1 GB/s link, 10 GB/s HBM, no launch cost); times in ms.
"""
import dataclasses
import importlib

import numpy as np
import pytest
from helpers import make_trace, random_routes
from test_replay_timed import MS, hw

import moesim
from moesim.hardware import Hardware, read_hardware_file
from moesim.trace import Trace, access_stream


def sized(trace, layer_bytes):
    """The trace with one expert's bytes per MoE layer in its metadata, as the BigMoeOnEdge importer writes."""
    meta = dataclasses.replace(trace.meta, extra={**trace.meta.extra, "expert_bytes_per_layer": list(layer_bytes)},
                               bytes_per_expert=int(round(np.mean(layer_bytes))))
    return Trace(trace.table, meta)


# two layers, top-1: layer 0's experts are 2 MB, layer 1's 1 MB; a 4 MB cache (two experts at the mean size)
ROUTES = [[[0], [0]], [[0], [1]], [[0], [0]], [[1], [1]], [[0], [0]]]


@pytest.mark.parametrize("accounting", ["access", "segment"])
def test_a_byte_capacity_fills_by_each_layers_own_expert_size(accounting):
    trace = sized(make_trace(ROUTES, num_experts=2, top_k=1), [2_000_000, 1_000_000])
    row = moesim.replay(trace, capacity="4MB", mode="count", accounting=accounting)
    # (layer, expert), least recent first:
    # t0: (0,0) 2 MB, (1,0) 1 MB miss -> 3 MB.   t1: (0,0) hits; (1,1) misses and fits in the last 1 MB.
    # t2: both hit.  t3: (0,1) misses: evict (1,1), then 1 MB free < 2 MB, evict (0,0) -> fits; (1,1) misses,
    #     1 MB free.   t4: (0,0) misses: evict (1,0) and (0,1); (1,0) misses and fits.
    assert (row["hits"], row["misses"]) == (3, 7)
    # at the mean size (1.5 MB) the same bytes are two slots: (1,0) and (1,1) take turns
    mean = moesim.replay(trace, capacity="4MB", mode="count", accounting=accounting, bytes_per_expert=1_500_000)
    assert (mean["hits"], mean["misses"]) == (2, 8)
    assert row["capacity_experts"] == mean["capacity_experts"] == 2  # reported at the mean size


def _reference(items, seg_offsets, part_of, size, capacity, policy, segment):
    """Hits of a cache that fills by bytes, from its definition: a miss evicts the policy's victim among the
    residents (per segment: those the segment does not use) until the expert fits, and streams through when
    it cannot fit (bigger than the partition, or every other resident in use; what it evicted stays out).
    Per access, stream order; per segment, the hits in order of first use, then the misses (the order of
    recency)."""
    cached = {p: set() for p in range(len(capacity))}
    used = [0] * len(capacity)
    last, inserted, count = {}, {}, {}
    hits = clock = 0
    groups = ([items[a:b] for a, b in zip(seg_offsets[:-1], seg_offsets[1:])] if segment
              else [[x] for x in items])
    for group in groups:
        distinct = list(dict.fromkeys(group))
        missing = [x for x in distinct if x not in cached[part_of[x]]]
        for x in distinct:
            if x not in missing:
                hits += group.count(x) if not segment else 1
                clock += 1
                last[x] = clock
                count[x] += 1
        for x in missing:
            p = part_of[x]
            if size[x] > capacity[p]:
                continue
            while used[p] + size[x] > capacity[p]:
                free = sorted(cached[p] - set(distinct))
                if not free:
                    break
                key = {"lru": lambda y: last[y], "fifo": lambda y: inserted[y],
                       "lfu": lambda y: (count[y], last[y])}[policy]
                v = min(free, key=key)
                cached[p].remove(v)
                used[p] -= size[v]
            if used[p] + size[x] > capacity[p]:
                continue
            cached[p].add(x)
            used[p] += size[x]
            clock += 1
            last[x] = inserted[x] = clock
            count[x] = 1
    return hits


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu"])
@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_byte_caches_match_a_brute_force_replay_of_their_definition(policy, scope):
    rng = np.random.default_rng(5)
    layer_bytes = [3_000_000, 1_000_000, 2_000_000]
    routes = random_routes(rng, tokens=80, layers=3, experts=8, top_k=2)
    steps = np.repeat(np.arange(40), rng.integers(1, 4, 40))[:80]
    trace = sized(make_trace(routes, num_experts=8, top_k=2, steps=steps, requests=np.arange(80)), layer_bytes)
    stream = access_stream(trace, prefill_chunk=0)
    size = np.repeat(layer_bytes, 8).tolist()
    part_of = [0] * 24 if scope == "global" else np.repeat(np.arange(3), 8).tolist()
    for mb in (0, 2, 5, 9, 14, 24, 60):
        cap = mb * 1_000_000
        capacity = [cap] if scope == "global" else [min(cap // 3, layer_bytes[l] * 8) for l in range(3)]
        for accounting in ("access", "segment"):
            want = _reference(stream.item.tolist(), stream.seg_offsets.tolist(), part_of, size, capacity, policy,
                              segment=accounting == "segment")
            got = moesim.replay(trace, policy=policy, capacity=f"{mb}MB", scope=scope, mode="count",
                                accounting=accounting, stream=stream)
            assert got["hits"] == want, (accounting, mb)
        timed = moesim.replay(trace, policy=policy, capacity=f"{mb}MB", scope=scope, stream=stream, hardware=hw())
        assert timed["hits"] == want, ("timed", mb)


def test_experts_of_one_size_replay_exactly_as_without_sizes(monkeypatch):
    rng = np.random.default_rng(3)
    trace = make_trace(random_routes(rng, tokens=40, layers=3, experts=8, top_k=2), num_experts=8, top_k=2)
    same = sized(trace, [1_000_000] * 3)
    runs = (dict(mode="count"), dict(mode="count", accounting="access"), dict(hardware=hw(copy_engines=2)),
            dict(predictor="oracle", hardware=hw()), dict(policy="belady", hardware=hw()))
    slots = [moesim.replay(trace, capacity="7MB", **knobs) for knobs in runs]
    assert [moesim.replay(same, capacity="7MB", **knobs) for knobs in runs] == slots
    # the byte-filling engine itself, made to run with sizes that are all one: the same rows
    replay_module = importlib.import_module("moesim.replay")  # the module (moesim.replay is also the function)
    monkeypatch.setattr(replay_module, "layer_expert_bytes", lambda meta, cfg, hw=None: np.full(3, 1e6))
    assert [moesim.replay(trace, capacity="7MB", **knobs) for knobs in runs] == slots


def test_a_capacity_in_experts_counts_experts_whatever_their_size():
    rng = np.random.default_rng(4)
    trace = make_trace(random_routes(rng, tokens=40, layers=2, experts=8, top_k=2), num_experts=8, top_k=2)
    a = moesim.replay(sized(trace, [3_000_000, 1_000_000]), capacity=6, mode="count")
    b = moesim.replay(trace, capacity=6, mode="count")
    assert (a["hits"], a["misses"]) == (b["hits"], b["misses"])


def test_a_transfer_moves_its_own_layers_bytes():
    # two layers, top-1, token 0 misses both: layer 0's 2 MB take 2 ms, layer 1's 1 MB 1 ms
    trace = sized(make_trace([[[0], [0]]], num_experts=2, top_k=1), [2_000_000, 1_000_000])
    row = moesim.replay(trace, capacity="8MB", hardware=hw())
    # layer 0: dense ..0.1, fetch 0.1..2.1, compute ..2.2 (the kernel reads the mean 1.5 MB: 0.15 ms -> 2.25)
    # layer 1: dense ..2.35, fetch ..3.35, compute ..3.5
    assert row["total_s"] == pytest.approx(3.5 * MS)
    assert row["bytes_demand"] == 3e6


def test_static_with_sizes_places_only_what_fits():
    rng = np.random.default_rng(6)
    routes = random_routes(rng, tokens=60, layers=2, experts=8, top_k=2)
    trace = sized(make_trace(routes, num_experts=8, top_k=2), [3_000_000, 1_000_000])
    row = moesim.replay(trace, policy="static", train=trace, capacity="10MB", mode="count")
    assert row["hits"] + row["misses"] == 60 * 2 * 2


@pytest.mark.parametrize("lanes,total", [(1, 1.2), (2, 1.3)])
def test_lanes_split_the_bandwidth_so_a_lone_transfer_takes_its_lanes_rate(lanes, total):
    # one token, two 1 MB experts missing, 2 engines, 2 GB/s in all
    trace = make_trace([[[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=2, hardware=hw(copy_engines=2, bandwidth_gbps=2.0), lanes=lanes)
    # one lane: a 0.1..0.6, b 0.6..1.1 at 2 GB/s; compute a 0.6..0.7, b 1.1..1.2
    # two lanes of 1 GB/s: a and b 0.1..1.1 side by side; compute 1.1..1.2, 1.2..1.3
    assert row["total_s"] == pytest.approx(total * MS)
    assert row["lanes"] == lanes


def test_more_lanes_than_copy_engines_is_an_error_naming_both():
    with pytest.raises(ValueError, match="lanes.*copy engines"):
        moesim.replay(make_trace([[[0]]], num_experts=2, top_k=1), hardware=hw(copy_engines=2), lanes=4)


def test_a_hardware_file_carries_lanes_kv_bytes_and_weight_bits(tmp_path):
    h = dataclasses.replace(hw(copy_engines=4), lanes=4, kv_bytes_per_token=2048.0, weight_bits=4.5)
    f = tmp_path / "phone.toml"
    f.write_text(h.to_toml())
    back = read_hardware_file(f)
    assert (back.lanes, back.kv_bytes_per_token, back.weight_bits) == (4, 2048.0, 4.5)
    trace = make_trace([[[0], [1]], [[1], [0]]], num_experts=2, top_k=1)
    from_file = moesim.replay(trace, capacity=1, hardware=str(f))
    knobs = moesim.replay(trace, capacity=1, hardware=hw(copy_engines=4), lanes=4, kv_bytes_per_token=2048,
                          weight_bits=4.5)
    assert from_file["total_s"] == knobs["total_s"] and from_file["bytes_demand"] == knobs["bytes_demand"]
    assert (from_file["kv_bytes_per_token"], from_file["weight_bits"]) == (2048.0, 4.5)
    # without them a file reads as before: no KV reads, the trace's dtype
    plain = Hardware("p", bandwidth=1e9, latency=0.0, copy_engines=1, gpu_flops=1e12, hbm=1e11)
    assert "lanes = 1" in plain.to_toml() and "kv_bytes_per_token" not in plain.to_toml()


@pytest.mark.parametrize("stripes,total", [(1, 1.3), (2, 0.8), (4, 0.7)])
def test_stripes_split_a_transfer_into_jobs_that_free_lanes_take(stripes, total):
    # one token, two 1 MB experts missing, 4 engines, 4 lanes of 1 GB/s (4 GB/s in all): a whole expert on one
    # lane takes 1 ms; in parts, the earliest free lanes take them
    trace = make_trace([[[0, 1]]], num_experts=2, top_k=2)
    row = moesim.replay(trace, capacity=2, hardware=hw(copy_engines=4, bandwidth_gbps=4.0), lanes=4,
                        stripes=stripes)
    # 1 part: a on lane 0, b on lane 1, both 0.1..1.1; compute 1.1..1.2, 1.2..1.3
    # 2 parts: a's halves on lanes 0 and 1, b's on 2 and 3, all 0.1..0.6; compute ..0.7, ..0.8
    # 4 parts: a's quarters on the four lanes 0.1..0.35, then b's 0.35..0.6; compute a 0.35..0.45, b 0.6..0.7
    assert row["total_s"] == pytest.approx(total * MS)
    assert row["stripes"] == stripes


def test_the_cost_rule_weighs_a_striped_fetch_as_it_would_land():
    # the cost rule's what-if (_arrival) on striped lanes must be what the fetch then takes: with a host
    # lane far slower, every miss is fetched, and the time is the fetch-only replay's
    rng = np.random.default_rng(8)
    trace = make_trace(random_routes(rng, tokens=30, layers=2, experts=8, top_k=2), num_experts=8, top_k=2)
    knobs = dict(capacity=4, hardware=hw(copy_engines=4, bandwidth_gbps=4.0), lanes=4, stripes=3)
    fetch = moesim.replay(trace, **knobs)
    cost = moesim.replay(trace, action="cost", host_flops="1G", host_bandwidth="1GB/s", **knobs)
    assert cost["host_computed"] == 0 and cost["total_s"] == fetch["total_s"]


@pytest.mark.parametrize("lanes,stripes", [(1, 1), (4, 1), (4, 3), (2, 5)])
def test_a_what_if_arrival_is_the_transfers_arrival_and_changes_nothing(lanes, stripes):
    from moesim.engine import Link
    from moesim.engine.timed import _arrival, _transfer
    rng = np.random.default_rng(lanes * 10 + stripes)
    link = Link(1e-3, 2e-5, 3, lanes, 1.0, stripes)
    for _ in range(50):
        eng = rng.uniform(0, 5e-3, 3)
        pipe = np.r_[rng.uniform(0, 5e-3, lanes), np.zeros(lanes)]
        t, seconds = rng.uniform(0, 5e-3), rng.uniform(1e-4, 2e-3)
        before = (eng.copy(), pipe[:lanes].copy())
        want = _arrival(t, eng, pipe, link.latency_s, seconds, link.stripes)
        assert np.array_equal(eng, before[0]) and np.array_equal(pipe[:lanes], before[1])
        assert _transfer(t, eng, pipe, link.latency_s, seconds, link.stripes) == want
