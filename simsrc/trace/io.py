"""Reading, writing and streaming moesim traces (Parquet)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..files import AtomicFile, regular_file
from .cache import FileState, checked_sha256, file_sha256
from .schema import (
    KEY_COLUMNS,
    META_KEY,
    PRED_COLUMN,
    OrderCheck,
    TraceError,
    TraceMeta,
    arrow_schema,
    canonical_order,
    check_columns,
    check_optional_columns,
    check_order,
    check_rows,
    checked_cast,
)

ROW_GROUP_ROWS = 1 << 20


def _fixed_list(values: np.ndarray, typ: pa.DataType, size: int, valid: np.ndarray | None = None) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=typ)
    arr = pa.FixedSizeListArray.from_arrays(flat, size)
    if valid is not None and not valid.all():
        arr = pa.FixedSizeListArray.from_arrays(flat, size, mask=pa.array(~valid))
    return arr


@dataclass
class SourceFile:
    """The file a trace was read from, as it was then: the stream cache's key to it."""

    state: FileState
    checked: bool                  # passed read_trace's checks
    columns: list[str] | None      # what read_trace was asked for (None: all)
    num_rows: int
    sha256: str | None = None      # of the file's bytes, once known

    def content_sha256(self) -> str | None:
        """The hash of the file's bytes, if the file is still the version that was read."""
        if self.sha256 is None:
            try:
                sha = file_sha256(self.state.path)
                if FileState.of(self.state.path) == self.state:
                    self.sha256 = sha
            except OSError:
                return None
        return self.sha256

    def read_table(self, where: str) -> pa.Table:
        """The table, read now (it was checked when first read: it is not checked again)."""
        try:
            now = FileState.of(self.state.path)
        except OSError:
            now = None
        if now != self.state:
            raise TraceError(f"{where}: the file changed or went away after it was read; read it again")
        want = None if self.columns is None else _wanted(self.columns)
        try:
            return pq.ParquetFile(self.state.path).read(columns=want)
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{where}: the file is damaged or truncated ({e}); write it again") from None


class Trace:
    """A trace in memory: an Arrow table in canonical order plus its metadata.

    Columns stay in Arrow/numpy buffers; nothing is turned into Python objects. A trace read
    from a file whose access stream is cached (trace.cache) reads its table only when asked for it.
    """

    def __init__(self, table: pa.Table | None, meta: TraceMeta, path: Path | None = None, *,
                 source: SourceFile | None = None):
        if table is None and source is None:
            raise ValueError("a trace needs its table, or the file to read it from")
        self._table = table
        self.meta = meta
        self.path = path
        self.source = source

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            self._table = self.source.read_table(str(self.path))
        return self._table

    def __repr__(self) -> str:
        return f"Trace({self.path or '<in memory>'}, {self.meta.model}, {self.num_rows:,} rows)"

    # ----- construction -------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        meta: TraceMeta,
        *,
        request_id: np.ndarray,
        phase: np.ndarray,
        step: np.ndarray,
        token_pos: np.ndarray,
        layer: np.ndarray,
        expert_ids: np.ndarray,
        expert_weights: np.ndarray | None = None,
        predictions: Mapping[int, np.ndarray] | None = None,
        token_id: np.ndarray | None = None,
        router_logits: np.ndarray | None = None,
        validate: bool = True,
        where: str = "<in memory>",
    ) -> "Trace":
        """Build a trace from per-row arrays (any order; sorted here).

        expert_ids: (rows, top_k). predictions: {h: (rows, m)} with -1 where a
        row has no prediction for that horizon. Every value is stored as given or
        refused (checked_cast): nothing wraps around or loses a fraction.
        where: the source, for error messages (an importer passes its file).
        """
        meta.validate(where)
        n = len(layer)
        expert_ids = np.asarray(expert_ids)
        if expert_ids.shape != (n, meta.top_k):
            raise TraceError(f"{where}: expert_ids has shape {expert_ids.shape}, expected ({n}, {meta.top_k})")
        keys = {}
        for name, src in (("request_id", request_id), ("phase", phase), ("step", step),
                          ("token_pos", token_pos), ("layer", layer)):
            src = np.asarray(src)
            if src.shape != (n,):
                raise TraceError(f"{where}: {name} has shape {src.shape}, expected ({n},) like layer")
            keys[name] = checked_cast(src, KEY_COLUMNS[name].to_pandas_dtype(), where, name,
                                      hi=1 if name == "phase" else None)
        ids = meta.id_type
        np_ids = np.uint8 if ids == pa.uint8() else np.uint16
        expert_ids = checked_cast(expert_ids, np_ids, where, "expert_ids", hi=meta.num_experts - 1)
        order = canonical_order(keys["step"], keys["request_id"], keys["token_pos"], keys["layer"])
        cols: dict[str, pa.Array] = {name: pa.array(v[order], type=KEY_COLUMNS[name]) for name, v in keys.items()}
        cols["expert_ids"] = _fixed_list(expert_ids[order], ids, meta.top_k)
        if expert_weights is not None:
            w = np.asarray(expert_weights, dtype=np.float32)
            if w.shape != (n, meta.top_k):
                raise TraceError(f"{where}: expert_weights has shape {w.shape}, expected ({n}, {meta.top_k})")
            w = w[order]
            cols["expert_weights"] = _fixed_list(w, pa.float32(), meta.top_k)
        horizons = {}
        for h, pred in sorted((predictions or {}).items()):
            pred = np.asarray(pred)
            if pred.ndim != 2 or pred.shape[0] != n or not 1 <= pred.shape[1] <= meta.num_experts:
                raise TraceError(f"{where}: prediction for horizon {h} has shape {pred.shape}, expected ({n}, m) "
                                 f"with 1 <= m <= num_experts")
            pred = checked_cast(pred, np.int32, where, f"pred_h{h}", lo=-1, hi=meta.num_experts - 1)[order]
            valid = (pred >= 0).all(axis=1)
            cols[f"pred_h{h}"] = _fixed_list(np.where(pred < 0, 0, pred).astype(np_ids), ids, pred.shape[1], valid)
            horizons[h] = pred.shape[1]
        if token_id is not None:
            cols["token_id"] = pa.array(checked_cast(token_id, np.uint32, where, "token_id")[order], type=pa.uint32())
        if router_logits is not None:
            lg = np.asarray(router_logits, dtype=np.float16)
            if lg.shape != (n, meta.num_experts):
                raise TraceError(f"{where}: router_logits has shape {lg.shape}, expected ({n}, {meta.num_experts})")
            lg = lg[order]
            cols["router_logits"] = _fixed_list(lg, pa.float16(), lg.shape[1])
        schema = arrow_schema(meta, weights=expert_weights is not None, pred_horizons=horizons,
                              token_id=token_id is not None, logits=router_logits is not None)
        table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
        trace = cls(table, meta)
        if validate:
            trace.validate(where)
        return trace

    # ----- access ---------------------------------------------------------
    def validate(self, where: str) -> None:
        self.meta.validate(where)
        check_columns(self.table.schema, self.meta, where)
        check_table(self.table, self.meta, where)

    @property
    def num_rows(self) -> int:
        return self.source.num_rows if self._table is None else self._table.num_rows

    def column(self, name: str) -> np.ndarray:
        """A scalar column as a numpy array."""
        return self.table.column(name).to_numpy()

    def expert_ids(self) -> np.ndarray:
        """(rows, top_k) expert ids, narrow dtype."""
        col = self.table.column("expert_ids").combine_chunks()
        return col.flatten().to_numpy().reshape(-1, self.meta.top_k)

    def expert_weights(self) -> np.ndarray | None:
        if "expert_weights" not in self.table.column_names:
            return None
        col = self.table.column("expert_weights").combine_chunks()
        return col.flatten().to_numpy().reshape(-1, self.meta.top_k)

    @property
    def prediction_horizons(self) -> list[int]:
        return sorted(int(PRED_COLUMN.match(c).group(1)) for c in self.table.column_names if PRED_COLUMN.match(c))

    def predictions(self, h: int) -> np.ndarray:
        """(rows, m) predicted expert ids for layer l+h; -1 where a row has none."""
        col = self.table.column(f"pred_h{h}").combine_chunks()
        size = col.type.list_size
        vals = col.flatten().to_numpy().reshape(-1, size).astype(np.int32)
        # flatten() drops null rows' values, so rebuild around them
        if col.null_count:
            out = np.full((len(col), size), -1, dtype=np.int32)
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            out[valid] = vals
            return out
        return vals

    def layer_index(self) -> np.ndarray:
        """Each row's MoE layer as a dense index 0..num_moe_layers-1."""
        return self.meta.layer_lut()[self.column("layer")]

    def expert_counts(self) -> np.ndarray:
        """(MoE layers, experts): how many times each expert was routed to."""
        L, E = self.meta.num_moe_layers, self.meta.num_experts
        items = self.layer_index()[:, None].astype(np.int64) * E + self.expert_ids()
        return np.bincount(items.reshape(-1), minlength=L * E).reshape(L, E)

    def check_same_model(self, num_layers: int, num_experts: int, role: str = "training trace") -> None:
        """A clear error when this trace (e.g. training data) has another shape than the replayed one."""
        if (self.meta.num_moe_layers, self.meta.num_experts) != (num_layers, num_experts):
            raise ValueError(f"{self.path}: this {role} has {self.meta.num_moe_layers} MoE layers x "
                             f"{self.meta.num_experts} experts, the replayed trace {num_layers} x {num_experts}; "
                             f"use a trace of the same model")

    def select_requests(self, request_ids) -> "Trace":
        """A trace holding only these requests (ids kept)."""
        mask = np.isin(self.column("request_id"), np.asarray(list(request_ids)))
        return Trace(self.table.filter(pa.array(mask)), self.meta, self.path)

    def to_pandas(self):
        return self.table.to_pandas()


def read_trace(path: str | os.PathLike, *, columns: list[str] | None = None, validate: bool = True) -> Trace:
    """Read and check a trace file (a path, or an fsspec URL such as s3://bucket/t.parquet with the package
    for it installed). Errors name the file, the column or row, and the fix.

    A local file that passed these checks before and whose access stream is cached (trace.cache) is
    not read now: its table is read when first used, which a count-mode replay never does.
    """
    where = str(path)
    pf = _open(path)
    meta = _meta(pf, where)
    check_columns(pf.schema_arrow, meta, where)
    if _is_url(where):  # no stream cache for a remote file: read and check it whole
        try:
            table = pf.read(columns=None if columns is None else _wanted(columns))
        except (OSError, pa.ArrowException) as e:
            raise TraceError(f"{where}: the file is damaged or truncated ({e}); write it again") from None
        if validate:
            check_table(table, meta, where)
        return Trace(table, meta, None)
    path = Path(path)
    state = FileState.of(path)
    num_rows = pf.metadata.num_rows
    known = checked_sha256(state)
    if known is not None:
        meta.validate(where)
        return Trace(None, meta, path, source=SourceFile(state, True, columns, num_rows, known))
    want = None if columns is None else _wanted(columns)
    try:
        table = pf.read(columns=want)
    except (OSError, pa.ArrowException) as e:
        raise TraceError(f"{where}: the file is damaged or truncated ({e}); write it again") from None
    if validate:
        meta.validate(where)
        check_table(table, meta, where)
    return Trace(table, meta, path, source=SourceFile(state, validate, columns, num_rows))


def _wanted(columns: list[str]) -> list[str]:
    return list(dict.fromkeys([*KEY_COLUMNS, "expert_ids", *columns]))


def _numpy(col) -> np.ndarray:
    return col.to_numpy() if col.num_chunks == 1 else col.combine_chunks().to_numpy()


def _flat_values(col: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size list column's values, row after row, as one numpy array (no nulls: checked first)."""
    return (col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()).flatten().to_numpy()


def check_table(table: pa.Table, meta: TraceMeta, where: str) -> None:
    """schema.check_rows and schema.check_order (ids, weights, predictions, duplicates) in one compiled pass.

    When that pass finds a bad row, the numpy checks run to name it, so every message is theirs. (They
    cost ten times the pass: an argsort by request and a sort of every row's experts.)
    """
    whole = _CompiledChecks(meta)
    if not whole.take(table):
        check_rows(table, meta, where)
        check_order(table, where)
        if whole.refused:
            raise AssertionError(f"{where}: the compiled row checks found a bad row that check_rows and check_order "
                                 f"accept; please report this")
        return
    check_optional_columns(table, meta, where)


def read_meta(path: str | os.PathLike) -> TraceMeta:
    """The checked model card of a trace file, without reading its rows."""
    return _meta(_open(path), str(path))


def iter_batches(path: str | os.PathLike, *, columns: list[str] | None = None,
                 batch_rows: int = ROW_GROUP_ROWS) -> Iterator[tuple[TraceMeta, pa.Table, int]]:
    """Stream a trace in row batches: yields (meta, table, first_row). Each batch is checked as it arrives --
    rows, and the order across batches -- so a stream sees only what read_trace accepts, up to the first bad
    row."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    where = str(path)
    pf = _open(path)
    meta = _meta(pf, where)
    check_columns(pf.schema_arrow, meta, where)
    want = None if columns is None else list(dict.fromkeys([*KEY_COLUMNS, "expert_ids", *columns]))
    # the columns whose values check_rows checks are read even when not asked for
    checked = [c for c in pf.schema_arrow.names if c == "expert_weights" or PRED_COLUMN.match(c)]
    read = None if want is None else list(dict.fromkeys([*want, *checked]))
    compiled = _CompiledChecks(meta, streamed=True)
    order = None  # the numpy checks' order state, once the compiled pass cannot take a batch
    offset = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=read):
            table = pa.Table.from_batches([batch])
            if order is None and not compiled.take(table):
                # the numpy checks, from the first row: they name the bad row (or take the batch the compiled
                # pass could not, and every later one)
                order = _numpy_checks_through(pf, meta, where, read, batch_rows, offset + table.num_rows,
                                              compiled.refused)
            elif order is None:
                check_optional_columns(table, meta, where, row_offset=offset)
            else:
                check_rows(table, meta, where, row_offset=offset)
                order.feed(table, offset)
            if read != want:
                table = table.select(want)
            yield meta, table, offset
            offset += table.num_rows
    except (OSError, pa.ArrowException) as e:
        raise TraceError(f"{where}: the file is damaged or truncated near row {offset} ({e})") from None


class _CompiledChecks:
    """The compiled row checks (kernels.rows_ok) over a table, or a stream of its batches: each request's last
    (token_pos, layer) and the last (step, request) carry from batch to batch, so a stream is refused where
    OrderCheck refuses it."""

    def __init__(self, meta: TraceMeta, *, streamed: bool = False):
        self.meta = meta
        self.streamed = streamed
        self.rows = 0
        self.last_key = np.full(0, -1, np.int64)
        self.last: tuple[int, int] | None = None
        self.refused = False  # a batch failed the checks (not merely one the pass cannot take)

    def take(self, table: pa.Table) -> bool:
        """True when the batch passes; False when it does not, or cannot be checked here (nulls, or request ids
        far sparser than the rows: the per-request array would be too large), and self.refused says which."""
        n = table.num_rows
        if n == 0:
            return True
        ids_col = table.column("expert_ids")
        if ids_col.null_count or any(c.flatten().null_count for c in ids_col.chunks) or \
                any(table.column(c).null_count for c in KEY_COLUMNS):
            return False
        req = _numpy(table.column("request_id"))
        top = int(req.max())
        # each request's last (token_pos, layer) sits in an array indexed by request id: fine unless the ids are
        # far sparser than the rows, or, streamed, so many that the array would outweigh a batch (128 MiB)
        limit = 4 * (self.rows + n) + (1 << 20)
        if self.streamed:
            limit = min(limit, 1 << 24)
        if top >= limit:
            return False
        if top >= len(self.last_key):  # grown by half again at least, so a stream of rising ids copies it rarely
            size = min(max(top + 1, len(self.last_key) * 3 // 2), limit)
            self.last_key = np.r_[self.last_key, np.full(size - len(self.last_key), -1, np.int64)]
        from .kernels import rows_ok
        step = _numpy(table.column("step"))
        if self.last is not None and (int(step[0]), int(req[0])) < self.last:
            self.refused = True
            return False
        meta = self.meta
        layer = _numpy(table.column("layer"))
        known = np.zeros(max(int(layer.max()), meta.moe_layers[-1]) + 1, dtype=np.bool_)
        known[meta.moe_layers] = True
        if not rows_ok(step, req, _numpy(table.column("token_pos")), layer, _numpy(table.column("phase")),
                       _flat_values(ids_col), meta.top_k, known, meta.num_experts, self.last_key):
            self.refused = True
            return False
        self.rows += n
        self.last = (int(step[-1]), int(req[-1]))
        return True


def _numpy_checks_through(pf, meta: TraceMeta, where: str, read, batch_rows: int, rows: int, refused: bool):
    """check_rows and OrderCheck over the file's first `rows` rows: they raise, naming the bad row, or return
    the order state to go on with."""
    order = OrderCheck(where)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=read):
        table = pa.Table.from_batches([batch])
        check_rows(table, meta, where, row_offset=offset)
        order.feed(table, offset)
        offset += table.num_rows
        if offset >= rows:
            break
    if refused:
        raise AssertionError(f"{where}: the compiled row checks found a bad row that check_rows and OrderCheck "
                             f"accept; please report this")
    return order


def write_trace(trace: Trace, path: str | os.PathLike, *, row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Write atomically: a temporary file in the same folder, renamed when complete."""
    path = Path(path)
    trace.meta.validate(str(path))
    table = trace.table.replace_schema_metadata({META_KEY: trace.meta.to_json()})
    check_columns(table.schema, trace.meta, str(path))
    with TraceWriter(path, table.schema) as w:
        w.write(table, row_group_rows=row_group_rows)
    return path


class TraceWriter:
    """Write a trace in row groups; the final name appears only after close() (moesim.files.AtomicFile).

    Row groups must arrive in canonical order (the recorder writes request
    batches in step order). abort(), or an exception in a with-block, removes the temporary.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema):
        self.path = Path(path)
        self._file = AtomicFile(self.path)
        self._tmp = self._file.tmp
        try:
            self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        except BaseException as e:
            self._fail(e)

    def _fail(self, e: BaseException):
        self._file.discard()
        if isinstance(e, OSError):
            from ..files import output_error
            raise output_error(self.path, e) from e
        raise e

    def write(self, table: pa.Table, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        try:
            self._writer.write_table(table, row_group_size=row_group_rows)
        except BaseException as e:
            self._close_quietly()
            self._fail(e)

    def close(self) -> None:
        try:
            self._writer.close()
        except BaseException as e:
            self._fail(e)
        self._file.commit()

    def _close_quietly(self) -> None:
        try:
            self._writer.close()
        except BaseException:
            pass

    def abort(self) -> None:
        self._close_quietly()
        self._file.discard()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# Optional packages that read traces from object stores and web servers (pyproject extras).
REMOTE_EXTRAS = {"s3": "s3", "s3a": "s3", "http": "http", "https": "http"}


def _is_url(where: str) -> bool:
    return "://" in where


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    where = str(path)
    if _is_url(where):
        return _open_url(where)
    try:
        regular_file(path, "trace")
    except ValueError as e:
        raise TraceError(str(e)) from None
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise TraceError(f"{where}: not a readable Parquet trace ({e}); if it comes from another tool, "
                         f"import it with `moesim convert`") from None


def _open_url(url: str) -> pq.ParquetFile:
    scheme = url.split("://", 1)[0].lower()
    extra = REMOTE_EXTRAS.get(scheme)
    install = f"pip install 'moesim[{extra}]'" if extra else f"pip install fsspec and its package for {scheme}://"
    try:
        import fsspec
        f = fsspec.open(url, "rb").open()
    except ImportError as e:
        raise TraceError(f"{url}: reading {scheme}:// traces needs an optional package ({e}); {install}") from None
    except FileNotFoundError:
        raise TraceError(f"{url}: no such file") from None
    except (OSError, ValueError) as e:
        raise TraceError(f"{url}: cannot open it ({type(e).__name__}: {e})") from None
    try:
        return pq.ParquetFile(f)
    except (OSError, pa.ArrowException) as e:
        raise TraceError(f"{url}: not a readable Parquet trace ({e})") from None


def _meta(pf: pq.ParquetFile, where: str) -> TraceMeta:
    raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"{where}: Parquet file without moesim metadata (key 'moesim'); "
                         f"import it with `moesim convert`")
    return TraceMeta.from_json(raw, where)
