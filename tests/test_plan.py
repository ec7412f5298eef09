"""moesim plan: searches checked by brute force, names checked by the runtimes' own matching rules, and every
plan replayed to the prediction it states."""
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import TRACES

import moesim
from moesim.cli import main
from moesim.placement import (allocate, expert_tensor_names, layer_miss_curves, llama_cpp_pattern, memory_budget,
                              n_cpu_moe_for, number_pattern, plan)
from moesim.config import ReplayConfig
from moesim.trace import access_stream

MIXTRAL = TRACES / "mixtral-8x7b-speculative-decode.parquet"
SWITCH = TRACES / "switch-base-8-stratamoe.parquet"
DSV2 = TRACES / "dsv2lite-moebeyond-sample.parquet"
GiB = 2**30


def gpu_memory_for(meta, layers: int) -> float:
    """GPU memory that holds the non-expert weights, the default 1 GiB reserve and `layers` layers of experts
    (plus half an expert, so rounding never decides)."""
    non_expert = meta.dense_bytes_per_layer * meta.num_layers + \
        (meta.num_layers - meta.num_moe_layers) * meta.bytes_per_expert
    return non_expert + GiB + (layers * meta.num_experts + 0.5) * meta.bytes_per_expert


# ---- names: each pattern matches exactly the tensors and modules it means

def test_number_pattern_matches_exactly_its_numbers():
    rng = np.random.default_rng(0)
    sets = [{0}, {7}, {1, 11, 21}, set(range(10)), set(range(10, 20)), {9, 10}, {0, 1, 2, 3, 100, 101, 119}]
    sets += [set(rng.choice(128, size=rng.integers(1, 40), replace=False).tolist()) for _ in range(50)]
    for numbers in sets:
        pattern = re.compile(rf"\.{number_pattern(numbers)}\.")
        assert {n for n in range(200) if pattern.search(f"blk.{n}.x")} == numbers, numbers


def model_tensor_names(num_layers, moe_layers, shared=False):
    """The tensor names of a GGUF of this shape, written out as llama.cpp names them, with near misses: a
    bias beside each expert weight (gpt-oss has them) and fused gate_up experts."""
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    for n in range(num_layers):
        names += [f"blk.{n}.{t}.weight" for t in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                   "ffn_norm")]
        if n in moe_layers:
            names += [f"blk.{n}.ffn_gate_inp.weight", f"blk.{n}.ffn_gate_exps.weight", f"blk.{n}.ffn_up_exps.weight",
                      f"blk.{n}.ffn_down_exps.weight", f"blk.{n}.ffn_gate_exps.bias", f"blk.{n}.ffn_down_exps.bias",
                      f"blk.{n}.ffn_gate_up_exps.weight", f"blk.{n}.exp_probs_b.bias"]
            if shared:
                names += [f"blk.{n}.ffn_{p}_shexp.weight" for p in ("gate", "up", "down")]
        else:
            names += [f"blk.{n}.ffn_{p}.weight" for p in ("gate", "up", "down")]
    return names


@pytest.mark.parametrize("num_layers,moe_layers,shared", [(32, range(32), False), (27, range(1, 27), True),
                                                           (61, range(3, 61), True)])
def test_ot_patterns_match_exactly_the_expert_weights_of_the_cpu_layers(num_layers, moe_layers, shared):
    names = model_tensor_names(num_layers, list(moe_layers), shared)
    rng = np.random.default_rng(num_layers)
    moe = list(moe_layers)
    cases = [[moe[0]], [moe[-1]], moe, [1, 11, 21], [l for l in moe if l % 10 == 1]]
    cases += [sorted(rng.choice(moe, size=rng.integers(1, len(moe)), replace=False).tolist()) for _ in range(30)]
    for cpu in cases:
        cpu = [l for l in cpu if l in moe]
        # llama.cpp: std::regex_search of each override pattern in the tensor's name
        found = {n for n in names if re.search(llama_cpp_pattern(cpu), n)}
        assert found == {f"blk.{n}.ffn_{p}_exps.weight" for n in cpu for p in ("gate", "up", "down")}, cpu
        assert found == set(expert_tensor_names(cpu))


def test_n_cpu_moe_is_offered_exactly_when_it_places_the_same_tensors():
    meta = moesim.read_trace(DSV2).meta  # layer 0 is dense: --n-cpu-moe counts it
    names = model_tensor_names(meta.num_layers, meta.moe_layers, shared=True)
    for k in range(len(meta.moe_layers) + 1):
        for gpu in {tuple(meta.moe_layers[len(meta.moe_layers) - k:]), tuple(meta.moe_layers[:k])}:
            n = n_cpu_moe_for(meta, gpu)
            cpu = [l for l in meta.moe_layers if l not in gpu]
            if n is None:
                assert gpu and gpu[0] == meta.moe_layers[0] and cpu  # a prefix is not what --n-cpu-moe keeps
                continue
            # what llama.cpp's --n-cpu-moe N pushes: one override per block i < N, `blk\.i\.ffn_(up|down|gate)_exps`
            by_flag = {t for t in names for i in range(n) if re.search(rf"blk\.{i}\.ffn_(up|down|gate)_exps\.weight", t)}
            assert by_flag == set(expert_tensor_names(cpu)), (gpu, n)


def test_optimize_rules_send_exactly_the_chosen_layers_experts_to_the_gpu():
    from moesim.placement import ktransformers_yaml
    for path, block in ((DSV2, "mlp"), (MIXTRAL, "block_sparse_moe")):
        meta = moesim.read_trace(path).meta
        modules = ["model", "model.embed_tokens", "lm_head", "model.norm"]
        for n in range(meta.num_layers):
            modules += [f"model.layers.{n}", f"model.layers.{n}.self_attn", f"model.layers.{n}.{block}",
                        f"model.layers.{n}.{block}.gate", f"model.layers.{n}.{block}.experts",
                        f"model.layers.{n}.{block}.experts.3.up_proj", f"model.layers.{n}.{block}.shared_experts"]
        for gpu in ([], [meta.moe_layers[0]], meta.moe_layers[5:17], meta.moe_layers):
            rules = yaml.safe_load(ktransformers_yaml(meta, gpu))
            for name in modules:
                # KTransformers: the first rule whose name pattern re.search finds in the module's name
                rule = next((r for r in rules if re.search(r["match"]["name"], name)), None)
                device = rule and rule["replace"]["kwargs"]["generate_device"]
                layer = int(name.split(".")[2]) if name.endswith(f"{block}.experts") else None
                want = None if layer is None else ("cuda" if layer in gpu else "cpu")
                assert device == want, (name, gpu)


# ---- searches agree with brute force

def test_layer_search_agrees_with_every_layer_subset_replayed():
    # switch-base-8, prompts as whole steps (prefill chunk 0): layers differ in how many distinct experts a step
    # needs, so which layers go to the GPU matters
    trace = moesim.read_trace(SWITCH)
    meta = trace.meta
    knobs = dict(prefill_chunk=0, host_flops="0.2T")
    stream = access_stream(trace, prefill_chunk=0)
    for k in (1, 2, 3, 4):
        gpu_memory = gpu_memory_for(meta, k)
        brute = {}
        for j in range(k + 1):
            for s in itertools.combinations(meta.moe_layers, j):
                pins = [(l, e) for l in s for e in range(meta.num_experts)]
                brute[s] = moesim.replay(trace, stream=stream, action="host", capacity=0, pin=pins or None,
                                         **knobs)["total_s"]
        best = min(brute.values())
        assert len({round(v, 12) for v in brute.values()}) > k + 1  # the choice is not a tie
        for limit in (0, 10**6):  # the per-layer search, and the exhaustive one
            p = plan(trace, target="llama.cpp", gpu_memory=gpu_memory, objective="total", exhaustive_limit=limit,
                     stream=stream, **knobs)
            assert len(p.chosen.gpu_layers) <= k
            assert p.chosen.row["total_s"] == pytest.approx(best, rel=1e-12), (k, limit, p.chosen.gpu_layers)


def brute_allocation(curves, budget):
    L, C = curves.shape
    return min(sum(curves[l, c] for l, c in enumerate(alloc))
               for alloc in itertools.product(range(C), repeat=L) if sum(alloc) <= budget)


def test_budget_allocation_is_the_fewest_misses_of_every_split():
    rng = np.random.default_rng(1)
    for _ in range(40):
        L, C = int(rng.integers(1, 4)), int(rng.integers(2, 6))
        # miss curves fall with capacity but not convexly (plateaus, then drops)
        steps = rng.integers(0, 50, size=(L, C - 1)) * (rng.random((L, C - 1)) < 0.6)
        curves = 200 - np.concatenate([np.zeros((L, 1), np.int64), np.cumsum(steps, axis=1)], axis=1)
        for budget in range(L * (C - 1) + 2):
            alloc = allocate(curves, budget)
            assert sum(alloc) <= budget and all(0 <= c < C for c in alloc)
            assert sum(curves[l, c] for l, c in enumerate(alloc)) == brute_allocation(curves, budget), (curves, budget)


@pytest.mark.parametrize("knobs", [{}, {"pin": ("0:1", "5:3")}, {"policy": "lfu"}, {"segment_order": "routing"}],
                         ids=["lru one pass", "lru one pass, pins", "lfu replayed", "routing order replayed"])
def test_miss_curves_are_each_layers_misses_replayed_at_that_capacity(knobs):
    trace = moesim.read_trace(MIXTRAL)
    stream = access_stream(trace)
    curves = layer_miss_curves(trace, stream, knobs, max_capacity=8)
    for c in (0, 1, 3, 8):
        row = moesim.replay(trace, stream=stream, mode="count", capacity=f"{c}/layer", scope="per-layer",
                            per_layer=True, **knobs)
        assert curves[:, c].tolist() == row["misses_per_layer"]
    if knobs:
        return
    # budgets per layer are caches apart: any split replays to the sum of its layers' curve points
    alloc = [int(x) for x in np.random.default_rng(2).integers(0, 9, size=32)]
    capacity = ",".join(f"{l}:{c}" for l, c in zip(trace.meta.moe_layers, alloc))
    row = moesim.replay(trace, stream=stream, mode="count", capacity=capacity, scope="per-layer", per_layer=True)
    assert row["misses_per_layer"] == [int(curves[l, c]) for l, c in enumerate(alloc)]


# ---- every plan replays to the prediction it states

@pytest.mark.parametrize("target", ["llama.cpp", "ktransformers", "dynamic"])
def test_a_plan_file_replays_to_the_stated_prediction(target, tmp_path):
    knobs = dict(hardware="rtx4090-pcie4", weight_bits=8, host_bandwidth="150GB/s")
    p = plan(MIXTRAL, target=target, **knobs)
    path = tmp_path / "plan.json"
    p.write(path)
    saved = json.loads(path.read_text())
    assert saved["plan"]["predicted"]["tpot_s"] == p.chosen.tpot_s
    options = p.replay_options()
    if saved["pins"]:
        options["pin_file"] = str(path)
    row = moesim.replay(MIXTRAL, **options)
    assert (row["tpot_s"], row["hit_rate"], row["total_s"]) == (p.chosen.tpot_s, p.chosen.hit_rate,
                                                                p.chosen.row["total_s"])
    assert row["pinned_experts"] == len(saved["pins"])
    assert p.chosen.cost <= p.baseline.cost


def test_the_memory_budget_is_the_gpu_less_what_else_it_holds():
    meta = moesim.read_trace(MIXTRAL).meta  # 32 layers, 41,984,000 non-expert bytes each, fp8 experts 176,160,768 B
    b = memory_budget(meta, ReplayConfig.make(hardware="rtx4090-pcie4"))
    assert b.non_expert == 32 * 41_984_000 and b.reserve == GiB and b.kv_cache == 0
    assert b.experts == (24 * GiB - 32 * 41_984_000 - GiB) // 176_160_768 == 132
    assert b.layers == 16
    # Q4_K_M-like 4.5 bits per weight, 8k tokens of 4 KiB KV for 2 sequences, 24 GiB
    b = memory_budget(meta, ReplayConfig.make(weight_bits=4.5, kv_bytes_per_token="4KiB"), gpu_memory="24GiB",
                      context=8192, batch=2)
    assert b.expert_bytes == 176_160_768 * 4.5 / 8
    assert b.non_expert == 32 * 41_984_000 * 4.5 / 8
    assert b.kv_cache == 8192 * 2 * 4096 * 32
    with pytest.raises(ValueError, match="--kv-bytes-per-token"):
        memory_budget(meta, ReplayConfig.make(), context=4096)
    with pytest.raises(ValueError, match="holds no experts"):
        memory_budget(meta, ReplayConfig.make(), gpu_memory="2GiB")


def test_the_memory_budget_reads_weight_bits_and_kv_size_from_a_hardware_file(tmp_path):
    # a calibrated hardware file carries them (moesim calibrate writes it): the plan must not ignore them
    meta = moesim.read_trace(MIXTRAL).meta
    hw = tmp_path / "q4.toml"
    preset = Path(moesim.__file__).parent / "hardware" / "presets" / "rtx4090-pcie4.toml"
    hw.write_text(preset.read_text().replace('name = "rtx4090-pcie4"', 'name = "q4"') +
                  "\nweight_bits = 4.5\nkv_bytes_per_token = 4096\n")
    b = memory_budget(meta, ReplayConfig.make(hardware=str(hw)), gpu_memory="24GiB", context=8192, batch=2)
    assert b.expert_bytes == 176_160_768 * 4.5 / 8
    assert b.kv_cache == 8192 * 2 * 4096 * 32


def test_a_plan_refuses_the_knobs_it_chooses():
    with pytest.raises(ValueError, match="--capacity"):
        plan(MIXTRAL, target="dynamic", capacity="10%")
    with pytest.raises(ValueError, match="unknown target"):
        plan(MIXTRAL, target="vllm")
    with pytest.raises(ValueError, match="--objective total"):
        plan(SWITCH, target="llama.cpp", prefill_chunk=0)


def test_cli_plan_prints_the_prediction_and_writes_a_pin_file(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", str(MIXTRAL), "--target", "llama.cpp", "--hardware",
                                       "rtx4090-pcie4", "--weight-bits", "4.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    p = plan(MIXTRAL, target="llama.cpp", hardware="rtx4090-pcie4", weight_bits=4.5)
    assert f"{p.chosen.tpot_s * 1e3:7.2f} ms" in result.output
    assert "--n-cpu-moe" in result.output and "-ot 'blk" in result.output
    assert f"--pin-file {out}" in result.output
    again = CliRunner().invoke(main, ["replay", str(MIXTRAL), "--hardware", "rtx4090-pcie4", "--weight-bits", "4.5",
                                      "--action", "host", "--capacity", "0", "--pin-file", str(out), "--json"])
    assert json.loads(again.output)["tpot_s"] == p.chosen.tpot_s
    bad = CliRunner().invoke(main, ["plan", str(MIXTRAL), "--target", "llama.cpp", "--gpu-memory", "1GiB"])
    assert bad.exit_code != 0 and "holds no experts" in bad.output and "Traceback" not in bad.output


# ---- the two knobs plans replay through

def test_a_pin_file_pins_what_the_same_pins_given_one_by_one_pin(tmp_path):
    path = tmp_path / "pins.json"
    path.write_text(json.dumps({"pins": [[3, 1], [5, 0], [5, 7]], "plan": {"anything": 1}}))
    by_file = moesim.replay(SWITCH, action="host", capacity=0, pin_file=str(path))
    by_pin = moesim.replay(SWITCH, action="host", capacity=0, pin=[(3, 1), (5, 0), (5, 7)])
    assert by_file == by_pin
    assert by_file["pinned_experts"] == 3


@pytest.mark.parametrize("content,message", [
    ("not json", "not a JSON pin file"),
    ('{"pin": []}', "no list of pins"),
    ('{"pins": [[1, 2, 3]]}', r"pins\[0\]"),
    ('{"pins": [[1, -2]]}', r"pins\[0\]"),
    ('{"pins": [], "capacity": 3}', "unknown key"),
    ('{"pins": [[2, 0]]}', "layer 2 is not a MoE layer"),
])
def test_a_bad_pin_file_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = CliRunner().invoke(main, ["replay", str(SWITCH), "--mode", "count", "--pin-file", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert str(path) in result.output and re.search(message, result.output), result.output
    missing = CliRunner().invoke(main, ["replay", str(SWITCH), "--pin-file", str(tmp_path / "none.json")])
    assert "no such pin file" in missing.output


def test_per_layer_budgets_are_checked_against_the_trace():
    with pytest.raises(ValueError, match="--scope per-layer"):
        moesim.replay(SWITCH, capacity="1:3,3:2", mode="count")
    with pytest.raises(ValueError, match="not MoE layers"):
        moesim.replay(SWITCH, capacity="1:3,2:2", scope="per-layer", mode="count")
    with pytest.raises(ValueError, match="more than the 8 experts"):
        moesim.replay(SWITCH, capacity="1:9", scope="per-layer", mode="count")
    with pytest.raises(ValueError, match="LAYER:EXPERTS"):
        moesim.replay(SWITCH, capacity="1:3,x", scope="per-layer", mode="count")
    with pytest.raises(ValueError, match="twice"):
        moesim.replay(SWITCH, capacity="1:3,1:2", scope="per-layer", mode="count")
    # the same budget everywhere is the equal split
    even = moesim.replay(SWITCH, capacity=",".join(f"{l}:2" for l in (1, 3, 5, 7, 9, 11)), scope="per-layer")
    assert even["total_s"] == moesim.replay(SWITCH, capacity="2/layer", scope="per-layer")["total_s"]


def test_a_grid_reads_a_pin_file_beside_its_spec(tmp_path):
    from moesim.grid import run_grid, read_results
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "a.json").write_text(json.dumps({"pins": [[1, 0], [3, 0]]}))
    (tmp_path / "plans" / "b.json").write_text(json.dumps({"pins": [[1, 0]]}))
    spec = {"trace": str(SWITCH), "action": "host", "capacity": 0, "pin_file": ["plans/a.json", "plans/b.json"]}
    report = run_grid(spec, tmp_path / "r.parquet", jobs=1, base=tmp_path, progress=False)
    assert report.failed == 0
    rows = read_results(tmp_path / "r.parquet")
    assert sorted(rows["pinned_experts"]) == [1, 2]
