"""Mixtral-8x7B-Instruct (FP8) routing from github.com/Mario928/speculative-moe (JSON Lines).

Processed files (*_routing.jsonl): decode tokens only, layer-major per problem, `token_idx` a per-layer
counter after the capture lost records. routing_raw.jsonl: prefill + decode in execution order with
`token_pos` = position inside the forward pass.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.json as pjson

from ..io import Trace
from ..schema import DECODE, PREFILL, TraceError, TraceMeta
from .common import Progress, expand_paths
from .models import MIXTRAL_8X7B

DTYPE = "fp8"  # neuralmagic/Mixtral-8x7B-Instruct-v0.1-FP8: FP8 linear weights


def _load(path: Path) -> pa.Table:
    try:
        t = pjson.read_json(path)
    except pa.ArrowInvalid as e:
        raise TraceError(f"{path}: not valid JSON Lines ({e})") from None
    need = {"problem_id", "layer", "experts", "gating_probs"}
    if not need <= set(t.column_names) or not ({"token_idx", "token_pos"} & set(t.column_names)):
        raise TraceError(f"{path}: records need problem_id, layer, experts, gating_probs and token_idx "
                         f"(processed) or token_pos (raw); found {t.column_names}")
    for name in ("layer", "token_idx", "token_pos"):
        if name in t.column_names:
            col = t.column(name)
            if not pa.types.is_integer(col.type) or col.null_count:
                raise TraceError(f"{path}: field {name} must be a whole number in every record (found {col.type}"
                                 f"{', missing in some' if col.null_count else ''})")
    for name, numbers in (("experts", pa.types.is_integer), ("gating_probs", pa.types.is_floating)):
        typ = t.schema.field(name).type
        if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)) or not (
                numbers(typ.value_type) or pa.types.is_integer(typ.value_type)) or t.column(name).null_count:
            raise TraceError(f"{path}: field {name} must be a list of numbers in every record (found {typ})")
    return t


def _pairs(t: pa.Table, name: str, where: str) -> np.ndarray:
    col = t.column(name).combine_chunks()
    lens = col.value_lengths().to_numpy(zero_copy_only=False)
    if (lens != 2).any():
        r = int(np.flatnonzero(lens != 2)[0])
        raise TraceError(f"{where}: line {r + 1}: {name} has {lens[r]} entries; Mixtral routes top-2")
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, 2)


def _meta(name: str, files, lacks, notes, extra) -> TraceMeta:
    d = MIXTRAL_8X7B
    return TraceMeta(model="neuralmagic/Mixtral-8x7B-Instruct-v0.1-FP8", num_layers=d.num_layers,
                     moe_layers=list(d.moe_layers), num_experts=d.num_experts, top_k=d.top_k,
                     bytes_per_expert=d.bytes_per_expert(DTYPE), dense_bytes_per_layer=d.dense_bytes_per_layer(DTYPE),
                     dtype=DTYPE, quantization="fp8 weights (router not quantised)",
                     source={"kind": "importer", "name": name, "params": {
                         "repository": "github.com/Mario928/speculative-moe",
                         "commit": "216e26eb86ee09fa46bb0e8c000be7e9758e10b6", "files": [f.name for f in files]}},
                     lacks=lacks, notes=notes, extra=extra)


def _read_processed(files: list[Path], progress) -> Trace:
    parts, dropped, lengths = [], 0, []
    req = 0
    for f in files:
        t = _load(f)
        prob = t.column("problem_id").to_numpy()
        layer = t.column("layer").to_numpy()
        tok = t.column("token_idx").to_numpy()
        ids = _pairs(t, "experts", str(f))
        w = _pairs(t, "gating_probs", str(f))
        for p in np.unique(prob):
            m = prob == p
            _, per_layer = np.unique(layer[m], return_counts=True)  # layers present in the file
            # token_idx counts per layer after lost records, so tokens past the shortest
            # layer have no sound cross-layer alignment: truncate to the shortest layer
            n_tok = int(per_layer.min())
            keep = m & (tok < n_tok)
            dropped += int(m.sum() - keep.sum())
            lengths.append(n_tok)
            parts.append((np.full(keep.sum(), req), tok[keep], layer[keep], ids[keep], w[keep]))
            req += 1
        if progress:
            progress(1)
    r, pos, layer = (np.concatenate([p[i] for p in parts]) for i in range(3))
    ids, w = np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts])
    # decode only, batch size 1: each token one step, requests one after another
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    step = first[r] + pos
    meta = _meta("speculative-moe", files, ["prefill", "exact cross-layer token alignment"],
                 "Greedy decode routing of Mixtral-8x7B-Instruct FP8 under vLLM; gate weights are the top-2 "
                 "renormalised probabilities. The capture lost records and token_idx is a per-layer counter, so "
                 f"each problem is truncated to its shortest layer ({dropped} records past it dropped); the same "
                 "token_pos at two layers can be off by a few positions near a sequence's end.",
                 {"tokens_per_request": lengths, "records_dropped": dropped})
    return Trace.from_arrays(meta, request_id=r, phase=np.full(len(r), DECODE, np.uint8), step=step,
                             token_pos=pos, layer=layer, expert_ids=ids, expert_weights=w, where=str(files[0]))


def _read_raw(f: Path) -> Trace:
    t = _load(f)
    layer = t.column("layer").to_numpy().astype(np.int64)
    fpos = t.column("token_pos").to_numpy().astype(np.int64)
    ids = _pairs(t, "experts", str(f))
    w = _pairs(t, "gating_probs", str(f))
    if len(np.unique(t.column("problem_id").to_numpy())) != 1:
        raise TraceError(f"{f}: a raw capture holds one problem; found several problem_id values")
    # runs of consecutive records at one layer; the leading runs longer than one record are the prefill
    run_start = np.flatnonzero(np.r_[True, layer[1:] != layer[:-1]])
    run_len = np.diff(np.r_[run_start, len(layer)])
    n_pre_runs = int(np.argmax(run_len == 1)) if (run_len == 1).any() else len(run_len)
    n_pre = int(run_start[n_pre_runs]) if n_pre_runs < len(run_start) else len(layer)
    prompt_len = int(fpos[:n_pre].max()) + 1 if n_pre else 0
    # decode: a new step starts whenever the layer number does not increase
    dl = layer[n_pre:]
    new_step = np.r_[True, dl[1:] <= dl[:-1]] if len(dl) else np.zeros(0, bool)
    dstep = np.cumsum(new_step) - 1
    phase = np.r_[np.full(n_pre, PREFILL), np.full(len(dl), DECODE)].astype(np.uint8)
    pos = np.r_[fpos[:n_pre], prompt_len + dstep]
    step = np.r_[np.zeros(n_pre, np.int64), 1 + dstep]
    n_dec = int(dstep[-1]) + 1 if len(dl) else 0
    L = MIXTRAL_8X7B.num_layers
    miss_pre, miss_dec = prompt_len * L - n_pre, n_dec * L - len(dl)
    meta = _meta("speculative-moe-raw", [f], [],
                 "Raw vLLM capture of HumanEval/0 on Mixtral-8x7B-Instruct FP8: one prefill forward, then one "
                 f"decode step per token. Lost records are left as gaps: {miss_pre} prefill and {miss_dec} decode "
                 "(token, layer) rows are absent, so a replay sees no access there.",
                 {"prompt_tokens": prompt_len, "decode_tokens": n_dec, "missing_prefill_rows": miss_pre,
                  "missing_decode_rows": miss_dec})
    meta.lacks = ["complete records (gaps where the capture lost them)"]
    return Trace.from_arrays(meta, request_id=np.zeros(len(layer), np.int64), phase=phase, step=step,
                             token_pos=pos, layer=layer, expert_ids=ids, expert_weights=w, where=str(f))


def read_speculative_moe(paths: str | os.PathLike | Iterable[str | os.PathLike], *,
                         progress: Progress | None = None) -> Trace:
    """Processed *_routing.jsonl files (decode, one request per problem) or one routing_raw.jsonl."""
    files = [f for f in expand_paths(paths, (".jsonl",)) if not f.name.endswith("_outputs.jsonl")]
    raw = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            if "token_pos" in fh.readline():
                raw.append(f)
    if raw:
        if len(files) > 1:
            processed = [f.name for f in files if f not in raw]
            raise TraceError(f"{raw[0]}: a raw capture (token_pos records) converts on its own; pass it alone, and "
                             f"convert the processed files ({', '.join(processed) or 'none'}) in a second call, "
                             f"e.g. with the pattern '{raw[0].parent}/*_routing.jsonl'")
        if progress:
            progress(1)
        return _read_raw(raw[0])
    return _read_processed(files, progress)
