"""Importers: traces other tools wrote -> moesim traces. One `read_<format>` per source, plus
`convert(paths, format="auto", **options)` that detects the format from file names and content."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from ...files import regular_file
from ..io import Trace
from ..schema import TraceError
from .bigmoeonedge import read_bigmoeonedge, read_bigmoeonedge_metrics
from .common import expand_paths
from .fiddler import Popularity, read_fiddler_popularity
from .megatron import read_megatron
from .models import KNOWN_MODELS, ModelDims, known_model
from .moe_beyond import read_moe_beyond
from .onnx_genai import read_onnx_genai
from .plain import read_csv, read_npz
from .speculative_moe import read_speculative_moe
from .stratamoe import read_stratamoe
from .vllm import read_vllm

READERS = {
    "moe-beyond": read_moe_beyond, "vllm": read_vllm, "megatron": read_megatron, "csv": read_csv,
    "npz": read_npz, "speculative-moe": read_speculative_moe, "bigmoeonedge": read_bigmoeonedge,
    "stratamoe": read_stratamoe, "onnx-genai": read_onnx_genai,
}
# Readers of one file each; several files of these formats become one trace, file after file (concat).
SINGLE_FILE = {"bigmoeonedge", "stratamoe", "onnx-genai"}
FORMATS = ("auto", *READERS)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().strip()


def detect_format(path: str | os.PathLike) -> str:
    """The importer for one file, from its suffix and first line (or keys)."""
    p = Path(path)
    try:
        regular_file(p, "trace file")
    except ValueError as e:
        raise TraceError(str(e)) from None
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return "vllm"
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise TraceError(f"{p}: not a readable .npz ({e}); the file is truncated or not numpy's format") from None
        return "npz" if "expert_ids.npy" in names else "vllm"
    if suffix == ".csv":
        line = _first_line(p)
        if line.startswith("# route_trace"):
            return "bigmoeonedge"
        if line.startswith("Layer ID,"):
            return "moe-beyond"
        cols = line.split(",")
        if {"request_id", "token_pos", "layer", "e0"} <= set(cols):
            return "csv"
        if line.startswith("step,steps,wall_ms"):
            raise TraceError(f"{p}: a BigMoeOnEdge metrics file holds timings, not routes; read it with "
                             f"moesim.trace.importers.read_bigmoeonedge_metrics, convert the .route.csv")
    if suffix == ".jsonl":
        line = _first_line(p)
        try:
            keys = set(json.loads(line))
        except json.JSONDecodeError:
            keys = set()
        if "top_indices" in keys:
            return "megatron"
        if {"experts", "gating_probs"} <= keys:
            return "speculative-moe"
    if suffix == ".json":
        text = p.read_text(encoding="utf-8", errors="replace")
        if '"expert_popularity"' in text[:4096]:
            raise TraceError(f"{p}: Fiddler popularity counts are aggregates (no token order) and cannot become a "
                             f"trace; read them with moesim.trace.importers.read_fiddler_popularity")
        if '"selections"' in text:
            return "stratamoe"
        if '"prompts"' in text and '"prefill"' in text and '"top_k"' in text:
            return "onnx-genai"
    raise TraceError(f"{p}: cannot tell which format this is; pass --format "
                     f"({', '.join(READERS)})")


def input_files(paths, format: str = "auto") -> list[Path]:
    """The files a conversion will read (what a progress bar counts): documentation, and the side files a
    format reads itself (metadata, outputs, timings), are left out."""
    files = expand_paths(paths)
    if format == "speculative-moe" or (format == "auto" and all(f.suffix == ".jsonl" for f in files)):
        files = [f for f in files if not f.name.endswith("_outputs.jsonl")]
    if format == "stratamoe" or any(f.name == "router-trace.v2.json" for f in files):
        files = [f for f in files if f.name not in ("capture-metadata.json", "prompt-manifest.json")]
    if format == "bigmoeonedge" or any(f.name.endswith(".route.csv") for f in files):
        files = [f for f in files if not f.name.endswith(".metrics.csv")]
    return files


# Model-card fields that must agree for files to become one trace.
CARD = ("model", "num_layers", "moe_layers", "num_experts", "top_k", "shared_experts", "bytes_per_expert",
        "dense_bytes_per_layer", "dtype")


def concat(traces: list[Trace], files: list[Path]) -> Trace:
    """Traces of one model (one per file) as one trace: file i's requests and steps follow file i-1's."""
    if len(traces) == 1:
        return traces[0]
    cards = {tuple(str(getattr(t.meta, f)) for f in CARD) for t in traces}
    if len(cards) > 1:
        models = sorted({t.meta.model for t in traces})
        raise TraceError(f"{files[0].parent}: the files hold different models ({', '.join(models)}) or model "
                         f"cards; convert each model's files apart")
    schemas = {t.table.schema.remove_metadata() for t in traces}
    if len(schemas) > 1:
        raise TraceError(f"{files[0].parent}: the files carry different columns (weights, predictions); convert "
                         f"them apart")
    tables, req_off, step_off = [], 0, 0
    for t in traces:
        tab = t.table
        if tab.num_rows:
            req, step = tab.column("request_id"), tab.column("step")
            top_req, top_step = req_off + pc.max(req).as_py(), step_off + pc.max(step).as_py()
            if top_req >= 1 << 32 or top_step >= 1 << 32:
                raise TraceError(f"{files[0].parent}: more than 2^32 requests or steps together; convert fewer files")
            tab = tab.set_column(tab.column_names.index("request_id"), "request_id",
                                 pc.add(req, pa.scalar(req_off, pa.uint32())))
            tab = tab.set_column(tab.column_names.index("step"), "step", pc.add(step, pa.scalar(step_off, pa.uint32())))
            req_off, step_off = top_req + 1, top_step + 1
        tables.append(tab)
    first = traces[0].meta
    meta = dataclasses.replace(
        first, source={**first.source, "params": {"files": [f.name for f in files],
                                                   "per_file": [t.meta.source.get("params") for t in traces]}},
        lacks=sorted({x for t in traces for x in t.meta.lacks} - {"multiple requests (one prompt)"}),
        notes=f"{first.notes} Converted from {len(files)} files, one after another (file i's requests and steps "
              f"follow file i-1's; source.params.per_file and extra.per_file keep each file's own).",
        extra={"per_file": [t.meta.extra for t in traces]})
    table = pa.concat_tables(tables).replace_schema_metadata(None)
    trace = Trace(table, meta)
    trace.validate(str(files[0].parent))
    return trace


def convert(paths: str | os.PathLike | Iterable[str | os.PathLike], format: str = "auto", **options) -> Trace:
    """Read traces another tool wrote into one moesim Trace.

    options go to the format's reader (num_experts, moe_layers, num_layers, prompt_len, model, rank,
    batch_size, metadata, progress); an option the reader does not take is an error. Documentation files
    in a folder (SOURCE.md, LICENSE, ...) are skipped; several files of a one-file format become one
    trace, one after another.
    """
    files = input_files(paths, format)
    if format == "auto":
        found = {detect_format(f) for f in files}
        if len(found) > 1:
            raise TraceError(f"{paths}: the inputs mix formats ({', '.join(sorted(found))}); convert them apart")
        format = found.pop()
    if format not in READERS:
        raise ValueError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    reader = READERS[format]
    accepted = set(inspect.signature(reader).parameters)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"format {format} does not take option(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(accepted - {'path', 'paths'}))}")
    if format in SINGLE_FILE:
        return concat([reader(f, **options) for f in files], files)
    return reader(files, **options)


__all__ = [
    "FORMATS", "KNOWN_MODELS", "ModelDims", "Popularity", "READERS", "convert", "detect_format", "input_files",
    "known_model", "read_bigmoeonedge", "read_bigmoeonedge_metrics", "read_csv", "read_fiddler_popularity",
    "read_megatron", "read_moe_beyond", "read_npz", "read_onnx_genai", "read_speculative_moe", "read_stratamoe",
    "read_vllm", "concat",
]
