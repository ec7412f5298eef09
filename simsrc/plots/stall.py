"""Time per output token (ms) (`--y stall`: stall s, `--y total`: total s) vs link bandwidth (GB/s, log) or `--x
capacity`, a panel per value of the other (and per trace, hardware, scope); seeds averaged with their min–max
band.
"""
from __future__ import annotations

import numpy as np

from . import _inputs, _style

NAME = "stall"
ORDER = 2
INPUT = _inputs.RESULTS

TIME_METRICS = {"tpot": ("tpot_s", 1e3, "time per output token (ms)"),
                "stall": ("stall_s", 1.0, "stall time waiting for experts (s)"),
                "total": ("total_s", 1.0, "total replay time (s)")}


def draw(sources, *, x: str = "auto", y: str = "tpot", where: dict | None = None, title: str | None = None):
    """Time per output token (or stall, or total time) vs link bandwidth or vs capacity; returns the Figure."""
    plt = _style.pyplot()
    if y not in TIME_METRICS:
        raise ValueError(f"unknown time metric {y!r}; choose one of {', '.join(TIME_METRICS)}")
    column, scale, ylabel = TIME_METRICS[y]
    df = _style.ok(_inputs.results(sources, NAME, where))
    df = df[df[column].notna()] if column in df.columns else df.iloc[0:0]
    if df.empty:
        raise ValueError(f"no timed rows ({column} is empty): run the grid with mode = \"timed\"")
    if x == "auto":
        x = "bandwidth" if df["bandwidth_gbps"].nunique() > 1 else "capacity"
    if x not in ("bandwidth", "capacity"):
        raise ValueError(f"unknown x axis {x!r}; choose bandwidth or capacity")
    xcol, other = (("bandwidth_gbps", "capacity_fraction") if x == "bandwidth"
                   else ("capacity_fraction", "bandwidth_gbps"))
    xscale = 1.0 if x == "bandwidth" else 100.0
    xlabel = ("host→GPU link bandwidth (GB/s)" if x == "bandwidth"
              else "cache capacity (% of routed experts)")
    panels = _style.panels(df, ["trace", other, "hardware", "scope"])
    fig, axes = _style.grid_of(plt, len(panels))
    colors: dict = {}
    for ax, (name, part) in zip(axes, panels):
        for (policy, predictor, extra), rows in _style.series(part):
            a = _style.mean_spread(rows, xcol, column)
            _style.draw_line(ax, xscale * a[xcol], scale * a["mean"], _style.series_label(policy, predictor, extra),
                             _style.line_style(policy, predictor, colors, extra),
                             (scale * a["min"], scale * a["max"]))
        _style.log_if_wide(ax, part[xcol])
        _style.log_if_wide(ax, scale * part[column], "y")
        xs = np.unique(xscale * part[xcol])
        if ax.get_xscale() == "log":
            _style.plain_log_ticks(ax.xaxis)
            if len(xs) <= 10:
                ax.set_xticks(xs)
                ax.xaxis.set_minor_formatter(_style.no_labels())
        if ax.get_yscale() == "log":
            _style.plain_log_ticks(ax.yaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(name)
    _style.suptitle(fig, df, title, where)
    _style.legend(fig, axes)
    return fig
