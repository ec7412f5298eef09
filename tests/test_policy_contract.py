"""The contract every registered policy signs: a new file in policies/ is tested here the moment it exists.

Nothing in this file names a policy: the list comes from the registry. A policy whose module says
`LIBCACHESIM = "ClassName"` is also checked hit for hit against that libCacheSim class.
"""
import numpy as np
import pytest
from helpers import make_trace, random_routes
from hypothesis import given, settings
from hypothesis import strategies as st

import moesim
from moesim import policies
from moesim.trace import access_stream

ALL = policies.names()
SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def traces(draw):
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 6))
    top_k = draw(st.integers(1, min(2, experts)))
    tokens = draw(st.integers(1, 20))
    routes = [[draw(st.lists(st.integers(0, experts - 1), min_size=top_k, max_size=top_k, unique=True))
               for _ in range(layers)] for _ in range(tokens)]
    return make_trace(routes, num_experts=experts, top_k=top_k)


def run(trace, policy, **kw):
    extra = {"train": trace} if policy == "static" else {}  # static learns its pins from a training trace
    return moesim.replay(trace, policy=policy, **extra, **kw)


@pytest.mark.parametrize("policy", ALL)
@SETTINGS
@given(trace=traces(), capacity=st.integers(0, 20), mode=st.sampled_from(["count", "timed"]),
       scope=st.sampled_from(["global", "per-layer"]))
def test_every_access_is_a_hit_or_a_miss(policy, trace, capacity, mode, scope):
    # one token per step: each segment's experts are distinct, so lookups are accesses
    row = run(trace, policy, capacity=capacity, mode=mode, scope=scope)
    assert row["hits"] + row["misses"] == row["accesses"]
    assert row["capacity_experts"] <= trace.meta.num_moe_layers * trace.meta.num_experts


# a policy that places experts before the replay (warm, or its own pins) starts from another state than
# Belady's cold cache
COLD = [name for name in ALL if not any(hasattr(policies.get(name), f) for f in ("warm", "pins"))]


@pytest.mark.parametrize("policy", COLD)
@SETTINGS
@given(trace=traces(), capacity=st.integers(0, 20))
def test_no_policy_beats_belady(policy, trace, capacity):
    # Belady is the optimum of a cold cache that holds `capacity` experts: a policy that beats it holds more
    best = run(trace, "belady", capacity=capacity, mode="count")["hits"]
    assert run(trace, policy, capacity=capacity, mode="count")["hits"] <= best


@pytest.mark.parametrize("policy", ALL)
@SETTINGS
@given(trace=traces(), capacity=st.integers(0, 20), scope=st.sampled_from(["global", "per-layer"]))
def test_count_and_timed_mode_count_the_same_hits(policy, trace, capacity, scope):
    # both account by (step, layer) segment; with no prefetch nothing else is in flight, so the same
    # victims are chosen and only time differs
    count = run(trace, policy, capacity=capacity, scope=scope, mode="count")
    timed = run(trace, policy, capacity=capacity, scope=scope, mode="timed")
    assert (count["hits"], count["misses"]) == (timed["hits"], timed["misses"])


@pytest.mark.parametrize("policy", ALL)
@SETTINGS
@given(trace=traces(), mode=st.sampled_from(["count", "timed"]))
def test_a_cache_that_holds_everything_misses_each_expert_once(policy, trace, mode):
    row = run(trace, policy, capacity="100%", mode=mode)
    distinct = len(np.unique(access_stream(trace).item))
    if policy in COLD:
        assert row["misses"] == distinct
    else:  # experts placed before the start never miss
        assert row["misses"] <= distinct


@pytest.mark.parametrize("policy", ALL)
@SETTINGS
@given(trace=traces(), mode=st.sampled_from(["count", "timed"]))
def test_a_cache_of_nothing_hits_nothing(policy, trace, mode):
    assert run(trace, policy, capacity=0, mode=mode)["hits"] == 0


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("mode", ["count", "timed"])
def test_pinned_experts_never_miss_after_the_start(policy, mode):
    rng = np.random.default_rng(11)
    trace = make_trace(random_routes(rng, tokens=60, layers=3, experts=6, top_k=2), num_experts=6, top_k=2)
    pins = [(0, e) for e in range(6)]  # all of layer 0: every access to it must hit
    row = run(trace, policy, capacity=12, mode=mode, pin=pins, per_layer=True)
    assert row["misses_per_layer"][0] == 0
    assert row["pinned_experts"] == 6


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("mode", ["count", "timed"])
def test_the_same_seed_gives_the_same_row(policy, mode):
    rng = np.random.default_rng(5)
    trace = make_trace(random_routes(rng, tokens=80, layers=3, experts=8, top_k=2), num_experts=8, top_k=2)
    a = run(trace, policy, capacity=7, mode=mode, seed=3)
    b = run(trace, policy, capacity=7, mode=mode, seed=3)
    assert a == b


def _libcachesim_hits(items: np.ndarray, cls_name: str, capacity: int, tmp_path) -> int:
    libcachesim = pytest.importorskip("libcachesim")
    from test_replay_count import write_oracle_general
    path = tmp_path / "stream.og"
    write_oracle_general(items, path)
    reader = libcachesim.TraceReader(str(path), libcachesim.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, _ = getattr(libcachesim, cls_name)(capacity).process_trace(reader)
    return int(round((1.0 - miss_ratio) * len(items)))


WITH_REFERENCE = [name for name in ALL if getattr(policies.get(name), "LIBCACHESIM", None)]


@pytest.mark.parametrize("policy", WITH_REFERENCE)
def test_count_mode_matches_libcachesim_hit_for_hit(policy, tmp_path):
    trace = moesim.read_trace("traces/mixtral-8x7b-speculative-decode.parquet")
    stream = access_stream(trace)
    cls_name = policies.get(policy).LIBCACHESIM
    for capacity in (16, 48, 100, 200):
        ours = moesim.replay(trace, policy=policy, capacity=capacity, mode="count", accounting="access",
                             stream=stream)["hits"]
        assert ours == _libcachesim_hits(stream.item, cls_name, capacity, tmp_path), capacity


def test_a_victim_that_gives_up_is_an_error_naming_the_policy(tmp_path):
    # a draft CLOCK whose victim search stops after one pass reported 5 hits where Belady's optimum is 2;
    # the engine now refuses a victim() that returns no expert while one could be evicted. The broken
    # policy lives in tests/, so it runs in a process with a numba cache of its own: a loop compiled for its
    # state type must not land in the shared cache, whose index every later process unpickles.
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = """
import numpy as np
import broken_policy
from moesim.engine import ERR_VICTIM, ERROR, Cache, PrefetchPlan, Stream, count_replay
items = np.array([0, 1, 2, 0, 1, 2], np.int32)
cache = Cache(np.zeros(3, np.int32), np.array([2], np.int64), np.zeros(3, np.uint8), np.zeros(0, np.int32))
plan = PrefetchPlan(np.zeros(2, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), -1)
stream = Stream(items, np.array([0, 6], np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64))
state = broken_policy.init(3, cache.part_of, cache.part_capacity, None, {})
c = count_replay(stream, cache, plan, state, 1, accounting="access")[2]
print(c[ERROR] == ERR_VICTIM)
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"
