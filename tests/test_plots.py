"""moesim plot: each figure draws the numbers it claims (checked against direct replays and counts)."""
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

matplotlib.use("Agg")

import moesim  # noqa: E402
from moesim import plots  # noqa: E402
from moesim.cli import main  # noqa: E402
from moesim.grid import read_results, run_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWITCH = ROOT / "traces" / "switch-base-8-stratamoe.parquet"
MIXTRAL = ROOT / "traces" / "mixtral-8x7b-speculative-decode.parquet"


@pytest.fixture(scope="module")
def count_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("count")
    spec = tmp / "g.toml"
    spec.write_text(f'trace = "{SWITCH}"\npolicy = ["lru", "lfu", "belady"]\ncapacity = [0.25, 0.5, 0.75]\n'
                    f'mode = "count"\nscope = "per-layer"\nper_layer = true\n')
    run_grid(spec, tmp / "r.parquet", jobs=1)
    return tmp / "r.parquet"


@pytest.fixture(scope="module")
def timed_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timed")
    spec = tmp / "g.toml"
    spec.write_text(f'trace = "{MIXTRAL}"\npolicy = ["lru", "belady"]\ncapacity = ["25%", "50%"]\n'
                    f'bandwidth = ["2GB/s", "8GB/s", "32GB/s", "128GB/s"]\nmode = "timed"\n')
    run_grid(spec, tmp / "r.parquet", jobs=1)
    return tmp / "r.parquet"


def lines(ax) -> dict:
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


def test_hit_rate_lines_are_the_replayed_hit_rates_with_belady_as_bound(count_results):
    fig = plots.hit_rate_vs_capacity(count_results)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "cache capacity (% of routed experts)" and ax.get_ylabel() == "hit rate (%)"
    drawn = lines(ax)
    assert set(drawn) == {"LRU", "LFU", "Belady (optimal)"}
    for label, policy in (("LRU", "lru"), ("Belady (optimal)", "belady")):
        x, y = drawn[label]
        for cap, hr in zip(x, y):
            ref = moesim.replay(SWITCH, policy=policy, capacity=cap / 100, scope="per-layer", mode="count")
            assert hr == pytest.approx(100 * ref["hit_rate"])
            assert cap == pytest.approx(100 * ref["capacity_fraction"])
    # the bound is on top of every policy at every capacity
    assert np.all(drawn["Belady (optimal)"][1] >= drawn["LRU"][1]) and np.all(drawn["Belady (optimal)"][1] >= drawn["LFU"][1])
    assert drawn["Belady (optimal)"] is not None and ax.get_lines()[-1].get_linestyle() == "--"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_cli_writes_the_format_of_the_extension(count_results, tmp_path, suffix, magic):
    out = tmp_path / f"hr{suffix}"
    result = CliRunner().invoke(main, ["plot", str(count_results), "--kind", "hit-rate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(magic)


def test_cli_errors_name_the_fix(count_results, timed_results, tmp_path):
    bad_ext = CliRunner().invoke(main, ["plot", str(count_results), "--kind", "hit-rate", "--out", str(tmp_path / "a.jpg")])
    assert bad_ext.exit_code != 0 and ".png, .svg or .pdf" in bad_ext.output
    no_time = CliRunner().invoke(main, ["plot", str(count_results), "--kind", "stall", "--out", str(tmp_path / "a.png")])
    assert no_time.exit_code != 0 and 'mode = "timed"' in no_time.output
    no_layers = CliRunner().invoke(main, ["plot", str(timed_results), "--kind", "layers", "--out", str(tmp_path / "a.png")])
    assert no_layers.exit_code != 0 and "per_layer = true" in no_layers.output


def test_tpot_vs_bandwidth_draws_tpot_in_ms_on_log_axes(timed_results):
    fig = plots.stall_vs(timed_results, x="bandwidth", y="tpot")
    df = read_results(timed_results)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2  # one panel per capacity
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "host→GPU link bandwidth (GB/s)"
        assert ax.get_ylabel() == "time per output token (ms)"
        cap = float(ax.get_title().split()[1].rstrip("%")) / 100
        x, y = lines(ax)["LRU"]
        rows = df[(df.policy == "lru") & np.isclose(df.capacity_fraction, cap)].sort_values("bandwidth_gbps")
        assert list(x) == list(rows.bandwidth_gbps)
        assert np.allclose(y, 1e3 * rows.tpot_s)
        # a faster link never makes a token slower
        assert np.all(np.diff(y) <= 1e-9)
    fig2 = plots.stall_vs(timed_results, x="capacity", y="stall")
    assert fig2.axes[0].get_ylabel() == "stall time waiting for experts (s)"


def test_layer_heatmap_cells_are_per_layer_hit_rates(count_results):
    fig = plots.layer_heatmap(count_results, by="capacity", policy="lru")
    img = fig.axes[0].images[0].get_array()
    for j, cap in enumerate((0.25, 0.5, 0.75)):
        ref = moesim.replay(SWITCH, policy="lru", capacity=cap, scope="per-layer", mode="count", per_layer=True)
        h, m = np.array(ref["hits_per_layer"]), np.array(ref["misses_per_layer"])
        assert np.allclose(img[:, j], 100 * h / (h + m))
    fig = plots.layer_heatmap(count_results, by="policy", capacity=0.5)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["LFU", "LRU", "Belady (optimal)"]


def test_predictor_plot_reads_score_predictor_json(tmp_path):
    cards = []
    for predictor in ("previous", "oracle"):
        result = CliRunner().invoke(main, ["score-predictor", str(MIXTRAL), "--predictor", predictor,
                                           "--horizon", "3", "--json"])
        assert result.exit_code == 0, result.output
        path = tmp_path / f"{predictor}.json"
        path.write_text(result.output)
        cards.append(json.loads(result.output))
    out = tmp_path / "pred.png"
    result = CliRunner().invoke(main, ["plot", *(str(tmp_path / f"{p}.json") for p in ("previous", "oracle")),
                                       "--kind", "predictor", "--out", str(out)])
    assert result.exit_code == 0, result.output
    fig = plots.predictor_accuracy([tmp_path / "previous.json", tmp_path / "oracle.json"])
    precision, recall = fig.axes[0], fig.axes[1]
    assert precision.get_xlabel() == "prediction horizon (MoE layers ahead)"
    for card in cards:
        x, y = lines(recall)[card["predictor"]]
        assert list(x) == [1, 2, 3]
        assert np.allclose(y, [100 * card["by_horizon"][str(h)]["recall"] for h in (1, 2, 3)])
    assert lines(precision)["oracle"][1] == pytest.approx([100, 100, 100])


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_activation_map_hits_equal_the_engine_on_that_request(policy):
    trace = moesim.read_trace(MIXTRAL)
    request = int(np.unique(trace.column("request_id"))[1])
    one = trace.select_requests([request])
    tokens = int((one.layer_index() == 0).sum())
    slots = 3
    fig = plots.activation_map(trace, request=request, layers=range(trace.meta.num_moe_layers), policy=policy,
                               slots=slots, tokens=tokens)
    ref = moesim.replay(one, policy=policy, capacity=f"{slots}/layer", scope="per-layer", mode="count")
    assert fig.hit_rate == pytest.approx(ref["hit_rate"])
    assert len(fig.axes) == trace.meta.num_moe_layers


def test_popularity_heatmap_is_each_layers_share(tmp_path):
    trace = moesim.read_trace(SWITCH)
    fig = plots.expert_popularity(trace)
    img = np.ma.filled(fig.axes[0].images[0].get_array(), 0.0)
    ids = trace.expert_ids()[:, 0]
    layer = trace.layer_index()
    for l in range(trace.meta.num_moe_layers):
        counts = np.bincount(ids[layer == l], minlength=trace.meta.num_experts)
        assert np.allclose(np.nan_to_num(img[l]), 100 * counts / counts.sum())
    result = CliRunner().invoke(main, ["plot", str(SWITCH), "--kind", "popularity", "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
