"""Share of each layer's activations per expert (heatmap, log colour; rows are the model's layer numbers) and the
sorted share per layer against uniform.
"""
from __future__ import annotations

import numpy as np

from . import _inputs, _style

NAME = "popularity"
ORDER = 6
INPUT = _inputs.TRACE


def draw(sources, *, title: str | None = None):
    """Expert popularity of a trace (a file or a moesim.Trace); returns the Figure."""
    plt = _style.pyplot()
    from matplotlib.colors import LogNorm, Normalize
    tr = _inputs.trace(sources, NAME)
    meta = tr.meta
    L, E = meta.num_moe_layers, meta.num_experts
    counts = tr.expert_counts().astype(float)
    share = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(_style.PAGE_WIDTH, min(_style.PAGE_HEIGHT, max(3.4, 0.14 * L + 1.6))),
                                  layout="constrained", gridspec_kw={"width_ratios": [2.2, 1]})
    positive = share[share > 0]
    norm = LogNorm(vmin=max(positive.min(), 1e-3), vmax=share.max()) if len(positive) else None
    img = ax.imshow(np.where(share > 0, share, np.nan), aspect="auto", origin="lower", cmap="viridis",
                    norm=norm, interpolation="nearest")
    ax.set_xlabel("expert id")
    ax.set_ylabel(_style.layer_ticks(ax.yaxis, meta.moe_layers, L))
    bar = fig.colorbar(img, ax=ax, label="share of the layer's activations (%)")
    _style.plain_log_ticks(bar.ax.yaxis)
    ranks = np.arange(1, E + 1)
    layer_colour = Normalize(meta.moe_layers[0], meta.moe_layers[-1] if L > 1 else meta.moe_layers[0] + 1)
    cmap = plt.get_cmap("viridis")
    for i, layer in enumerate(meta.moe_layers):
        ax2.plot(ranks, np.sort(share[i])[::-1], color=cmap(layer_colour(layer)), linewidth=0.9)
    ax2.axhline(100 / E, color="black", linestyle="--", linewidth=1, label=f"uniform (1/{E})")
    ax2.set_yscale("log")
    _style.plain_log_ticks(ax2.yaxis)
    ax2.set_xlabel("expert rank in its layer")
    ax2.set_ylabel("share of activations (%)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(frameon=False)
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=layer_colour), ax=ax2, label="model layer")
    tokens = int((tr.layer_index() == 0).sum())
    fig.suptitle(title or f"{meta.model}: expert popularity over {tokens:,} tokens, top-{meta.top_k} of {E}")
    return fig
