"""MoE-Beyond CSVs (github.com/ngavhane/moe-beyond): DeepSeek-V2-Lite-Chat prefill routing.

Three layouts, one file per prompt, rows layer-major (all tokens of layer 1, then layer 2, ...):
  train / test_formatted:  Layer ID,Batch Number,Token,Activated Expert IDs   (Token = text piece)
  test:                    Layer ID,Token,Activated Expert IDs                (Token = index)
  test_predicted:          Layer ID,Token,Activated Expert IDs,Predicted Expert IDs
Each file becomes one request, processed as one prefill step.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from ..io import Trace
from ..schema import PREFILL, TraceError, TraceMeta, checked_cast
from .common import Progress, expand_paths, parse_id_lists, prompt_number
from .models import DSV2_LITE

HEADERS = {
    ("Layer ID", "Batch Number", "Token", "Activated Expert IDs"): "train",
    ("Layer ID", "Token", "Activated Expert IDs"): "test",
    ("Layer ID", "Token", "Activated Expert IDs", "Predicted Expert IDs"): "test_predicted",
}
# MoE-Beyond loaded the model in 8-bit; replay costs are charged for the published bf16 weights.
ASSUMED_DTYPE = "bfloat16"


def _header(path: Path) -> tuple[str, ...]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return tuple(c.strip() for c in f.readline().rstrip("\r\n").split(","))


def _read_one(path: Path, k: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    """(layout, layer [rows], experts [rows, k], predicted [rows, k] or None) of one file."""
    where = str(path)
    header = _header(path)
    layout = HEADERS.get(header)
    if layout is None:
        raise TraceError(
            f"{where}: line 1: header {','.join(header)!r} is not a MoE-Beyond layout; expected one of "
            + " | ".join(",".join(h) for h in HEADERS) + " (use --format csv for the plain layout)")
    cols = ["Layer ID", "Activated Expert IDs"] + (["Predicted Expert IDs"] if layout == "test_predicted" else [])
    try:
        # one small file each: a thread pool per file costs more than it saves
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(use_threads=False), convert_options=pcsv.ConvertOptions(
            include_columns=cols,
            column_types={"Layer ID": pa.int32(), "Activated Expert IDs": pa.string(),
                          "Predicted Expert IDs": pa.string()}))
    except pa.ArrowInvalid as e:
        raise TraceError(f"{where}: not a well-formed MoE-Beyond CSV ({e}); each row needs "
                         f"{len(header)} fields with the expert lists quoted") from None
    layer = table.column("Layer ID").to_numpy()
    if table.column("Layer ID").null_count:
        raise TraceError(f"{where}: Layer ID is empty in some rows")
    # ids are parsed as numbers up to 65535; DeepSeek-V2-Lite has 64 experts, so check before narrowing
    last = DSV2_LITE.num_experts - 1
    experts = checked_cast(parse_id_lists(table.column("Activated Expert IDs"), k, where, "Activated Expert IDs"),
                           np.uint8, where, "Activated Expert IDs", hi=last, first_line=2)
    pred = None
    if layout == "test_predicted":
        pred = checked_cast(parse_id_lists(table.column("Predicted Expert IDs"), None, where, "Predicted Expert IDs"),
                            np.uint8, where, "Predicted Expert IDs", hi=last, first_line=2)
    return layout, layer, experts, pred


def _token_positions(layer: np.ndarray, where: str) -> np.ndarray:
    """Rows are layer-major with tokens in order: a row's position is its rank within its layer."""
    order = np.argsort(layer, kind="stable")
    sorted_layer = layer[order]
    starts = np.flatnonzero(np.r_[True, sorted_layer[1:] != sorted_layer[:-1]])
    counts = np.diff(np.r_[starts, len(layer)])
    if len(set(counts.tolist())) > 1:
        raise TraceError(f"{where}: layers hold different token counts "
                         f"({dict(zip(sorted_layer[starts].tolist(), counts.tolist()))}); "
                         f"every MoE layer must list every token of the prompt once")
    pos = np.empty(len(layer), dtype=np.int32)
    pos[order] = np.arange(len(layer)) - np.repeat(starts, counts)
    return pos


def read_moe_beyond(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                    progress: Progress | None = None) -> Trace:
    """A folder, glob or list of MoE-Beyond CSVs -> one trace, one request per file (by prompt number)."""
    files = sorted(expand_paths(paths, (".csv",)), key=prompt_number)
    dims = DSV2_LITE
    k = dims.top_k
    parts = []
    layouts = set()
    for req, path in enumerate(files):
        layout, layer, experts, pred = _read_one(path, k)
        layouts.add(layout)
        bad = np.flatnonzero(~np.isin(layer, dims.moe_layers))
        if bad.size:
            raise TraceError(f"{path}: line {bad[0] + 2}: Layer ID {layer[bad[0]]} is not a MoE layer of "
                             f"DeepSeek-V2-Lite (1..26; layer 0 is dense)")
        pos = _token_positions(layer, str(path))
        parts.append((req, layer, pos, experts, pred))
        if progress:
            progress(1)
    if len(layouts) > 1 and "test_predicted" in layouts:
        raise TraceError(f"{paths}: mixes files with and without 'Predicted Expert IDs' ({sorted(layouts)}); "
                         f"convert the test_predicted files on their own")
    n_rows = [len(p[1]) for p in parts]
    request_id = np.repeat(np.arange(len(parts), dtype=np.int32), n_rows)
    layer = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    pos = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    experts = np.concatenate([p[3] for p in parts]) if parts else np.zeros((0, k), np.uint8)
    predictions = None
    if parts and parts[0][4] is not None:
        sizes = {p[4].shape[1] for p in parts}
        if len(sizes) > 1:
            raise TraceError(f"{paths}: prediction lists differ in length across files ({sorted(sizes)})")
        predictions = {0: np.concatenate([p[4] for p in parts])}
    tokens = sum(n_rows) // len(dims.moe_layers)
    meta = TraceMeta(
        model=dims.model, num_layers=dims.num_layers, moe_layers=list(dims.moe_layers),
        num_experts=dims.num_experts, top_k=k, shared_experts=dims.shared_experts,
        bytes_per_expert=dims.bytes_per_expert(ASSUMED_DTYPE),
        dense_bytes_per_layer=dims.dense_bytes_per_layer(ASSUMED_DTYPE),
        dtype=ASSUMED_DTYPE, quantization="int8 (bitsandbytes) when recorded",
        source={"kind": "importer", "name": "moe-beyond", "params": {
            "repository": "github.com/ngavhane/moe-beyond", "layout": sorted(layouts),
            "files": [f.name for f in files]}},
        lacks=["decode", "weights"],
        notes=("MoE-Beyond recorded DeepSeek-V2-Lite-Chat loaded in 8-bit (bitsandbytes): routing may differ "
               "slightly from bf16. Prefill only (one teacher-forced forward pass per prompt, no generated "
               "tokens): replay with prefill_chunk=1 to treat it as decoded. No gate weights. Byte sizes assume "
               "bf16 weights (3 x 2048 x 1408 per expert). Request i is the i-th file by prompt number"
               + (" ; 'Activated Expert IDs' in test_predicted files are sorted by id, not router rank; "
                  "pred_h0 is the paper's predictor output for the same (token, layer)" if predictions else "")
               + "."),
        extra={"tokens": tokens},
    )
    phase = np.full(len(layer), PREFILL, dtype=np.uint8)
    return Trace.from_arrays(meta, request_id=request_id, phase=phase, step=request_id, token_pos=pos,
                             layer=layer, expert_ids=experts, predictions=predictions,
                             where=str(files[0]) if len(files) == 1 else str(paths))
