"""The friendly edges of replay: capacities, pins, the static policy, seeds, the CLI, errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from numba.core import event as ev
from conftest import TRACES
from helpers import make_trace, random_routes
from reference import replay_reference, segment_reference

import moesim
from moesim.cli import main
from moesim.trace import access_stream, read_trace

SAMPLE = TRACES / "dsv2lite-moebeyond-sample.parquet"


def small(seed=1, tokens=80):
    rng = np.random.default_rng(seed)
    return make_trace(random_routes(rng, tokens=tokens, layers=3, experts=8, top_k=2), num_experts=8, top_k=2)


def test_capacity_as_fraction_count_bytes_and_per_layer():
    trace = small()  # 3 layers x 8 experts = 24, 1 MB each
    for capacity, experts in (("25%", 6), (6, 6), ("6", 6), ("6MB", 6), ("2/layer", 6), (0.25, 6)):
        assert moesim.replay(trace, capacity=capacity, mode="count")["capacity_experts"] == experts, capacity
    assert moesim.replay(trace, capacity="2/layer", scope="per-layer", mode="count")["capacity_experts"] == 6


def test_pinned_experts_always_hit_and_sit_outside_the_policy():
    trace = small()
    stream = access_stream(trace)
    pin = [(0, 1), (2, 5)]
    row = moesim.replay(trace, capacity=6, mode="count", accounting="access", pin=pin, stream=stream)
    pinned_items = {0 * 8 + 1, 2 * 8 + 5}
    rest = [x for x in stream.item.tolist() if x not in pinned_items]
    hits_rest = sum(replay_reference(rest, [0] * 24, [6 - len(pin)], "lru"))
    assert row["hits"] == hits_rest + sum(x in pinned_items for x in stream.item.tolist())
    assert row["pinned_experts"] == 2 and row["capacity_experts"] == 6


def test_static_pins_the_training_traces_favourites_and_streams_the_rest():
    train, test = small(seed=2, tokens=200), small(seed=3)
    items = access_stream(test).item.tolist()
    counts = np.bincount(access_stream(train).item, minlength=24)
    capacity, staging = 8, 2  # top_k staging slots
    favourites = set(sorted(range(24), key=lambda x: (-counts[x], x))[: capacity - staging])
    rest = [x for x in items if x not in favourites]
    want = sum(x in favourites for x in items) + sum(replay_reference(rest, [0] * 24, [staging], "lru"))
    got = moesim.replay(test, policy="static", train=train, capacity=capacity, mode="count", accounting="access")
    assert got["hits"] == want
    # pinned experts are loaded before serving: in timed mode they cost no transfer, and the misses are
    # count mode's by segment
    segment = moesim.replay(test, policy="static", train=train, capacity=capacity, mode="count")
    timed = moesim.replay(test, policy="static", train=train, capacity=capacity)
    assert timed["bytes_demand"] == segment["misses"] * 1e6


def test_static_with_several_tokens_a_step_streams_misses_once_its_staging_slots_are_in_use():
    # a batch of 4 routes up to 8 experts to a layer: its staging slots are all in use and a miss must stream
    # through. The favourites are pins held outside the policy, so the engine does not take the policy's
    # empty answer for a broken contract (it did when they were only warm residents)
    rng = np.random.default_rng(3)
    train = small(seed=2, tokens=200)
    test = make_trace(random_routes(rng, tokens=80, layers=3, experts=8, top_k=2), num_experts=8, top_k=2,
                      steps=np.arange(80) // 4, requests=np.arange(80))
    stream = access_stream(test, prefill_chunk=0)
    counts = np.bincount(access_stream(train).item, minlength=24)
    capacity, staging = 8, 2
    favourites = set(sorted(range(24), key=lambda x: (-counts[x], x))[: capacity - staging])
    items, offsets, kept = stream.item.tolist(), stream.seg_offsets.tolist(), [0]
    rest = []
    want = 0
    for a, b in zip(offsets[:-1], offsets[1:]):
        want += len(favourites & set(items[a:b]))
        rest += [x for x in items[a:b] if x not in favourites]
        kept.append(len(rest))
    want += segment_reference(rest, kept, [0] * 24, [staging], "lru")
    got = moesim.replay(test, policy="static", train=train, capacity=capacity, mode="count", stream=stream)
    timed = moesim.replay(test, policy="static", train=train, capacity=capacity, stream=stream)
    assert got["hits"] == timed["hits"] == want
    assert got["pinned_experts"] == 0 and got["capacity_experts"] == capacity  # --pin's pins only


def test_random_is_reproducible_by_seed():
    trace = small(tokens=300)
    a = moesim.replay(trace, policy="random", capacity=6, mode="count", seed=1)["hits"]
    assert a == moesim.replay(trace, policy="random", capacity=6, mode="count", seed=1)["hits"]
    others = {moesim.replay(trace, policy="random", capacity=6, mode="count", seed=s)["hits"] for s in range(2, 8)}
    assert len(others | {a}) > 1


def test_per_layer_results_add_up():
    row = moesim.replay(small(), capacity=8, per_layer=True)
    assert sum(row["hits_per_layer"]) == row["hits"]
    assert sum(row["misses_per_layer"]) == row["misses"]
    assert sum(row["stall_per_layer_s"]) == pytest.approx(row["stall_s"])


def test_hardware_overrides_are_used_and_reported():
    trace = small()
    base = moesim.replay(trace, capacity=6, hardware="a100-pcie4")
    slow = moesim.replay(trace, capacity=6, hardware="a100-pcie4", bandwidth="12.5GB/s", latency="20us")
    assert (slow["bandwidth_gbps"], slow["latency_us"]) == (12.5, 20.0)
    assert slow["stall_s"] > base["stall_s"]
    assert moesim.replay(trace, capacity=6, bytes_per_expert="2MB")["bytes_demand"] == 2 * base["bytes_demand"]


def test_cli_prints_the_same_row_as_python():
    result = CliRunner().invoke(main, ["replay", str(SAMPLE), "--policy", "lfu", "--capacity", "5%",
                                       "--mode", "count", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    want = moesim.replay(read_trace(SAMPLE), policy="lfu", capacity="5%", mode="count")
    assert {k: row[k] for k in ("hits", "misses", "capacity_experts")} == \
        {k: want[k] for k in ("hits", "misses", "capacity_experts")}
    table = CliRunner().invoke(main, ["replay", str(SAMPLE), "--capacity", "5%", "--per-layer"])
    assert table.exit_code == 0 and "time per output token" in table.output and "layer" in table.output


@pytest.mark.parametrize("args,message", [
    (["--policy", "lruu"], "unknown policy 'lruu'"),
    (["--capacity", "lots"], "cannot read capacity 'lots'"),
    (["--policy", "static"], "pass train=TRACE"),
    (["--hardware", "tpu"], "unknown hardware preset 'tpu'"),
    (["--bandwidth", "fast"], "cannot read 'fast' as a bandwidth"),
    (["--pin", "3-17"], "write LAYER:EXPERT"),
    (["--pin", "0:17"], "layer 0 is not a MoE layer"),
])
def test_bad_input_is_one_clear_line(args, message):
    result = CliRunner().invoke(main, ["replay", str(SAMPLE), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_trace_without_expert_sizes_needs_them_for_timed_mode():
    trace = make_trace([[[0]], [[1]]], num_experts=2, top_k=1, bytes_per_expert=0)
    with pytest.raises(ValueError, match="bytes_per_expert"):
        moesim.replay(trace, capacity=1)
    assert moesim.replay(trace, capacity=1, bytes_per_expert="1MB")["misses"] == 2


def test_a_trace_with_gaps_in_its_request_ids_replays_in_timed_mode():
    trace = read_trace(TRACES / "switch-base-8-stratamoe.parquet").select_requests([0, 2])
    whole = moesim.replay(trace, capacity=12, prefill_chunk=0)
    # a whole prompt is one step: each (step, layer)'s distinct experts are one lookup each
    stream = access_stream(trace, prefill_chunk=0)
    segment = np.repeat(np.arange(stream.num_segments), np.diff(stream.seg_offsets))
    lookups = len(np.unique(segment * stream.num_items + stream.item))
    assert whole["ttft_s"] > 0 and whole["hits"] + whole["misses"] == lookups


def test_policy_names_are_read_as_the_registry_spells_them():
    trace = small()
    assert moesim.replay(trace, policy="LRU", capacity=6, mode="count")["policy"] == "lru"
    assert moesim.replay(trace, policy="Static", train=trace, capacity=6, mode="count")["policy"] == "static"


def test_a_float_capacity_is_a_fraction_never_a_count():
    trace = small()  # 24 experts
    assert moesim.replay(trace, capacity=1.0, mode="count")["capacity_experts"] == 24
    with pytest.raises(ValueError, match="a float .* is a fraction of all experts"):
        moesim.replay(trace, capacity=6.0, mode="count")


def test_the_expert_size_override_prices_the_dense_layers_too():
    # 4 decoder layers, 3 of them MoE: the dense layer's FFN, charged on each step's first MoE segment,
    # is one expert's worth of weights -- the overridden size, not the trace's (here unknown, 0)
    from moesim.hardware import get_hardware
    from moesim.cost import dense_seconds
    trace = make_trace(random_routes(np.random.default_rng(0), tokens=5, layers=3, experts=8, top_k=2),
                       num_experts=8, top_k=2, bytes_per_expert=0, num_layers=4)
    stream, hw = access_stream(trace), get_hardware("a100-pcie4")
    one, eight = (dense_seconds(stream, trace.meta, hw, b) for b in (1e6, 8e6))
    first = stream.seg_layer == 0
    assert (eight[first] - one[first]) == pytest.approx(np.full(first.sum(), 7e6 / hw.hbm))
    assert (eight[~first] == one[~first]).all()


def test_training_data_from_another_model_is_refused_by_name():
    other = read_trace(TRACES / "switch-base-8-stratamoe.parquet")
    with pytest.raises(ValueError, match="switch-base-8-stratamoe.parquet: this training trace has 6 MoE layers x 8"):
        moesim.replay(small(), policy="static", train=other, capacity=6, mode="count")
    with pytest.raises(ValueError, match="use a trace of the same model"):
        moesim.replay(small(), predictor="frequency", train=other, capacity=6, mode="count")


def test_the_gpu_flop_rate_is_read_with_or_without_units():
    trace = small()
    for given in (312, "312", "312T", "312 TFLOPS", "3.12e14"):
        assert moesim.replay(trace, capacity=6, gpu_tflops=given)["gpu_tflops"] == pytest.approx(312.0), given
    result = CliRunner().invoke(main, ["replay", str(SAMPLE), "--mode", "count", "--gpu-flops", "3.12e14", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["gpu_tflops"] == pytest.approx(312.0)
    bad = CliRunner().invoke(main, ["replay", str(SAMPLE), "--gpu-flops", "lots"])
    assert bad.exit_code != 0 and "cannot read 'lots' as a FLOP rate" in bad.output


@pytest.mark.parametrize("mode", ["count", "timed"])
def test_a_second_replay_compiles_nothing(mode):
    # the loops once took the sources digest as a literal argument, and numba retyped every call (0.05-0.2 s)
    moesim.replay(small(), policy="belady", capacity=6, mode=mode)
    with ev.install_recorder("numba:compile") as compiles:
        moesim.replay(small(seed=2), policy="belady", capacity=6, mode=mode)
    assert compiles.buffer == []


@pytest.mark.slow
def test_editing_a_policy_recompiles_the_cached_loop(tmp_path):
    # numba's disk cache checks only the cached function's own file; the engine's loop inlines the policy,
    # so without the sources digest in its cached name an edited policy would replay with its old code
    pkg = tmp_path / "moesim"
    shutil.copytree(Path(moesim.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(moesim.policies.__file__).parent, pkg / "policies",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import moesim, sys; assert moesim.__file__.startswith(sys.argv[1]); "
              f"print(moesim.replay({str(SAMPLE)!r}, policy='lru', capacity='10%', mode='count', accounting='access')['hits'])")

    def hits():
        out = subprocess.run([sys.executable, "-c", script, str(pkg)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": ""})
        return int(out.stdout)

    lru = hits()
    assert hits() == lru  # from the disk cache
    source = (pkg / "policies" / "lru.py").read_text()
    (pkg / "policies" / "lru.py").write_text(source.replace("return last_free(prev, tail, part, busy)",
                                                            "return head[part]  # most recently used"))
    assert hits() != lru


def test_a_bandwidth_is_read_with_or_without_units():
    # a bare rate is GB/s where a link's figure would be (25), bytes/s where GB/s would be absurd (2.5e10 GB/s)
    trace = small()
    for given in (25, "25", "25GB/s", "200Gbps", 2.5e10, "2.5e10", "25000000000B/s"):
        assert moesim.replay(trace, capacity=6, bandwidth=given)["bandwidth_gbps"] == pytest.approx(25.0), given
    assert moesim.replay(trace, capacity=6, bandwidth=999_999)["bandwidth_gbps"] == pytest.approx(999_999)
    result = CliRunner().invoke(main, ["replay", str(SAMPLE), "--mode", "count", "--bandwidth", "2.5e10", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["bandwidth_gbps"] == pytest.approx(25.0)
