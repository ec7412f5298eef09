"""Importers: traces other tools wrote -> moesim traces. One `read_<format>` per source, plus
`convert(paths, format="auto", **options)` that detects the format from file names and content."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..io import Trace
from ..schema import TraceError
from .bigmoeonedge import read_bigmoeonedge, read_bigmoeonedge_metrics
from .common import expand_paths
from .fiddler import Popularity, read_fiddler_popularity
from .megatron import read_megatron
from .models import KNOWN_MODELS, ModelDims, known_model
from .moe_beyond import read_moe_beyond
from .plain import read_csv, read_npz
from .speculative_moe import read_speculative_moe
from .stratamoe import read_stratamoe
from .vllm import read_vllm

READERS = {
    "moe-beyond": read_moe_beyond, "vllm": read_vllm, "megatron": read_megatron, "csv": read_csv,
    "npz": read_npz, "speculative-moe": read_speculative_moe, "bigmoeonedge": read_bigmoeonedge,
    "stratamoe": read_stratamoe,
}
SINGLE_FILE = {"csv", "npz", "bigmoeonedge", "stratamoe"}
FORMATS = ("auto", *READERS)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().strip()


def detect_format(path: str | os.PathLike) -> str:
    """The importer for one file, from its suffix and first line (or keys)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return "vllm"
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return "npz" if "expert_ids" in z.files else "vllm"
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
        head = p.read_text(encoding="utf-8", errors="replace")[:4096]
        if '"expert_popularity"' in head:
            raise TraceError(f"{p}: Fiddler popularity counts are aggregates (no token order) and cannot become a "
                             f"trace; read them with moesim.trace.importers.read_fiddler_popularity")
        if '"selections"' in p.read_text(encoding="utf-8", errors="replace"):
            return "stratamoe"
    raise TraceError(f"{p}: cannot tell which format this is; pass --format "
                     f"({', '.join(READERS)})")


def input_files(paths, format: str = "auto") -> list[Path]:
    """The files a conversion will read (what a progress bar counts)."""
    files = expand_paths(paths)
    if format == "speculative-moe" or (format == "auto" and all(f.suffix == ".jsonl" for f in files)):
        files = [f for f in files if not f.name.endswith("_outputs.jsonl")]
    if format == "stratamoe" or any(f.name == "router-trace.v2.json" for f in files):
        files = [f for f in files if f.name not in ("capture-metadata.json", "prompt-manifest.json")]
    return files


def convert(paths: str | os.PathLike | Iterable[str | os.PathLike], format: str = "auto", **options) -> Trace:
    """Read traces another tool wrote into one moesim Trace.

    options go to the format's reader (num_experts, moe_layers, num_layers, prompt_len, model, rank,
    batch_size, metadata, progress); an option the reader does not take is an error.
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
        if len(files) != 1:
            raise TraceError(f"format {format} converts one file at a time; got {len(files)}")
        return reader(files[0], **options)
    return reader(files, **options)


__all__ = [
    "FORMATS", "KNOWN_MODELS", "ModelDims", "Popularity", "READERS", "convert", "detect_format", "input_files",
    "known_model", "read_bigmoeonedge", "read_bigmoeonedge_metrics", "read_csv", "read_fiddler_popularity",
    "read_megatron", "read_moe_beyond", "read_npz", "read_speculative_moe", "read_stratamoe", "read_vllm",
]
