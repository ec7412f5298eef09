"""vLLM `routed_experts`: int [num_tokens, num_layers, top_k] per request.

What vLLM returns with routed-experts capture on (and SGLang's return_routed_experts):
one array per request, tokens in order (prompt then generated), one row per MoE layer.
A `.npy` holds one request; a `.npz` one array per request, in key order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ...files import load_npz
from ..io import Trace
from ..schema import DECODE, PREFILL, TraceError, checked_cast
from ._meta import meta_for
from .models import known_model
from .common import Progress, expand_paths, parse_layers, sequential_steps


def _arrays(files: list[Path], progress: Progress | None) -> list[tuple[str, np.ndarray]]:
    out = []
    for f in files:
        if f.suffix not in (".npy", ".npz"):
            raise TraceError(f"{f}: a vLLM routed_experts file is .npy (one request) or .npz (one array per request)")
        try:
            arrays = load_npz(f, "vLLM routed_experts file (int arrays [tokens, layers, top_k])")
        except ValueError as e:
            raise TraceError(str(e)) from None
        out.extend((f"{f.name}:{key}" if key else f.name, a) for key, a in arrays.items())
        if progress:
            progress(1)
    return out


def read_vllm(paths: str | os.PathLike | Iterable[str | os.PathLike], *, num_experts: int | None = None,
              moe_layers: str | Sequence[int] | None = None, num_layers: int | None = None,
              prompt_len: int | Sequence[int] | None = None, model: str | None = None,
              progress: Progress | None = None) -> Trace:
    """routed_experts arrays -> trace. prompt_len: tokens before it are prefill (one step), later tokens
    decode (one step each); one int for all requests or one per request; None = all prefill."""
    files = expand_paths(paths, (".npy", ".npz"))
    arrays = _arrays(files, progress)
    if not arrays:
        raise TraceError(f"{paths}: no routed_experts arrays found")
    layers_spec = parse_layers(moe_layers)
    shape_l, shape_k = arrays[0][1].shape[1:3] if arrays[0][1].ndim == 3 else (None, None)
    dims = known_model(model)
    if layers_spec is None:
        # the array's layer axis counts MoE layers only; map it onto the model's MoE layer ids
        layers_spec = list(dims.moe_layers) if dims and len(dims.moe_layers) == shape_l else list(range(shape_l or 0))
    cols = {n: [] for n in ("req", "pos", "layer", "phase", "ids")}
    if prompt_len is None or isinstance(prompt_len, (int, np.integer)):
        plens = [prompt_len] * len(arrays)
    else:
        plens = list(prompt_len)
        if len(plens) != len(arrays):
            raise TraceError(f"{paths}: {len(plens)} prompt lengths for {len(arrays)} requests; give one per request")
    if prompt_len is not None:
        # a negative length would count from the end and mark prompt tokens as decoded
        plens = checked_cast(plens, np.int64, str(files[0]), "prompt_len (--prompt-len)", lo=0).tolist()
    for r, ((name, a), plen) in enumerate(zip(arrays, plens)):
        if a.ndim != 3 or not np.issubdtype(a.dtype, np.integer):
            raise TraceError(f"{name}: routed_experts must be an integer array [num_tokens, num_layers, top_k], "
                             f"got {a.dtype} {a.shape}")
        if a.shape[1:] != (shape_l, shape_k):
            raise TraceError(f"{name}: shape {a.shape} differs from the first request's [*, {shape_l}, {shape_k}]")
        a = checked_cast(a, np.uint16, name, "expert id")
        t = a.shape[0]
        lids = np.asarray(layers_spec)
        if len(lids) != shape_l:
            raise TraceError(f"{name}: {shape_l} layers in the array but {len(lids)} --moe-layers given")
        cols["req"].append(np.full(t * shape_l, r, dtype=np.int32))
        cols["pos"].append(np.repeat(np.arange(t, dtype=np.int32), shape_l))
        cols["layer"].append(np.tile(lids.astype(np.int32), t))
        ph = np.full(t, PREFILL, dtype=np.uint8)
        if plen is not None:
            ph[int(plen):] = DECODE
        cols["phase"].append(np.repeat(ph, shape_l))
        cols["ids"].append(a.reshape(t * shape_l, shape_k))
    req, pos, layer, phase = (np.concatenate(cols[n]) for n in ("req", "pos", "layer", "phase"))
    ids = np.concatenate(cols["ids"])
    decode = prompt_len is not None
    meta = meta_for(str(files[0]), "vllm", model=model, expert_ids=ids, layers=layer, num_experts=num_experts,
                    moe_layers=layers_spec,
                    num_layers=num_layers, lacks=["weights"] + ([] if decode else ["decode"]),
                    notes="vLLM routed_experts arrays, requests served one after another at batch size 1 "
                          "(a prompt is one prefill step, then one step per generated token)."
                          + ("" if decode else " No prompt length given: every token is treated as prefill."),
                    params={"files": [f.name for f in files], "requests": [n for n, _ in arrays],
                            "prompt_len": plens if decode else None})
    return Trace.from_arrays(meta, request_id=req, phase=phase, step=sequential_steps(req, pos, phase),
                             token_pos=pos, layer=layer, expert_ids=ids, where=str(files[0]))
