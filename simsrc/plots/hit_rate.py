"""Hit rate (%) vs capacity (% of routed experts), a line per policy/predictor, a panel per trace, scope, mode and
prefill chunk; Belady dashed and the oracle predictor dotted as bounds; seeds averaged with their min–max band.
From a trace, each `--policy`'s curve is computed first, as `moesim curve` computes it.

From a trace (`moesim plot TRACE --kind hit-rate --policy lru,lfu`) it first computes each policy's curve
with moesim.curve.hit_rate_curve (`--capacities`, `--points`, `--scope`, `--accounting`, `--method`,
`--sample-rate`, `--seed`: the one-pass exact curve for LRU, sampled or replayed for the others) and draws
that; the same table `moesim curve TRACE --plot FIG` draws. A sampled curve's line says so in its label.
"""
from __future__ import annotations

import numpy as np

from . import _inputs, _style

NAME = "hit-rate"
ORDER = 1
INPUT = _inputs.RESULTS_OR_TRACE
# what a curve from a trace is computed with when not told (moesim curve's defaults)
CURVE_DEFAULTS = {"policy": "lru", "capacities": "1%..100%", "points": 100, "scope": "global", "accounting": None,
                  "method": "auto", "sample_rate": None, "seed": 0}


def draw(sources, *, where: dict | None = None, title: str | None = None, policy=None, capacities=None,
         points: int | None = None, scope: str | None = None, accounting: str | None = None,
         method: str | None = None, sample_rate: float | None = None, seed: int | None = None):
    """Hit rate vs cache capacity from grid results (files or a DataFrame), or from one trace, whose curves
    are computed first (policy: a name, a comma list or a list; the rest as moesim.hit_rate_curve takes them);
    returns the Figure."""
    plt = _style.pyplot()
    curve_opts = {"policy": policy, "capacities": capacities, "points": points, "scope": scope,
                  "accounting": accounting, "method": method, "sample_rate": sample_rate, "seed": seed}
    sources = _inputs.check(sources, INPUT, NAME)
    if any(_inputs.sort_of(s)[0] == _inputs.TRACE for s in sources):
        if len(sources) != 1:
            raise ValueError(f"plot kind {NAME!r} draws the curves of one trace, or grid results; "
                             f"{len(sources)} sources given")
        if where:
            raise ValueError(f"where selects rows of grid results; from a trace, plot kind {NAME!r} takes "
                             f"{', '.join(curve_opts)}")
        df = trace_curves(sources[0], **{k: v for k, v in curve_opts.items() if v is not None})
    else:
        given = [k for k, v in curve_opts.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: plot kind {NAME!r} takes these with a trace, whose curves it "
                             f"computes; grid results are drawn as they are (select rows with where)")
        df = _inputs.results(sources, NAME, where)
    df = _style.ok(df)
    df = df[df["hit_rate"].notna()]
    if df.empty:
        raise ValueError("no result rows with a hit rate to plot")
    panels = _style.panels(df, ["trace", "scope", "mode", "prefill_chunk"])
    fig, axes = _style.grid_of(plt, len(panels))
    colors: dict = {}
    for ax, (name, part) in zip(axes, panels):
        for (policy, predictor, extra), rows in _style.series(part):
            a = _style.mean_spread(rows, "capacity_fraction", "hit_rate")
            _style.draw_line(ax, 100 * a["capacity_fraction"], 100 * a["mean"],
                             _style.series_label(policy, predictor, extra) + _sampled(rows),
                             _style.line_style(policy, predictor, colors, extra), (100 * a["min"], 100 * a["max"]))
        _style.log_if_wide(ax, part["capacity_fraction"])
        caps = np.unique(100 * part["capacity_fraction"])
        if len(caps) == 1:  # one capacity: a labelled tick, not a zoomed axis of fractions of a percent
            ax.set_xticks(caps, [f"{caps[0]:.3g}"])
            ax.set_xlim(caps[0] - 5, caps[0] + 5)
        _mark_token_footprint(ax, part)
        ax.set_xlabel("cache capacity (% of routed experts)")
        ax.set_ylabel("hit rate (%)")
        ax.set_ylim(0, 102)  # a bound at 100 % stays visible
        ax.grid(True, alpha=0.3)
        ax.set_title(name)
    _style.suptitle(fig, df, title, where)
    _style.legend(fig, axes)
    return fig


def trace_curves(trace, **options):
    """The curves plot --kind hit-rate draws from a trace: moesim.hit_rate_curve for each policy (options:
    CURVE_DEFAULTS' names), as one table with the columns the figure groups by."""
    import pandas as pd

    from ..curve import hit_rate_curve, replayed_stream
    from ..config import ReplayConfig
    from ..trace import Trace, read_trace
    opts = {**CURVE_DEFAULTS, **options}
    names = opts.pop("policy")
    names = [p.strip() for p in names.split(",") if p.strip()] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("policy: name at least one policy, e.g. lru or lru,lfu")
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    _, stream = replayed_stream(tr, ReplayConfig.make())
    label = str(trace) if not isinstance(trace, Trace) else tr.meta.model
    df = pd.concat([hit_rate_curve(tr, name, opts["capacities"], points=opts["points"], scope=opts["scope"],
                                   accounting=opts["accounting"], method=opts["method"],
                                   sample_rate=opts["sample_rate"], seed=opts["seed"], stream=stream)
                    for name in names], ignore_index=True)
    return df.assign(trace=label, model=tr.meta.model, mode="count")


def _sampled(rows) -> str:
    """' (sampled, 8 %)' for the rows of a sampled curve (moesim.curve), else nothing."""
    if "method" not in rows or not (rows["method"] == "sampled").any():
        return ""
    return f" (sampled, {float(rows['sample_rate'].max()):.0%})"


def _mark_token_footprint(ax, part) -> None:
    """A global cache smaller than one token's experts (MoE layers x top-k) thrashes under recency policies:
    shade the capacities below it, where a cliff in the curves is that and not the policy."""
    if "below_token_footprint" not in part or not (part["scope"] == "global").all():
        return
    below = part[part["below_token_footprint"].fillna(False).astype(bool)]
    if below.empty:
        return
    edge = 100 * float(part["token_footprint"].iloc[0]) / (float(part["capacity_experts"].iloc[0]) /
                                                          float(part["capacity_fraction"].iloc[0]))
    ax.axvspan(ax.get_xlim()[0], edge, color="0.85", zorder=0, label="below one token's experts")
