"""Importers: hand-checkable fixtures, the real public traces when present, round trips, bad input."""
import os

import numpy as np
import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.trace import DECODE, PREFILL, TraceError, read_trace, write_trace
from moesim.trace.importers import (convert, detect_format, read_bigmoeonedge, read_bigmoeonedge_metrics,
                                    read_csv, read_fiddler_popularity, read_megatron, read_moe_beyond, read_npz,
                                    read_speculative_moe, read_stratamoe, read_vllm)
from moesim.trace.importers.models import DSV2_LITE

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIX = ROOT / "tests" / "fixtures" / "importers"


def rows(trace):
    """(request, phase, step, token_pos, layer, experts) per row, as plain tuples."""
    ids = trace.expert_ids()
    return [(int(r), int(ph), int(s), int(p), int(l), ids[i].tolist()) for i, (r, ph, s, p, l) in enumerate(zip(
        *(trace.column(c) for c in ("request_id", "phase", "step", "token_pos", "layer"))))]


def test_moe_beyond_fixture_orders_prompts_by_number_and_positions_by_layer():
    t = read_moe_beyond([FIX / "prompt_10_data.csv", FIX / "prompt_2_data.csv"])
    r = rows(t)
    assert t.num_rows == 3 * 26
    # prompt_2 (2 tokens) is request 0, step 0; prompt_10 (1 token) request 1, step 1
    assert r[0] == (0, PREFILL, 0, 0, 1, [31, 1, 2, 3, 4, 5])
    assert r[1] == (0, PREFILL, 0, 0, 2, [32, 1, 2, 3, 4, 5])
    assert r[26] == (0, PREFILL, 0, 1, 1, [13, 7, 8, 9, 10, 11])
    assert r[52] == (1, PREFILL, 1, 0, 1, [0, 1, 2, 3, 4, 38])
    m = t.meta
    assert (m.num_layers, m.moe_layers, m.num_experts, m.top_k, m.shared_experts) == (27, list(range(1, 27)), 64, 6, 2)
    assert m.bytes_per_expert == 3 * 2048 * 1408 * 2 and "decode" in m.lacks and "weights" in m.lacks
    assert "8-bit" in m.notes


def test_moe_beyond_predicted_layout_keeps_pred_h0():
    t = read_moe_beyond(FIX / "prompt_1_data_predicted.csv")
    assert t.predictions(0)[0].tolist() == [1, 2, 3, 4, 5, 7]
    assert t.expert_ids()[0].tolist() == [1, 2, 3, 4, 5, 6]


def test_bad_moe_beyond_list_names_file_line_and_fix():
    with pytest.raises(TraceError, match=r"prompt_1_data.csv: line 3: Activated Expert IDs .*\[3, 17, 42\]"):
        read_moe_beyond(FIX / "bad" / "prompt_1_data.csv")
    with pytest.raises(TraceError, match=r"wrong_header.csv: line 1: header .*expected one of"):
        read_moe_beyond(FIX / "bad" / "wrong_header.csv")


def test_plain_csv_fixture_steps_phases_weights():
    t = read_csv(FIX / "plain.csv", num_experts=4)
    r = rows(t)
    # request 0: prompt (pos 0-1) step 0, decode pos 2 step 1; request 1 prompt step 2
    assert [(x[0], x[2], x[3], x[1]) for x in r[::2]] == [(0, 0, 0, 0), (0, 0, 1, 0), (0, 1, 2, 1), (1, 2, 0, 0)]
    assert r[1][5] == [2, 0]
    assert np.allclose(t.expert_weights()[0], [0.6, 0.4])
    assert t.meta.moe_layers == [0, 1] and "weights" not in t.meta.lacks


def test_plain_npz_fixture_reads_stored_model_card():
    t = read_npz(FIX / "plain.npz")
    assert t.meta.num_experts == 4 and t.meta.model == "tiny"
    assert t.expert_ids().tolist() == [[1, 2], [3, 0]]


def test_vllm_npz_requests_prompt_len_splits_prefill_and_decode():
    t = read_vllm(FIX / "routed_experts.npz", num_experts=8, prompt_len=2)
    r = rows(t)
    assert r[0] == (0, PREFILL, 0, 0, 0, [0, 1]) and r[3] == (0, PREFILL, 0, 1, 1, [3, 2])
    assert r[4] == (0, DECODE, 1, 2, 0, [4, 5])
    # request 1 has one token: prefill in the step after request 0's decode step
    assert r[6] == (1, PREFILL, 2, 0, 0, [7, 6])


def test_megatron_fixture_prefill_then_decode_and_skips_mtp():
    t = read_megatron(FIX / "router_trace_rank0.jsonl", num_experts=8)
    r = rows(t)
    assert t.num_rows == 3 * 2 + 2
    assert r[0] == (0, PREFILL, 0, 0, 1, [1, 2]) and r[5] == (0, PREFILL, 0, 2, 2, [4, 5])
    assert r[6] == (0, DECODE, 1, 3, 1, [1, 2])
    assert t.meta.moe_layers == [1, 2] and "1 MTP-block records skipped" in t.meta.notes


def test_speculative_moe_fixture_truncates_to_shortest_layer():
    t = read_speculative_moe(FIX / "spec_routing.jsonl")
    assert t.num_rows == 4 and t.meta.extra["records_dropped"] == 1
    assert rows(t)[0] == (0, DECODE, 0, 0, 0, [0, 7])


def test_bigmoeonedge_fixture_sorts_slots_and_keeps_phone_hits():
    t = read_bigmoeonedge(FIX / "edge.route.csv")
    r = rows(t)
    assert r[2] == (0, DECODE, 1, 1, 0, [7, 5])  # slot 0 first although the file lists slot 1 first
    assert np.allclose(t.expert_weights()[2], [0.55, 0.45])
    assert t.meta.extra["phone_decode_hit_rate"] == 0.5 and t.meta.top_k == 2


def test_stratamoe_fixture_prompt_spans_split_requests():
    t = read_stratamoe(FIX / "router-trace.v2.json")
    assert rows(t) == [(0, 0, 0, 0, 1, [1]), (0, 0, 0, 0, 3, [2]), (0, 0, 0, 1, 1, [3]), (0, 0, 0, 1, 3, [4]),
                       (1, 0, 1, 0, 1, [5]), (1, 0, 1, 0, 3, [6])]


def test_fiddler_is_counts_not_a_trace():
    p = read_fiddler_popularity(FIX / "popularity.json")
    assert p.counts.tolist() == [[2, 1, 1, 0], [0, 0, 2, 2]] and p.tokens.tolist() == [2, 2]
    with pytest.raises(TraceError, match="aggregates"):
        detect_format(FIX / "popularity.json")


@pytest.mark.parametrize("name,fmt", [("prompt_2_data.csv", "moe-beyond"), ("plain.csv", "csv"), ("plain.npz", "npz"),
                                      ("routed_experts.npz", "vllm"), ("router_trace_rank0.jsonl", "megatron"),
                                      ("spec_routing.jsonl", "speculative-moe"), ("edge.route.csv", "bigmoeonedge"),
                                      ("router-trace.v2.json", "stratamoe")])
def test_detect_format(name, fmt):
    assert detect_format(FIX / name) == fmt


def test_round_trip_write_read_identical(tmp_path):
    for t in (read_moe_beyond(FIX / "prompt_1_data_predicted.csv"), read_bigmoeonedge(FIX / "edge.route.csv")):
        out = write_trace(t, tmp_path / "t.parquet")
        back = read_trace(out)
        assert back.table.equals(t.table) and back.meta == t.meta


def test_convert_rejects_options_a_format_does_not_take():
    with pytest.raises(ValueError, match="does not take option"):
        convert([FIX / "edge.route.csv"], prompt_len=3)


def test_cli_convert_prints_summary(tmp_path):
    out = tmp_path / "o.parquet"
    res = CliRunner().invoke(main, ["convert", str(FIX / "plain.csv"), "--num-experts", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "8 rows, 2 requests" in res.output and read_trace(out).num_rows == 8
    res = CliRunner().invoke(main, ["convert", str(FIX / "bad" / "prompt_1_data.csv"), "--out", str(out)])
    assert res.exit_code != 0 and "line 3" in res.output and "Traceback" not in res.output


# ---- the real public traces (skipped when absent)

def test_real_moe_beyond_test_predicted(real_traces):
    t = read_moe_beyond(real_traces / "moe-beyond-dsv2lite" / "test_predicted")
    assert t.num_rows == 40118 and t.meta.extra["tokens"] == 1543 and "pred_h0" in t.table.column_names


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MOESIM_FULL_IMPORT"), reason="reads the full 91 MB set; set MOESIM_FULL_IMPORT=1")
def test_real_moe_beyond_train_matches_source_md(real_traces):
    t = read_moe_beyond(real_traces / "moe-beyond-dsv2lite" / "train")
    assert t.meta.extra["tokens"] == 94165 and t.num_rows == 94165 * 26
    assert t.num_rows * 6 == 14_689_740


def test_real_speculative_moe(real_traces):
    d = real_traces / "mixtral-8x7b-speculative-moe"
    t = read_speculative_moe([d / "gsm8k_2_routing.jsonl", d / "humaneval_2_routing.jsonl"])
    assert t.meta.extra["tokens_per_request"] == [166, 78, 81, 252] and t.num_rows * 2 == 36928
    raw = read_speculative_moe(d / "routing_raw.jsonl")
    e = raw.meta.extra
    assert (e["prompt_tokens"], e["decode_tokens"], e["missing_prefill_rows"], e["missing_decode_rows"]) == (135, 83, 122, 77)


@pytest.mark.parametrize("name,pre,dec,rate", [("qwen", 28, 128, 0.803), ("gemma", 29, 128, 0.819), ("gptoss", 85, 64, 0.448)])
def test_real_bigmoeonedge(real_traces, name, pre, dec, rate):
    d = real_traces / "bigmoeonedge-qwen3-gemma4-gptoss"
    t = read_bigmoeonedge(d / f"{name}.route.csv")
    e = t.meta.extra
    assert (e["prompt_tokens"], e["decode_tokens"]) == (pre, dec)
    assert round(e["phone_decode_hit_rate"], 3) == rate
    assert len(read_bigmoeonedge_metrics(d / f"{name}.metrics.csv")) == dec


def test_real_stratamoe_and_fiddler(real_traces):
    t = read_stratamoe(real_traces / "switch-base-8-stratamoe" / "router-trace.v2.json")
    assert t.num_rows == 1290 and len(np.unique(t.column("request_id"))) == 10
    p = read_fiddler_popularity(real_traces / "fiddler-mixtral-popularity" / "mixtral_8x7b_instruct"
                                / "expert_popularity_international_law.json")
    assert p.counts.shape == (32, 8) and int(p.tokens[0]) == 1920


def test_shipped_samples_read_back():
    t = read_trace(ROOT / "traces" / "dsv2lite-moebeyond-sample.parquet")
    assert t.meta.num_experts == DSV2_LITE.num_experts and len(np.unique(t.column("request_id"))) == 150
    assert "pred_h0" in read_trace(ROOT / "traces" / "dsv2lite-moebeyond-test-predicted.parquet").table.column_names
