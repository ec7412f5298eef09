"""What every figure shares: the matplotlib setup, line styles with the bounds drawn apart, panels, legends,
log ticks, and how layers are named on an axis."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BOUND_POLICY = "belady"
BOUND_PREDICTOR = "oracle"
# a page, in inches (A4 and US letter both hold it with margins): every figure fits inside
PAGE_WIDTH, PAGE_HEIGHT = 10.0, 11.0

# parameters that, when they vary inside a panel, make lines of their own (e.g. two prefetch budgets)
SERIES_EXTRA = ("horizon", "top_n", "threshold", "prefetch_bytes_per_step", "adaptive", "latency_us",
                "copy_engines", "prefill_chunk")


def pyplot():
    import matplotlib
    if not os.environ.get("MPLBACKEND") and matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # files only; a notebook keeps its inline backend
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
                         "axes.spines.top": False, "axes.spines.right": False, "savefig.bbox": "tight",
                         "savefig.dpi": 200})
    return plt


def ok(df):
    """Rows of runs that finished (a grid keeps failed runs with their error)."""
    return df[df["error"].isna()] if "error" in df.columns else df


# ---------------------------------------------------------------- layers

def layer_names(moe_layers, num_layers: int) -> tuple[list[str], str]:
    """(tick label per MoE layer, axis title): the model's own layer numbers when known, else MoE indices."""
    if moe_layers is not None and len(moe_layers) == num_layers:
        return [str(int(n)) for n in moe_layers], "model layer"
    return [str(i) for i in range(num_layers)], "MoE layer index"


def layer_ticks(axis, moe_layers, num_layers: int, most: int = 14) -> str:
    """Label a heatmap's layer axis (rows or columns 0..num_layers-1) with the layers' names; returns its title."""
    names, what = layer_names(moe_layers, num_layers)
    at = np.arange(0, num_layers, max(1, -(-num_layers // most)))
    axis.set_ticks(at, [names[i] for i in at])
    return what


# ---------------------------------------------------------------- lines

def series_label(policy: str, predictor: str, extra: dict | None = None) -> str:
    if policy == BOUND_POLICY and predictor in ("none", None):
        label = "Belady (optimal)"
    else:
        label = policy.upper() if predictor in ("none", None) else f"{policy.upper()} + {predictor} prefetch"
    if extra:
        label += " (" + ", ".join(f"{k} {v}" for k, v in extra.items()) + ")"
    return label


def line_style(policy: str, predictor: str, color_of: dict, extra: dict | None = None) -> dict:
    if policy == BOUND_POLICY:
        return {"color": "black", "linestyle": "--", "marker": None, "linewidth": 1.5, "zorder": 3}
    if predictor == BOUND_PREDICTOR:
        return {"color": "dimgray", "linestyle": ":", "marker": None, "linewidth": 1.5, "zorder": 3}
    key = (policy, predictor, tuple((extra or {}).items()))
    if key not in color_of:
        color_of[key] = f"C{len(color_of) % 10}"
    return {"color": color_of[key], "linestyle": "-", "marker": "o", "markersize": 3.5, "linewidth": 1.4}


def series(df):
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


def panels(df, by: list[str]):
    """(title, rows) per combination of the columns in `by` that vary; one untitled panel when none does."""
    by = [c for c in by if c in df.columns and df[c].astype(str).nunique() > 1]
    if not by:
        return [("", df)]
    out = []
    for key, part in df.groupby(by, sort=True):
        names = [short(c, v) for c, v in zip(by, key if isinstance(key, tuple) else (key,))]
        # a trace's name is long: it takes a line of its own
        title = names[0] + "\n" + ", ".join(names[1:]) if by[0] == "trace" and len(names) > 1 else ", ".join(names)
        out.append((title, part))
    return out


def short(column: str, value) -> str:
    if column == "trace":
        return Path(str(value)).stem
    if column == "capacity_fraction":
        return f"capacity {100 * value:.0f}%"
    if column == "bandwidth_gbps":
        return f"link {value:g} GB/s"
    return f"{column} {value}"


def grid_of(plt, n: int, width: float = 4.2, height: float = 3.1, cols: int = 2):
    """n panels, up to `cols` a row, scaled down so the whole figure (legend aside) fits a page."""
    cols = min(n, cols)
    rows = -(-n // cols)
    scale = min(1.0, PAGE_WIDTH / (width * cols), PAGE_HEIGHT / (height * rows))
    fig, axes = plt.subplots(rows, cols, figsize=(scale * width * cols, scale * height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def draw_line(ax, x, y, label, style, spread=None):
    order = np.argsort(x)
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    if len(x) == 1 and not style.get("marker"):
        style = {**style, "marker": "D", "markersize": 5}  # a single point of a bound needs a mark to be seen
    ax.plot(x, y, label=label, **style)
    if spread is not None:
        lo, hi = np.asarray(spread[0])[order], np.asarray(spread[1])[order]
        if np.any(hi > lo):
            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15, linewidth=0)


def log_if_wide(ax, values, axis: str = "x") -> None:
    v = np.asarray(values, dtype=float)
    v = v[v > 0]
    if len(v) and v.max() / v.min() >= 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def plain_log_ticks(axis) -> None:
    """Log axes labelled 0.5, 1, 2 rather than 5x10^-1."""
    from matplotlib.ticker import FuncFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # minor ticks: only 2x and 5x labelled, so a decade does not fill with crowded numbers
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def no_labels():
    from matplotlib.ticker import NullFormatter
    return NullFormatter()


def mean_spread(part, x: str, y: str):
    """Mean over seeds (and any repeated configuration), with the min-max spread."""
    return part.groupby(x)[y].agg(["mean", "min", "max"]).reset_index()


def legend(fig, axes) -> None:
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


def where_note(where: dict | None) -> str:
    """The rows a user selected, as a title says it: ', bandwidth_gbps = 8'."""
    return "".join(f", {column} = {value}" for column, value in (where or {}).items())


def suptitle(fig, df, title: str | None, where: dict | None = None) -> None:
    if title:
        fig.suptitle(title)
    elif "trace" in df.columns and df["trace"].nunique() == 1 and "model" in df.columns:
        mode = "" if "mode" not in df.columns or df["mode"].nunique() != 1 else f", {df['mode'].iloc[0]} mode"
        fig.suptitle(f"{df['model'].iloc[0]} ({Path(str(df['trace'].iloc[0])).stem}{mode}{where_note(where)})")
    elif where:
        fig.suptitle(where_note(where)[2:])
