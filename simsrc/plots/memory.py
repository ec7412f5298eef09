"""Expert slots, time per output token (ms, the median request's) and throughput (tokens/s) vs context length
(tokens), a line per batch size, a row of panels per trace, hardware and policy: what a GPU's memory leaves for
experts (`--capacity auto`) as a longer context or a larger batch takes it for the KV cache.

It draws the rows of a grid over `context` x `batch_size` with `capacity = "auto"` (experiments/memory_budget.toml);
a run whose KV cache does not fit fails with the arithmetic, and its line ends there.
"""
from __future__ import annotations

import numpy as np

from . import _inputs, _style

NAME = "memory"
ORDER = 7
INPUT = _inputs.RESULTS

PANELS = (("capacity_experts", 1.0, "experts the budget holds"),
          ("tpot_p50_s", 1e3, "TPOT, median request (ms)"),
          ("tokens_per_s", 1.0, "throughput (tokens/s)"))


def draw(sources, *, where: dict | None = None, title: str | None = None):
    """Expert slots, TPOT and throughput vs context length, a line per batch size; returns the Figure."""
    plt = _style.pyplot()
    df = _style.ok(_inputs.results(sources, NAME, where))
    if "context" in df.columns:
        df = df[df["context"].notna() & (df["capacity"].astype(str) == "auto")]
    if "context" not in df.columns or df.empty:
        raise ValueError("no rows of --capacity auto with a context: run a grid over context and batch_size with "
                         "capacity = \"auto\" (experiments/memory_budget.toml)")
    df = df[df["tpot_p50_s"].notna()] if "tpot_p50_s" in df.columns else df.iloc[0:0]
    if df.empty:
        raise ValueError("no timed rows (tpot_p50_s is empty): run the grid with mode = \"timed\"")
    groups = _style.panels(df, ["trace", "hardware", "policy", "predictor", "bandwidth_gbps", "kv_bytes_per_token",
                                "batching", "reserve"])
    fig, axes = _style.grid_of(plt, len(PANELS) * len(groups), width=3.4, height=2.8, cols=len(PANELS))
    sizes = sorted(df["batch_size"].unique())
    for g, (name, part) in enumerate(groups):
        for i, (column, scale, label) in enumerate(PANELS):
            ax = axes[g * len(PANELS) + i]
            for j, size in enumerate(sizes):
                rows = part[part["batch_size"] == size]
                if rows.empty:
                    continue
                a = _style.mean_spread(rows, "context", column)
                _style.draw_line(ax, a["context"].astype(float), scale * a["mean"], f"batch {int(size)}",
                                 {"color": f"C{j % 10}", "linestyle": "-", "marker": "o", "markersize": 3.5,
                                  "linewidth": 1.4}, (scale * a["min"], scale * a["max"]))
            _style.log_if_wide(ax, part["context"].astype(float))
            if ax.get_xscale() == "log":
                _style.plain_log_ticks(ax.xaxis)
                xs = np.unique(part["context"].astype(float))
                if len(xs) <= 8:
                    ax.set_xticks(xs)
                    ax.xaxis.set_minor_formatter(_style.no_labels())
            ax.set_xlabel("context (tokens per request)")
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and name:
                ax.set_title(name, loc="left")
    _style.suptitle(fig, df, title, where)
    _style.legend(fig, axes)
    return fig
