"""moesim plot --kind hit-rate from a trace: it computes each policy's curve and draws exactly those numbers,
which equal count-mode replays at the same capacities."""
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

ROOT = Path(__file__).resolve().parents[1]
MIXTRAL = ROOT / "traces" / "mixtral-8x7b-speculative-decode.parquet"
SWITCH = ROOT / "traces" / "switch-base-8-stratamoe.parquet"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close("all")


def drawn(fig) -> dict:
    """{label: (x, y)} of the figure's one panel."""
    (ax,) = [a for a in fig.axes if a.get_visible() and a.get_lines()]
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.get_lines()}


def test_a_trace_draws_each_policys_curve_and_the_curve_is_the_replays():
    fig = plots.plot(MIXTRAL, "hit-rate", policy="lru,fifo,lfu", capacities="10%..70%", points=7)
    got = drawn(fig)
    assert sorted(got) == ["FIFO", "LFU", "LRU"]
    for policy in ("lru", "fifo", "lfu"):
        curve = moesim.hit_rate_curve(MIXTRAL, policy, "10%..70%", points=7)
        x, y = got[policy.upper()]
        order = np.argsort(curve["capacity_fraction"].to_numpy())
        np.testing.assert_allclose(x, 100 * curve["capacity_fraction"].to_numpy()[order])
        np.testing.assert_allclose(y, 100 * curve["hit_rate"].to_numpy()[order])
        # and the curve's points are what replay gives (per segment, replay's default), capacity by capacity
        for cap in ("10%", "40%", "70%"):
            row = moesim.replay(MIXTRAL, policy=policy, capacity=cap, mode="count")
            i = int(np.flatnonzero(np.isclose(x, 100 * row["capacity_fraction"]))[0])
            assert y[i] == pytest.approx(100 * row["hit_rate"])


def test_the_cli_writes_the_figure_of_a_trace_with_its_options(tmp_path):
    out = tmp_path / "curve.png"
    result = CliRunner().invoke(main, ["plot", str(SWITCH), "--kind", "hit-rate", "--policy", "lru,belady",
                                       "--capacities", "2..48", "--points", "5", "--scope", "per-layer",
                                       "--accounting", "access", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    fig = plots.plot(SWITCH, "hit-rate", policy=["lru", "belady"], capacities="2..48", points=5, scope="per-layer",
                     accounting="access")
    got = drawn(fig)
    for policy, label in (("lru", "LRU"), ("belady", "Belady (optimal)")):
        rates = [moesim.replay(SWITCH, policy=policy, capacity=c, mode="count", scope="per-layer",
                               accounting="access")["hit_rate"] for c in (2, 13, 25, 36, 48)]
        np.testing.assert_allclose(got[label][1], 100 * np.array(rates))


def test_a_sampled_curve_is_labelled_and_drawn_as_computed():
    fig = plots.plot(MIXTRAL, "hit-rate", policy="lfu", capacities="20%,50%", method="sampled", sample_rate=0.5)
    curve = moesim.hit_rate_curve(MIXTRAL, "lfu", "20%,50%", method="sampled", sample_rate=0.5)
    ((label, (_, y)),) = drawn(fig).items()
    assert label == "LFU (sampled, 50%)"
    np.testing.assert_allclose(y, 100 * curve["hit_rate"].to_numpy())


def test_curve_options_belong_to_a_trace_and_where_to_results(tmp_path):
    results = tmp_path / "r.parquet"
    moesim.hit_rate_curve(SWITCH, "lru", "25%,50%").assign(trace=str(SWITCH), mode="count").to_parquet(results)
    with pytest.raises(ValueError, match="capacities: plot kind 'hit-rate' takes these with a trace"):
        plots.plot(results, "hit-rate", capacities="10%..50%")
    with pytest.raises(ValueError, match="where selects rows of grid results"):
        plots.plot(SWITCH, "hit-rate", where={"policy": "lru"})
    with pytest.raises(ValueError, match="the curves of one trace, or grid results; 2 sources given"):
        plots.plot([SWITCH, MIXTRAL], "hit-rate")
    bad = CliRunner().invoke(main, ["plot", str(SWITCH), "--kind", "hit-rate", "--policy", "nope",
                                    "--out", str(tmp_path / "x.png")])
    assert bad.exit_code == 1 and "nope" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.png").exists()
