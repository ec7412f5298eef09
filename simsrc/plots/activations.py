"""One request's token × expert map for a few layers (`--layers`, the model's layer numbers): routed experts blue
when a per-layer cache of `--slots` experts (`--policy` lru, fifo, lfu or lfuda, replayed by the engine) held
them, vermillion when fetched, held-but-idle grey, with each layer's hit rate (the figure of the LRU-vs-LFU
offloading studies).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from . import _inputs, _style

NAME = "activations"
ORDER = 5
INPUT = _inputs.TRACE

# Policies the map can replay: online (no look at the future) and keeping their state per cache partition,
# so that each prefix of the stream replayed in a partition of its own is the cache as it stood then.
POLICIES = ("lru", "fifo", "lfu", "lfuda")
# The map replays one prefix per (token, expert) shown, about tokens^2 x experts x top-k / 2 accesses a layer;
# this many (~1 GB of work arrays at most) is a second or two.
MOST_ACCESSES = 24_000_000
# Okabe & Ito's palette, told apart with every common colour-vision deficiency: idle, held idle, miss, hit
COLOURS = ("white", "#d9d9d9", "#D55E00", "#0072B2")


def cache_map(trace, routes: list[np.ndarray], slots: int, policy: str = "lru") -> list[tuple[np.ndarray, np.ndarray]]:
    """(held, hit) per layer, each bool tokens x experts, as the engine's count mode replays a per-layer cache.

    routes: each layer's routed experts, tokens x top-k, tokens in order and each token's experts in stored
    order (the stream count mode walks). held[t, e]: expert e is in the cache when token t arrives; hit[t, e]:
    token t routed to e and found it cached (a miss may evict an expert the same token needs next, which
    then misses too). The engine reports hits per cache partition, not per access, so every question is a
    prefix of the stream ending in one probe access, replayed in a partition of its own, all in one call:
    the probe hits iff the expert was cached at that point.
    """
    from ..replay import replay
    from ..trace.stream import AccessStream
    if policy not in POLICIES:
        raise ValueError(f"the activation map replays {', '.join(POLICIES)}, not {policy!r} (a policy that "
                         f"reads the future or shares state between layers cannot be replayed prefix by prefix)")
    E = trace.meta.num_experts
    flat = np.concatenate([r.reshape(-1) for r in routes]).astype(np.int32)
    first = np.cumsum([0] + [r.size for r in routes])[:-1]
    prefix, probe, base = [], [], []  # per question: accesses of its layer before the probe, the probe, layer start
    for r, start in zip(routes, first):
        T, k = r.shape
        prefix += [np.arange(T * k), np.repeat(np.arange(T) * k, E)]  # each access; then each expert per token
        probe += [r.reshape(-1), np.tile(np.arange(E), T)]
        base += [np.full(T * k + T * E, start)]
    prefix, probe, base = (np.concatenate(v).astype(np.int32) for v in (prefix, probe, base))
    offsets = np.r_[0, np.cumsum(prefix.astype(np.int64) + 1)]
    if offsets[-1] > MOST_ACCESSES:
        raise ValueError(f"a map of {len(routes)} layers x {routes[0].shape[0]} tokens replays "
                         f"{offsets[-1] / 1e6:.0f} M accesses (at most {MOST_ACCESSES / 1e6:.0f} M): show fewer "
                         f"--tokens or --layers")
    offsets = offsets.astype(np.int32)
    n = len(prefix)
    question = np.repeat(np.arange(n, dtype=np.int32), prefix + 1)
    at = np.arange(offsets[-1], dtype=np.int32) - offsets[question]
    expert = np.where(at < prefix[question], flat[np.minimum(base[question] + at, len(flat) - 1)], probe[question])
    stream = AccessStream(
        item=question * np.int32(E) + expert, seg_offsets=offsets.astype(np.int64),
        seg_layer=np.arange(n, dtype=np.int32), seg_step=np.zeros(n, np.int32), seg_tokens=np.ones(n, np.int32),
        seg_row_offsets=np.arange(n + 1, dtype=np.int64), row_order=np.arange(n, dtype=np.int64),
        row_request=np.zeros(n, np.int32), step_phase=np.zeros(1, np.uint8), step_tokens=np.array([n], np.int32),
        step_outputs=np.array([n], np.int32), request_first_step=np.zeros(1, np.int32),
        request_first_output_step=np.zeros(1, np.int32), num_layers=n, num_experts=E, top_k=1)
    row = replay(trace, policy=policy, capacity=f"{slots}/layer", scope="per-layer", mode="count", per_layer=True,
                 accounting="access",
                 stream=stream)
    hits = np.asarray(row["hits_per_layer"], np.int64)
    out, q = [], 0
    for r in routes:
        T, k = r.shape
        so_far = hits[q:q + T * k]  # hits of the stream up to and including each access
        hit_of_access = np.diff(so_far, prepend=0).astype(bool)
        before = np.r_[0, so_far][np.arange(T) * k]  # hits of the stream before each token
        held = (hits[q + T * k:q + T * k + T * E].reshape(T, E) - before[:, None]).astype(bool)
        hit = np.zeros((T, E), bool)
        np.put_along_axis(hit, r.astype(np.int64), hit_of_access.reshape(T, k), axis=1)
        out.append((held, hit))
        q += T * k + T * E
    return out


def draw(sources, *, request: int | None = None, layers: Iterable[int] | None = None, policy: str = "lru",
         slots: int | None = None, tokens: int = 96, title: str | None = None):
    """Token x expert map of one request of a trace (a file or a moesim.Trace) for a few layers, numbered as
    the model numbers them (trace.meta.moe_layers); returns the Figure, with `fig.hit_rate` over the map."""
    plt = _style.pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    tr = _inputs.trace(sources, NAME)
    meta = tr.meta
    if tokens < 1:
        raise ValueError(f"--tokens {tokens}: the map shows at least 1 token")
    req_col = tr.column("request_id")
    ids_, counts = np.unique(req_col, return_counts=True)
    if request is None:
        # the first request long enough to show `tokens` tokens, else the longest
        per_token = counts / meta.num_moe_layers
        long_enough = ids_[per_token >= tokens]
        request = int(long_enough[0]) if len(long_enough) else int(ids_[np.argmax(per_token)])
    request = int(request)
    if request not in set(ids_.tolist()):
        raise ValueError(f"{tr.path}: no request {request}; requests run {req_col.min()}..{req_col.max()}")
    moe_layers = [int(n) for n in meta.moe_layers]
    if layers is None:
        L = meta.num_moe_layers
        shown = sorted({0, L // 3, (2 * L) // 3, L - 1}) if L > 4 else list(range(L))
    else:
        layers = [int(n) for n in layers]
        bad = [n for n in layers if n not in moe_layers]
        if bad:
            raise ValueError(f"layer(s) {', '.join(map(str, bad))} of {meta.model} have no experts; its MoE "
                             f"layers are {_ranges(moe_layers)} (the model's own layer numbers)")
        shown = [moe_layers.index(n) for n in layers]
    slots = max(1, meta.num_experts // 4) if slots is None else int(slots)
    if slots < 1:
        raise ValueError(f"--slots {slots}: a cache holds at least 1 expert per layer")
    sel = tr.select_requests([request])
    layer_idx, ids, pos = sel.layer_index(), sel.expert_ids(), sel.column("token_pos")
    routes = []
    for layer in shown:
        rows = np.flatnonzero(layer_idx == layer)
        routes.append(ids[rows[np.argsort(pos[rows], kind="stable")][:tokens]])
    maps = cache_map(sel, routes, slots, policy)

    E = meta.num_experts
    n = len(shown)
    # panels of a readable height, in as many columns as it takes to fit a page, filled column by column
    room = _style.PAGE_HEIGHT - 1.2  # the title and the legend take the rest
    height = min(3.0, max(1.6, 0.05 * E))
    cols = 1 if n * height <= room else -(-n // int(room // 0.9))
    rows_n = -(-n // cols)
    height = min(height, room / rows_n)
    fig, grid = plt.subplots(rows_n, cols, figsize=(9 if cols == 1 else _style.PAGE_WIDTH, 1.2 + height * rows_n),
                             sharex=True, squeeze=False, layout="constrained")
    axes = list(grid.T.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    for c in range(cols):  # the lowest panel of each column carries the token axis
        last = grid[min(rows_n, n - c * rows_n) - 1, c]
        last.xaxis.set_tick_params(labelbottom=True)
        last.set_xlabel(f"token position in request {request}")
    cmap = ListedColormap(list(COLOURS))
    total_hits = total = 0
    for ax, layer, r, (held, hit) in zip(axes, shown, routes, maps):
        routed = np.zeros_like(held)
        np.put_along_axis(routed, r.astype(np.int64), True, axis=1)
        img = np.where(routed, np.where(hit, 3, 2), np.where(held, 1, 0))
        total_hits += int(hit.sum())
        total += int(routed.sum())
        ax.imshow(img.T, aspect="auto", origin="lower", cmap=cmap, vmin=0, vmax=3, interpolation="nearest",
                  extent=(-0.5, len(r) - 0.5, -0.5, E - 0.5))
        ax.set_ylabel(f"layer {moe_layers[layer]}\n{100 * hit.sum() / max(1, routed.sum()):.0f}% hits\nexpert",
                      fontsize=8)
        ax.tick_params(labelsize=7)
    fig.legend(handles=[Patch(color=COLOURS[3], label="routed, cached (hit)"),
                        Patch(color=COLOURS[2], label="routed, not cached (miss)"),
                        Patch(facecolor=COLOURS[1], label="cached, not routed")],
               loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(title or f"{meta.model}: {policy.upper()} cache of {slots} of {E} experts per layer, "
                          f"top-{meta.top_k} routing")
    fig.hit_rate = total_hits / max(1, total)  # what the map shows, for checks and captions
    return fig


def _ranges(numbers: list[int]) -> str:
    """1-26, or 1, 3, 5, ... as the numbers run."""
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(map(str, numbers))
