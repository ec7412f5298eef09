"""Figures from grid results, predictor scorecards and traces; each function returns a matplotlib Figure.

Results figures read the tidy rows `moesim grid` writes: hit rate vs capacity,
time per output token (or stall) vs link bandwidth or capacity, per-layer
heatmaps, predictor precision/recall vs horizon (from `moesim score-predictor
--json` scorecards). Trace figures read a trace: the token x expert activation
map of one request with the cached experts marked, and expert popularity.
Belady (and the oracle predictor, where present) is drawn as the bound.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

KINDS = ("hit-rate", "stall", "layers", "predictor", "activations", "popularity")
FORMATS = (".png", ".svg", ".pdf")
BOUND_POLICY = "belady"
BOUND_PREDICTOR = "oracle"


def _plt():
    import matplotlib
    if not os.environ.get("MPLBACKEND") and matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # files only; a notebook keeps its inline backend
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
                         "axes.spines.top": False, "axes.spines.right": False, "savefig.bbox": "tight",
                         "savefig.dpi": 200})
    return plt


# ---------------------------------------------------------------- results

def load_results(results) -> pd.DataFrame:
    if isinstance(results, pd.DataFrame):
        return results
    from .grid import read_results
    return read_results(results)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["error"].isna()] if "error" in df.columns else df


# parameters that, when they vary inside a panel, make lines of their own (e.g. two prefetch budgets)
SERIES_EXTRA = ("horizon", "top_n", "threshold", "prefetch_bytes_per_step", "adaptive", "latency_us",
                "copy_engines", "prefill_chunk")


def _series_label(policy: str, predictor: str, extra: dict | None = None) -> str:
    if policy == BOUND_POLICY and predictor in ("none", None):
        label = "Belady (optimal)"
    else:
        label = policy.upper() if predictor in ("none", None) else f"{policy.upper()} + {predictor} prefetch"
    if extra:
        label += " (" + ", ".join(f"{k} {v}" for k, v in extra.items()) + ")"
    return label


def _style(policy: str, predictor: str, color_of: dict, extra: dict | None = None) -> dict:
    if policy == BOUND_POLICY:
        return {"color": "black", "linestyle": "--", "marker": None, "linewidth": 1.5, "zorder": 3}
    if predictor == BOUND_PREDICTOR:
        return {"color": "dimgray", "linestyle": ":", "marker": None, "linewidth": 1.5, "zorder": 3}
    key = (policy, predictor, tuple((extra or {}).items()))
    if key not in color_of:
        color_of[key] = f"C{len(color_of) % 10}"
    return {"color": color_of[key], "linestyle": "-", "marker": "o", "markersize": 3.5, "linewidth": 1.4}


def _series(df: pd.DataFrame):
    """((policy, predictor, extra), rows) per line; bounds last so they draw on top and end the legend."""
    if "predictor" not in df.columns:
        df = df.assign(predictor="none")
    no_prefetch = df["predictor"].isin(["none"]) | df["predictor"].isna()
    prefetch_knobs = ("horizon", "top_n", "threshold", "adaptive", "prefetch_bytes_per_step")
    extra_cols = [c for c in SERIES_EXTRA if c in df.columns
                  and df.loc[~no_prefetch if c in prefetch_knobs else slice(None), c].astype(str).nunique() > 1]
    df = df.copy()
    for c in extra_cols:
        df[c] = df[c].astype(object).where(~(no_prefetch & (c in prefetch_knobs)), "-")  # one line without prefetch
    cols = ["policy", "predictor", *extra_cols]
    groups = df.groupby(cols, dropna=False, sort=True)
    keys = sorted(groups.groups, key=lambda k: (k[0] == BOUND_POLICY, k[1] == BOUND_PREDICTOR,
                                                 k[1] not in ("none", None), str(k)))
    for key in keys:
        extra = {c: (int(v) if isinstance(v, float) and v.is_integer() else v) for c, v in zip(extra_cols, key[2:])
                 if v != "-" and not (isinstance(v, float) and np.isnan(v))}
        yield (key[0], key[1], extra), groups.get_group(key)


def _panels(df: pd.DataFrame, by: list[str]):
    by = [c for c in by if c in df.columns and df[c].nunique() > 1]
    if not by:
        return [("", df)]
    return [(", ".join(f"{_short(c, v)}" for c, v in zip(by, key if isinstance(key, tuple) else (key,))), part)
            for key, part in df.groupby(by, sort=True)]


def _short(column: str, value) -> str:
    if column == "trace":
        return Path(str(value)).stem
    if column == "capacity_fraction":
        return f"capacity {100 * value:.0f}%"
    if column == "bandwidth_gbps":
        return f"link {value:g} GB/s"
    return f"{column} {value}"


def _grid_of(plt, n: int, width: float = 4.6, height: float = 3.4):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _line(ax, x, y, label, style, spread=None):
    order = np.argsort(x)
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    if len(x) == 1 and not style.get("marker"):
        style = {**style, "marker": "D", "markersize": 5}  # a single point of a bound needs a mark to be seen
    ax.plot(x, y, label=label, **style)
    if spread is not None:
        lo, hi = np.asarray(spread[0])[order], np.asarray(spread[1])[order]
        if np.any(hi > lo):
            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, linewidth=0)


def _log_if_wide(ax, values, axis: str = "x") -> None:
    v = np.asarray(values, dtype=float)
    v = v[v > 0]
    if len(v) and v.max() / v.min() >= 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _plain_log_ticks(axis) -> None:
    """Log axes labelled 0.5, 1, 2 rather than 5x10^-1."""
    from matplotlib.ticker import FuncFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # minor ticks: only 2x and 5x labelled, so a decade does not fill with crowded numbers
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _null():
    from matplotlib.ticker import NullFormatter
    return NullFormatter()


def _agg(part: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean over seeds (and any repeated configuration), with the min-max spread."""
    return part.groupby(x)[y].agg(["mean", "min", "max"]).reset_index()


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if len(axes) == 1:
        axes[0].legend(handles.values(), labels, frameon=False, loc="best")
    else:
        fig.legend(handles.values(), labels, frameon=False, loc="outside right center")


def hit_rate_vs_capacity(results, *, title: str | None = None):
    """Hit rate vs cache capacity, one line per policy (and predictor); Belady dashed as the bound."""
    plt = _plt()
    df = _ok(load_results(results))
    df = df[df["hit_rate"].notna()]
    if df.empty:
        raise ValueError("no result rows with a hit rate to plot")
    panels = _panels(df, ["trace", "scope", "mode", "prefill_chunk"])
    fig, axes = _grid_of(plt, len(panels))
    colors: dict = {}
    for ax, (name, part) in zip(axes, panels):
        for (policy, predictor, extra), rows in _series(part):
            a = _agg(rows, "capacity_fraction", "hit_rate")
            _line(ax, 100 * a["capacity_fraction"], 100 * a["mean"], _series_label(policy, predictor, extra),
                  _style(policy, predictor, colors, extra), (100 * a["min"], 100 * a["max"]))
        _log_if_wide(ax, part["capacity_fraction"])
        caps = np.unique(100 * part["capacity_fraction"])
        if len(caps) == 1:  # one capacity: a labelled tick, not a zoomed axis of fractions of a percent
            ax.set_xticks(caps, [f"{caps[0]:.3g}"])
            ax.set_xlim(caps[0] - 5, caps[0] + 5)
        ax.set_xlabel("cache capacity (% of routed experts)")
        ax.set_ylabel("hit rate (%)")
        ax.set_ylim(0, 102)  # a bound at 100 % stays visible
        ax.grid(True, alpha=0.3)
        ax.set_title(name)
    _suptitle(fig, df, title)
    _legend(fig, axes)
    return fig


def _suptitle(fig, df: pd.DataFrame, title: str | None) -> None:
    if title:
        fig.suptitle(title)
    elif "trace" in df.columns and df["trace"].nunique() == 1 and "model" in df.columns:
        mode = "" if "mode" not in df.columns or df["mode"].nunique() != 1 else f", {df['mode'].iloc[0]} mode"
        fig.suptitle(f"{df['model'].iloc[0]} ({Path(str(df['trace'].iloc[0])).stem}{mode})")


TIME_METRICS = {"tpot": ("tpot_s", 1e3, "time per output token (ms)"),
                "stall": ("stall_s", 1.0, "stall time waiting for experts (s)"),
                "total": ("total_s", 1.0, "total replay time (s)")}


def stall_vs(results, *, x: str = "auto", y: str = "tpot", title: str | None = None):
    """Time per output token (or stall) vs link bandwidth or vs capacity; a panel per value of the other."""
    plt = _plt()
    if y not in TIME_METRICS:
        raise ValueError(f"unknown time metric {y!r}; choose one of {', '.join(TIME_METRICS)}")
    column, scale, ylabel = TIME_METRICS[y]
    df = _ok(load_results(results))
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
    panels = _panels(df, ["trace", other, "hardware", "scope"])
    fig, axes = _grid_of(plt, len(panels))
    colors: dict = {}
    for ax, (name, part) in zip(axes, panels):
        for (policy, predictor, extra), rows in _series(part):
            a = _agg(rows, xcol, column)
            _line(ax, xscale * a[xcol], scale * a["mean"], _series_label(policy, predictor, extra),
                  _style(policy, predictor, colors, extra), (scale * a["min"], scale * a["max"]))
        _log_if_wide(ax, part[xcol])
        _log_if_wide(ax, scale * part[column], "y")
        xs = np.unique(xscale * part[xcol])
        if ax.get_xscale() == "log":
            _plain_log_ticks(ax.xaxis)
            if len(xs) <= 10:
                ax.set_xticks(xs)
                ax.xaxis.set_minor_formatter(_null())
        if ax.get_yscale() == "log":
            _plain_log_ticks(ax.yaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(name)
    _suptitle(fig, df, title)
    _legend(fig, axes)
    return fig


def layer_heatmap(results, *, by: str = "auto", metric: str = "hit_rate", policy: str | None = None,
                  capacity: float | None = None, scope: str | None = None, title: str | None = None):
    """Per-layer hit rate (or stall) as a heatmap: MoE layer x capacity (one policy) or x policy (one capacity)."""
    plt = _plt()
    df = _ok(load_results(results))
    if "hits_per_layer" not in df.columns:
        raise ValueError("the results have no per-layer columns: run the grid with per_layer = true")
    if metric == "stall" and "stall_per_layer_s" not in df.columns:
        raise ValueError("no per-layer stall: run the grid with per_layer = true and mode = \"timed\"")
    if "trace" in df.columns and df["trace"].nunique() > 1:
        df = df[df["trace"] == df["trace"].iloc[0]]  # one trace per heatmap: layers differ between models
    if "scope" in df.columns and (scope is not None or df["scope"].nunique() > 1):
        # a global and a per-layer cache of the same size are different caches: never average them
        scope = scope or ("per-layer" if "per-layer" in set(df["scope"]) else df["scope"].iloc[0])
        df = df[df["scope"] == scope]
    scope_note = f", {scope} cache" if scope else ""
    if by == "auto":
        by = "capacity" if df["capacity_fraction"].nunique() > 1 else "policy"
    if by == "capacity":
        policy = policy or next((p for p in df["policy"].unique() if p != BOUND_POLICY), df["policy"].iloc[0])
        part = df[df["policy"] == policy].sort_values("capacity_fraction")
        groups = list(part.groupby("capacity_fraction", sort=True))
        xlabels = [f"{100 * c:.0f}%" for c, _ in groups]
        xtitle, what = "cache capacity (% of routed experts)", f"policy {policy.upper()}"
    elif by == "policy":
        if capacity is None:
            caps = np.sort(df["capacity_fraction"].unique())
            capacity = caps[len(caps) // 2]
        part = df[np.isclose(df["capacity_fraction"], capacity)]
        groups = list(part.groupby("policy", sort=True))
        groups.sort(key=lambda g: g[0] == BOUND_POLICY)
        xlabels = [_series_label(p, "none") for p, _ in groups]
        xtitle, what = "policy", f"capacity {100 * capacity:.0f}% of routed experts"
    else:
        raise ValueError(f"unknown heatmap axis {by!r}; choose capacity or policy")
    if not groups:
        raise ValueError("no rows to draw for this heatmap; check --policy / --capacity against the results")
    cols = []
    for _, rows in groups:
        hits = np.mean(np.stack(rows["hits_per_layer"].map(np.asarray)), axis=0)
        misses = np.mean(np.stack(rows["misses_per_layer"].map(np.asarray)), axis=0)
        if metric == "stall":
            cols.append(1e3 * np.mean(np.stack(rows["stall_per_layer_s"].map(np.asarray)), axis=0))
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                cols.append(100 * hits / (hits + misses))
    mat = np.stack(cols, axis=1)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.55 * mat.shape[1] + 2.5), max(3.5, 0.17 * mat.shape[0] + 1.5)),
                           layout="constrained")
    cmap = "viridis" if metric != "stall" else "magma_r"
    img = ax.imshow(mat, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest",
                    vmin=0 if metric != "stall" else None, vmax=100 if metric != "stall" else None)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45 if by == "policy" or len(xlabels) > 8 else 0,
                  ha="right" if by == "policy" or len(xlabels) > 8 else "center")
    step = max(1, mat.shape[0] // 13)
    ax.set_yticks(range(0, mat.shape[0], step))
    ax.set_xlabel(xtitle)
    ax.set_ylabel("MoE layer (index)")
    fig.colorbar(img, ax=ax, label="hit rate (%)" if metric != "stall" else "stall per layer (ms)")
    trace_name = Path(str(df["trace"].iloc[0])).stem if "trace" in df.columns else ""
    ax.set_title(title or f"{trace_name}: per-layer {'hit rate' if metric != 'stall' else 'stall'}, "
                          f"{what}{scope_note}")
    return fig


# ---------------------------------------------------------------- predictors

def load_scorecards(sources) -> list[dict]:
    """Scorecards (`moesim score-predictor --json`) from files or dicts."""
    if isinstance(sources, (str, os.PathLike, dict)):
        sources = [sources]
    cards = []
    for s in sources:
        if isinstance(s, dict):
            cards.append(s)
            continue
        path = Path(s)
        try:
            card = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such scorecard (write one with `moesim score-predictor TRACE "
                                    f"--json > {path.name}`)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON scorecard ({e})") from None
        if "by_horizon" not in card:
            raise ValueError(f"{path}: has no 'by_horizon' field; write it with `moesim score-predictor TRACE "
                             f"--horizon H --json`")
        cards.append(card)
    return cards


def predictor_accuracy(scorecards, *, title: str | None = None):
    """Precision and recall vs prediction horizon, one line per predictor (oracle dotted as the bound)."""
    plt = _plt()
    cards = load_scorecards(scorecards)
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.4), layout="constrained", sharey=True)
    colors: dict = {}
    for card in cards:
        hs = sorted(int(h) for h in card["by_horizon"])
        name = str(card.get("predictor", "?"))
        label = name if len({c.get("trace") for c in cards}) <= 1 else f"{name} ({Path(str(card.get('trace'))).stem})"
        style = _style("pred", name, colors)
        for ax, metric in zip(axes, ("precision", "recall")):
            ys = [100 * card["by_horizon"][str(h)][metric] for h in hs]
            ax.plot(hs, ys, label=label, **style)
    for ax, metric in zip(axes, ("precision", "recall")):
        ax.set_xlabel("prediction horizon (MoE layers ahead)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, 102)  # a bound at 100 % stays visible
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(metric)
    traces = {Path(str(c.get("trace"))).stem for c in cards}
    fig.suptitle(title or ("predictor accuracy" + (f" on {traces.pop()}" if len(traces) == 1 else "")))
    axes[1].legend(frameon=False, loc="best")
    return fig


# ---------------------------------------------------------------- traces

def cache_residency(expert_ids: np.ndarray, num_experts: int, slots: int,
                    policy: str = "lru") -> tuple[np.ndarray, np.ndarray]:
    """One layer's cache token by token: (held before each token, each routed expert a hit), bool tokens x experts.

    A per-layer cache of `slots` experts, replayed as a plain cache simulator
    (count mode): a token's experts are looked up in stored order, so a miss
    may evict an expert the same token needs next (which then misses too).
    LRU evicts the expert used longest ago; LFU the fewest uses since insertion,
    ties to the one whose count changed longest ago (moesim.policies.lfu's tie-break).
    """
    if policy not in ("lru", "lfu"):
        raise ValueError(f"the activation map simulates lru or lfu, not {policy!r}")
    T = expert_ids.shape[0]
    resident = np.zeros((T, num_experts), dtype=bool)
    hit = np.zeros((T, num_experts), dtype=bool)
    cached: dict[int, list] = {}  # expert -> [uses, last change]
    clock = 0
    for t in range(T):
        for e in cached:
            resident[t, e] = True
        for e in expert_ids[t]:
            e = int(e)
            clock += 1
            if e in cached:
                hit[t, e] = True
                cached[e][0] += 1
                cached[e][1] = clock
                continue
            if slots <= 0:
                continue
            if len(cached) >= slots:
                if policy == "lru":
                    victim = min(cached, key=lambda x: cached[x][1])
                else:
                    victim = min(cached, key=lambda x: (cached[x][0], cached[x][1]))
                del cached[victim]
            cached[e] = [1, clock]
    return resident, hit


def _trace(trace):
    from .trace import Trace, read_trace
    return trace if isinstance(trace, Trace) else read_trace(trace)


def activation_map(trace, *, request: int | None = None, layers: Iterable[int] | None = None,
                   policy: str = "lru", slots: int | None = None, tokens: int = 96, title: str | None = None):
    """Token x expert map of one request for a few layers: routed experts coloured by hit (cached) or miss,
    and the experts the cache holds while unused shaded -- the figure of the LRU-vs-LFU offloading studies."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    tr = _trace(trace)
    meta = tr.meta
    req_col = tr.column("request_id")
    if request is None:
        # the first request long enough to show `tokens` tokens, else the longest
        ids_, counts = np.unique(req_col, return_counts=True)
        per_token = counts / meta.num_moe_layers
        long_enough = ids_[per_token >= tokens]
        request = int(long_enough[0]) if len(long_enough) else int(ids_[np.argmax(per_token)])
    request = int(request)
    if request not in set(np.unique(req_col).tolist()):
        raise ValueError(f"{tr.path}: no request {request}; requests run {req_col.min()}..{req_col.max()}")
    sel = tr.select_requests([request])
    layer_idx = sel.layer_index()
    ids = sel.expert_ids()
    pos = sel.column("token_pos")
    E = meta.num_experts
    if layers is None:
        L = meta.num_moe_layers
        layers = sorted({0, L // 3, (2 * L) // 3, L - 1}) if L > 4 else list(range(L))
    layers = list(layers)
    bad = [l for l in layers if not 0 <= l < meta.num_moe_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: layers are MoE layer indices 0..{meta.num_moe_layers - 1}")
    slots = max(1, E // 4) if slots is None else int(slots)
    cmap = ListedColormap(["white", "#d9d9d9", "#d62728", "#2ca02c"])  # idle, cached idle, miss, hit
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 0.9 + max(1.6, 0.05 * E) * len(layers)), sharex=True,
                             squeeze=False, layout="constrained")
    total_hits = total = 0
    for ax, layer in zip(axes[:, 0], layers):
        rows = np.flatnonzero(layer_idx == layer)
        rows = rows[np.argsort(pos[rows], kind="stable")][:tokens]
        lids = ids[rows]
        res, hit = cache_residency(lids, E, slots, policy)
        active = np.zeros_like(res)
        np.put_along_axis(active, lids.astype(np.int64), True, axis=1)
        img = np.where(active, np.where(hit, 3, 2), np.where(res, 1, 0))
        total_hits += int(hit.sum())
        total += int(active.sum())
        ax.imshow(img.T, aspect="auto", origin="lower", cmap=cmap, vmin=0, vmax=3, interpolation="nearest",
                  extent=(-0.5, len(rows) - 0.5, -0.5, E - 0.5))
        ax.set_ylabel(f"layer {meta.moe_layers[layer]}\nexpert")
        hr = hit.sum() / max(1, active.sum())
        ax.text(1.005, 0.5, f"hit rate\n{100 * hr:.0f}%", transform=ax.transAxes, va="center", fontsize=8)
    axes[-1, 0].set_xlabel(f"token position in request {request}")
    fig.legend(handles=[Patch(color="#2ca02c", label="routed, cached (hit)"),
                        Patch(color="#d62728", label="routed, not cached (miss)"),
                        Patch(facecolor="#d9d9d9", label="cached, not routed")],
               loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(title or f"{meta.model}: {policy.upper()} cache of {slots} of {E} experts per layer, "
                          f"top-{meta.top_k} routing")
    fig.hit_rate = total_hits / max(1, total)  # what the map shows, for checks and captions
    return fig


def expert_popularity(trace, *, title: str | None = None):
    """Share of each layer's activations per expert (heatmap), and the sorted share per layer (skew)."""
    plt = _plt()
    from matplotlib.colors import LogNorm
    tr = _trace(trace)
    meta = tr.meta
    L, E = meta.num_moe_layers, meta.num_experts
    counts = tr.expert_counts().astype(float)
    share = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, max(3.4, 0.14 * L + 1.6)), layout="constrained",
                                  gridspec_kw={"width_ratios": [2.2, 1]})
    positive = share[share > 0]
    norm = LogNorm(vmin=max(positive.min(), 1e-3), vmax=share.max()) if len(positive) else None
    img = ax.imshow(np.where(share > 0, share, np.nan), aspect="auto", origin="lower", cmap="viridis",
                    norm=norm, interpolation="nearest")
    ax.set_xlabel("expert id")
    ax.set_ylabel("MoE layer (index)")
    bar = fig.colorbar(img, ax=ax, label="share of the layer's activations (%)")
    _plain_log_ticks(bar.ax.yaxis)
    ranks = np.arange(1, E + 1)
    colors = plt.get_cmap("viridis")(np.linspace(0, 1, L))
    for layer in range(L):
        ax2.plot(ranks, np.sort(share[layer])[::-1], color=colors[layer], linewidth=0.9)
    ax2.axhline(100 / E, color="black", linestyle="--", linewidth=1, label=f"uniform (1/{E})")
    ax2.set_yscale("log")
    _plain_log_ticks(ax2.yaxis)
    ax2.set_xlabel("expert rank in its layer")
    ax2.set_ylabel("share of activations (%)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(frameon=False)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, L - 1))
    fig.colorbar(sm, ax=ax2, label="MoE layer (index)")
    tokens = int((tr.layer_index() == 0).sum())
    fig.suptitle(title or f"{meta.model}: expert popularity over {tokens:,} tokens, top-{meta.top_k} of {E}")
    return fig


# ---------------------------------------------------------------- one entry point

def plot(sources, kind: str, **options):
    """The figure of `kind` (see KINDS) from results files, scorecards (predictor) or a trace."""
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    if isinstance(sources, (str, os.PathLike, pd.DataFrame, dict)):
        sources = [sources]
    sources = list(sources)
    if kind == "predictor":
        return predictor_accuracy(sources, **options)
    if kind in ("activations", "popularity"):
        if len(sources) != 1:
            raise ValueError(f"--kind {kind} draws one trace; give one TRACE file")
        return (activation_map if kind == "activations" else expert_popularity)(sources[0], **options)
    df = pd.concat([load_results(s) for s in sources], ignore_index=True)
    if kind == "hit-rate":
        return hit_rate_vs_capacity(df, **options)
    if kind == "stall":
        return stall_vs(df, **options)
    return layer_heatmap(df, **options)


def save(fig, out: str | os.PathLike) -> Path:
    """Write a figure; the format follows the extension (.png, .svg, .pdf)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"{out}: unknown figure format {out.suffix!r}; end the name in .png, .svg or .pdf")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    _plt().close(fig)
    return out
