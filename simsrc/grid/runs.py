"""Executing runs in a worker: the traces and access streams it keeps, one run's row, runs answered together.

Executors (executors.py) hand workers *groups* of runs: `group_runs` decides which runs one worker call
answers, `execute_group` answers them. Two rules make a group: runs that differ only in a seed their policy
ignores are replayed once (twins); count-mode LRU runs without prefetch that differ only in capacity (and
seed) are answered by one LRU curve (moesim.curve.lru_rows: one replay and one pass over the stream, each
row equal to its own replay's, column for column). Neither rule changes which rows a grid writes, only how
many replays they cost; a group is answered whole, so a killed grid resumed loses or repeats no row.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np
import pyarrow.parquet as pq

from .. import __version__
from .. import policies as policy_registry
from ..config import ReplayConfig
from ..curve import curve_key, lru_rows
from ..replay import replay
from ..trace import AccessStream, Trace, TraceError, TraceMeta, access_stream, read_trace
from ..trace.schema import META_KEY
from .spec import Run, _hash, _is_url

# What a run may fail of that is its own input or environment, not a bug in moesim: it becomes a row with
# `error` set and the grid goes on. Anything else stops the grid (rows done so far are kept, and running
# the grid again retries the rest).
RUN_ERRORS = (TraceError, ValueError, OSError, ImportError)

# Each worker process keeps the traces it has read and their access streams, so a
# trace is read once per worker however many runs use it (tasks come trace by trace).
_TRACES: "OrderedDict[str, tuple[Trace, dict[int, AccessStream]]]" = OrderedDict()
KEEP_TRACES = 2
_TRACES_LOCK = threading.Lock()  # a Dask worker may run several tasks in threads


def read_location(location: str) -> Trace:
    """A trace from a local path, or any fsspec URL (s3://, gs://, file://, ...) through pyarrow."""
    if not _is_url(location):
        return read_trace(location)
    import fsspec
    with fsspec.open(location, "rb") as f:
        pf = pq.ParquetFile(f)
        raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
        if raw is None:
            raise TraceError(f"{location}: Parquet file without moesim metadata; import it with `moesim convert`")
        table = pf.read()
    trace = Trace(table, TraceMeta.from_json(raw, location))
    trace.validate(location)
    return trace


def _stream_for(location: str, prefill_chunk: int) -> tuple[Trace, AccessStream]:
    with _TRACES_LOCK:
        return _cached_stream(location, prefill_chunk)


def _cached_stream(location: str, prefill_chunk: int) -> tuple[Trace, AccessStream]:
    if location not in _TRACES:
        _TRACES[location] = (read_location(location), {})
        while len(_TRACES) > KEEP_TRACES:
            _TRACES.popitem(last=False)
    _TRACES.move_to_end(location)
    trace, streams = _TRACES[location]
    if prefill_chunk not in streams:
        streams[prefill_chunk] = access_stream(trace, prefill_chunk=prefill_chunk)
    return trace, streams[prefill_chunk]


def execute(run: Run) -> dict:
    """Replay one run and return its row; a run its trace or inputs cannot serve gives a row with `error` set."""
    t0 = time.perf_counter()
    t_read = 0.0
    row: dict[str, Any] = {}
    try:
        chunk = int(run.params.get("prefill_chunk", 1))
        trace, stream = _stream_for(run.location, chunk)
        t_read = time.perf_counter() - t0
        # a run that batches requests builds the stream of its own batched trace
        batched = ReplayConfig.make(**run.params).serving
        row = replay(trace, stream=None if batched else stream, **run.params)
        error = None
    except RUN_ERRORS as e:
        error = str(e) or type(e).__name__
    return _finish(run, row, error, time.perf_counter() - t0, t_read)


def group_runs(runs: list[Run]) -> list[tuple[Run, ...]]:
    """The runs, in groups one worker call answers (`execute_group`), in the order of each group's first run.

    Runs that differ only in a seed their policy ignores form one group: the first is replayed, the
    others get a copy of its row. Count-mode LRU runs (no prefetch) of one trace that differ only in
    capacity form one group too, when CURVES is on and there are at least two capacities.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(_twin_key(run), []).append(run)
    if not CURVES:
        return [tuple(g) for g in groups.values()]
    sweeps: dict[tuple, list[tuple]] = {}
    for key, twins in groups.items():
        curve = curve_key(twins[0].params)
        sweeps.setdefault((twins[0].location, twins[0].fingerprint, curve) if curve else key, []).append(key)
    return [tuple(run for key in keys for run in groups[key]) for keys in sweeps.values()]


# answer count-mode LRU capacity sweeps from one curve (a switch for tests that compare with replays)
CURVES = True


def _twin_key(run: Run) -> tuple:
    params = dict(run.params)
    # the seed also draws Poisson arrivals
    if not policy_registry.uses_seed(str(params.get("policy", "lru"))) and params.get("arrival_rate") is None:
        params.pop("seed", None)
    return run.location, run.fingerprint, _hash(params)


def execute_group(group: tuple[Run, ...]) -> list[dict]:
    """The rows of a group of runs (see `group_runs`), the first run's first."""
    twins: dict[tuple, list[Run]] = {}
    for run in group:
        twins.setdefault(_twin_key(run), []).append(run)
    heads = [runs[0] for runs in twins.values()]
    rows = _curve_rows(heads) if len(heads) > 1 else None
    if rows is None:
        rows = [execute(run) for run in heads]
    out = []
    for row, runs in zip(rows, twins.values()):
        out += [row, *_twin_rows(row, runs[1:])]
    return out


def _curve_rows(runs: list[Run]) -> list[dict] | None:
    """The rows of capacity-sweep runs from one LRU curve, or None (the caller replays each) when the curve
    cannot answer them or their trace cannot be read (each run's own replay then says why in its row)."""
    t0 = time.perf_counter()
    try:
        chunk = int(runs[0].params.get("prefill_chunk", 1))
        trace, stream = _stream_for(runs[0].location, chunk)
        t_read = time.perf_counter() - t0
        batched = ReplayConfig.make(**runs[0].params).serving
        rows = lru_rows(trace, [ReplayConfig.make(**run.params) for run in runs], stream=None if batched else stream)
    except RUN_ERRORS:
        return None
    if rows is None:
        return None
    # the group's time, shared out: each row's run_s is what its run cost in the curve
    each_s, read_s = (time.perf_counter() - t0) / len(runs), t_read / len(runs)
    return [_finish(run, row, None, each_s, read_s) for run, row in zip(runs, rows)]


def _finish(run: Run, row: dict, error: str | None, run_s: float, read_s: float) -> dict:
    for k, v in run.params.items():
        row.setdefault(k, v)  # parameters replay does not echo (new keywords) still become columns
    row.update(trace=run.trace, trace_fingerprint=run.fingerprint, run_key=run.key, moesim_version=__version__,
               error=error, run_s=run_s, read_s=read_s)
    # numpy scalars as plain Python, so a fresh row and one read back from the checkpoint have the same types
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _twin_rows(row: dict, runs: Iterable[Run]) -> Iterable[dict]:
    for run in runs:
        yield {**row, "run_key": run.key, "seed": run.params.get("seed", row.get("seed")), "run_s": 0.0,
               "read_s": 0.0}
