"""Executing runs in a worker: the traces and access streams it keeps, one run's row, runs answered together.

Executors (executors.py) hand workers *groups* of runs: `group_runs` decides which runs one worker call
answers, `execute_group` answers them. Today a group is runs that differ only in a seed their policy
ignores, replayed once; a rule that answers many runs from one pass over the stream (an LRU hit-rate
curve gives every capacity of a count-mode sweep at once) is one more grouping here and one more branch
in `execute_group`, with no executor changing.
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
    for k, v in run.params.items():
        row.setdefault(k, v)  # parameters replay does not echo (new keywords) still become columns
    row.update(trace=run.trace, trace_fingerprint=run.fingerprint, run_key=run.key, moesim_version=__version__,
               error=error, run_s=time.perf_counter() - t0, read_s=t_read)
    # numpy scalars as plain Python, so a fresh row and one read back from the checkpoint have the same types
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def group_runs(runs: list[Run]) -> list[tuple[Run, ...]]:
    """The runs, in groups one worker call answers (`execute_group`), in the order of each group's first run.

    Runs that differ only in a seed their policy ignores form one group: the first is replayed, the
    others get a copy of its row.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        params = dict(run.params)
        # the seed also draws Poisson arrivals
        if not policy_registry.uses_seed(str(params.get("policy", "lru"))) and params.get("arrival_rate") is None:
            params.pop("seed", None)
        groups.setdefault((run.location, run.fingerprint, _hash(params)), []).append(run)
    return [tuple(g) for g in groups.values()]


def execute_group(group: tuple[Run, ...]) -> list[dict]:
    """The rows of a group of runs (see `group_runs`), the first run's first."""
    row = execute(group[0])
    return [row, *_twin_rows(row, group[1:])]


def _twin_rows(row: dict, runs: Iterable[Run]) -> Iterable[dict]:
    for run in runs:
        yield {**row, "run_key": run.key, "seed": run.params.get("seed", row.get("seed")), "run_s": 0.0,
               "read_s": 0.0}
