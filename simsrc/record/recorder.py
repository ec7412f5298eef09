"""`record`: run a transformers MoE model over prompts and write what its routers chose.

Steps follow DESIGN.md: a batch's prefill is one step (all its requests'
prompt tokens), each decode pass over the batch is one more step. Padding is
never recorded: left-padding is cut with the attention mask, and a request
that finished (end-of-sequence, while others in its batch go on) stops
producing rows, as in a server that would have dropped it from the batch.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from ..trace import DECODE, PREFILL, Trace, TraceMeta
from .blocks import find_moe_blocks, text_config
from .card import model_card
from .parts import Parts
from .prompts import Prompt, read_prompts

# The output is re-assembled after a batch while assembling has taken at most
# this share of the recording's time so far (and always at the end, on Ctrl-C
# or on an error): a long recording does not spend its time rewriting its
# file, and the parts folder always holds every finished batch for --resume.
ASSEMBLE_SHARE = 0.05

INSTALL_HINT = "the recorder needs torch and transformers: pip install 'moesim[record]'"


@dataclass
class RecordSummary:
    path: Path
    requests: int                 # recorded by this run
    skipped: int                  # already in the trace (--resume)
    tokens: int                   # routed tokens recorded by this run (prefill + decode)
    steps: int                    # forward passes run by this run
    rows: int                     # rows in the output trace
    seconds: float
    generated: dict[int, list[int]] = field(default_factory=dict)  # request -> generated token ids


def require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None


def load_model(path_or_id: str, *, device: str = "cpu", dtype: str = "auto", revision: str | None = None):
    """(model, tokenizer or None), loaded with from_pretrained and moved to `device`."""
    require_torch()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"--dtype {dtype!r} is not a torch dtype (try auto, float32, bfloat16, float16)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here; use --device cpu")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path_or_id, dtype="auto" if dtype == "auto" else getattr(torch, dtype), revision=revision)
    except OSError as e:
        raise ValueError(f"--model {path_or_id}: cannot load it with transformers ({e})") from None
    model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, revision=revision)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model, tokenizer


def _eos_ids(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(text_config(model), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _pad_id(model, eos: set[int]) -> int:
    for src in (model.generation_config, text_config(model)):
        pad = getattr(src, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return min(eos) if eos else 0


def record(model, prompts, out, *, max_new_tokens: int = 128, batch_size: int = 4, device: str = "cpu",
           dtype: str = "auto", revision: str | None = None, record_predictions: int = 0,
           record_logits: bool = False, resume: bool = False, tokenizer=None, model_name: str | None = None,
           progress: Callable[[int, int], None] | None = None) -> RecordSummary:
    """Record the routing of `model` (a path/hub id, or a loaded transformers model) over `prompts`
    (a JSONL path or a list of Prompt) into the trace `out`; see the README for the format."""
    require_torch()
    import torch
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if record_predictions < 0:
        raise ValueError(f"--record-predictions must be >= 0, got {record_predictions}")
    t0 = time.perf_counter()
    if isinstance(model, (str, Path)):
        model_name = model_name or str(model)
        model, loaded_tok = load_model(str(model), device=device, dtype=dtype, revision=revision)
        tokenizer = tokenizer or loaded_tok
    else:
        model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        model.eval()
    prompt_list = prompts if isinstance(prompts, list) else read_prompts(prompts)
    device = str(next(model.parameters()).device)

    blocks = find_moe_blocks(model)
    cfg = text_config(model)
    top_k = int(getattr(blocks[0].router, "top_k", 0) or getattr(cfg, "num_experts_per_tok", 0) or 0)
    if top_k < 1:
        raise ValueError(f"{type(model).__name__}: cannot tell top-k (no router.top_k, no config.num_experts_per_tok)")
    card = model_card(model, blocks, model_name=model_name, top_k=top_k, revision=revision)
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size,
                "record_predictions": record_predictions, "record_logits": record_logits, "greedy": True}

    out = Path(out)
    parts = Parts(out)
    parts.start(resume=resume)
    done, next_step = _resume_state(parts, card, settings, prompt_list)
    todo = [p for p in prompt_list if p.request_id not in done]
    if any(p.input_ids is None for p in todo) and tokenizer is None:
        raise ValueError(f"{model_name}: the prompts hold text but the model has no tokenizer; give token ids "
                         f"as \"input_ids\" in the prompts file, or add tokenizer files to the model folder")

    eos = _eos_ids(model)
    pad = _pad_id(model, eos)
    summary = RecordSummary(out, 0, len(prompt_list) - len(todo), 0, 0, 0, 0.0)
    assembled_rows = pending_rows = 0
    assemble_s = 0.0
    if parts.exists():  # resuming: the output may lag its parts if the last run was killed
        assembled_rows = parts.assemble(_final_meta(card, settings, done))
    if progress is not None and summary.skipped:
        progress(summary.skipped, 0)
    from .tap import RouterTap
    try:
        with torch.inference_mode(), RouterTap(blocks, top_k, horizon=record_predictions,
                                               logits=record_logits) as tap:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                trace, steps, tokens, generated = _record_batch(
                    model, tap, batch, tokenizer, card, settings, next_step, max_new_tokens, pad, eos, device)
                parts.write(trace, next_step)
                for p in batch:
                    done[p.request_id] = p.digest
                next_step += steps
                summary.requests += len(batch)
                summary.tokens += tokens
                summary.steps += steps
                summary.generated.update(generated)
                pending_rows += trace.num_rows
                if assemble_s <= ASSEMBLE_SHARE * (time.perf_counter() - t0):
                    ta = time.perf_counter()
                    assembled_rows = parts.assemble(_final_meta(card, settings, done))
                    assemble_s += time.perf_counter() - ta
                    pending_rows = 0
                if progress is not None:
                    progress(len(batch), tokens)
    finally:
        # also on Ctrl-C or an error: the output holds every finished batch, the parts stay for --resume
        if pending_rows:
            assembled_rows = parts.assemble(_final_meta(card, settings, done))
        if not parts.files():
            parts.remove()
    parts.remove()
    summary.rows = assembled_rows
    summary.seconds = time.perf_counter() - t0
    return summary


def _rows_in(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _final_meta(card: TraceMeta, settings: dict, done: dict[int, str]) -> TraceMeta:
    reqs = [[rid, done[rid]] for rid in sorted(done)]
    return dataclasses.replace(card, source={"kind": "recorder", "name": "moesim record",
                                             "params": {**settings, "requests": reqs}})


def _resume_state(parts: Parts, card: TraceMeta, settings: dict, prompts: list[Prompt]):
    """Requests already recorded (id -> prompt hash) and the next free step, checked against this run."""
    done: dict[int, str] = {}
    next_step = 0
    by_id = {p.request_id: p for p in prompts}
    for path, meta in zip(parts.files(), parts.metas()):
        params = meta.source.get("params", {})
        old = {k: params.get(k) for k in settings}
        if old != settings:
            raise ValueError(f"{path}: recorded with {old}, this run asks for {settings}; "
                             f"resume with the same settings or record to another --out")
        for name in ("num_layers", "moe_layers", "num_experts", "top_k", "dtype"):
            if getattr(meta, name) != getattr(card, name):
                raise ValueError(f"{path}: recorded from a model with {name}={getattr(meta, name)}, "
                                 f"this model has {getattr(card, name)}; resume with the same model")
        for rid, digest in params.get("requests", []):
            p = by_id.get(rid)
            if p is None or p.digest != digest:
                raise ValueError(f"{path}: request {rid} was recorded from a different prompt than line "
                                 f"{rid + 1} of the prompts file now holds; resume with the same prompts "
                                 f"or record to another --out")
            done[rid] = digest
        steps = pq.read_table(path, columns=["step"]).column("step").to_numpy()
        if len(steps):
            next_step = max(next_step, int(steps.max()) + 1)
    return done, next_step


def _record_batch(model, tap, batch: list[Prompt], tokenizer, card: TraceMeta, settings: dict, step0: int,
                  max_new_tokens: int, pad: int, eos: set[int], device: str):
    import torch
    token_lists = [p.tokens(tokenizer) for p in batch]
    B = len(batch)
    lens = np.array([len(t) for t in token_lists], dtype=np.int64)
    P = int(lens.max())
    input_ids = np.full((B, P), pad, dtype=np.int64)
    mask = np.zeros((B, P), dtype=np.int64)
    for b, toks in enumerate(token_lists):
        input_ids[b, P - len(toks):] = toks  # left padding: every request's next token lands in column P
        mask[b, P - len(toks):] = 1

    tap.clear()
    seqs = model.generate(input_ids=torch.from_numpy(input_ids).to(device),
                          attention_mask=torch.from_numpy(mask).to(device),
                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    gen = seqs[:, P:].cpu().numpy()
    G = gen.shape[1]
    # real generated tokens per request: up to and including its first end-of-sequence
    n_real = np.full(B, G, dtype=np.int64)
    if eos:
        is_eos = np.isin(gen, list(eos))
        first = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, G)
        n_real = first.astype(np.int64)
    F = tap.passes
    if F != G:
        raise ValueError(f"{card.model}: generate ran {F} forward passes for {G} new tokens; the recorder "
                         f"expects one pass per token (no prefill chunking, no assisted decoding)")
    for j in range(len(tap.blocks)):
        sizes = [t.shape[0] for t in tap.ids[j]]
        if sizes[0] != B * P or any(s != B for s in sizes[1:]):
            raise ValueError(f"{card.model}: routers saw {sizes[:3]}... tokens per pass, expected {B * P} "
                             f"then {B}; the recorder cannot map them to requests")

    # token table over every routed token (prefill B*P, then F-1 decode passes of B), in router row order
    req_ids = np.array([p.request_id for p in batch], dtype=np.int64)
    b_pre = np.repeat(np.arange(B), P)
    t_pre = np.tile(np.arange(P), B)
    valid_pre = mask.reshape(-1).astype(bool)
    pos_pre = t_pre - (P - lens[b_pre])
    f_dec = np.repeat(np.arange(1, F), B)          # decode pass f feeds generated token f-1
    b_dec = np.tile(np.arange(B), F - 1)
    valid_dec = f_dec < n_real[b_dec]               # a finished request's padding never counts
    pos_dec = lens[b_dec] + f_dec - 1
    sel = np.flatnonzero(np.concatenate([valid_pre, valid_dec]))
    req = req_ids[np.concatenate([b_pre, b_dec])][sel]
    pos = np.concatenate([pos_pre, pos_dec])[sel]
    step = (step0 + np.concatenate([np.zeros(B * P, dtype=np.int64), f_dec]))[sel]
    phase = np.concatenate([np.full(B * P, PREFILL, np.uint8), np.full(len(f_dec), DECODE, np.uint8)])[sel]
    token = np.concatenate([input_ids.reshape(-1), gen[b_dec, f_dec - 1] if F > 1 else np.zeros(0, np.int64)])[sel]

    sel_t = torch.from_numpy(sel).to(device)
    nL = len(tap.blocks)

    def gather(per_layer, dtype):
        stacked = torch.stack([torch.cat(x) for x in per_layer])          # (layers, tokens, width)
        return stacked.index_select(1, sel_t).to(dtype).cpu().numpy()

    ids = gather(tap.ids, torch.int32)
    weights = gather(tap.weights, torch.float32)
    n, k = len(sel), ids.shape[2]
    predictions = None
    if settings["record_predictions"]:
        predictions = {}
        for h in range(1, settings["record_predictions"] + 1):
            pred = np.full((nL, n, k), -1, dtype=np.int32)
            have = nL - h
            if have > 0:
                pred[:have] = gather([tap.preds[j][h - 1] for j in range(have)], torch.int32)
            predictions[h] = pred.reshape(nL * n, k)
    logits = gather(tap.logits, torch.float16).reshape(nL * n, -1) if settings["record_logits"] else None

    def per_row(x):
        return np.tile(x, nL)

    meta = _final_meta(card, settings, {p.request_id: p.digest for p in batch})
    trace = Trace.from_arrays(
        meta, request_id=per_row(req), phase=per_row(phase), step=per_row(step), token_pos=per_row(pos),
        layer=np.repeat(np.asarray(card.moe_layers), n), expert_ids=ids.reshape(nL * n, k),
        expert_weights=weights.reshape(nL * n, k), predictions=predictions, token_id=per_row(token),
        router_logits=logits)
    generated = {int(req_ids[b]): gen[b, :n_real[b]].tolist() for b in range(B)}
    return trace, F, n, generated
