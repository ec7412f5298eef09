"""Count mode is a plain cache simulator: it must agree exactly with independent references."""
import numpy as np
import pytest
from conftest import TRACES
from helpers import make_trace, random_routes
from reference import replay_reference, stack_distance_lru_hits

import moesim
from moesim.replay import partitions
from moesim.trace import access_stream, read_trace

POLICIES = ["lru", "fifo", "lfu", "lfuda", "belady"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_count_mode_matches_bruteforce_reference(policy, scope):
    rng = np.random.default_rng(7)
    trace = make_trace(random_routes(rng, tokens=120, layers=3, experts=8, top_k=2), num_experts=8, top_k=2)
    stream = access_stream(trace)
    for capacity in (3, 6, 9, 15):
        part_of, part_cap = partitions(stream, scope, capacity)
        want = sum(replay_reference(stream.item.tolist(), part_of.tolist(), part_cap.tolist(), policy))
        got = moesim.replay(trace, policy=policy, capacity=capacity, scope=scope, mode="count",
                            accounting="access")
        assert got["hits"] == want, (policy, scope, capacity)
        assert got["hits"] + got["misses"] == len(stream)


def test_lru_matches_a_recency_stack():
    rng = np.random.default_rng(3)
    trace = make_trace(random_routes(rng, tokens=200, layers=4, experts=16, top_k=2), num_experts=16, top_k=2)
    items = access_stream(trace).item.tolist()
    for capacity in (4, 9, 20, 40):
        assert moesim.replay(trace, capacity=capacity, mode="count", accounting="access")["hits"] == stack_distance_lru_hits(items, capacity)


def test_hand_computed_lru_and_belady():
    # one layer, top-1, two slots. stream: 0 1 2 0 1 2
    trace = make_trace([[[e]] for e in (0, 1, 2, 0, 1, 2)], num_experts=3, top_k=1)
    # LRU always evicts the one needed next: no hits. Belady keeps 0 then 1: hits at 0 and 1... (0,1 | 2 evicts 1
    # (used later than 0) | 0 hit | 1 miss evicts 0 (never used again) | 2 hit) = 2 hits.
    assert moesim.replay(trace, policy="lru", capacity=2, mode="count", accounting="access")["hits"] == 0
    assert moesim.replay(trace, policy="belady", capacity=2, mode="count", accounting="access")["hits"] == 2
    assert moesim.replay(trace, policy="fifo", capacity=2, mode="count", accounting="access")["hits"] == 0


def test_lfu_ties_go_to_the_least_recently_counted():
    # slots 2: 0 0 1 2 -> inserting 2 evicts 1 (count 1) not 0 (count 2); then 0 hits, 1 misses.
    trace = make_trace([[[e]] for e in (0, 0, 1, 2, 0, 1)], num_experts=3, top_k=1)
    assert moesim.replay(trace, policy="lfu", capacity=2, mode="count", per_layer=True)["hits"] == 2
    # equal counts: 0 1 2 -> 0 (counted longest ago) goes
    trace = make_trace([[[e]] for e in (0, 1, 2, 1, 0)], num_experts=3, top_k=1)
    assert moesim.replay(trace, policy="lfu", capacity=2, mode="count", accounting="access")["hits"] == 1


@pytest.mark.parametrize("name,checks", [
    # SOURCE.md of mixtral-8x7b-speculative-moe: (policy, capacity, scope, hit rate %)
    ("mixtral-8x7b-speculative-decode.parquet", [
        ("lru", "2/layer", "per-layer", 31.8), ("lru", "3/layer", "per-layer", 45.9),
        ("lru", "4/layer", "per-layer", 59.1), ("lru", "6/layer", "per-layer", 80.8),
        ("lru", 26, "global", 0.0), ("lru", 64, "global", 31.8), ("lru", 128, "global", 55.5),
        ("belady", 26, "global", 33.7), ("belady", 64, "global", 60.3), ("belady", 128, "global", 81.8)]),
    # SOURCE.md of switch-base-8-stratamoe (its 52.3 % for 4/layer is 674/1290 = 52.248 %, checked by brute force)
    ("switch-base-8-stratamoe.parquet", [
        ("lru", "1/layer", "per-layer", 18.1), ("lru", "2/layer", "per-layer", 28.0),
        ("lru", "4/layer", "per-layer", 52.2), ("lru", "6/layer", "per-layer", 76.5),
        ("lru", 12, "global", 27.4), ("lru", 24, "global", 49.1),
        ("belady", 12, "global", 54.1), ("belady", 24, "global", 76.4)]),
])
def test_published_hit_rates_of_the_shipped_traces(name, checks):
    trace = read_trace(TRACES / name)
    for policy, capacity, scope, percent in checks:
        row = moesim.replay(trace, policy=policy, capacity=capacity, scope=scope, mode="count",
                            accounting="access")
        assert round(row["hit_rate"] * 100, 1) == percent, (policy, capacity, scope)


# ---- libCacheSim on the same access stream ---------------------------------------------------

libcachesim = pytest.importorskip("libcachesim")
ORACLE_GENERAL = np.dtype([("clock", "<u4"), ("obj", "<u8"), ("size", "<u4"), ("next", "<i8")])


def write_oracle_general(items: np.ndarray, path) -> None:
    """libCacheSim's oracleGeneral binary trace: one record per access, with the next access's position."""
    rec = np.zeros(len(items), ORACLE_GENERAL)
    rec["clock"] = np.arange(len(items)) // 1000
    rec["obj"] = items.astype(np.uint64) + 1
    rec["size"] = 1
    order = np.argsort(items, kind="stable")
    nxt = np.full(len(items), -1, np.int64)
    same = items[order][1:] == items[order][:-1]
    nxt[order[:-1][same]] = order[1:][same]
    rec["next"] = nxt
    rec.tofile(path)


def libcachesim_hits(path, policy: str, capacity: int, n: int) -> int:
    cls = {"lru": libcachesim.LRU, "fifo": libcachesim.FIFO, "lfu": libcachesim.LFU,
           "belady": libcachesim.Belady}[policy]
    reader = libcachesim.TraceReader(str(path), libcachesim.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, _ = cls(capacity).process_trace(reader)
    return int(round((1 - miss_ratio) * n))


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "belady"])
def test_count_mode_matches_libcachesim_on_the_shipped_sample(policy, tmp_path):
    trace = read_trace(TRACES / "dsv2lite-moebeyond-sample.parquet")
    stream = access_stream(trace)
    write_oracle_general(stream.item, tmp_path / "s.og")
    for capacity in (50, 166, 500):
        ours = moesim.replay(trace, policy=policy, capacity=capacity, mode="count", accounting="access", stream=stream)["hits"]
        assert ours == libcachesim_hits(tmp_path / "s.og", policy, capacity, len(stream)), capacity


@pytest.mark.slow
def test_count_mode_matches_libcachesim_and_source_on_the_full_real_trace(real_traces, tmp_path):
    from moesim.trace.importers import convert
    trace = convert(sorted((real_traces / "moe-beyond-dsv2lite" / "train").glob("*.csv")), format="moe-beyond")
    stream = access_stream(trace)
    assert len(stream) == 14_689_740
    write_oracle_general(stream.item, tmp_path / "full.og")
    lru = moesim.replay(trace, policy="lru", capacity="10%", mode="count", accounting="access", stream=stream)
    belady = moesim.replay(trace, policy="belady", capacity="10%", mode="count", accounting="access", stream=stream)
    # SOURCE.md: global cache of 166 experts, cold start: LRU 3,830,354 hits (26.08 %), Belady 48.80 %
    assert lru["capacity_experts"] == 166
    assert lru["hits"] == 3_830_354
    assert round(belady["hit_rate"] * 100, 2) == 48.80
    for policy, row in (("lru", lru), ("belady", belady)):
        assert row["hits"] == libcachesim_hits(tmp_path / "full.og", policy, 166, len(stream))
