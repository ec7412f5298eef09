"""moesim.plots: one module per figure kind; adding a kind is adding a module here.

Each module declares at its top `NAME` (the `--kind`), `ORDER` (its place in
lists) and `INPUT` (what it draws from: grid results, predictor scorecards or
a trace; see _inputs.py), has a docstring whose first paragraph says what
it draws (the README table prints it), and a
`draw(sources, **options) -> matplotlib Figure`. Its keyword options are the
`moesim plot` options of the same name (`--x`, `--by`, `--slots`, ...).
Layers are always named by the model's own layer numbers (trace metadata
`moe_layers`); MoE layer indices stay inside.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

from ..registry import Registry
from . import _inputs
from .activations import draw as activation_map
from .hit_rate import draw as hit_rate_vs_capacity
from .layers import draw as layer_heatmap
from .memory import draw as memory_budget
from .popularity import draw as expert_popularity
from .predictor import draw as predictor_accuracy
from .stall import draw as stall_vs

PLOT_KINDS = Registry("plot kind", __name__)
FORMATS = (".png", ".svg", ".pdf")

__all__ = ["PLOT_KINDS", "activation_map", "expert_popularity", "hit_rate_vs_capacity", "layer_heatmap",
           "memory_budget", "options", "plot", "predictor_accuracy", "save", "stall_vs", "table"]


def options(kind: str) -> list[str]:
    """The keyword options a kind's draw() takes."""
    params = inspect.signature(PLOT_KINDS.get(kind).draw).parameters.values()
    return [p.name for p in params if p.kind == p.KEYWORD_ONLY]


def plot(sources, kind: str, **opts):
    """The figure of `kind` (a name in PLOT_KINDS) from results files, scorecards or a trace."""
    module = PLOT_KINDS.get(kind)
    takes = options(kind)
    unknown = [o for o in opts if o not in takes]
    if unknown:
        raise ValueError(f"plot kind {module.NAME!r} has no option {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(takes)}")
    return module.draw(sources, **opts)


def save(fig, out: str | os.PathLike) -> Path:
    """Write a figure, the format from the extension (.png, .svg, .pdf): all of it or nothing.

    It is written to a file beside `out` and renamed over it, so a failure never leaves half a figure
    (or destroys the previous one).
    """
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"{out}: unknown figure format {out.suffix!r}; end the name in .png, .svg or .pdf")
    from ..files import atomic_write
    from ._style import pyplot
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # the temporary name ends in .part, so the format is passed, not guessed from it
        atomic_write(out, lambda tmp: fig.savefig(tmp, format=out.suffix.lower()[1:]))
    finally:
        pyplot().close(fig)
    return out


def table() -> str:
    """The README's table of plot kinds: name, what it draws from, what it draws, its options."""
    rows = ["| kind | from | draws | options |", "| --- | --- | --- | --- |"]
    for name, module in PLOT_KINDS.items():
        what = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        opts = ", ".join(f"`--{o.replace('_', '-')}`" for o in options(name) if o != "title") or "–"
        rows.append(f"| `{name}` | {module.INPUT} | {what} | {opts} |")
    return "\n".join(rows)


def kinds_help() -> str:
    """One line per kind for `moesim plot --help`: the name and what it draws from."""
    return "; ".join(f"{name}: {_inputs.WANTS[m.INPUT].split(' (')[0]}" for name, m in PLOT_KINDS.items())
