"""StrataMoE Lab router traces (router-trace.v2.json): google/switch-base-8 encoder, top-1.

`selections[position][sparse layer]` = [expert]; positions are the prompts concatenated; the
prompt boundaries live in capture-metadata.json (`prompt_spans`) next to it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import Trace
from ..schema import PREFILL, TraceError, TraceMeta, checked_cast
from .common import json_int_table, json_ints, read_json
from .models import SWITCH_BASE_8


def read_stratamoe(path: str | os.PathLike, *, metadata: str | os.PathLike | None = None, progress=None) -> Trace:
    """router-trace.v2.json -> trace; one request per prompt span (one prefill step each)."""
    path = Path(path)
    d, sel = json_int_table(path, "selections", "a StrataMoE router trace",
                            "one list per sparse layer at every position")
    if sel.ndim != 3:
        raise TraceError(f"{path}: 'selections' has shape {sel.shape}, expected [positions, layers, top_k]")
    T, L, k = sel.shape
    dims = SWITCH_BASE_8
    layers = np.asarray(dims.moe_layers) if L == len(dims.moe_layers) else np.arange(L)
    meta_path = Path(metadata) if metadata else path.with_name("capture-metadata.json")
    spans, lacks = None, ["decode", "weights"]
    if meta_path.exists():
        m = read_json(meta_path, "a StrataMoE capture-metadata.json (prompt_spans)")
        if not isinstance(m, dict):
            raise TraceError(f"{meta_path}: holds a JSON {type(m).__name__}, not an object with prompt_spans")
        raw_spans = m.get("prompt_spans", [])
        if not isinstance(raw_spans, list) or not all(
                isinstance(x, dict) and {"token_start", "token_end_exclusive"} <= set(x) for x in raw_spans):
            raise TraceError(f"{meta_path}: prompt_spans must be a list of objects with token_start and "
                             f"token_end_exclusive")
        spans = [tuple(json_ints([x["token_start"], x["token_end_exclusive"]], str(meta_path), "prompt_spans").tolist())
                 for x in raw_spans] or None
        if "sparse_encoder_block_indices" in m:
            layers = json_ints(m["sparse_encoder_block_indices"], str(meta_path), "sparse_encoder_block_indices",
                               np.uint16)
            if layers.shape != (L,):
                raise TraceError(f"{meta_path}: sparse_encoder_block_indices names {layers.size} layers but "
                                 f"{path.name} routes {L} per position")
    if spans is None:
        spans = [(0, T)]
        lacks.append("prompt boundaries (capture-metadata.json not found: one request)")
    if spans[-1][1] != T or any(a != b for (_, a), (b, _) in zip(spans[:-1], spans[1:])) or spans[0][0] != 0:
        raise TraceError(f"{meta_path}: prompt_spans do not tile the {T} positions of {path.name}")
    starts = np.array([s for s, _ in spans])
    req = np.searchsorted(starts, np.arange(T), side="right") - 1
    pos = np.arange(T) - starts[req]
    source = d.get("source", {})
    model = source.get("model", {}) if isinstance(source, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(x, ""), (str, type(None)))
                                              for x in ("id", "revision")):
        raise TraceError(f"{path}: 'source' must be an object with model {{id, revision}} (text), got "
                         f"{str(source)[:60]!r}")
    experts = d.get("expertsPerLayer", dims.num_experts)
    num_experts = int(checked_cast(experts, np.int64, str(path), "expertsPerLayer", lo=1, hi=65536))
    meta = TraceMeta(
        model=model.get("id") or dims.model, num_layers=max(dims.num_layers, int(layers.max()) + 1),
        moe_layers=layers.tolist(), num_experts=num_experts, top_k=k,
        bytes_per_expert=dims.bytes_per_expert(), dense_bytes_per_layer=dims.dense_bytes_per_layer(),
        dtype="float32", revision=model.get("revision"),
        source={"kind": "importer", "name": "stratamoe", "params": {
            "repository": "github.com/Labeeb2339/stratamoe-lab", "file": path.name, "scenario": d.get("scenario")}},
        lacks=lacks,
        notes="Encoder of google/switch-base-8 (sparse blocks 1,3,...,11; layer = encoder block index); expert = "
              "argmax of the raw router logits; one forward pass per prompt, no decode, no gate weights.",
    )
    if progress:
        progress(1)
    return Trace.from_arrays(meta, request_id=np.repeat(req, L), phase=np.full(T * L, PREFILL, np.uint8),
                             step=np.repeat(req, L), token_pos=np.repeat(pos, L), layer=np.tile(layers, T),
                             expert_ids=sel.reshape(T * L, k), where=str(path))
