"""Megatron-core RouterTracer JSONL (router_trace_rank{R}.jsonl).

One line per (step, MoE layer): {"step", "stage": "pre_dispatch", "block": "decoder"|"mtp", "layer"
(Megatron's 1-based layer_number), "rank", "num_tokens", "topk", "top_indices": [[...topk] * num_tokens]}
(optional "mtp_idx" and offsets into hidden-state / logit sidecar files). In inference a step is one
forward pass: the tracer starts a new step when a layer fires twice. The records do not say which
request a token belongs to, so the batch size is an option: a step's tokens are split evenly.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

from ..io import Trace
from ..schema import DECODE, PREFILL, TraceError, checked_cast
from ._meta import meta_for
from .common import Progress, expand_paths, json_ints, parse_layers

REQUIRED = ("step", "layer", "num_tokens", "topk", "top_indices")


def read_megatron(paths: str | os.PathLike | Iterable[str | os.PathLike], *, rank: int = 0, batch_size: int = 1,
                  num_experts: int | None = None, moe_layers: str | Sequence[int] | None = None,
                  num_layers: int | None = None, model: str | None = None,
                  progress: Progress | None = None) -> Trace:
    """RouterTracer JSONL -> trace. Keeps block 'decoder' of one data-parallel rank; a step whose
    tokens per request exceed one is prefill, a later step with one token per request is decode."""
    if batch_size < 1 or rank < 0:
        raise ValueError(f"batch_size must be >= 1 and rank >= 0 (got batch_size={batch_size}, rank={rank})")
    files = expand_paths(paths, (".jsonl",))
    recs = []  # (step, layer, ids[num_tokens, topk])
    skipped_mtp = 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{f}: line {line_no}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TraceError(f"{where}: not JSON ({e.msg}); a RouterTracer file has one "
                                     f"JSON object per line") from None
                if not isinstance(rec, dict):
                    raise TraceError(f"{where}: a JSON {type(rec).__name__}, not an object; a RouterTracer file "
                                     f"has one record object per line")
                missing = [k for k in REQUIRED if k not in rec]
                if missing:
                    raise TraceError(f"{where}: record lacks {', '.join(missing)}; expected "
                                     f"RouterTracer fields {', '.join(REQUIRED)}")
                if rec.get("rank", 0) != rank:
                    continue
                if rec.get("block", "decoder") != "decoder":
                    skipped_mtp += 1
                    continue
                step, layer, num_tokens, topk = (
                    int(checked_cast(rec[k], np.int64, where, k, lo=lo, hi=hi))
                    for k, lo, hi in (("step", 0, None), ("layer", 0, 65535), ("num_tokens", 0, None),
                                      ("topk", 1, 65536)))
                ids = json_ints(rec["top_indices"], where, "top_indices", np.uint16)
                if ids.shape != (num_tokens, topk) and not (num_tokens == 0 and ids.size == 0):
                    raise TraceError(f"{where}: top_indices has shape {ids.shape} but num_tokens="
                                     f"{num_tokens}, topk={topk}")
                recs.append((step, layer, ids.reshape(num_tokens, topk)))
        if progress:
            progress(1)
    if not recs:
        raise TraceError(f"{paths}: no decoder records for rank {rank}")
    steps = sorted({s for s, _, _ in recs})
    req_l, pos_l, layer_l, phase_l, step_l, ids_l = [], [], [], [], [], []
    next_pos = np.zeros(batch_size, dtype=np.int64)
    tokens_in_step = {}
    for s, _, ids in recs:
        tokens_in_step.setdefault(s, ids.shape[0])
    for i, s in enumerate(steps):
        n = tokens_in_step[s]
        if n % batch_size:
            raise TraceError(f"{files[0]}: step {s} has {n} tokens, not a multiple of --batch-size {batch_size}")
        per_req = n // batch_size
        tokens_in_step[s] = (per_req, next_pos.copy(), i)
        next_pos += per_req
    for s, layer, ids in recs:
        per_req, start, i = tokens_in_step[s]
        n = ids.shape[0]
        if n != per_req * batch_size:
            raise TraceError(f"{files[0]}: step {s} layer {layer} has {n} tokens, other layers of that step "
                             f"{per_req * batch_size}")
        req = np.repeat(np.arange(batch_size), per_req)
        req_l.append(req)
        pos_l.append(start[req] + np.tile(np.arange(per_req), batch_size))
        layer_l.append(np.full(n, layer))
        phase_l.append(np.full(n, DECODE if (per_req == 1 and i > 0) else PREFILL, dtype=np.uint8))
        step_l.append(np.full(n, i))
        ids_l.append(ids)
    req, pos, layer, phase, step = (np.concatenate(x) for x in (req_l, pos_l, layer_l, phase_l, step_l))
    ids = np.concatenate(ids_l)
    meta = meta_for(str(files[0]), "megatron", model=model, expert_ids=ids, layers=layer,
                    num_experts=num_experts, moe_layers=parse_layers(moe_layers), num_layers=num_layers,
                    lacks=["weights", "request ids (tokens split evenly over --batch-size requests)"],
                    notes=f"Megatron-core RouterTracer records of rank {rank}, block 'decoder' (layer = Megatron's "
                          f"1-based layer_number). {skipped_mtp} MTP-block records skipped.",
                    params={"files": [f.name for f in files], "rank": rank, "batch_size": batch_size})
    return Trace.from_arrays(meta, request_id=req, phase=phase, step=step, token_pos=pos, layer=layer,
                             expert_ids=ids, where=str(files[0]))
