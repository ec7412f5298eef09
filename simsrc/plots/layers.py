"""Heatmap of per-layer hit rate (or `--metric stall`, ms) from results with `per_layer = true`: the model's layers
× capacity (one `--policy`) or × policy (`--by policy --capacity 0.25`), one `--scope`; a heatmap per trace and
per value of any other parameter that varies (select with `--where`), seeds averaged, all of it said in the
titles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _inputs, _style

NAME = "layers"
ORDER = 3
INPUT = _inputs.RESULTS

# parameters of a run that make heatmaps of their own when they vary (seeds are averaged instead)
FACETS = ("trace", "mode", "predictor", "horizon", "top_n", "threshold", "prefetch_bytes_per_step", "adaptive",
          "prefill_chunk", "hardware", "bandwidth_gbps", "latency_us", "copy_engines", "gpu_tflops", "hbm_gbps",
          "bytes_per_expert", "pinned_experts")
MOST_PANELS = 6  # more heatmaps than this do not fit a page with readable layer labels


def draw(sources, *, by: str = "auto", metric: str = "hit_rate", policy: str | None = None,
         capacity: float | None = None, scope: str | None = None, where: dict | None = None,
         title: str | None = None):
    """Per-layer hit rate (or stall) heatmaps from grid results (files or a DataFrame); returns the Figure."""
    plt = _style.pyplot()
    df = _style.ok(_inputs.results(sources, NAME, where))
    if "hits_per_layer" not in df.columns or df["hits_per_layer"].isna().all():
        raise ValueError("the results have no per-layer columns: run the grid with per_layer = true")
    df = df[df["hits_per_layer"].notna()]
    if metric not in ("hit_rate", "stall"):
        raise ValueError(f"unknown heatmap metric {metric!r}; choose hit_rate or stall")
    if metric == "stall" and ("stall_per_layer_s" not in df.columns or df["stall_per_layer_s"].isna().all()):
        raise ValueError("no per-layer stall: run the grid with per_layer = true and mode = \"timed\"")
    if "scope" in df.columns and (scope is not None or df["scope"].nunique() > 1):
        # a global and a per-layer cache of the same size are different caches: never average them
        scope = scope or ("per-layer" if "per-layer" in set(df["scope"]) else df["scope"].iloc[0])
        df = df[df["scope"] == scope]
        if df.empty:
            raise ValueError(f"no result rows with scope {scope!r}")
    if scope is None and "scope" in df.columns:
        scope = df["scope"].iloc[0]
    scope_note = f", {scope} cache" if scope else ""
    if by == "auto":
        by = "capacity" if df["capacity_fraction"].nunique() > 1 else "policy"
    if by == "capacity":
        policy = policy or next((p for p in df["policy"].unique() if p != _style.BOUND_POLICY), df["policy"].iloc[0])
        part = df[df["policy"] == policy]
        xcol, xtitle, what = "capacity_fraction", "cache capacity (% of routed experts)", f"policy {policy.upper()}"
    elif by == "policy":
        if capacity is None:
            caps = np.sort(df["capacity_fraction"].unique())
            capacity = caps[len(caps) // 2]
        part = df[np.isclose(df["capacity_fraction"], capacity)]
        xcol, xtitle, what = "policy", "policy", f"capacity {100 * capacity:.0f}% of routed experts"
    else:
        raise ValueError(f"unknown heatmap axis {by!r}; choose capacity or policy")
    if part.empty:
        raise ValueError("no rows to draw for this heatmap; check --policy / --capacity against the results")

    facets = _facets(part)
    panels = [_matrix(rows, xcol, metric) for _, rows in facets]
    runs = max(p[2] for p in panels)
    seeds = part["seed"].nunique() if "seed" in part.columns else 1
    mean_note = "" if runs == 1 else (f", mean of {seeds} seeds" if runs == seeds else f", mean of {runs} runs")

    n = len(panels)
    cols = min(n, 2)
    rows_n = -(-n // cols)
    width = max(4.0, 0.5 * max(len(p[1]) for p in panels) + 2.2)
    height = max(3.0, 0.16 * max(p[0].shape[0] for p in panels) + 1.4)
    scale = min(1.0, _style.PAGE_WIDTH / (width * cols + 1.2), _style.PAGE_HEIGHT / (height * rows_n + 0.6))
    fig, axes = plt.subplots(rows_n, cols, figsize=(scale * (width * cols + 1.2), scale * (height * rows_n + 0.6)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes = list(axes.flat[:n])
    # hit rates share 0-100 %; stalls share a scale within one trace only (models stall on different scales)
    one_scale = metric != "stall" or "trace" not in part.columns or part["trace"].nunique() == 1
    values = np.concatenate([p[0][np.isfinite(p[0])] for p in panels])
    cmap = "viridis" if metric != "stall" else "magma_r"
    label = "hit rate (%)" if metric != "stall" else "stall per layer (ms)"
    for ax, (key, rows), (mat, xlabels, _) in zip(axes, facets, panels):
        scale_of = values if one_scale else mat[np.isfinite(mat)]
        vmin, vmax = (0, 100) if metric != "stall" else ((scale_of.min(), scale_of.max()) if len(scale_of) else (0, 1))
        img = ax.imshow(mat, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
        tilt = by == "policy" or len(xlabels) > 8
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=45 if tilt else 0, ha="right" if tilt else "center")
        ax.set_ylabel(_style.layer_ticks(ax.yaxis, _inputs.model_layers(rows), mat.shape[0]))
        ax.set_xlabel(xtitle)
        ax.set_title(key)
        if not one_scale:
            fig.colorbar(img, ax=ax, label=label)
    if one_scale:
        fig.colorbar(img, ax=axes, shrink=0.6 if n > 2 else 1.0, label=label)
    traces = part["trace"].unique() if "trace" in part.columns else []
    trace_name = f"{Path(str(traces[0])).stem}: " if len(traces) == 1 else ""
    fig.suptitle(title or f"{trace_name}per-layer {'hit rate' if metric != 'stall' else 'stall'}, "
                          f"{what}{scope_note}{mean_note}{_style.where_note(where)}")
    return fig


def _facets(part):
    """(title, rows) per trace and per combination of the other FACETS that vary within a trace, or a clear
    error when they make too many. (A trace's own numbers, such as bytes per expert, vary only with it.)"""
    traces = part["trace"].astype(str) if "trace" in part.columns else None
    varying = [c for c in FACETS[1:] if c in part.columns
               and (part[c].astype(str).groupby(traces).nunique() if traces is not None
                    else part[c].astype(str).nunique()).max() > 1]
    by = (["trace"] if traces is not None and traces.nunique() > 1 else []) + varying
    if not by:
        return [("", part)]
    facets = []
    for key, rows in part.groupby(by, sort=True, dropna=False):
        names = [_style.short(c, v) for c, v in zip(by, key)]
        facets.append(("\n".join([names[0], ", ".join(names[1:])]) if by[0] == "trace" and len(by) > 1
                       else ", ".join(names), rows))
    if len(facets) > MOST_PANELS:
        counts = ", ".join(f"{c} ({part[c].astype(str).nunique()} values)" for c in by)
        c = by[-1]
        raise ValueError(f"the results vary in {counts}: {len(facets)} heatmaps do not fit a page; pick with "
                         f"--where COLUMN=VALUE (Python: where={{column: value}}), e.g. --where {c}={part[c].iloc[0]}")
    return facets


def _matrix(rows, xcol, metric):
    """(layers x columns values, column labels, most runs averaged in a cell) for one heatmap."""
    groups = list(rows.groupby(xcol, sort=True))
    if xcol == "policy":
        groups.sort(key=lambda g: g[0] == _style.BOUND_POLICY)
        labels = [_style.series_label(p, "none") for p, _ in groups]
    else:
        labels = [f"{100 * c:.0f}%" for c, _ in groups]
    cols = []
    for _, g in groups:
        if metric == "stall":
            cols.append(1e3 * np.mean(np.stack(g["stall_per_layer_s"].map(np.asarray)), axis=0))
            continue
        hits = np.mean(np.stack(g["hits_per_layer"].map(np.asarray)), axis=0)
        misses = np.mean(np.stack(g["misses_per_layer"].map(np.asarray)), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            cols.append(100 * hits / (hits + misses))
    return np.stack(cols, axis=1), labels, max(len(g) for _, g in groups)
