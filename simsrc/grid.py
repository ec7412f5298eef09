"""Policy grids: expand a TOML spec into replay runs, run them locally or on Dask, resumably.

A spec names traces (paths or globs, relative to the spec's folder, or fsspec
URLs), then any of replay()'s keyword arguments. A list is an axis, anything
else is fixed; axes combine as a product, except those listed together in a
`[[group]]` table, which vary in step (run i takes the i-th value of each):

    name = "lru-vs-lfu"
    trace = ["../traces/*.parquet"]
    policy = ["lru", "lfu", "belady"]
    capacity = ["5%", "10%", "25%"]
    mode = "count"
    [[group]]
    hardware = ["rtx4090-pcie4", "a100-pcie4"]
    bandwidth = ["24GB/s", "25GB/s"]

The output Parquet file is the checkpoint: finished rows are rewritten into it
atomically (temporary file, fsync, rename) every few seconds, each row keyed by
a hash of its parameters and its trace's content, so a killed grid (even with
kill -9) run again skips the rows already there and loses or repeats none. The
file's metadata holds a hash of the grid's run set, so a changed spec is
reported instead of mixed in.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import math
import os
import threading
import time
import tomllib
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from . import policies as policy_registry
from .config import KNOB, ReplayConfig, knob_name
from .registry import suggest
from .replay import replay
from .trace import AccessStream, Trace, TraceError, TraceMeta, access_stream, read_trace
from .trace.schema import META_KEY

GRID_META_KEY = b"moesim_grid"
SPEC_FIELDS = ("name", "description", "group")
# plural spellings a person writes naturally; the replay keyword is the column name
ALIASES = {"traces": "trace", "policies": "policy", "predictors": "predictor", "capacities": "capacity",
           "scopes": "scope", "modes": "mode", "seeds": "seed", "bandwidths": "bandwidth",
           "latencies": "latency"}
# replay arguments that name files, resolved against the spec's folder like traces
PATH_FIELDS = ("train",)
FLUSH_EVERY_S = 2.0


@dataclass(frozen=True)
class Run:
    """One replay of a grid: the trace as the spec names it, where to read it, and replay's keywords."""

    key: str
    trace: str                # as written in the spec (after glob expansion): the `trace` column
    location: str             # absolute path or URL each worker reads
    fingerprint: str
    params: dict = field(hash=False)


@dataclass
class Grid:
    name: str
    source: str               # the spec file (or '<dict>')
    runs: list[Run]
    spec_hash: str

    def __len__(self) -> int:
        return len(self.runs)


@dataclass
class GridReport:
    out: Path
    runs: int
    done_before: int
    ran: int
    failed: int
    seconds: float


# ---------------------------------------------------------------- spec -> runs

def load_spec(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such grid spec")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None


def expand(spec: dict | str | os.PathLike, *, base: str | os.PathLike | None = None) -> Grid:
    """The runs of a spec (a TOML file, or its dict with `base` the folder relative paths start from)."""
    if isinstance(spec, dict):
        where, raw = "<spec>", spec
        base = Path(base or ".")
    else:
        where, raw = str(spec), load_spec(spec)
        base = Path(spec).resolve().parent
    allowed = _replay_keywords()
    fixed: dict[str, Any] = {}
    axes: list[tuple[tuple[str, ...], list[tuple]]] = []
    for raw_key, value in raw.items():
        if raw_key in SPEC_FIELDS:
            continue
        key = _field(raw_key, allowed, where)
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{where}: field {raw_key!r} is an empty list; give at least one value")
            axes.append(((key,), [(v,) for v in value]))
        else:
            fixed[key] = value
    groups = raw.get("group", [])
    if isinstance(groups, dict):
        groups = [groups]
    for i, group in enumerate(groups):
        names, columns = [], []
        for raw_key, value in group.items():
            key = _field(raw_key, allowed, f"{where} [[group]] {i + 1}")
            if not isinstance(value, list):
                raise ValueError(f"{where}: [[group]] {i + 1} field {raw_key!r} must be a list (values that vary "
                                 f"together); move a fixed value out of the group")
            names.append(key)
            columns.append(value)
        if len({len(c) for c in columns}) > 1:
            lengths = ", ".join(f"{n}: {len(c)}" for n, c in zip(names, columns))
            raise ValueError(f"{where}: [[group]] {i + 1} lists differ in length ({lengths}); values in a group "
                             f"vary together, so give each the same number")
        if names:
            axes.append((tuple(names), list(zip(*columns))))
    all_keys = [k for names, _ in axes for k in names] + list(fixed)
    duplicated = {k for k in all_keys if all_keys.count(k) > 1}
    if duplicated:
        raise ValueError(f"{where}: field(s) {', '.join(sorted(duplicated))} given twice (plural and singular "
                         f"spelling, or both in and out of a [[group]]); keep one")
    trace_axis = [a for a in axes if "trace" in a[0]]
    if "trace" in fixed:
        axes.insert(0, (("trace",), [(fixed.pop("trace"),)]))
    elif not trace_axis:
        raise ValueError(f"{where}: no traces; add e.g. trace = [\"../traces/*.parquet\"]")
    # traces outermost, so runs of one trace sit together and a worker reads each trace once
    axes.sort(key=lambda a: "trace" not in a[0])

    fingerprints: dict[str, str] = {}
    runs: list[Run] = []
    seen: set[str] = set()
    for combo in itertools.product(*(values for _, values in axes)):
        params = dict(fixed)
        for (names, _), values in zip(axes, combo):
            params.update(zip(names, values))
        for name_written in _expand_traces(params.pop("trace"), base, where):
            location = _location(name_written, base)
            if location not in fingerprints:
                fingerprints[location] = trace_fingerprint(location)
            run_params = {k: _resolve_path(k, v, base) for k, v in params.items()}
            # files a run reads besides its trace (a training trace) count by content too
            inputs = {k: trace_fingerprint(v) for k, v in run_params.items()
                      if k in PATH_FIELDS and isinstance(v, str) and (_is_url(v) or os.path.isfile(v))}
            key = run_key(fingerprints[location], name_written, run_params, inputs)
            if key in seen:
                continue  # the same run twice (e.g. overlapping globs): one row
            seen.add(key)
            runs.append(Run(key, name_written, location, fingerprints[location], run_params))
    _check_values(runs, where)
    name = str(raw.get("name") or (Path(where).stem if where != "<spec>" else "grid"))
    return Grid(name, where, runs, _hash(sorted(r.key for r in runs)))


def _check_values(runs: list[Run], where: str) -> None:
    """Every value of every run is read as replay will read it, before the first run starts: a typo or a
    wrong type stops the grid here with the field named, instead of failing rows (or the grid) later."""
    seen = set()
    for run in runs:
        params = {k: v for k, v in run.params.items()}
        identity = _hash(params)
        if identity in seen:
            continue
        seen.add(identity)
        ReplayConfig.make(where=f"{where}: ", **params)


def run_key(fingerprint: str, trace: str, params: dict, inputs: dict | None = None) -> str:
    key = {"trace": trace, "fingerprint": fingerprint, "params": params}
    if inputs:
        key["inputs"] = inputs
    return _hash(key)[:24]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _replay_keywords() -> set[str]:
    return set(KNOB) | {"trace"}


def _field(raw_key: str, allowed: set[str], where: str) -> str:
    key = ALIASES.get(raw_key, raw_key).replace("-", "_")
    if key == "trace":
        return key
    try:
        return knob_name(key)
    except ValueError:
        near = suggest(key.replace("_", "-"), [k.replace("_", "-") for k in sorted(allowed)] + list(ALIASES))
        raise ValueError(f"{where}: unknown field {raw_key!r}{near}; a spec names trace and replay's options: "
                         f"{', '.join(sorted(allowed))} (plus name, description, [[group]])") from None


def _is_url(text: str) -> bool:
    return "://" in text


def _expand_traces(value, base: Path, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out = []
    for pattern in values:
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: trace {pattern!r} is not a path; write a path, glob or URL as a string")
        if not glob.has_magic(pattern):
            out.append(pattern)
            continue
        if _is_url(pattern):
            import fsspec
            fs, _, found = fsspec.get_fs_token_paths(pattern)
            matches = sorted(fs.unstrip_protocol(p) for p in found)
        else:
            root = pattern if os.path.isabs(pattern) else str(base / pattern)
            matches = sorted(os.path.relpath(p, base) if not os.path.isabs(pattern) else p
                             for p in glob.glob(root))
        if not matches:
            raise ValueError(f"{where}: trace pattern {pattern!r} matches no file (relative paths start at "
                             f"{base}); fix the pattern")
        out.extend(matches)
    return out


def _location(trace: str, base: Path) -> str:
    if _is_url(trace):
        return trace
    path = Path(trace) if os.path.isabs(trace) else base / trace
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trace (named in the grid spec; relative paths start at {base})")
    return str(path.resolve())


def _resolve_path(key: str, value, base: Path):
    if key in PATH_FIELDS and isinstance(value, str) and not _is_url(value) and not os.path.isabs(value):
        return str((base / value).resolve())
    # a fitted predictor file: predictor = "learned:models/coact.npz"
    if key == "predictor" and isinstance(value, str) and value.startswith("learned:"):
        model = value.split(":", 1)[1]
        if model and not _is_url(model) and not os.path.isabs(model):
            return "learned:" + str((base / model).resolve())
    return value


_FINGERPRINTS: dict[tuple, str] = {}


def trace_fingerprint(location: str) -> str:
    """sha256 of the trace file's bytes (first 16 hex digits): the same data under any name or folder."""
    if _is_url(location):
        import fsspec
        fs, path = fsspec.core.url_to_fs(location)
        info = fs.info(path)
        stamp = (location, info.get("size"), str(info.get("mtime") or info.get("ETag") or info.get("etag")))
        opener = lambda: fs.open(path, "rb")  # noqa: E731
    else:
        st = os.stat(location)
        stamp = (location, st.st_size, st.st_mtime_ns)
        opener = lambda: open(location, "rb")  # noqa: E731
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        with opener() as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FINGERPRINTS[stamp] = h.hexdigest()[:16]
    return _FINGERPRINTS[stamp]


# ---------------------------------------------------------------- one run (in a worker)

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
    """Replay one run and return its row; bad parameters give a row with `error` set, not an exception."""
    t0 = time.perf_counter()
    t_read = 0.0
    row: dict[str, Any] = {}
    try:
        chunk = int(run.params.get("prefill_chunk", 1))
        trace, stream = _stream_for(run.location, chunk)
        t_read = time.perf_counter() - t0
        row = replay(trace, stream=stream, **run.params)
        error = None
    except (TraceError, ValueError) as e:
        error = str(e) or type(e).__name__
    for k, v in run.params.items():
        row.setdefault(k, v)  # parameters replay does not echo (new keywords) still become columns
    row.update(trace=run.trace, trace_fingerprint=run.fingerprint, run_key=run.key, moesim_version=__version__,
               error=error, run_s=time.perf_counter() - t0, read_s=t_read)
    # numpy scalars as plain Python, so a fresh row and one read back from the checkpoint have the same types
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


# ---------------------------------------------------------------- the checkpoint file

class ResultFile:
    """The output Parquet file, rewritten whole and renamed into place: any moment it is complete."""

    def __init__(self, path: str | os.PathLike, grid: Grid, *, restart: bool = False, extend: bool = False):
        self.path = Path(path)
        self.grid = grid
        self.order = {r.key: i for i, r in enumerate(grid.runs)}
        self.rows: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a killed writer; the real file is intact
        if self.path.exists() and not restart:
            self._load(extend)

    def _load(self, extend: bool = False) -> None:
        try:
            pf = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{self.path}: exists but is not a readable results file ({e}); "
                             f"pass --restart to replace it or choose another --out") from None
        raw = (pf.schema_arrow.metadata or {}).get(GRID_META_KEY)
        if raw is None:
            raise ValueError(f"{self.path}: exists but was not written by `moesim grid`; choose another --out "
                             f"or pass --restart to replace it")
        info = json.loads(raw)
        if info.get("spec_hash") != self.grid.spec_hash:
            table = pf.read(columns=["run_key"])
            keys = set(table.column("run_key").to_pylist())
            common = len(keys & set(self.order))
            grown = common == len(keys)
            if not (extend and grown):
                hint = (f"pass --extend to keep them and run the {len(self.grid) - common} new runs, "
                        if grown else "")
                raise ValueError(
                    f"{self.path}: holds {len(keys)} rows of a different grid (spec {info.get('spec')}, "
                    f"{info.get('runs')} runs); {self.grid.source} now expands to {len(self.grid)} runs, {common} "
                    f"of them in the file. The spec or a trace changed: {hint}write to a new --out, or pass "
                    f"--restart to discard the old rows")
        for row in pf.read().to_pylist():
            self.rows[row["run_key"]] = row

    @property
    def done(self) -> set[str]:
        return set(self.rows)

    def add(self, row: dict) -> None:
        self.rows[row["run_key"]] = row

    def write(self) -> None:
        rows = sorted(self.rows.values(), key=lambda r: self.order.get(r["run_key"], math.inf))
        table = rows_to_table(rows)
        info = {"spec_hash": self.grid.spec_hash, "spec": self.grid.source, "name": self.grid.name,
                "runs": len(self.grid), "moesim_version": __version__}
        table = table.replace_schema_metadata({GRID_META_KEY: json.dumps(info).encode()})
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows to one table with a type per column: a column mixing types (capacity 166 and '10%') is text."""
    columns: dict[str, list] = {}
    for row in rows:
        for k in row:
            columns.setdefault(k, [])
    for k, values in columns.items():
        values.extend(row.get(k) for row in rows)
    arrays = {}
    for k, values in columns.items():
        kinds = {_kind(v) for v in values if v is not None}
        if kinds <= {int, float, bool} and len(kinds) > 1 and bool not in kinds:
            values = [None if v is None else float(v) for v in values]
        elif len(kinds) > 1 and not kinds <= {list}:
            values = [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values]
        # NaN in a metric of an error row stays NaN; None becomes a null
        arrays[k] = pa.array(values, from_pandas=True)
    return pa.table(arrays)


def _kind(value) -> type:
    for t in (bool, int, float, str, list):
        if isinstance(value, t):
            return t
    return type(value)


def read_results(path: str | os.PathLike):
    """A grid's results as a pandas DataFrame (one row per run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file (write one with `moesim grid SPEC --out {path}`)")
    return pq.read_table(path).to_pandas()


# ---------------------------------------------------------------- executors

def run_grid(spec: dict | str | os.PathLike | Grid, out: str | os.PathLike, *, jobs: int | None = None,
             executor: str = "local", address: str | None = None, restart: bool = False, extend: bool = False,
             progress: Callable[[int], None] | None = None, base: str | os.PathLike | None = None,
             flush_every_s: float = FLUSH_EVERY_S, results: "ResultFile | None" = None) -> GridReport:
    """Run every run of a grid not yet in `out`, writing rows to `out` as they finish.

    executor: 'local' (jobs processes; 1 runs in this process) or 'dask' (a
    distributed scheduler at `address`, or a LocalCluster of `jobs` workers when
    none is given). restart: discard the rows in `out`; extend: keep them when the spec only grew (its runs
    include every row there). progress(n) is called with the runs finished since the last call.
    results: `out` already opened as a ResultFile (the CLI opens it to report what is done; not read twice).
    """
    t0 = time.perf_counter()
    grid = spec if isinstance(spec, Grid) else expand(spec, base=base)
    results = results or ResultFile(out, grid, restart=restart, extend=extend)
    pending = [r for r in grid.runs if r.key not in results.done]
    done_before = len(grid) - len(pending)
    jobs = jobs or os.cpu_count() or 1
    leaders, twins = _share_replays(pending)
    if executor == "local":
        stream = _local(leaders, jobs)
    elif executor == "dask":
        stream = _dask(leaders, address, jobs)
    else:
        raise ValueError(f"unknown executor {executor!r}; choose local or dask")
    failed = 0
    last_write = time.monotonic()
    dirty = restart or extend or not results.path.exists()
    try:
        for row in stream:
            for twin in [row, *_twin_rows(row, twins.get(row["run_key"], ()))]:
                results.add(twin)
                failed += twin.get("error") is not None
            dirty = True
            if progress:
                progress(1 + len(twins.get(row["run_key"], ())))
            if time.monotonic() - last_write >= flush_every_s:
                results.write()
                last_write, dirty = time.monotonic(), False
    finally:
        if dirty:
            results.write()
    return GridReport(results.path, len(grid), done_before, len(pending), failed, time.perf_counter() - t0)


def _share_replays(runs: list[Run]) -> tuple[list[Run], dict[str, list[Run]]]:
    """Runs that differ only in a seed their policy ignores replay once.

    Returns the runs to execute and, per executed run's key, the runs that get a copy of its row.
    """
    first: dict[tuple, Run] = {}
    twins: dict[str, list[Run]] = {}
    for run in runs:
        params = dict(run.params)
        if not policy_registry.uses_seed(str(params.get("policy", "lru"))):
            params.pop("seed", None)
        identity = (run.location, run.fingerprint, _hash(params))
        if identity in first:
            twins.setdefault(first[identity].key, []).append(run)
        else:
            first[identity] = run
    return list(first.values()), twins


def _twin_rows(row: dict, runs: Iterable[Run]) -> Iterable[dict]:
    for run in runs:
        yield {**row, "run_key": run.key, "seed": run.params.get("seed", row.get("seed")), "run_s": 0.0,
               "read_s": 0.0}


def _local(runs: list[Run], jobs: int) -> Iterable[dict]:
    if not runs:
        return
    if jobs <= 1 or len(runs) == 1:
        for run in runs:
            yield execute(run)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), initializer=_die_with_parent) as pool:
        # a bounded window of tasks in flight, handed out trace by trace
        todo = iter(runs)
        running = set()
        for run in itertools.islice(todo, 4 * jobs):
            running.add(pool.submit(execute, run))
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    yield fut.result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        running.add(pool.submit(execute, nxt))
        finally:
            for fut in running:
                fut.cancel()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the grid process dies (even by kill -9), so none is orphaned."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _dask(runs: list[Run], address: str | None, jobs: int) -> Iterable[dict]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError("the dask executor needs dask.distributed: pip install 'moesim[dask]'") from None
    if not runs:
        return
    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        address = cluster.scheduler_address
    try:
        with Client(address) as client:
            # workers read traces themselves (shared path or URL); tasks carry only parameters
            futures = [client.submit(execute, run, key=f"moesim-run-{run.key}", pure=False) for run in runs]
            for fut in as_completed(futures):
                yield fut.result()
                fut.release()
    finally:
        if cluster is not None:
            cluster.close()
