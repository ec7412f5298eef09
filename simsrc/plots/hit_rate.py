"""Hit rate (%) vs capacity (% of routed experts), a line per policy/predictor, a panel per trace, scope, mode and
prefill chunk; Belady dashed and the oracle predictor dotted as bounds; seeds averaged with their min–max band.

It also draws the table `moesim curve` returns (`moesim curve TRACE --plot FIG`), where a sampled curve's
line says so in its label.
"""
from __future__ import annotations

import numpy as np

from . import _inputs, _style

NAME = "hit-rate"
ORDER = 1
INPUT = _inputs.RESULTS


def draw(sources, *, where: dict | None = None, title: str | None = None):
    """Hit rate vs cache capacity from grid results (files or a DataFrame); returns the Figure."""
    plt = _style.pyplot()
    df = _style.ok(_inputs.results(sources, NAME, where))
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
