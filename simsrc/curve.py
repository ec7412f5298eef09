"""Hit-rate curves (`moesim curve`): one policy's count-mode hit rate at many capacities.

How a curve is computed (`method`):

- "exact" in one pass over the access stream, for every capacity at once, where the policy
  allows it. LRU: an access hits a cache of C experts exactly when fewer than C distinct other
  experts were used since its expert's last use (its stack distance; Mattson et al., 1970), so
  one pass of stack distances (moesim.trace.stats.stack_distance, the code `inspect` uses)
  gives every capacity. FIFO: every miss inserts and every insertion into a full cache pushes
  out the oldest, so an expert is resident exactly when fewer than C misses happened since it
  went in; all capacities then advance side by side, one compare per capacity and access,
  which vectorises. Belady: the offline optimum is a stack algorithm too (Mattson et al.): keep
  the experts in a stack where, at each access, the used expert goes to the top and each level
  above its old place keeps whichever of its own and the one pushed down from above is used
  sooner; a cache of C experts holds the top C, so the depth found is the hit threshold.
- "exact" for any other policy: one count-mode replay per capacity.
- "sampled": those replays run on a sample of whole requests (chosen systematically in order
  of their length, `sample_rate` of them), and the hit rate is the sample's hits over its
  accesses. A request keeps every access of every token, so a sample sees the same
  reuse structure as the trace. Sampling experts instead (SHARDS-style spatial sampling, with
  the capacity scaled by the rate) does not work on MoE traces: a token uses top_k experts of
  every layer, so the distance to the same expert one token later is nearly constant (top_k x
  layers - 1), which makes hit rates jump at one capacity; a 10 % expert sample turns that
  constant into a binomial one and misses the jump by 10-14 points (benchmarks/README.md).
- "auto": the one-pass exact curve where there is one; otherwise exact replays while the
  stream is small (SAMPLE_ABOVE accesses), sampled above.

Exact rows equal `moesim.replay(trace, policy=P, capacity=C, mode="count", accounting="access",
scope=S)` hit for hit (tests check it at every capacity): a curve is per access, the accounting of
stack distances and libCacheSim. Count mode's stream, capacity and scope mean what they
mean there; pins, prefetching and timed mode are replay's.
"""
from __future__ import annotations

import math
import os
import re
from typing import Iterable

import numba
import numpy as np

from .trace.stats import lru_stack, stack_histogram

# accesses above which method="auto" samples the policies that have no one-pass curve
SAMPLE_ABOVE = 5_000_000
ONE_PASS = ("lru", "fifo", "belady")
METHODS = ("auto", "exact", "sampled")
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
                   points: int = 100, sample_rate: float = 0.1, scope: str = "global", prefill_chunk: int = 1,
                   seed: int = 0, stream=None, train=None):
    """Count-mode hit rate of `policy` at each capacity; a pandas DataFrame, one row per capacity.

    trace: a path or a Trace. capacities: anything replay's capacity takes, as a list, a comma
    list or a range ('1%..100%', `points` values). method: auto, exact or sampled (module doc).
    sample_rate: the share of requests a sampled curve replays. stream: the trace's access
    stream, if already built (prefill_chunk then is ignored). train: for the static policy.

    Columns: policy, scope, method, sample_rate, capacity (as given), capacity_experts,
    capacity_fraction, accesses, hits, misses, hit_rate. A sampled row's hits are its hit rate
    times the trace's accesses, rounded.
    """
    import pandas as pd

    from . import policies as registry
    from .config import Capacity
    from .replay import partitions, replay
    from .trace import Trace, access_stream, read_trace

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate {sample_rate!r} must be in (0, 1]")
    policy = registry.canonical(policy)
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    if stream is None:
        stream = access_stream(tr, prefill_chunk=prefill_chunk)
    specs = parse_capacities(capacities, points=points)
    L, E = stream.num_layers, stream.num_experts
    n_items = L * E
    per_part = []  # capacity of each partition, per point
    total = []
    for spec in specs:
        experts, _ = Capacity.parse(spec).experts(num_items=n_items, num_layers=L,
                                                  bytes_per_expert=float(tr.meta.bytes_per_expert))
        _, part_cap = partitions(stream, scope, experts)
        per_part.append(int(part_cap[0]))
        total.append(int(part_cap.sum()))
    if method == "auto":
        method = "exact" if policy in ONE_PASS or len(stream) <= SAMPLE_ABOVE else "sampled"
    accesses = len(stream)
    part_of = None if scope == "global" else (np.arange(n_items, dtype=np.int32) // E).astype(np.int32)
    parts = 1 if scope == "global" else L

    if method == "exact" and policy == "lru":
        hits = lru_hits_by_capacity(stream.item, part_of, parts, n_items, max(per_part))[per_part]
        rates = hits / accesses if accesses else np.full(len(hits), math.nan)
    elif method == "exact" and policy == "belady":
        hits = belady_hits_by_capacity(stream.item, part_of, parts, n_items, max(per_part))[per_part]
        rates = hits / accesses if accesses else np.full(len(hits), math.nan)
    elif method == "exact" and policy == "fifo":
        misses = fifo_misses(stream.item, part_of, parts, n_items, np.array(sorted(set(per_part)), np.int64))
        hits = np.array([accesses - misses[c] for c in per_part], np.int64)
        rates = hits / accesses if accesses else np.full(len(hits), math.nan)
    else:
        view = stream if method == "exact" else request_sample(stream, sample_rate, seed)
        done: dict[int, int] = {}
        for c in sorted(set(per_part)):
            # a per-partition capacity c is `c` experts in one global cache or c per layer
            done[c] = replay(tr, policy=policy, capacity=c if scope == "global" else f"{c}/layer", scope=scope,
                             mode="count", accounting="access", stream=view, seed=seed, train=train)["hits"]
        n = len(view)
        rates = np.array([done[c] / n if n else math.nan for c in per_part])
        hits = np.array([done[c] for c in per_part], np.int64) if method == "exact" else \
            np.round(rates * accesses).astype(np.int64)
    return pd.DataFrame({
        "policy": policy, "scope": scope, "method": method,
        "sample_rate": sample_rate if method == "sampled" else math.nan,
        "capacity": [str(s) for s in specs], "capacity_experts": total,
        "capacity_fraction": [t / n_items for t in total], "accesses": accesses,
        "hits": hits, "misses": accesses - hits, "hit_rate": rates,
    })


# ---------------------------------------------------------------- LRU: stack distances
def lru_hits_by_capacity(item: np.ndarray, part_of: np.ndarray | None, parts: int, n_items: int,
                         max_capacity: int) -> np.ndarray:
    """hits[c] for c = 0..max_capacity experts per partition (`parts` equal partitions of the
    n_items items, part_of[item] each item's; None for one), from one pass of LRU stack distances."""
    per = -(-n_items // parts)
    stack = lru_stack(n_items, parts)
    hist = np.zeros(per + 1, np.int64)  # distance counts over all partitions; the last: first uses
    stack_histogram(item, part_of, stack, hist)
    cum = np.r_[0, np.cumsum(hist[:per])]
    return cum[np.minimum(np.arange(max_capacity + 1), per)]


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
    stack = np.zeros((parts, per + 1), np.int64)  # + the sentinel's place
    hist = np.zeros(per + 1, np.int64)
    _opt_histogram(item, part_of, next_use, stack, np.zeros(parts, np.int64), shift, hist)
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
def _opt_histogram(item, part_of, next_use, stack, size, shift, hist):
    # A key packs (next use, expert): smaller is used sooner. The used expert's own key holds the
    # current time, so it is the smallest and the walk down stops at it; a copy of it just below
    # the stack stops a walk for an expert not yet in it (one compare a level fewer: 5 % here).
    # Experts never used again sort by id (which of them goes first changes no hit).
    first = hist.shape[0] - 1
    for t in range(item.shape[0]):
        x = np.int64(item[np.uint64(t)])
        p = 0 if part_of is None else part_of[x]
        stk = stack[p]
        m = size[p]
        key = (np.int64(t) << shift) | x
        stk[m] = key
        carried = stk[0]
        stk[0] = (np.int64(next_use[t]) << shift) | x  # the used expert goes on top
        i = 0 if carried == key else 1
        while i > 0:
            v = stk[i]
            if v == key:
                break
            # the sooner-used of the two stays at this level, the other goes on down
            stk[i] = min(carried, v)
            carried = max(carried, v)
            i += 1
        if i > 0:
            stk[i] = carried
        if i < m:
            hist[i] += 1
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


# ---------------------------------------------------------------- sampling whole requests
def request_sample(stream, rate: float, seed: int = 0):
    """A count-mode view of the stream holding a systematic sample of its requests.

    Requests are ordered by length (ties in a seeded random order) and every 1/rate-th is
    taken from a seeded start, so the sample holds about `rate` of the accesses and requests
    of every length. A trace with too few requests for MIN_SAMPLED_UNITS of them at this rate
    is cut into blocks of consecutive steps, which are sampled instead. The view keeps the stream's rows whole (the
    moe-infinity policy reads their requests); its step and request arrays are the full
    stream's, which count mode does not read.
    """
    import dataclasses
    if rate >= 1:
        return stream
    rows = len(stream.row_request)
    if rows == 0:
        return stream
    unit = stream.row_request.astype(np.int64)
    units = np.unique(unit)
    needed = math.ceil(MIN_SAMPLED_UNITS / rate)
    if len(units) < needed:
        row_step = np.repeat(stream.seg_step, stream.seg_tokens).astype(np.int64)
        blocks = max(1, min(needed, stream.num_steps))
        unit = row_step * blocks // max(stream.num_steps, 1)
        units = np.unique(unit)
    rng = np.random.default_rng(seed)
    size = np.bincount(unit)[units]
    order = units[np.lexsort((rng.random(len(units)), size))]
    step = 1 / rate
    picks = np.floor((np.arange(math.ceil(len(units) * rate) + 1) + rng.random()) * step).astype(np.int64)
    chosen = np.zeros(int(unit.max()) + 1, bool)
    chosen[order[picks[picks < len(order)]]] = True
    keep = chosen[unit]
    k = stream.top_k
    seg_of_row = np.repeat(np.arange(stream.num_segments), stream.seg_tokens)
    per_seg = np.bincount(seg_of_row[keep], minlength=stream.num_segments)
    kept = per_seg > 0
    seg_rows = np.r_[0, np.cumsum(per_seg[kept])].astype(np.int64)
    return dataclasses.replace(
        stream, item=np.ascontiguousarray(stream.item.reshape(-1, k)[keep].reshape(-1)),
        seg_offsets=seg_rows * k, seg_layer=stream.seg_layer[kept], seg_step=stream.seg_step[kept],
        seg_tokens=per_seg[kept].astype(np.int32), seg_row_offsets=seg_rows, row_order=stream.row_order[keep],
        row_request=stream.row_request[keep])


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
    def how(policy, method, rate):
        if method == "sampled":
            return f"{policy}: sampled, {rate:.0%} of requests"
        return f"{policy}: exact, {'one pass' if policy in ONE_PASS else 'a replay per capacity'}"
    rate = dict(zip(df["policy"], df["sample_rate"]))
    how = "; ".join(how(p, m, rate[p]) for p, m in dict.fromkeys(zip(df["policy"], df["method"])))
    out = [f"hit rate by capacity, {first['scope'].iloc[0]} scope, count mode ({how})", line(header),
           line(["-" * w for w in widths])]
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
