"""Hit-rate curves (`moesim curve`, `moesim plot --kind hit-rate` on a trace, and the grid's capacity sweeps):
one policy's count-mode hit rate at many capacities.

How a curve is computed (`method`):

- "exact" in one pass over the access stream, for every capacity at once, where the policy allows it.
  LRU, in both accountings (moesim.lru_curve): per access by stack distances (Mattson et al., 1970); per
  (step, layer) segment, where LRU is not a stack algorithm, by the engine's own rule lane by lane around
  each lookup's distance. FIFO, per access: every miss inserts and every insertion into a full cache pushes
  out the oldest, so an expert is resident exactly when fewer than C misses happened since it went in; all
  capacities then advance side by side, one compare per capacity and access, which vectorises. Belady, per
  access: the offline optimum is a stack algorithm too (Mattson et al.): keep the experts in a stack where,
  at each access, the used expert goes to the top and each level above its old place keeps whichever of its
  own and the one pushed down from above is used sooner; a cache of C experts holds the top C.
- "exact" otherwise: one count-mode replay per capacity.
- "sampled": those replays run on a sample of the trace (curve_sample): its first SAMPLE_PREFIX of the
  accesses whole (where policies that keep history, LFU above all, settle what they hold), then whole
  requests drawn systematically in order of length (or blocks of consecutive steps when the requests are too
  few to draw from), SAMPLE_RATE of the accesses in all; of BALANCE_DRAWS such draws the one whose requests'
  exact LRU hit rates best match the whole trace's at the curve's capacities. The prefix's hits count as they
  are, the sampled requests' are scaled to all requests after the prefix. Then the sample is calibrated: one
  capacity in ANCHOR_EVERY (default_anchors) is replayed on the whole stream, and the sample's error there is
  taken out of the capacities between, linearly in capacity (from none at capacity 0 to the exact error when every expert fits,
  which needs no replay). Why: on the 14.7 M-access trace the sample's error is not noise from capacity to
  capacity but a smooth swell over tens of points of capacity, the same sampled requests and the same
  history (LFU's counts, MoE-Infinity's request mix) shaping every capacity; its sign and size change with
  the seed (LFU, 8 %, six seeds: -1.8 to +1.7 points at 35 % and 80 %), so no fixed correction removes it,
  while four exact points do (benchmarks/README.md: the error per policy with and without them).
  Sampling experts instead (SHARDS, libCacheSim's miniature simulations: keep an expert when its
  hash falls below the rate, scale the capacity) does not work on MoE traces: a token uses top_k experts of
  every layer, so the distance to the same expert one token later is nearly constant (top_k x layers - 1)
  and hit rates jump at one capacity; a sample of experts turns that constant into a binomial and misses
  the jump by 12-14 points for FIFO at 10 % (7 with the exact LRU curve as a control variate; whole layers
  20, or 3 with it: README, bench_curve.py --spatial).
- "auto": the one-pass exact curve where there is one; otherwise exact replays while the stream is small
  (SAMPLE_ABOVE accesses), sampled above.

Exact rows equal `moesim.replay(trace, policy=P, capacity=C, mode="count", accounting=A, scope=S,
batch_size=B)` hit for hit (tests check it at every capacity); the accounting is replay's default unless
given. lru_rows gives a whole sweep's result rows, each equal to its replay's column for column, from one
replay and one pass: the grid answers count-mode LRU capacity sweeps with it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Iterable, NamedTuple

import numba
import numpy as np

# accesses above which method="auto" samples the policies that have no one-pass curve
SAMPLE_ABOVE = 5_000_000
ONE_PASS = ("lru", "fifo", "belady")
METHODS = ("auto", "exact", "sampled")
# a sampled curve replays this share of the accesses: the first SAMPLE_PREFIX of them whole, then units
# drawn from the rest (benchmarks/README.md: the error each policy shows at these settings)
SAMPLE_RATE = 0.04
SAMPLE_PREFIX = 0.02
# a sampled curve replays one capacity in this many on the whole stream, to calibrate the others; at least
# MIN_ANCHORS of them once it has MIN_ANCHORED capacities
ANCHOR_EVERY = 25
MIN_ANCHORS = 2
MIN_ANCHORED = 8
# a balanced sample is the best of this many draws
BALANCE_DRAWS = 64
# a sample draws at least this many requests, or else blocks of consecutive steps
MIN_SAMPLED_UNITS = 20


def parse_capacities(spec: str | int | float | Iterable, *, points: int = 100) -> list:
    """Capacities as replay reads them: a list, a comma list ('10%,20%,166'), or a range 'A..B'
    of `points` evenly spaced values ('1%..100%' with 100 points is 1%, 2%, ..., 100%)."""
    if isinstance(spec, (int, float, np.integer)):
        return [spec]
    if not isinstance(spec, str):
        return list(spec)
    text = spec.strip()
    if ".." not in text:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"capacities {spec!r}: name at least one, e.g. 10%,25% or 1%..100%")
        return parts
    lo, _, hi = text.partition("..")
    lo, hi = lo.strip(), hi.strip()
    if points < 2:
        raise ValueError(f"capacities {spec!r}: a range needs at least 2 points, got {points}")
    pct = re.fullmatch(r"([0-9.]+)\s*%", lo), re.fullmatch(r"([0-9.]+)\s*%", hi)
    if pct[0] and pct[1]:
        a, b = float(pct[0].group(1)), float(pct[1].group(1))
        if not 0 <= a < b <= 100:
            raise ValueError(f"capacities {spec!r}: write a range of percentages from low to high, within 0..100%")
        return list(dict.fromkeys(f"{round(v, 6):g}%" for v in np.linspace(a, b, points)))
    if re.fullmatch(r"[0-9]+", lo) and re.fullmatch(r"[0-9]+", hi) and int(lo) < int(hi):
        return sorted({int(v) for v in np.round(np.linspace(int(lo), int(hi), points))})
    raise ValueError(f"capacities {spec!r}: a range is two percentages (1%..100%) or two expert counts "
                     f"(16..1664), low to high")


def hit_rate_curve(trace, policy: str = "lru", capacities="1%..100%", *, method: str = "auto",
                   points: int = 100, sample_rate: float | None = None, scope: str = "global",
                   accounting: str | None = None, batch_size: int = 1, prefill_chunk: int = 1, seed: int = 0,
                   anchors: int | None = None, stream=None, train=None):
    """Count-mode hit rate of `policy` at each capacity; a pandas DataFrame, one row per capacity.

    trace: a path or a Trace. capacities: anything replay's capacity takes, as a list, a comma list or a
    range ('1%..100%', `points` values). method: auto, exact or sampled (module doc). sample_rate: a sampled
    curve's share (default SAMPLE_RATE). anchors: capacities a sampled curve replays on the whole trace to
    calibrate the others (default: default_anchors; 0: none). accounting: 'segment' or 'access' (default: replay's). batch_size:
    requests batched statically, as replay's --batch-size. stream: the access stream of the trace as replayed
    (batched, when batch_size > 1), if already built; train: for the static policy.

    Columns: policy, scope, accounting, method, sample_rate, capacity (as given), capacity_experts,
    capacity_fraction, accesses, lookups (hits + misses: accesses, or a segment's distinct experts), hits,
    misses, hit_rate. A sampled row's hits are its hit rate times the trace's lookups, rounded.
    """
    import pandas as pd

    from . import policies as registry
    from .trace import Trace, read_trace

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    rate = SAMPLE_RATE if sample_rate is None else float(sample_rate)
    if not 0 < rate <= 1:
        raise ValueError(f"sample_rate {sample_rate!r} must be in (0, 1]")
    policy = registry.canonical(policy)
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    specs = parse_capacities(capacities, points=points)
    cfgs = [_config(policy, spec, scope, accounting, batch_size, prefill_chunk, seed, train) for spec in specs]
    tr, stream = replayed_stream(tr, cfgs[0], stream)
    caches = [_cache(tr, stream, cfg) for cfg in cfgs]
    one_pass = _one_pass(policy, cfgs[0].accounting, caches) and all(_counted(c) for c in cfgs)
    if method == "auto":
        method = "exact" if one_pass or len(stream) <= SAMPLE_ABOVE else "sampled"
    computed = "one pass"
    if method == "exact" and policy == "lru" and one_pass:
        hits, lookups, computed = _lru_hits(tr, stream, cfgs, caches)
    elif method == "exact" and one_pass:
        hits, lookups = _one_pass_hits(policy, stream, caches)
    elif method == "exact":
        hits, lookups = _replayed_hits(tr, stream, cfgs)
        computed = "a replay per capacity"
    else:
        if anchors is not None and anchors < 0:
            raise ValueError(f"anchors {anchors!r}: a count of capacities replayed whole, 0 or more")
        hits, lookups = sampled_hits(tr, stream, cfgs, caches, rate, seed, anchors=anchors)
        k = len(anchor_picks(np.array([int(c.part_capacity.sum()) for c in caches]),
                             default_anchors(len(cfgs)) if anchors is None else anchors))
        computed = f"replays of a {rate:.0%} sample" + (f", {k} capacities replayed whole" if k else "")
    hits = np.asarray(hits)
    lookups = np.asarray(lookups)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(lookups > 0, hits / np.maximum(lookups, 1), math.nan)
    if method == "sampled":
        hits = np.round(rates * lookups).astype(np.int64)
    n_items = stream.num_items
    held = [int(c.part_capacity.sum()) + int(c.pinned.sum()) for c in caches]
    return pd.DataFrame({
        "policy": policy, "scope": scope, "accounting": cfgs[0].accounting, "method": method, "computed": computed,
        "sample_rate": rate if method == "sampled" else math.nan,
        "capacity": [str(s) for s in specs], "capacity_experts": held,
        "capacity_fraction": [h / n_items for h in held], "accesses": len(stream), "lookups": lookups,
        "hits": hits, "misses": lookups - hits, "hit_rate": rates,
    })


def _config(policy, capacity, scope, accounting, batch_size, prefill_chunk, seed, train):
    from .config import ReplayConfig
    cfg = ReplayConfig.make(policy=policy, capacity=capacity, scope=scope, mode="count", accounting=accounting,
                            batch_size=batch_size, prefill_chunk=prefill_chunk, seed=seed, train=train)
    if cfg.capacity.kind == "auto":
        raise ValueError("capacity auto is a replay's (it sizes the cache from the GPU's memory and the KV "
                         "cache); a curve takes expert counts, fractions, sizes or N/layer")
    return cfg


def replayed_stream(trace, cfg, stream=None):
    """(the trace as replay(trace, cfg) replays it, its access stream): batched when cfg batches requests."""
    from .trace import access_stream
    from .trace.batching import batch, serve
    if cfg.serving and trace.meta.extra.get("batching") is None:
        trace = batch(trace, batch_size=cfg.batch_size) if cfg.batching == "static" else \
            serve(trace, batch_size=cfg.batch_size, token_budget=cfg.token_budget, prefill_chunk=cfg.prefill_chunk)
        stream = None
    return trace, stream if stream is not None else access_stream(trace, prefill_chunk=cfg.prefill_chunk)


def _cache(trace, stream, cfg):
    from .replay import cache_for, expert_size
    return cache_for(trace, stream, cfg, expert_size(trace.meta, cfg)[0], cfg.hardware_spec().gpu_memory, None)


def _one_pass(policy: str, accounting: str, caches) -> bool:
    """Whether the curve has a one-pass method: LRU always (pins and uneven partitions too); FIFO and Belady
    per access, with equal partitions and no pins."""
    if policy == "lru":
        return True
    return policy in ONE_PASS and accounting == "access" and all(
        not c.pinned.any() and len(set(c.part_capacity.tolist())) == 1 for c in caches)


def _lru_hits(trace, stream, cfgs, caches):
    """(hits, lookups, how) at each capacity from one pass (lru_curve); replays where the pass cannot serve."""
    from .lru_curve import lru_group_counts
    part_of, pinned = caches[0].part_of, caches[0].pinned
    top = max(int(c.part_capacity.max()) for c in caches)
    if all(len(set(c.part_capacity.tolist())) == 1 for c in caches):
        # every partition the same size: one count for all lookups (a histogram per layer and phase, 52 of
        # them here, measured 25 % slower for the totals a curve needs)
        groups, seg_group = 1, np.zeros(stream.num_segments, np.int64)
    else:
        groups, seg_group = stream.num_layers, stream.seg_layer.astype(np.int64)
    # only the capacities asked for are followed (per segment, where that is cheaper)
    asked = np.unique(np.concatenate([c.part_capacity for c in caches]))
    got = lru_group_counts(stream, part_of, pinned, cfgs[0].accounting, top, seg_group, groups, capacities=asked)
    if got is None:
        return (*_replayed_hits(trace, stream, cfgs), "a replay per capacity (segments too large for one pass)")
    hits, lookups, pins = got
    layer_part = part_of[::stream.num_experts]
    out = []
    for c in caches:
        cap = c.part_capacity[0] if groups == 1 else c.part_capacity[layer_part]
        out.append(int(hits[np.arange(groups), np.minimum(cap, hits.shape[1] - 1)].sum() + pins.sum()))
    return out, [int(lookups.sum() + pins.sum())] * len(caches), "one pass"


def _one_pass_hits(policy, stream, caches):
    L, E = stream.num_layers, stream.num_experts
    n_items = L * E
    parts = len(caches[0].part_capacity)
    part_of = None if parts == 1 else caches[0].part_of
    per_part = [int(c.part_capacity[0]) for c in caches]
    if policy == "belady":
        hits = belady_hits_by_capacity(stream.item, part_of, parts, n_items, max(per_part))[per_part]
    else:
        misses = fifo_misses(stream.item, part_of, parts, n_items, np.array(sorted(set(per_part)), np.int64))
        hits = [len(stream) - misses[c] for c in per_part]
    return [int(h) for h in hits], [len(stream)] * len(caches)


def _replayed_hits(trace, stream, cfgs):
    from .replay import replay
    rows = [replay(trace, cfg, stream=stream) for cfg in cfgs]
    return [r["hits"] for r in rows], [r["hits"] + r["misses"] for r in rows]


# ---------------------------------------------------------------- Belady: the OPT stack
def belady_hits_by_capacity(item: np.ndarray, part_of: np.ndarray | None, parts: int, n_items: int,
                            max_capacity: int) -> np.ndarray:
    """hits[c] of Belady's offline optimum for c = 0..max_capacity experts per partition, in one pass."""
    per = -(-n_items // parts)
    n = len(item)
    shift = max(1, int(n_items).bit_length())
    if n >= 1 << (62 - shift):
        raise ValueError(f"a stream of {n:,} accesses over {n_items:,} experts is too long for the one-pass "
                         f"Belady curve; use method='sampled'")
    next_use = _next_use(item, n_items, np.int32 if n < (1 << 31) - 1 else np.int64)
    stack = np.zeros((parts, per), np.int64)
    hist = np.zeros(per + 1, np.int64)
    _opt_histogram(item, part_of, next_use, stack, np.zeros(parts, np.int64), shift,
                   np.full(n_items, -1, np.int64), hist)
    cum = np.r_[0, np.cumsum(hist[:per])]
    return cum[np.minimum(np.arange(max_capacity + 1), per)]


def _next_use(item: np.ndarray, n_items: int, dtype) -> np.ndarray:
    out = np.empty(len(item), dtype)
    _fill_next_use(item, np.full(n_items, len(item), dtype), out)
    return out


@numba.njit(cache=True)
def _fill_next_use(item, seen, out):
    # the position of each access's next access to the same expert; the stream's length if none
    for i in range(item.shape[0] - 1, -1, -1):
        x = item[i]
        out[i] = seen[x]
        seen[x] = i


@numba.njit(cache=True)
def _opt_histogram(item, part_of, next_use, stack, size, shift, level, hist):
    # A key packs (next use, expert): smaller is used sooner. Experts never used again sort by id (which of
    # them goes first changes no hit). level[x]: x's place in its partition's stack (-1: not in it).
    # Walking down from the top to the used expert's level d, the expert carried down is the latest used of
    # those above (a running max), and a level changes only where its own expert is used later still: it
    # takes the carried one and passes its own on. Those places are few, so the walk is a load and a compare
    # a level, and knowing d from `level` spares the compare that looked for the used expert's key (4.1 s ->
    # 1.8-2.1 s for 100 capacities of the 14.7 M-access trace, against a min and a max stored every level).
    first = hist.shape[0] - 1
    mask = (np.int64(1) << shift) - 1
    for t in range(item.shape[0]):
        x = np.int64(item[np.uint64(t)])
        p = 0 if part_of is None else part_of[x]
        stk = stack[p]
        m = size[p]
        d = level[x]
        if d < 0:
            d = m  # not in the stack: it grows by the last expert carried down
        carried = stk[0]
        stk[0] = (np.int64(next_use[t]) << shift) | x  # the used expert goes on top
        level[x] = 0
        if d > 0:
            for i in range(1, d):
                v = stk[i]
                if v > carried:
                    stk[i] = carried
                    level[carried & mask] = i
                    carried = v
            stk[d] = carried
            level[carried & mask] = d
        if d < m:
            hist[d] += 1
        else:
            size[p] = m + 1
            hist[first] += 1


# ---------------------------------------------------------------- FIFO: all capacities side by side
def fifo_misses(item: np.ndarray, part_of: np.ndarray | None, parts: int, n_items: int,
                capacities: np.ndarray) -> dict[int, int]:
    """Misses of a FIFO cache of each per-partition capacity, in one pass: {capacity: misses}."""
    wide = len(item) >= (1 << 30)  # narrow counters double the capacities per vector
    dtype = np.int64 if wide else np.int32
    caps = capacities.astype(dtype)
    # the misses count when each item went in; far in the past means "never", so it is not resident
    inserted = np.full((n_items, len(caps)), -(1 << 40) if wide else -(1 << 30), dtype)
    misses = np.zeros((parts, len(caps)), dtype)
    _fifo_pass(item, part_of, caps, inserted, misses)
    total = misses.astype(np.int64).sum(axis=0)
    return {int(c): int(m) for c, m in zip(capacities, total)}


@numba.njit(cache=True)
def _fifo_pass(item, part_of, caps, inserted, misses):
    k = caps.shape[0]
    for i in range(item.shape[0]):
        x = np.uint32(item[np.uint64(i)])
        p = 0 if part_of is None else part_of[x]
        ins = inserted[x]
        m = misses[p]
        for j in range(k):
            # resident while at most caps[j] insertions (misses) happened since its own began
            miss = (m[j] - ins[j]) > caps[j]
            ins[j] = m[j] if miss else ins[j]
            m[j] += miss


# ---------------------------------------------------------------- sampled curves
class CurveSample(NamedTuple):
    """A sampled stream for replays, and what it takes to scale its hits back to the whole trace."""
    view: object          # AccessStream: the first steps whole, then the sampled units; its steps in the
                          # prefix are labelled prefill and the rest decode, so a replay's row tells them apart
    rest_lookups: int     # lookups of the whole trace after the prefix
    total_lookups: int    # lookups of the whole trace


def curve_sample(stream, rate: float, *, accounting: str, prefix: float = SAMPLE_PREFIX, seed: int = 0,
                 balance=None) -> CurveSample:
    """The stream a sampled curve replays (module doc): its first steps up to `prefix` of the accesses, whole,
    then a systematic sample of the units after them (requests, ordered by length, ties in a seeded random
    order, every 1/q-th from a seeded start), about `rate` of the accesses in all. A unit is a request when
    every segment holds one token; in a batched stream (or prefill chunks), or with fewer than
    MIN_SAMPLED_UNITS requests to draw, a block of consecutive steps, so a sampled step keeps its batch.
    balance: (part_of, pinned, per-partition capacities): when the units are requests, draw BALANCE_DRAWS
    samples and keep the one whose units' exact per-access LRU hit rates (each request's own, in the whole
    trace) come closest to the whole rest's at these capacities."""
    import dataclasses
    from .lru_curve import segment_lookups
    per_seg = segment_lookups(stream) if accounting == "segment" else np.diff(stream.seg_offsets)
    total = int(per_seg.sum())
    rows = len(stream.row_request)
    if rate >= 1 or rows == 0:
        return CurveSample(stream, 0, total)
    row_step = np.repeat(stream.seg_step, stream.seg_tokens).astype(np.int64)
    # the prefix: whole steps, up to `prefix` of the accesses
    step_rows = np.bincount(row_step, minlength=stream.num_steps)
    cut = int(np.searchsorted(np.cumsum(step_rows), prefix * rows, side="right")) if prefix > 0 else 0
    in_rest = row_step >= cut
    rest_rate = max(rate - prefix, 0.0) / max(1.0 - prefix, 1e-12)
    per_row = bool((stream.seg_tokens == 1).all())
    unit = np.where(in_rest, stream.row_request.astype(np.int64), -1)
    needed = math.ceil(MIN_SAMPLED_UNITS / max(rest_rate, 1e-12))
    if not per_row or np.count_nonzero(np.bincount(unit[in_rest])) < needed:
        rest_steps = max(stream.num_steps - cut, 1)
        blocks = max(1, min(needed, rest_steps))
        unit = np.where(in_rest, (row_step - cut) * blocks // rest_steps, -1)
        # a block starts where the block before it in the sample ended, not where its own steps began:
        # its hits in the whole trace do not predict its hits in the sample, so balancing on them does not help
        # (measured on the shipped DeepSeek sample: worse than one draw)
        balance = None
    units = np.flatnonzero(np.bincount(unit[in_rest]))  # unit ids are small: counted, not sorted
    chosen = np.zeros(int(unit.max()) + 2 if len(unit) else 1, bool)
    if rest_rate > 0 and len(units):
        size = np.bincount(unit[in_rest])[units]
        draws = [_systematic(units, size, rest_rate, seed * BALANCE_DRAWS + d) for d in
                 range(BALANCE_DRAWS if balance is not None else 1)]
        best = draws[0]
        if len(draws) > 1:
            seg_unit = unit[stream.seg_row_offsets[:-1]]  # a segment's rows are of one unit (see above)
            best = draws[_most_balanced(stream, accounting, seg_unit, len(chosen), units, draws, *balance)]
        chosen[best] = True
    keep = ~in_rest | chosen[unit]
    k = stream.top_k
    seg_of_row = np.repeat(np.arange(stream.num_segments), stream.seg_tokens)
    kept_rows = np.bincount(seg_of_row[keep], minlength=stream.num_segments)
    kept = kept_rows > 0
    seg_rows = np.r_[0, np.cumsum(kept_rows[kept])].astype(np.int64)
    phase = (np.arange(stream.num_steps) >= cut).astype(np.uint8)
    view = dataclasses.replace(
        stream, item=np.ascontiguousarray(stream.item.reshape(-1, k)[keep].reshape(-1)),
        seg_offsets=seg_rows * k, seg_layer=stream.seg_layer[kept], seg_step=stream.seg_step[kept],
        seg_tokens=kept_rows[kept].astype(np.int32), seg_row_offsets=seg_rows, row_order=stream.row_order[keep],
        row_request=stream.row_request[keep], step_phase=phase)
    return CurveSample(view, int(per_seg[stream.seg_step >= cut].sum()), total)


def _systematic(units, size, rate, seed):
    """Units ordered by size (ties in a seeded random order), every 1/rate-th from a seeded start."""
    rng = np.random.default_rng(seed)
    order = units[np.lexsort((rng.random(len(units)), size))]
    picks = np.floor((np.arange(math.ceil(len(units) * rate) + 1) + rng.random()) / rate).astype(np.int64)
    return order[picks[picks < len(order)]]


def _most_balanced(stream, accounting, seg_unit, n_units, units, draws, part_of, pinned, capacities):
    """The draw whose units' LRU hit rates (exact, each unit in the whole trace) are closest to all of the
    rest's, at the worst of the capacities."""
    from .lru_curve import lru_group_counts
    caps = np.asarray(capacities, np.int64)
    got = lru_group_counts(stream, part_of, pinned, "access", int(caps.max()), np.where(seg_unit < 0, n_units - 1,
                                                                                       seg_unit), n_units)
    hits = got[0][:, np.minimum(caps, got[0].shape[1] - 1)].astype(np.float64)
    lookups = got[1].astype(np.float64)
    want = hits[units].sum(axis=0) / lookups[units].sum()
    scores = [np.abs(hits[d].sum(axis=0) / max(lookups[d].sum(), 1.0) - want).max() for d in draws]
    return int(np.argmin(scores))


def sampled_hits(trace, stream, cfgs, caches, rate: float, seed: int = 0, *, prefix: float | None = None,
                 anchors: int | None = None, balance: bool = True):
    """(hits, lookups) of each config estimated from replays of curve_sample's stream, balanced at the configs'
    capacities: the prefix's hits as they are, the sampled rest's scaled to the whole rest (a stratified
    estimate), then calibrated at `anchors` configs (default: default_anchors) replayed on the whole
    stream: their error is measured there and, linearly in capacity, taken out of the others (module doc);
    hits are floats."""
    balanced = (caches[0].part_of, caches[0].pinned, [int(c.part_capacity.max()) for c in caches]) if balance \
        else None
    sample = curve_sample(stream, rate, accounting=cfgs[0].accounting, seed=seed, balance=balanced,
                          prefix=SAMPLE_PREFIX if prefix is None else prefix)
    view = sample.view
    decode = view.step_phase[view.seg_step] == 1
    est = []
    for cfg, cache in zip(cfgs, caches):
        hits, rest_hits, rest_lookups = _count_hits(view, cfg, cache, decode)
        scaled = rest_hits * sample.rest_lookups / rest_lookups if rest_lookups else 0.0
        est.append(hits - rest_hits + scaled)
    est = np.array(est, np.float64)
    held = np.array([int(c.part_capacity.sum()) + int(c.pinned.sum()) for c in caches], np.float64)
    picks = anchor_picks(held, default_anchors(len(cfgs)) if anchors is None else anchors)
    if len(picks):
        exact = np.array([_count_hits(stream, cfgs[i], caches[i])[0] for i in picks], np.float64)
        xs, fix = [0.0, *held[picks]], [0.0, *(exact - est[picks])]
        if cfgs[0].policy != "static":  # a policy that places experts before the start hits some first uses
            full, full_rest, rest_lookups = _all_fit_hits(view, caches[0].pinned, cfgs[0].accounting)
            est_full = full - full_rest + (full_rest * sample.rest_lookups / rest_lookups if rest_lookups else 0.0)
            # every expert fitting, all but each unpinned expert's first lookup hit
            used = np.bincount(stream.item, minlength=stream.num_items) > 0
            xs.append(float(stream.num_items))
            fix.append(sample.total_lookups - int((used & (caches[0].pinned == 0)).sum()) - est_full)
        order = np.argsort(xs, kind="stable")
        # a capacity at which the sample hits nothing (below one token's experts, for recency policies) keeps
        # its 0: the anchors' errors say nothing of it
        est = np.where(est > 0, est + np.interp(held, np.asarray(xs)[order], np.asarray(fix)[order]), est)
        est = np.clip(est, 0, sample.total_lookups)
        est[picks] = exact
    return list(est), [sample.total_lookups] * len(cfgs)


def default_anchors(capacities: int) -> int:
    """How many of a sampled curve's capacities are replayed whole: one in ANCHOR_EVERY, at least MIN_ANCHORS
    from MIN_ANCHORED capacities on (10 capacities of the real trace, 3 seeds: LFU 0.75-1.8 points at worst
    with none, 0.25-0.49 with two), none below (replaying them all costs little more)."""
    return 0 if capacities < MIN_ANCHORED else max(MIN_ANCHORS, capacities // ANCHOR_EVERY)


def anchor_picks(held: np.ndarray, anchors: int) -> np.ndarray:
    """Indices of `anchors` configs spread evenly over the distinct capacities (by experts held), each in the
    middle of its share: of 1 %..100 %, 5 anchors are 10 %, 30 %, 50 %, 70 % and 90 %."""
    distinct = np.unique(held)
    anchors = min(max(anchors, 0), len(distinct))
    if not anchors:
        return np.zeros(0, np.int64)
    at = distinct[np.minimum(((np.arange(anchors) + 0.5) * len(distinct) / anchors).astype(np.int64),
                             len(distinct) - 1)]
    return np.array([int(np.flatnonzero(held == a)[0]) for a in at], np.int64)


def _count_hits(stream, cfg, cache, decode: np.ndarray | None = None) -> tuple[int, int, int]:
    """(hits, and with `decode` (a bool per segment) the hits and lookups of those segments, else 0, 0) of a
    count-mode replay of `stream` without prefetch, as replay runs it but without the result row (whose
    columns cost as much as the replay of a small sample). The hits equal replay(trace, cfg, stream=stream)'s."""
    from .engine import PrefetchPlan, Stream, count_replay
    from .replay import _raise_engine_error, policy_state
    state, cache = policy_state(cfg, stream, cache)
    engine_stream = Stream(stream.item, stream.seg_offsets, stream.seg_layer, stream.seg_step, None, None)
    # no prefetch: replay's empty plan, whose step cap is -1 (none)
    plan = PrefetchPlan(np.zeros(stream.num_segments + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), -1)
    record = np.zeros(len(stream), np.uint8) if decode is not None and cfg.accounting == "access" else None
    hits, misses, c, seg_hits, seg_misses, _ = count_replay(engine_stream, cache, plan, state, stream.num_layers,
                                                           accounting=cfg.accounting, record=record)
    _raise_engine_error(c, cfg)
    if decode is None:
        return int(hits.sum()), 0, 0
    hd = int(seg_hits[decode].sum())
    return int(hits.sum()), hd, hd + int(seg_misses[decode].sum())


def _all_fit_hits(stream, pinned: np.ndarray, accounting: str) -> tuple[int, int, int]:
    """(hits, hits in decode steps, lookups in decode steps) of any policy when every expert fits: all but each
    unpinned expert's first lookup hit."""
    out = np.zeros(3, np.int64)
    _first_uses(stream.item, stream.seg_offsets, (stream.step_phase[stream.seg_step] == 1).astype(np.uint8),
                np.ascontiguousarray(pinned, np.uint8), accounting == "segment",
                np.zeros(stream.num_items, np.uint8), np.full(stream.num_items, -1, np.int64), out)
    return int(out[0]), int(out[1]), int(out[2])


@numba.njit(cache=True)
def _first_uses(item, seg_offsets, decode, pinned, by_segment, used, seen_in, out):
    for s in range(seg_offsets.shape[0] - 1):
        for i in range(seg_offsets[s], seg_offsets[s + 1]):
            x = item[i]
            if by_segment:
                if seen_in[x] == s:
                    continue  # a segment looks each expert up once
                seen_in[x] = s
            hit = used[x] == 1 or pinned[x] == 1
            used[x] = 1
            out[0] += hit
            if decode[s]:
                out[1] += hit
                out[2] += 1


def format_curve(df) -> str:
    """A curve (or several policies' curves) as one aligned table: a hit-rate column per policy."""
    policies = list(dict.fromkeys(df["policy"]))
    first = df[df["policy"] == policies[0]]
    header = ["capacity", "experts", "of all", *policies]
    rows = []
    for i, (_, r) in enumerate(first.iterrows()):
        rates = [df[df["policy"] == p]["hit_rate"].iloc[i] for p in policies]
        rows.append([r["capacity"], f"{r['capacity_experts']:,}", f"{100 * r['capacity_fraction']:.1f}%",
                     *(f"{100 * x:.2f}%" for x in rates)])
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    how = "; ".join(f"{p}: {m}, {c}" for p, m, c in dict.fromkeys(zip(df["policy"], df["method"], df["computed"])))
    out = [f"hit rate by capacity, {first['scope'].iloc[0]} scope, count mode per {first['accounting'].iloc[0]} "
           f"({how})", line(header), line(["-" * w for w in widths])]
    return "\n".join(out + [line(r) for r in rows])


def write_curve(df, path: str | os.PathLike) -> None:
    """Write a curve table: .csv, .parquet or .json (records), by the extension."""
    path = str(path)
    if path.endswith(".csv"):
        df.to_csv(path, index=False)
    elif path.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif path.endswith(".json"):
        df.to_json(path, orient="records", indent=1)
    else:
        raise ValueError(f"{path}: write a curve to a .csv, .parquet or .json file")


# ---------------------------------------------------------------- result rows of a capacity sweep
def curve_key(params: dict):
    """What runs answered by one LRU curve share: every parameter but the capacity, when the run is a count-mode
    LRU replay without prefetch whose capacity is not 'auto' (None for any other run)."""
    from .config import ReplayConfig
    try:
        cfg = ReplayConfig.make(**params)
    except (ValueError, TypeError):
        return None
    if not _curve_config(cfg):
        return None
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k not in ("capacity", "seed")))


def _curve_config(cfg) -> bool:
    # a host tier's hits depend on the GPU's capacity too (it sees the GPU's misses): replayed one by one; the
    # one-pass curve tells a segment's hits first (routing order is no stack the pass keeps)
    return cfg.policy == "lru" and cfg.mode == "count" and cfg.predictor == "none" and _counted(cfg) and \
        getattr(cfg, "action", "fetch") == "fetch" and getattr(cfg, "host_capacity", None) is None and \
        cfg.segment_order == "hits-first"


def _counted(cfg) -> bool:
    """Whether the capacity is a count of experts: a capacity in bytes (or auto, from the GPU's memory) may fill
    by each layer's own expert size, which is no count the one-pass curves know."""
    return cfg.capacity.kind not in ("auto", "bytes")


def lru_rows(trace, configs: list, *, stream=None) -> list[dict] | None:
    """The result rows of count-mode LRU replays that differ only in capacity, from one replay and one pass:
    each row equal, column for column, to moesim.replay(trace, cfg, stream=stream). configs: ReplayConfigs
    (or keyword dicts) with the same curve_key. None when the pass cannot serve them (a segment of more than
    lru_curve.MAX_SEGMENT experts), or when the rebuilt row of the first config differs from its replay in
    any column (a guard against replay() growing a column this does not know): replay each then."""
    from .config import ReplayConfig, row_inputs
    from .lru_curve import lru_counts
    from .replay import _hit_fields, expert_size, replay
    from .trace import Trace, read_trace

    cfgs = [c if isinstance(c, ReplayConfig) else ReplayConfig.make(**c) for c in configs]
    base = cfgs[0]
    if not all(_curve_config(c) and dataclasses.replace(c, capacity=base.capacity, seed=base.seed) == base
               for c in cfgs):
        raise ValueError("lru_rows answers count-mode LRU replays without prefetch or other miss actions that "
                         "differ only in capacity (a count of experts, not bytes or 'auto') and seed")
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    tr, stream = replayed_stream(tr, cfgs[0], None if cfgs[0].serving else stream)
    first = replay(tr, cfgs[0], stream=stream)
    caches = [_cache(tr, stream, cfg) for cfg in cfgs]
    part_of, pinned = caches[0].part_of, caches[0].pinned
    if any(not np.array_equal(c.part_of, part_of) or not np.array_equal(c.pinned, pinned) for c in caches):
        return None
    counts = lru_counts(stream, part_of, pinned, cfgs[0].accounting, max(int(c.part_capacity.max()) for c in caches))
    if counts is None:
        return None
    layer_part = part_of[::stream.num_experts]
    lookups = counts.lookups + counts.pinned
    hw = cfgs[0].hardware_spec()
    expert_bytes = expert_size(tr.meta, cfgs[0])[0]
    layer_bytes = _layer_bytes(tr, cfgs[0], hw, expert_bytes, stream.num_layers)
    n_items = stream.num_items
    # the row's hit columns by replay's own rule, from hits and misses split by phase (two "segments")
    by_phase = _PhaseSplit(np.array([0, 1], np.uint8), np.array([0, 1], np.int64))
    rows = []
    for cfg, cache in zip(cfgs, caches):
        hits = counts.layer_hits(cache.part_capacity, layer_part)
        misses = lookups - hits
        held = int(cache.part_capacity.sum()) + int(cache.pinned.sum())
        resolved = {"horizon": 0, "top_n": cfg.top_n if cfg.top_n is not None else 0, "capacity_experts": held,
                    "capacity_fraction": held / n_items, "bytes_per_expert": expert_bytes,
                    "pinned_experts": int(cache.pinned.sum()), "context": cfg.context}
        row = {**first, **row_inputs(cfg, hw, resolved)}
        row["below_token_footprint"] = cfg.scope == "global" and 0 < held < row["token_footprint"]
        row.update(_hit_fields(hits.sum(axis=1), misses.sum(axis=1), by_phase, hits.sum(axis=0),
                               misses.sum(axis=0)))
        # every miss is a demand fetch of its expert (no prefetch, no other action): the rest of the transfer
        # columns stay the first row's zeros
        row["bytes_demand"] = float(misses.sum(axis=1) @ layer_bytes)
        row["bytes_moved"] = row["bytes_demand"] + row["bytes_prefetch"]
        if cfg.per_layer:
            row.update(hits_per_layer=hits.sum(axis=1).tolist(), misses_per_layer=misses.sum(axis=1).tolist())
        rows.append(row)
    return rows if _same_row(rows[0], first) else None


def _layer_bytes(trace, cfg, hw, expert_bytes: float, num_layers: int) -> np.ndarray:
    """Bytes a miss fetches, per MoE layer: replay's own sizes by layer where it has them, else one size."""
    from . import replay as replay_module
    by_layer = getattr(replay_module, "layer_expert_bytes", None)
    sizes = by_layer(trace.meta, cfg, hw) if by_layer is not None else None
    return np.full(num_layers, float(expert_bytes)) if sizes is None else np.asarray(sizes, np.float64)


class _PhaseSplit(NamedTuple):
    step_phase: np.ndarray
    seg_step: np.ndarray


def _same_row(a: dict, b: dict) -> bool:
    """The same columns in the same order with equal values (NaN equal to NaN; a numpy number to its value)."""
    def same(x, y):
        if isinstance(x, (float, np.floating)) and isinstance(y, (float, np.floating)) and \
                math.isnan(x) and math.isnan(y):
            return True
        return x == y if not isinstance(x, (list, tuple)) else list(x) == list(y)
    return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
