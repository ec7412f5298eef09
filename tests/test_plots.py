"""moesim plot: each figure draws the numbers it claims (checked against direct replays, counts and a
brute-force cache), names layers as the model does, and says in one line what it wanted when given the wrong
input."""
import json
import re
from pathlib import Path

import matplotlib
import matplotlib.pyplot
import numpy as np
import pytest
from click.testing import CliRunner

matplotlib.use("Agg")

import moesim  # noqa: E402
from moesim import plots  # noqa: E402
from moesim.cli import main  # noqa: E402
from moesim.files import OutputError  # noqa: E402
from moesim.grid import read_results, run_grid  # noqa: E402
from moesim.plots import PLOT_KINDS, _inputs  # noqa: E402
from reference import replay_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWITCH = ROOT / "traces" / "switch-base-8-stratamoe.parquet"
MIXTRAL = ROOT / "traces" / "mixtral-8x7b-speculative-decode.parquet"
DSV2 = ROOT / "traces" / "dsv2lite-moebeyond-sample.parquet"


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
                    f'bandwidth = ["2GB/s", "8GB/s", "32GB/s", "128GB/s"]\nmode = "timed"\nper_layer = true\n')
    run_grid(spec, tmp / "r.parquet", jobs=1)
    return tmp / "r.parquet"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close("all")


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
    flat = tmp_path / "flat.parquet"
    read_results(timed_results).drop(columns=["hits_per_layer", "misses_per_layer", "stall_per_layer_s"]).to_parquet(flat)
    no_layers = CliRunner().invoke(main, ["plot", str(flat), "--kind", "layers", "--out", str(tmp_path / "a.png")])
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


def map_cells(fig):
    """(hit, miss, held-idle) bool tokens x experts per panel of an activation map, in the order of its layers."""
    out = {}
    for ax in fig.axes:
        if ax.get_visible() and ax.images:
            img = np.asarray(ax.images[0].get_array()).T
            out[int(re.match(r"layer (\d+)", ax.get_ylabel()).group(1))] = (img == 3, img == 2, img == 1)
    return [out[layer] for layer in sorted(out)]


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "lfuda"])
def test_activation_map_hits_equal_the_engine_on_that_request(policy):
    trace = moesim.read_trace(MIXTRAL)
    request = int(np.unique(trace.column("request_id"))[1])
    one = trace.select_requests([request])
    tokens = int((one.layer_index() == 0).sum())
    slots = 3
    layers = trace.meta.moe_layers
    fig = plots.activation_map(trace, request=request, layers=layers, policy=policy, slots=slots, tokens=tokens)
    ref = moesim.replay(one, policy=policy, capacity=f"{slots}/layer", scope="per-layer", mode="count",
                        per_layer=True, accounting="access")
    assert fig.hit_rate == pytest.approx(ref["hit_rate"])
    cells = map_cells(fig)
    assert len(cells) == trace.meta.num_moe_layers
    # each panel's hit cells are that layer's hits in the count-mode replay, its miss cells the misses
    assert [int(hit.sum()) for hit, _, _ in cells] == ref["hits_per_layer"]
    assert [int(miss.sum()) for _, miss, _ in cells] == ref["misses_per_layer"]


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "lfuda"])
def test_activation_map_cells_equal_a_brute_force_cache(policy):
    """Every cell, token by token: routed experts hit exactly when a plain Python cache hits, and the grey
    cells are the experts that cache holds when the token arrives (a lookup then would hit)."""
    trace = moesim.read_trace(MIXTRAL)
    request, tokens, slots = int(np.unique(trace.column("request_id"))[0]), 24, 3
    shown = [trace.meta.moe_layers[1], trace.meta.moe_layers[-1]]
    fig = plots.activation_map(trace, request=request, layers=shown, policy=policy, slots=slots, tokens=tokens)
    one = trace.select_requests([request])
    li, ids, pos = one.layer_index(), one.expert_ids(), one.column("token_pos")
    E = trace.meta.num_experts
    for (hit, miss, idle), layer in zip(map_cells(fig), shown):
        rows = np.flatnonzero(li == trace.meta.moe_layers.index(layer))
        routes = ids[rows[np.argsort(pos[rows], kind="stable")]][:tokens]
        stream = [int(e) for e in routes.reshape(-1)]
        hits = replay_reference(stream, [0] * E, [slots], policy)
        k = routes.shape[1]
        for t in range(tokens):
            for j, e in enumerate(routes[t]):
                assert hit[t, e] == hits[t * k + j] and miss[t, e] != hits[t * k + j]
            held = {e for e in range(E) if replay_reference(stream[:t * k] + [e], [0] * E, [slots], policy)[-1]}
            assert set(np.flatnonzero(idle[t])) == held - set(routes[t].tolist())
            assert len(held) <= slots


def test_activation_map_takes_and_shows_the_models_layer_numbers(tmp_path):
    trace = moesim.read_trace(DSV2)  # DeepSeek-V2-Lite: layer 0 is dense, MoE layers are 1..26
    fig = plots.activation_map(trace, layers=[1, 13, 26], slots=16, tokens=32)
    labels = [ax.get_ylabel().splitlines()[0] for ax in fig.axes if ax.get_visible() and ax.images]
    assert labels == ["layer 1", "layer 13", "layer 26"]
    result = CliRunner().invoke(main, ["plot", str(DSV2), "--kind", "activations", "--layers", "0,13",
                                       "--out", str(tmp_path / "a.png")])
    assert result.exit_code != 0 and "layer(s) 0" in result.output and "1-26" in result.output
    switch = moesim.read_trace(SWITCH)  # MoE layers 1, 3, ..., 11: numbers and indices part ways
    fig = plots.activation_map(switch, layers=[3, 11], tokens=16)
    assert [ax.get_ylabel().splitlines()[0] for ax in fig.axes if ax.images] == ["layer 3", "layer 11"]


def test_activation_map_of_every_layer_fits_a_page_in_colour_blind_safe_colours():
    trace = moesim.read_trace(MIXTRAL)  # 32 MoE layers
    fig = plots.activation_map(trace, layers=trace.meta.moe_layers, tokens=24)
    width, height = fig.get_size_inches()
    assert width <= plots._style.PAGE_WIDTH and height <= plots._style.PAGE_HEIGHT
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 32
    # blue for hits and vermillion for misses (Okabe-Ito): no red-green pair
    cmap = fig.axes[0].images[0].get_cmap()
    assert [matplotlib.colors.to_hex(c) for c in cmap.colors][2:] == ["#d55e00", "#0072b2"]


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


def test_popularity_rows_are_model_layer_numbers():
    fig = plots.expert_popularity(moesim.read_trace(SWITCH))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "model layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3", "5", "7", "9", "11"]


def test_layer_heatmap_rows_are_model_layer_numbers_from_the_trace(count_results):
    fig = plots.layer_heatmap(count_results, by="capacity", policy="lru")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "model layer"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3", "5", "7", "9", "11"]
    # rows that name no readable trace: the axis says it counts MoE layers, not model layers
    df = read_results(count_results).assign(trace="elsewhere/switch.parquet").drop(columns=["moe_layers"])
    ax = plots.layer_heatmap(df, by="capacity", policy="lru").axes[0]
    assert ax.get_ylabel() == "MoE layer index"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3", "4", "5"]


def test_layer_heatmap_draws_each_bandwidth_apart_and_says_so(timed_results, monkeypatch):
    df = read_results(timed_results)
    fig = plots.layer_heatmap(timed_results, by="capacity", policy="lru", metric="stall")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 4  # one heatmap per link bandwidth, never their mean
    for ax in panels:
        bw = float(re.search(r"link ([0-9.]+) GB/s", ax.get_title()).group(1))
        img = ax.images[0].get_array()
        for j, cap in enumerate((0.25, 0.5)):
            row = df[(df.policy == "lru") & np.isclose(df.capacity_fraction, cap) & (df.bandwidth_gbps == bw)]
            assert len(row) == 1
            assert np.allclose(img[:, j], 1e3 * np.asarray(row.stall_per_layer_s.iloc[0]))
    assert "policy LRU" in fig._suptitle.get_text()
    # more heatmaps than a page holds: one line that says which parameter varies and how to pick
    from moesim.plots import layers
    monkeypatch.setattr(layers, "MOST_PANELS", 3)
    with pytest.raises(ValueError, match=r"bandwidth_gbps \(4 values\).*--where bandwidth_gbps="):
        plots.layer_heatmap(timed_results, by="capacity", policy="lru")
    fig = plots.plot(timed_results, "layers", by="capacity", where={"bandwidth_gbps": "8"})
    assert len([ax for ax in fig.axes if ax.images]) == 1
    assert "bandwidth_gbps = 8" in fig._suptitle.get_text()


def test_where_names_the_values_there_are(count_results):
    with pytest.raises(ValueError, match=r"no result rows with policy = arc; .*\{belady, lfu, lru\}"):
        plots.plot(count_results, "hit-rate", where={"policy": "arc"})
    with pytest.raises(ValueError, match="no such column"):
        plots.plot(count_results, "hit-rate", where={"colour": "red"})


@pytest.fixture(scope="module")
def scorecard(tmp_path_factory):
    result = CliRunner().invoke(main, ["score-predictor", str(MIXTRAL), "--predictor", "previous", "--horizon", "2",
                                       "--json"])
    path = tmp_path_factory.mktemp("card") / "previous.json"
    path.write_text(result.output)
    return path


def test_every_registered_kind_renders_from_its_input_and_refuses_others(count_results, timed_results,
                                                                          memory_results, scorecard, tmp_path):
    inputs = {"results": timed_results, "scorecards": scorecard, "trace": SWITCH}
    own = {"memory": memory_results}  # results of the grid the kind is for (context x batch, capacity auto)
    assert PLOT_KINDS.names() == ["hit-rate", "stall", "layers", "predictor", "activations", "popularity",
                                  "memory"]
    for name, module in PLOT_KINDS.items():
        out = tmp_path / f"{name}.png"
        sorts = _inputs.accepts(module.INPUT)
        ok = CliRunner().invoke(main, ["plot", str(own.get(name, inputs[sorts[0]])), "--kind", name,
                                       "--out", str(out)])
        assert ok.exit_code == 0, ok.output
        assert out.read_bytes().startswith(b"\x89PNG")
        for sort, wrong in inputs.items():
            if sort in sorts:
                continue
            bad = CliRunner().invoke(main, ["plot", str(wrong), "--kind", name, "--out", str(tmp_path / "x.png")])
            assert bad.exit_code == 1 and isinstance(bad.exception, SystemExit), bad.output  # not a traceback
            line = bad.output.strip()
            assert "\n" not in line and "Traceback" not in line, line
            assert str(wrong) in line and f"plot kind {name!r} draws" in line, line
    assert not (tmp_path / "x.png").exists()
    # the same check from Python
    with pytest.raises(ValueError, match=r"is a scorecard, but plot kind 'hit-rate' draws grid results or one trace"):
        plots.plot(scorecard, "hit-rate")
    with pytest.raises(ValueError, match=r"is a trace, but plot kind 'stall' draws grid results"):
        plots.plot(SWITCH, "stall")
    with pytest.raises(ValueError, match="plot kind 'stall' has no option 'slots'"):
        plots.plot(timed_results, "stall", slots=3)
    stray = CliRunner().invoke(main, ["plot", str(SWITCH), "--kind", "popularity", "--slots", "3",
                                      "--out", str(tmp_path / "x.png")])
    assert stray.exit_code != 0 and "--slots does not apply to --kind popularity" in stray.output


def test_save_writes_all_of_a_figure_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "fig.png"
    out.write_bytes(b"the previous figure")
    fig = plots.expert_popularity(moesim.read_trace(SWITCH))

    def fail_halfway(path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")
    monkeypatch.setattr(fig, "savefig", fail_halfway)
    with pytest.raises(OutputError, match="disk full"):
        plots.save(fig, out)
    assert out.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left beside it
    plots.save(plots.expert_popularity(moesim.read_trace(SWITCH)), out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_readme_lists_every_plot_kind_as_the_registry_does():
    readme = (ROOT / "README.md").read_text()
    assert plots.table() in readme


def test_hit_rate_shades_capacities_below_one_tokens_experts():
    # Mixtral: 32 MoE layers x top-2 = 64 of 256 experts a token; a global cache below 25 % thrashes
    import pandas as pd
    trace = moesim.read_trace(MIXTRAL)
    rows = [moesim.replay(trace, capacity=c, mode="count") for c in (16, 32, 128)]
    fig = plots.hit_rate_vs_capacity(pd.DataFrame(rows))
    spans = [p for p in fig.axes[0].patches if p.get_label() == "below one token's experts"]
    assert len(spans) == 1
    assert spans[0].get_x() + spans[0].get_width() == pytest.approx(25.0)


@pytest.fixture(scope="module")
def memory_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    spec = tmp / "g.toml"
    spec.write_text(f'trace = "{MIXTRAL}"\ncapacity = "auto"\nhardware = "rtx4090-pcie4"\nkv_bytes_per_token = "4KiB"\n'
                    f'context = [1024, 8192, 65536]\nbatch_size = [1, 4]\nbatching = "continuous"\nmode = "timed"\n')
    run_grid(spec, tmp / "r.parquet", jobs=1)  # batch 4 at 65536 tokens does not fit 24 GiB: that row fails
    return tmp / "r.parquet"


def test_memory_budget_lines_are_the_rows_slots_tpot_and_throughput(memory_results, timed_results):
    df = read_results(memory_results)
    assert df["error"].notna().sum() == 1 and "do not fit in rtx4090-pcie4's memory" in df["error"].dropna().iloc[0]
    fig = plots.plot(memory_results, "memory")
    slots, tpot, rate = fig.axes[:3]
    for ax, column, scale in ((slots, "capacity_experts", 1), (tpot, "tpot_p50_s", 1e3), (rate, "tokens_per_s", 1)):
        for size in (1, 4):
            rows = df[(df["batch_size"] == size) & df["error"].isna()].sort_values("context")
            x, y = lines(ax)[f"batch {size}"]
            assert list(x) == rows["context"].tolist()
            assert np.allclose(y, scale * rows[column].to_numpy())
    # the memory arithmetic: a longer context or a larger batch leaves fewer slots
    _, batch1 = lines(slots)["batch 1"]
    _, batch4 = lines(slots)["batch 4"]
    assert np.all(np.diff(batch1) < 0) and np.all(batch4 < batch1[:len(batch4)])
    with pytest.raises(ValueError, match="no rows of --capacity auto with a context"):
        plots.plot(timed_results, "memory")
