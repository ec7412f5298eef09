"""Granite-3.0-1B-A400M routing dumped by onnx-genai (github.com/justinchuby/onnx-genai,
scripts/dump_moe_expert_trace.py -> moe_expert_trace.json).

One JSON object: `model`, `num_layers`, `num_experts`, `top_k`, and `prompts`, a dict of workloads, each with
`prompt_len`, `prefill` [prompt tokens][layers][top_k] and `decode` [generated tokens][layers][top_k] expert
ids in router rank order (greedy decoding, batch size 1, no gate weights). Each workload becomes one request,
in the file's order: its prompt prefilled in one step, then one step per generated token.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import Trace
from ..schema import DECODE, PREFILL, TraceError, TraceMeta, checked_cast
from .common import json_ints, read_json
from .models import GRANITE_3_1B_A400M

WHAT = "an onnx-genai moe_expert_trace.json (model, num_layers, num_experts, top_k, prompts)"


def read_onnx_genai(path: str | os.PathLike, *, progress=None) -> Trace:
    """moe_expert_trace.json -> trace: one request per workload (prefill step, then one decode step per token).

    The public file (REAL: the real-traces folder): three workloads of 39, 44 and 29 prompt tokens and 64
    generated tokens each -- 304 tokens x 24 layers = 7,296 rows, 58,368 accesses (SOURCE.md: 12,288 decode
    accesses per workload) in 3 x 65 steps. A token touches 192 of the 768 (layer, expert) pairs, so one
    global LRU cache of 192 experts hits 31.4% (replay agrees), and a quarter of the experts take 26% of
    the activations:

    >>> t = read_onnx_genai(REAL / "granite-3.0-1b-a400m-onnx-genai" / "moe_expert_trace.json")
    >>> t.num_rows, t.meta.extra["prompt_tokens"], t.meta.extra["decode_tokens"], t.meta.bytes_per_expert
    (7296, [39, 44, 29], 192, 3145728)
    >>> from moesim.trace.stats import inspect_trace, lru_hit_rate
    >>> r = inspect_trace(t)
    >>> r["steps"], r["accesses"], round(lru_hit_rate(r, 192), 3), round(lru_hit_rate(r, 384), 3)
    (195, 58368, 0.314, 0.662)
    >>> {k: round(r["next_token_reuse"][k]["mean"], 3) for k in ("prefill", "decode")}
    {'prefill': 0.407, 'decode': 0.428}
    >>> round(r["popularity"]["all"]["mean"]["top10_share"], 3)
    0.261
    """
    path = Path(path)
    where = str(path)
    d = read_json(path, WHAT)
    if not isinstance(d, dict) or not isinstance(d.get("prompts"), dict) or not d["prompts"]:
        raise TraceError(f"{where}: no 'prompts' object of workloads; expected {WHAT}")
    L, E, k = (int(checked_cast(d.get(f), np.int64, where, f, lo=1, hi=65536)) if f in d else None
               for f in ("num_layers", "num_experts", "top_k"))
    if None in (L, E, k):
        raise TraceError(f"{where}: lacks num_layers, num_experts or top_k; expected {WHAT}")
    dims = GRANITE_3_1B_A400M
    granite = (L, E, k) == (dims.num_layers, dims.num_experts, dims.top_k) and "granite" in str(d.get("model", ""))
    cols = {n: [] for n in ("req", "phase", "step", "pos", "layer", "ids")}
    step0 = 0
    names, prompt_lens = [], []
    for r, (name, w) in enumerate(d["prompts"].items()):
        at = f"{where}: prompts.{name}"
        if not isinstance(w, dict) or not {"prefill", "decode"} <= set(w):
            raise TraceError(f"{at}: expected an object with prefill and decode lists")
        pre = json_ints(w["prefill"], at, "prefill", np.uint16, hi=E - 1)
        dec = json_ints(w["decode"], at, "decode", np.uint16, hi=E - 1)
        for part, a in (("prefill", pre), ("decode", dec)):
            if a.size and a.shape[1:] != (L, k):
                raise TraceError(f"{at}: {part} has shape {a.shape}, expected [tokens, {L} layers, top-{k}]")
        pre, dec = pre.reshape(-1, L, k), dec.reshape(-1, L, k)
        if "prompt_len" in w and int(checked_cast(w["prompt_len"], np.int64, at, "prompt_len", lo=0)) != len(pre):
            raise TraceError(f"{at}: prompt_len {w['prompt_len']} but prefill holds {len(pre)} tokens")
        n_pre, n_dec = len(pre), len(dec)
        t = n_pre + n_dec
        phase = np.r_[np.full(n_pre, PREFILL), np.full(n_dec, DECODE)].astype(np.uint8)
        # the prompt is one forward pass, then each generated token one more
        step = step0 + np.r_[np.zeros(n_pre, np.int64), (n_pre > 0) + np.arange(n_dec)]
        step0 = int(step.max()) + 1 if t else step0
        cols["req"].append(np.full(t * L, r))
        cols["phase"].append(np.repeat(phase, L))
        cols["step"].append(np.repeat(step, L))
        cols["pos"].append(np.repeat(np.arange(t), L))
        cols["layer"].append(np.tile(np.arange(L), t))
        cols["ids"].append(np.concatenate([pre, dec]).reshape(t * L, k))
        names.append(name)
        prompt_lens.append(n_pre)
    req, phase, step, pos, layer = (np.concatenate(cols[n]) for n in ("req", "phase", "step", "pos", "layer"))
    decode_tokens = int((phase == DECODE).sum()) // L
    meta = TraceMeta(
        model=dims.model if granite else str(d.get("model", "unknown")), num_layers=L, moe_layers=list(range(L)),
        num_experts=E, top_k=k, shared_experts=0,
        bytes_per_expert=dims.bytes_per_expert("float16") if granite else 0,
        dense_bytes_per_layer=dims.dense_bytes_per_layer("float16") if granite else 0,
        dtype="float16",
        source={"kind": "importer", "name": "onnx-genai", "params": {
            "repository": "github.com/justinchuby/onnx-genai", "file": path.name, "workloads": names}},
        lacks=["weights"] + ([] if granite else ["model dims (bytes_per_expert is 0)"]),
        notes=(f"{d.get('model', 'unknown')} routed by onnx-genai's f16 runtime: greedy decoding, batch size 1, "
               f"router rank order, no gate weights. Request i is the i-th workload ({', '.join(names)}): its "
               f"prompt in one prefill step, then one step per generated token."),
        extra={"prompt_tokens": prompt_lens, "decode_tokens": decode_tokens},
    )
    if progress:
        progress(1)
    return Trace.from_arrays(meta, request_id=req, phase=phase, step=step, token_pos=pos, layer=layer,
                             expert_ids=np.concatenate(cols["ids"]), where=where)
