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
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: the 'moesim' metadata is not valid JSON ({e})") from None
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
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
        return cls(**d)

    def validate(self, where: str) -> None:
        if self.num_experts < 1 or self.num_experts > 65536:
            raise TraceError(f"{where}: num_experts={self.num_experts} must be in 1..65536")
        if self.top_k < 1 or self.top_k > self.num_experts:
            raise TraceError(f"{where}: top_k={self.top_k} must be in 1..num_experts ({self.num_experts})")
        if not self.moe_layers or sorted(set(self.moe_layers)) != list(self.moe_layers):
            raise TraceError(f"{where}: moe_layers must be a non-empty increasing list, got {self.moe_layers}")
        if self.moe_layers[-1] >= self.num_layers:
            raise TraceError(
                f"{where}: moe_layers mention layer {self.moe_layers[-1]} but num_layers={self.num_layers}"
            )


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
            if name == "expert_ids" and typ.list_size != meta.top_k:
                raise TraceError(
                    f"{where}: expert_ids holds {typ.list_size} experts per row but the metadata says top_k={meta.top_k}"
                )
        elif name == "expert_weights":
            if not pa.types.is_fixed_size_list(typ) or not pa.types.is_floating(typ.value_type) \
                    or typ.list_size != meta.top_k:
                raise TraceError(f"{where}: column 'expert_weights' has type {typ}, expected "
                                 f"fixed_size_list<float16|float32>[{meta.top_k}]")
        elif name == "token_id":
            if not pa.types.is_integer(typ):
                raise TraceError(f"{where}: column 'token_id' has type {typ}, expected uint32")
        elif name == "router_logits":
            if not pa.types.is_fixed_size_list(typ) or not pa.types.is_floating(typ.value_type):
                raise TraceError(f"{where}: column 'router_logits' has type {typ}, expected a fixed-size float list")
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
    ids = _flat_ids(table.column("expert_ids"))
    if table.column("expert_ids").null_count:
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
        if col.null_count == 0:
            w = _flat_ids(col).astype(np.float64)
            bad = np.flatnonzero(~(w >= 0))  # catches NaN too
            if bad.size:
                raise TraceError(f"{where}: row {row_offset + bad[0] // k}: expert weight {w[bad[0]]} "
                                 f"is NaN or negative; routing weights are non-negative numbers")


def check_order(table: pa.Table, where: str) -> None:
    """Canonical row order, and no (request, token, layer) twice."""
    n = table.num_rows
    if n < 2:
        return
    step = table.column("step").to_numpy().astype(np.int64)
    req = table.column("request_id").to_numpy().astype(np.int64)
    pos = table.column("token_pos").to_numpy().astype(np.int64)
    layer = table.column("layer").to_numpy().astype(np.int64)
    # Within a request, (token_pos, layer) must strictly increase in file order:
    # that catches duplicates, positions going backwards and shuffled layers.
    by_req = np.argsort(req, kind="stable")
    key = pos[by_req] * 65536 + layer[by_req]
    same_req = req[by_req][1:] == req[by_req][:-1]
    bad = np.flatnonzero(same_req & (key[1:] <= key[:-1]))
    if bad.size:
        r = by_req[bad[0] + 1]
        prev = by_req[bad[0]]
        what = "appears twice" if key[bad[0] + 1] == key[bad[0]] else "comes after a later one"
        raise TraceError(
            f"{where}: row {r}: (request {req[r]}, token_pos {pos[r]}, layer {layer[r]}) {what} "
            f"(row {prev}: token_pos {pos[prev]}, layer {layer[prev]}); token positions must increase "
            f"within a request and each (token, layer) appear once"
        )
    # Across requests: steps never go back, and a step's rows are grouped by request.
    k2 = np.stack([step, req], axis=1)
    d = np.diff(k2, axis=0)
    bad = np.flatnonzero((d[:, 0] < 0) | ((d[:, 0] == 0) & (d[:, 1] < 0)))
    if bad.size:
        r = bad[0] + 1
        raise TraceError(f"{where}: row {r}: (step {step[r]}, request {req[r]}) follows (step {step[r-1]}, "
                         f"request {req[r-1]}); rows must be sorted by step, then request_id, token_pos, layer")


def canonical_order(step: np.ndarray, request_id: np.ndarray, token_pos: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """The permutation that puts rows into canonical order."""
    return np.lexsort((layer, token_pos, request_id, step))
