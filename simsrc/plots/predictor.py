"""Precision and recall (%) vs prediction horizon, a line per scorecard (`moesim score-predictor --json`), the
oracle dotted as the bound.
"""
from __future__ import annotations

from pathlib import Path

from . import _inputs, _style

NAME = "predictor"
ORDER = 4
INPUT = _inputs.SCORECARDS


def draw(sources, *, title: str | None = None):
    """Precision and recall vs horizon from scorecards (JSON files or dicts); returns the Figure."""
    plt = _style.pyplot()
    cards = _inputs.scorecards(sources, NAME)
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 3.4), layout="constrained", sharey=True)
    colors: dict = {}
    several_traces = len({c.get("trace") for c in cards}) > 1
    for card in cards:
        hs = sorted(int(h) for h in card["by_horizon"])
        name = str(card.get("predictor", "?"))
        label = f"{name} ({Path(str(card.get('trace'))).stem})" if several_traces else name
        style = _style.line_style("pred", name, colors)
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
