"""Hit-rate curves: one-pass curves equal count-mode replays hit for hit; sampled ones stay close."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TRACES
from helpers import make_trace, random_routes
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import replay_reference

import moesim
from moesim.cli import main
from moesim.curve import hit_rate_curve, parse_capacities, request_sample
from moesim.trace import access_stream, read_trace

SAMPLE = TRACES / "dsv2lite-moebeyond-sample.parquet"
MIXTRAL = TRACES / "mixtral-8x7b-speculative-decode.parquet"
ONE_PASS = ["lru", "fifo", "belady"]


def replayed(trace, stream, policy, scope, capacities):
    return [moesim.replay(trace, policy=policy, capacity=c, scope=scope, mode="count", accounting="access", stream=stream)["hits"]
            for c in capacities]


@pytest.mark.parametrize("policy", ONE_PASS)
@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_one_pass_curves_equal_count_mode_replays_at_every_capacity(policy, scope):
    # Mixtral: 32 layers x 8 experts, decode with batching; every capacity from 0 to all 256 experts
    trace = read_trace(MIXTRAL)
    stream = access_stream(trace)
    caps = list(range(0, 257)) if scope == "global" else [f"{c}/layer" for c in range(0, 9)]
    curve = hit_rate_curve(trace, policy, caps, scope=scope, stream=stream)
    assert (curve["method"] == "exact").all()
    assert curve["hits"].tolist() == replayed(trace, stream, policy, scope, caps)
    assert (curve["hits"] + curve["misses"] == len(stream)).all()


@pytest.mark.parametrize("policy", ONE_PASS)
@pytest.mark.parametrize("scope", ["global", "per-layer"])
def test_one_pass_curves_equal_replays_on_the_deepseek_sample(policy, scope):
    trace = read_trace(SAMPLE)
    stream = access_stream(trace)
    curve = hit_rate_curve(trace, policy, "1%..100%", points=12, scope=scope, stream=stream)
    rows = [moesim.replay(trace, policy=policy, capacity=c, scope=scope, mode="count", accounting="access", stream=stream)
            for c in curve["capacity"]]
    assert curve["hits"].tolist() == [r["hits"] for r in rows]
    assert curve["capacity_experts"].tolist() == [r["capacity_experts"] for r in rows]
    assert curve["hit_rate"].tolist() == pytest.approx([r["hit_rate"] for r in rows], abs=0, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 3), experts=st.integers(2, 6),
       tokens=st.integers(1, 25), per_layer=st.booleans())
def test_one_pass_curves_equal_a_brute_force_simulator(seed, layers, experts, tokens, per_layer):
    top_k = min(2, experts)
    trace = make_trace(random_routes(np.random.default_rng(seed), tokens, layers, experts, top_k),
                       num_experts=experts, top_k=top_k)
    stream = access_stream(trace)
    items = stream.item.tolist()
    part_of = [x // experts for x in range(layers * experts)] if per_layer else [0] * (layers * experts)
    scope = "per-layer" if per_layer else "global"
    sizes = range(0, experts + 1) if per_layer else range(0, layers * experts + 1)
    caps = [f"{c}/layer" for c in sizes] if per_layer else list(sizes)
    for policy in ONE_PASS:
        curve = hit_rate_curve(trace, policy, caps, scope=scope, stream=stream)
        parts = layers if per_layer else 1
        want = [sum(replay_reference(items, part_of, [c] * parts, policy)) for c in sizes]
        assert curve["hits"].tolist() == want, policy


def test_other_policies_replay_each_capacity_when_exact():
    trace = read_trace(MIXTRAL)
    stream = access_stream(trace)
    curve = hit_rate_curve(trace, "lfu", [8, 64, "50%"], stream=stream)
    assert (curve["method"] == "exact").all()  # a small trace: auto replays
    assert curve["hits"].tolist() == replayed(trace, stream, "lfu", "global", [8, 64, "50%"])


@pytest.mark.parametrize("policy", ["lru", "belady", "lfu"])
def test_a_sampled_curve_stays_close_to_the_exact_one(policy):
    # the shipped DeepSeek sample (150 prompts): a 25 % sample of its prompts is within 4 points of the
    # exact curve at every capacity (measured with seed 0: LRU 1.8, Belady 1.0, LFU 3.1 points; a
    # sample that lost its structure, e.g. sampled experts, is off by 10 or more)
    trace = read_trace(SAMPLE)
    stream = access_stream(trace)
    caps = "5%..100%"
    exact = hit_rate_curve(trace, policy, caps, points=20, method="exact", stream=stream)
    sampled = hit_rate_curve(trace, policy, caps, points=20, method="sampled", sample_rate=0.25, stream=stream)
    assert (sampled["method"] == "sampled").all() and (sampled["sample_rate"] == 0.25).all()
    assert np.abs(sampled["hit_rate"] - exact["hit_rate"]).max() < 0.04
    assert (sampled["hits"] == np.round(sampled["hit_rate"] * len(stream))).all()


def test_a_request_sample_keeps_whole_requests_and_about_the_rate():
    stream = access_stream(read_trace(SAMPLE))
    sub = request_sample(stream, 0.2, seed=3)
    k = stream.top_k
    kept = set(np.unique(sub.row_request).tolist())
    assert 0.15 < len(kept) / len(np.unique(stream.row_request)) < 0.25
    rows = np.isin(stream.row_request, list(kept))
    assert np.array_equal(sub.item, stream.item.reshape(-1, k)[rows].reshape(-1))  # whole requests, in order
    assert sub.seg_offsets[-1] == len(sub.item) and (sub.seg_tokens > 0).all()
    assert np.array_equal(request_sample(stream, 0.2, seed=3).item, sub.item)  # the seed fixes it
    assert not np.array_equal(request_sample(stream, 0.2, seed=4).item, sub.item)


def test_capacities_are_read_as_lists_and_ranges():
    assert parse_capacities("1%..100%") == [f"{i}%" for i in range(1, 101)]
    assert parse_capacities("10%..50%", points=5) == ["10%", "20%", "30%", "40%", "50%"]
    assert parse_capacities("16..1664", points=3) == [16, 840, 1664]
    assert parse_capacities("10%, 166 ,4/layer") == ["10%", "166", "4/layer"]
    assert parse_capacities([8, "25%"]) == [8, "25%"]
    for bad in ("", "50%..10%", "a..b", "1%..2%x"):
        with pytest.raises(ValueError, match="capacities"):
            parse_capacities(bad)


def test_bad_options_are_one_clear_error():
    trace = read_trace(MIXTRAL)
    with pytest.raises(ValueError, match="unknown method"):
        hit_rate_curve(trace, "lru", "10%", method="fast")
    with pytest.raises(ValueError, match="sample_rate"):
        hit_rate_curve(trace, "lru", "10%", method="sampled", sample_rate=0)
    with pytest.raises(ValueError, match="policy"):
        hit_rate_curve(trace, "lruu", "10%")


def test_the_cli_prints_and_writes_what_python_returns(tmp_path):
    out = tmp_path / "curve.csv"
    args = ["curve", str(MIXTRAL), "--policy", "lru,belady", "--capacities", "10%..40%", "--points", "4"]
    res = CliRunner().invoke(main, args + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    want = pd.concat([hit_rate_curve(MIXTRAL, p, "10%..40%", points=4) for p in ("lru", "belady")],
                     ignore_index=True)
    assert "belady" in res.output and f"{100 * want['hit_rate'].iloc[5]:.2f}%" in res.output
    assert pd.read_csv(out)["hits"].tolist() == want["hits"].tolist()
    res = CliRunner().invoke(main, args + ["--json"])
    rows = json.loads(res.output)
    assert [r["hits"] for r in rows] == want["hits"].tolist() and rows[0]["sample_rate"] is None
    res = CliRunner().invoke(main, ["curve", str(MIXTRAL), "--capacities", "9%..1%"])
    assert res.exit_code != 0 and "capacities" in res.output and "Traceback" not in res.output


def test_a_stack_window_past_64_words_gives_the_same_curve():
    # 40 layers x 64 experts = 2,560 experts: the stack's window is 8,192 times, 128 words, so marks
    # move by the long-row loop (and inspect, which shares it, agrees with the curve)
    from moesim.trace.stats import inspect_trace
    from moesim.trace.synth import parametric, sample
    trace = sample(parametric(layers=40, experts=64, top_k=4, zipf_s=1.2, reuse_p=0.4), tokens=400, seed=2)
    stream = access_stream(trace)
    caps = [1, 100, 300, 600, 1200, 2000, 2560]
    curve = hit_rate_curve(trace, "lru", caps, stream=stream)
    assert curve["hits"].tolist() == replayed(trace, stream, "lru", "global", caps)
    by_capacity = inspect_trace(trace)["reuse_distance"]["all"]["lru_hits_by_capacity"]
    assert curve["hits"].tolist() == [int(by_capacity[c]) for c in caps]
