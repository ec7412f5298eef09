"""The moesim trace schema: columns, file metadata, and the checks every reader runs.

One row per (token, MoE layer). Rows are stored in *canonical order*:
(step, request_id, token_pos, layer). Writers sort into that order; readers
check it, because the replay's access stream is derived from it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import TraceError

SCHEMA_VERSION = 1
META_KEY = b"moesim"
PREFILL, DECODE = 0, 1
PHASES = {"prefill": PREFILL, "decode": DECODE}

# Prediction columns: pred_h{h} holds the experts a recorded predictor expects
# at layer l+h (of the model's MoE layers) for this token, known when this
# row's layer ran. h=0 is a prediction of this very row, made before its router
# ran (MoE-Beyond's "Predicted Expert IDs").
PRED_COLUMN = re.compile(r"^pred_h(\d+)$")

KEY_COLUMNS = {
    "request_id": pa.uint32(),
    "phase": pa.uint8(),
    "step": pa.uint32(),
    "token_pos": pa.uint32(),
    "layer": pa.uint16(),
}
OPTIONAL_COLUMNS = ("expert_weights", "token_id", "router_logits")


@dataclass
class TraceMeta:
    """The model card and provenance stored in a trace's Parquet metadata."""

    model: str
    num_layers: int
    moe_layers: list[int]
    num_experts: int
    top_k: int
    shared_experts: int = 0
    bytes_per_expert: int = 0
    dense_bytes_per_layer: int = 0
    dtype: str = "unknown"
    quantization: str | None = None
    revision: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    lacks: list[str] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def id_type(self) -> pa.DataType:
        return pa.uint8() if self.num_experts <= 256 else pa.uint16()

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    def layer_lut(self) -> np.ndarray:
        """Model layer id -> dense MoE layer index 0..num_moe_layers-1 (-1 for layers without experts)."""
        lut = np.full(max(self.moe_layers) + 1, -1, dtype=np.int32)
        lut[self.moe_layers] = np.arange(len(self.moe_layers), dtype=np.int32)
        return lut

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "TraceMeta":
        """Parse and check the stored model card: every field's type and range, before anything is sized by it."""
        try:
            d = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TraceError(f"{where}: the 'moesim' metadata is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise TraceError(f"{where}: the 'moesim' metadata is {type(d).__name__} JSON, not an object of "
                             f"fields (model, num_experts, ...); the file is damaged: write it again")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise TraceError(
                f"{where}: schema_version {version!r} is not one this moesim reads "
                f"(it reads {SCHEMA_VERSION}); convert the file with a matching moesim version"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("model", "num_layers", "moe_layers", "num_experts", "top_k") if n not in d]
        if missing:
            raise TraceError(f"{where}: metadata lacks {', '.join(missing)}")
        unknown = sorted(set(d) - known)
        if unknown:
            raise TraceError(f"{where}: metadata has unknown fields {unknown}")
        meta = cls(**d)
        meta.validate(where)
        return meta

    def validate(self, where: str) -> None:
        """Types and ranges of every field. Layer ids are stored as uint16 and expert ids as uint8/uint16, and
        readers size arrays by layers x experts, so the bounds are checked here, before any such array exists."""
        for name, kinds in _FIELD_TYPES.items():
            v = getattr(self, name)
            if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
                want = " or ".join("null" if k is type(None) else _TYPE_WORDS[k] for k in kinds)
                raise TraceError(f"{where}: metadata field {name} is {v!r} ({type(v).__name__}); expected {want}")
        if not isinstance(self.moe_layers, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in self.moe_layers):
            raise TraceError(f"{where}: metadata field moe_layers is {self.moe_layers!r}; expected a list of "
                             f"integer layer ids")
        if not all(isinstance(x, str) for x in self.lacks):
            raise TraceError(f"{where}: metadata field lacks is {self.lacks!r}; expected a list of words")
        if not self.moe_layers or sorted(set(self.moe_layers)) != list(self.moe_layers) or self.moe_layers[0] < 0 \
                or self.moe_layers[-1] >= MAX_LAYERS:
            raise TraceError(f"{where}: moe_layers must be a non-empty increasing list of layer ids in "
                             f"0..{MAX_LAYERS - 1}, got {_short(self.moe_layers)}")
        if not 1 <= self.num_layers <= MAX_LAYERS:
            raise TraceError(f"{where}: num_layers={self.num_layers} must be in 1..{MAX_LAYERS} (layer ids are uint16)")
        if self.num_experts < 1 or self.num_experts > MAX_EXPERTS:
            raise TraceError(f"{where}: num_experts={self.num_experts} must be in 1..{MAX_EXPERTS}")
        if self.top_k < 1 or self.top_k > self.num_experts:
            raise TraceError(f"{where}: top_k={self.top_k} must be in 1..num_experts ({self.num_experts})")
        if self.moe_layers[-1] >= self.num_layers:
            raise TraceError(
                f"{where}: moe_layers mention layer {self.moe_layers[-1]} but num_layers={self.num_layers}"
            )
        if len(self.moe_layers) * self.num_experts > MAX_ITEMS:
            raise TraceError(f"{where}: {len(self.moe_layers)} MoE layers x {self.num_experts} experts = "
                             f"{len(self.moe_layers) * self.num_experts:,} (layer, expert) pairs, more than the "
                             f"{MAX_ITEMS:,} moe_layers x num_experts moesim sizes its arrays for; the metadata "
                             f"is damaged or the model is beyond reach")
        for name in ("shared_experts", "bytes_per_expert", "dense_bytes_per_layer"):
            if getattr(self, name) < 0:
                raise TraceError(f"{where}: {name}={getattr(self, name)} is negative; it counts "
                                 f"{'experts' if name == 'shared_experts' else 'bytes'} (0 when unknown)")


_FIELD_TYPES = {
    "model": (str,), "num_layers": (int,), "num_experts": (int,), "top_k": (int,), "shared_experts": (int,),
    "bytes_per_expert": (int,), "dense_bytes_per_layer": (int,), "dtype": (str,), "quantization": (str, type(None)),
    "revision": (str, type(None)), "source": (dict,), "lacks": (list,), "notes": (str,), "extra": (dict,),
    "schema_version": (int,), "moe_layers": (list,),
}
_TYPE_WORDS = {str: "text", int: "a whole number", dict: "an object", list: "a list", bool: "true/false"}
# Layer ids are stored as uint16, expert ids as uint16 at most.
MAX_LAYERS = 1 << 16
MAX_EXPERTS = 1 << 16
# (layer, expert) pairs a trace may name: the engine numbers them in int32 and inspect keeps a few int64
# counters per pair, so 2^24 (~100x today's largest models) bounds those arrays to a few hundred MB.
MAX_ITEMS = 1 << 24


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def checked_cast(values, dtype, where: str, field: str, *, lo: int | None = None, hi: int | None = None,
                 first_line: int | None = None) -> np.ndarray:
    """values as integer `dtype`, or a TraceError naming the field, the first bad value and its row.

    The one narrowing cast of the trace package: a value that does not fit (300 into uint8, 65537 into
    uint16, -1 into anything unsigned), a fraction (1.7), NaN, true/false or text is refused instead of
    being wrapped, truncated or turned into 0. lo/hi narrow the range (e.g. expert ids below num_experts).
    first_line: the file line of row 0, so the error names lines instead of rows.
    """
    a = np.asarray(values)
    info = np.iinfo(dtype)
    lo = int(info.min) if lo is None else max(int(lo), int(info.min))
    hi = int(info.max) if hi is None else min(int(hi), int(info.max))
    flat = a.reshape(-1)
    per_row = flat.size // len(a) if a.ndim > 1 and len(a) else 1  # row = first axis

    def fail(i: int, v) -> TraceError:
        row = f"line {first_line + i // per_row}: " if first_line is not None else \
            "" if a.ndim == 0 else f"row {i // per_row}: "
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        what = "is not a whole number" if isinstance(v, bool) or not isinstance(v, (int, float)) or \
            isinstance(v, float) else f"is out of range {lo}..{hi}"
        return TraceError(f"{where}: {row}{field} {_short(v)} {what}" + (
            f" (expected a whole number in {lo}..{hi})" if "whole" in what else "; it cannot be stored as given"))

    if a.dtype.kind in "iu":
        if a.dtype.kind == "u" and int(info.min) >= 0 and a.dtype.itemsize <= np.dtype(dtype).itemsize and lo == 0 \
                and hi == int(info.max):
            return a.astype(dtype, copy=False)  # widening: nothing to check
        bad = (flat > hi) if a.dtype.kind == "u" else (flat < lo) | (flat > hi)
        if a.dtype.kind == "u" and lo > 0:
            bad |= flat < lo
    elif a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(flat) | (flat != np.trunc(flat)) | (flat < lo) | (flat > hi)
    else:  # booleans, text, or Python objects (JSON numbers beyond int64 land here)
        items = flat.tolist()
        for i, v in enumerate(items):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    (isinstance(v, float) and not v.is_integer()) or not lo <= v <= hi:
                raise fail(i, v)
        return np.array(items, dtype=dtype).reshape(a.shape)
    if bad.any():
        i = int(np.argmax(bad))
        raise fail(i, flat[i].item())
    return a.astype(dtype, copy=False)


def arrow_schema(meta: TraceMeta, *, weights: bool, pred_horizons: dict[int, int] | None = None,
                 token_id: bool = False, logits: bool = False) -> pa.Schema:
    """The Arrow schema of a trace with these optional columns (pred_horizons: h -> list size)."""
    ids = meta.id_type
    fields = [pa.field(n, t, nullable=False) for n, t in KEY_COLUMNS.items()]
    fields.append(pa.field("expert_ids", pa.list_(ids, meta.top_k), nullable=False))
    if weights:
        fields.append(pa.field("expert_weights", pa.list_(pa.float32(), meta.top_k)))
    for h, size in sorted((pred_horizons or {}).items()):
        fields.append(pa.field(f"pred_h{h}", pa.list_(ids, size)))
    if token_id:
        fields.append(pa.field("token_id", pa.uint32()))
    if logits:
        fields.append(pa.field("router_logits", pa.list_(pa.float16(), meta.num_experts)))
    return pa.schema(fields, metadata={META_KEY: meta.to_json()})


def check_columns(schema: pa.Schema, meta: TraceMeta, where: str) -> None:
    """Names and types of every column, against the schema and the metadata."""
    names = set(schema.names)
    for name, typ in KEY_COLUMNS.items():
        if name not in names:
            raise TraceError(f"{where}: column '{name}' is missing (a trace needs {', '.join(KEY_COLUMNS)}, expert_ids)")
        if schema.field(name).type != typ:
            raise TraceError(f"{where}: column '{name}' has type {schema.field(name).type}, expected {typ}")
    if "expert_ids" not in names:
        raise TraceError(f"{where}: column 'expert_ids' is missing")
    for name in schema.names:
        typ = schema.field(name).type
        if name in KEY_COLUMNS:
            continue
        if name == "expert_ids" or PRED_COLUMN.match(name):
            if not pa.types.is_fixed_size_list(typ) or typ.value_type not in (pa.uint8(), pa.uint16()):
                raise TraceError(
                    f"{where}: column '{name}' has type {typ}, expected a fixed-size list of uint8/uint16 "
                    f"(a top-k that varies from row to row is not a valid trace)"
                )
            if typ.value_type != meta.id_type:
                raise TraceError(
                    f"{where}: column '{name}' holds {typ.value_type} ids but num_experts={meta.num_experts} "
                    f"means {meta.id_type} (uint8 up to 256 experts, uint16 above); the metadata or the column "
                    f"is wrong: write the file again"
                )
            if name == "expert_ids" and typ.list_size != meta.top_k:
                raise TraceError(
                    f"{where}: expert_ids holds {typ.list_size} experts per row but the metadata says top_k={meta.top_k}"
                )
            if name != "expert_ids" and not 1 <= typ.list_size <= meta.num_experts:
                raise TraceError(f"{where}: column '{name}' predicts {typ.list_size} experts per row; expected "
                                 f"1..num_experts ({meta.num_experts})")
        elif name == "expert_weights":
            if not pa.types.is_fixed_size_list(typ) or not pa.types.is_floating(typ.value_type) \
                    or typ.list_size != meta.top_k:
                raise TraceError(f"{where}: column 'expert_weights' has type {typ}, expected "
                                 f"fixed_size_list<float16|float32>[{meta.top_k}]")
        elif name == "token_id":
            if not pa.types.is_integer(typ):
                raise TraceError(f"{where}: column 'token_id' has type {typ}, expected uint32")
        elif name == "router_logits":
            if not pa.types.is_fixed_size_list(typ) or not pa.types.is_floating(typ.value_type) \
                    or typ.list_size != meta.num_experts:
                raise TraceError(f"{where}: column 'router_logits' has type {typ}, expected a fixed-size float "
                                 f"list of num_experts ({meta.num_experts}) logits")
        else:
            raise TraceError(
                f"{where}: column '{name}' is not part of the moesim schema (allowed besides the keys: "
                f"expert_ids, expert_weights, pred_h<N>, token_id, router_logits)"
            )


def _flat_ids(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False)


def check_rows(table: pa.Table, meta: TraceMeta, where: str, row_offset: int = 0) -> None:
    """Value checks that need only this table's rows: ids, weights, distinct experts per row."""
    k = meta.top_k
    n = table.num_rows
    if n == 0:
        return
    for name in KEY_COLUMNS:  # a file may declare them nullable
        col = table.column(name)
        if col.null_count:
            r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise TraceError(f"{where}: row {row_offset + r}: {name} is null; every row needs one")
    ids_col = table.column("expert_ids")
    flat = ids_col.combine_chunks().flatten()
    if not ids_col.null_count and flat.null_count:
        r = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) // k
        raise TraceError(f"{where}: row {row_offset + r}: expert_ids holds a null id; every row needs its {k} experts")
    layers = table.column("layer").to_numpy()
    known = np.zeros(int(max(layers.max(), meta.moe_layers[-1])) + 1, dtype=bool)
    known[meta.moe_layers] = True
    bad = np.flatnonzero(~known[layers])
    if bad.size:
        r = bad[0]
        raise TraceError(f"{where}: row {row_offset + r}: layer {layers[r]} is not one of the MoE layers "
                         f"in the metadata ({meta.moe_layers})")
    phase = table.column("phase").to_numpy()
    bad = np.flatnonzero(phase > DECODE)
    if bad.size:
        raise TraceError(f"{where}: row {row_offset + bad[0]}: phase {phase[bad[0]]} is neither 0 (prefill) nor 1 (decode)")
    ids = flat.to_numpy(zero_copy_only=False)
    if ids_col.null_count:
        raise TraceError(f"{where}: expert_ids has null rows; every row needs its {k} experts")
    bad = np.flatnonzero(ids >= meta.num_experts)
    if bad.size:
        r = bad[0] // k
        raise TraceError(f"{where}: row {row_offset + r}: expert id {ids[bad[0]]} is out of range "
                         f"(num_experts={meta.num_experts}, ids are 0..{meta.num_experts - 1})")
    if k > 1:
        s = np.sort(ids.reshape(n, k), axis=1)
        dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if dup.size:
            raise TraceError(f"{where}: row {row_offset + dup[0]}: expert_ids {ids.reshape(n, k)[dup[0]].tolist()} "
                             f"names an expert twice; a router picks {k} distinct experts")
    check_optional_columns(table, meta, where, row_offset)


def check_optional_columns(table: pa.Table, meta: TraceMeta, where: str, row_offset: int = 0) -> None:
    """The value checks of check_rows for the optional columns: predictions in range, weights not NaN or negative."""
    k = meta.top_k
    for name in table.column_names:
        if PRED_COLUMN.match(name):
            col = table.column(name)
            size = col.type.list_size
            vals = _flat_ids(pc.fill_null(col, pa.scalar([0] * size, col.type))) if col.null_count else _flat_ids(col)
            bad = np.flatnonzero(vals >= meta.num_experts)
            if bad.size:
                raise TraceError(f"{where}: row {row_offset + bad[0] // size}: {name} names expert "
                                 f"{vals[bad[0]]}, out of range for num_experts={meta.num_experts}")
    if "expert_weights" in table.column_names:
        col = table.column("expert_weights")
        if col.null_count:
            # a null row has no values, so the flat weights would shift against the experts
            r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise TraceError(f"{where}: row {row_offset + r}: expert_weights is null; give every row its "
                             f"{k} weights, or leave the column out")
        w = _flat_ids(col).astype(np.float64)
        bad = np.flatnonzero(~((w >= 0) & (w < np.inf)))  # catches NaN too
        if bad.size:
            raise TraceError(f"{where}: row {row_offset + bad[0] // k}: expert weight {w[bad[0]]} "
                             f"is NaN, infinite or negative; routing weights are non-negative numbers")


def _order_columns(table: pa.Table):
    return tuple(table.column(c).to_numpy().astype(np.int64) for c in ("step", "request_id", "token_pos", "layer"))


def _out_of_order(where, r, prev, req, pos, layer, prev_pos, prev_layer, same: bool) -> TraceError:
    what = "appears twice" if same else "comes after a later one"
    return TraceError(
        f"{where}: row {r}: (request {req}, token_pos {pos}, layer {layer}) {what} "
        f"(row {prev}: token_pos {prev_pos}, layer {prev_layer}); token positions must increase "
        f"within a request and each (token, layer) appear once"
    )


def _steps_back(where, r, step, req, prev_step, prev_req) -> TraceError:
    return TraceError(f"{where}: row {r}: (step {step}, request {req}) follows (step {prev_step}, "
                      f"request {prev_req}); rows must be sorted by step, then request_id, token_pos, layer")


def check_order(table: pa.Table, where: str, row_offset: int = 0) -> None:
    """Canonical row order, and no (request, token, layer) twice."""
    n = table.num_rows
    if n < 2:
        return
    step, req, pos, layer = _order_columns(table)
    # Within a request, (token_pos, layer) must strictly increase in file order:
    # that catches duplicates, positions going backwards and shuffled layers.
    by_req = np.argsort(req, kind="stable")
    key = pos[by_req] * 65536 + layer[by_req]
    same_req = req[by_req][1:] == req[by_req][:-1]
    bad = np.flatnonzero(same_req & (key[1:] <= key[:-1]))
    if bad.size:
        r = by_req[bad[0] + 1]
        prev = by_req[bad[0]]
        raise _out_of_order(where, row_offset + r, row_offset + prev, req[r], pos[r], layer[r], pos[prev], layer[prev],
                            key[bad[0] + 1] == key[bad[0]])
    # Across requests: steps never go back, and a step's rows are grouped by request.
    k2 = np.stack([step, req], axis=1)
    d = np.diff(k2, axis=0)
    bad = np.flatnonzero((d[:, 0] < 0) | ((d[:, 0] == 0) & (d[:, 1] < 0)))
    if bad.size:
        r = bad[0] + 1
        raise _steps_back(where, row_offset + r, step[r], req[r], step[r - 1], req[r - 1])


class OrderCheck:
    """check_order for a file read in row batches: each batch is checked alone, and its first rows against
    what earlier batches left -- the last (step, request) and each request's last (token_pos, layer) -- so a
    stream refuses exactly the files read_trace refuses, wherever the batch boundaries fall."""

    def __init__(self, where: str):
        self.where = where
        self.last: tuple[int, int, int] | None = None     # (step, request, row) of the previous batch's last row
        self.request_last: dict[int, tuple[int, int, int, int]] = {}  # request -> (key, token_pos, layer, row)

    def feed(self, table: pa.Table, row_offset: int) -> None:
        n = table.num_rows
        if n == 0:
            return
        check_order(table, self.where, row_offset)
        step, req, pos, layer = _order_columns(table)
        if self.last is not None:
            s0, q0, _ = self.last
            if step[0] < s0 or (step[0] == s0 and req[0] < q0):
                raise _steps_back(self.where, row_offset, step[0], req[0], s0, q0)
        key = pos * 65536 + layer
        uniq, first = np.unique(req, return_index=True)
        for r, i in zip(uniq.tolist(), first.tolist()):
            seen = self.request_last.get(r)
            if seen is not None and key[i] <= seen[0]:
                raise _out_of_order(self.where, row_offset + i, seen[3], r, pos[i], layer[i], seen[1], seen[2],
                                    key[i] == seen[0])
        _, last_rev = np.unique(req[::-1], return_index=True)
        for r, i in zip(uniq.tolist(), (n - 1 - last_rev).tolist()):
            self.request_last[r] = (int(key[i]), int(pos[i]), int(layer[i]), row_offset + i)
        self.last = (int(step[-1]), int(req[-1]), row_offset + n - 1)


def canonical_order(step: np.ndarray, request_id: np.ndarray, token_pos: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """The permutation that puts rows into canonical order."""
    return np.lexsort((layer, token_pos, request_id, step))
