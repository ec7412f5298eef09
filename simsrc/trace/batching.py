"""Serving workloads from single-request traces: which tokens share a step when requests are batched.

Most traces hold one request at a time. moesim already looks a step's experts up per layer as one
segment (the union over its tokens) and charges compute by tokens per expert, so a batched workload is the
same rows with other step numbers. Both transforms return a Trace whose `step` column is the batched step;
rows, experts and token positions are unchanged, and the trace's metadata records the batching
(`extra["batching"]`), so replay knows not to batch it twice.

batch(trace, batch_size=B)   static batching: requests B at a time, in id order; a batch starts when the
    one before it has ended and runs until its longest request ends. Its k-th step holds each member's own
    k-th recorded step (the recorded grouping of requests into steps is discarded). A recorded prefill
    step stays whole, so replay's prefill_chunk splits it as for one request: with 1 (a prompt replayed as
    if decoded) token j of every prompt in the batch shares step j; with 0 the batch's prompts are one step.

serve(trace, batch_size=B, token_budget=N, prefill_chunk=c, arrivals=..., step_seconds=...)   continuous
    batching as vLLM and SGLang schedule (vLLM's chunked-prefill order): each step, every running request
    in its decode phase gets one token; then the running request still in its prompt continues it; then
    waiting requests that have arrived are admitted first come first served while fewer than B run, each
    with a chunk of its prompt. A step holds at most N tokens (the budget; None: no limit) and at most c
    prompt tokens of one request (prefill_chunk; 0: no limit). With c = 1 a prompt is replayed as if it were
    decoded: one token per step, each a token the user sees, which is how a prefill-only trace is served.
    A request leaves when its last token is processed, and its slot is free the next step.
"""
from __future__ import annotations

import csv
import dataclasses
import math
from typing import Callable

import numpy as np
import pyarrow as pa

from .io import Trace
from .schema import PREFILL, canonical_order

CLOCK_ERROR = 1e-12  # s: an arrival this close to the scheduler's clock has arrived


def batch(trace: Trace, *, batch_size: int) -> Trace:
    """Static batching: requests `batch_size` at a time, in id order, each batch's k-th step holding its
    members' k-th recorded steps; batches one after another."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    req = trace.column("request_id").astype(np.int64)
    step = trace.column("step").astype(np.int64)
    if not len(req):
        return _with_steps(trace, step, {"batching": "static", "batch_size": int(batch_size)})
    order = np.lexsort((step, req))
    r, s = req[order], step[order]
    new_pair = np.r_[True, (r[1:] != r[:-1]) | (s[1:] != s[:-1])]
    new_req = np.r_[True, r[1:] != r[:-1]]
    pair = np.cumsum(new_pair) - 1
    # each row's step as its request counts them: 0 for the request's first recorded step, 1 for its next
    local = pair - pair[np.flatnonzero(new_req)][np.cumsum(new_req) - 1]
    rank = np.cumsum(new_req) - 1                        # the request's place among the trace's requests
    group = rank // int(batch_size)
    length = np.zeros(int(group[-1]) + 1, np.int64)      # a batch lasts as long as its longest request
    np.maximum.at(length, group, local + 1)
    start = np.r_[0, np.cumsum(length)[:-1]]
    new_step = np.empty_like(step)
    new_step[order] = start[group] + local
    return _with_steps(trace, new_step, {"batching": "static", "batch_size": int(batch_size)})


@dataclasses.dataclass
class _Requests:
    """The trace's requests, in id order, and the tokens each holds in position order."""
    ids: np.ndarray        # request ids present
    tokens: np.ndarray     # tokens per request
    prompt: np.ndarray     # leading prompt tokens served in chunks (0 when prompts are replayed as decoded)
    token_of_row: np.ndarray  # each row's token, numbered request by request in position order
    token_start: np.ndarray   # first token number of each request


def _requests(trace: Trace, prefill_chunk: int) -> _Requests:
    req = trace.column("request_id").astype(np.int64)
    pos = trace.column("token_pos").astype(np.int64)
    phase = trace.column("phase")
    order = np.lexsort((pos, req))
    r, p = req[order], pos[order]
    first = np.r_[True, (r[1:] != r[:-1]) | (p[1:] != p[:-1])] if len(r) else np.zeros(0, bool)
    token = np.cumsum(first) - 1
    token_of_row = np.empty(len(req), np.int64)
    token_of_row[order] = token
    tok_req = r[first]
    ids, token_start, tokens = np.unique(tok_req, return_index=True, return_counts=True)
    if prefill_chunk == 1:
        prompt = np.zeros(len(ids), np.int64)
    else:
        # the prompt is the request's leading prefill tokens; anything after its first decode token is decoded
        tok_prefill = phase[order][first] == PREFILL
        rank = np.arange(len(tok_req)) - np.repeat(token_start, tokens)
        first_decode = np.full(len(ids), np.iinfo(np.int64).max)
        where = ~tok_prefill
        np.minimum.at(first_decode, np.searchsorted(ids, tok_req[where]), rank[where])
        prompt = np.minimum(first_decode, tokens)
    return _Requests(ids, tokens, prompt, token_of_row, token_start)


def serve(trace: Trace, *, batch_size: int, token_budget: int | None = None, prefill_chunk: int = 1,
          arrivals: np.ndarray | None = None, step_seconds: Callable[[int], float] | None = None) -> Trace:
    """Continuous batching (module docstring): the trace's rows in the steps a vLLM-style scheduler gives them.

    arrivals: seconds at which each request arrives, indexed by request id (None: all waiting at the start);
    step_seconds: the scheduler's clock, the seconds a step of n tokens takes, which says which requests
    have arrived when a step is scheduled (needed with arrivals).
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if token_budget is not None and token_budget < batch_size:
        raise ValueError(f"token_budget {token_budget} is less than batch_size {batch_size}: every running request "
                         f"needs a token each step")
    if arrivals is not None and step_seconds is None:
        raise ValueError("serve(): arrivals need step_seconds, the scheduler's clock")
    reqs = _requests(trace, prefill_chunk)
    n = len(reqs.ids)
    arrive = np.zeros(n) if arrivals is None else np.asarray(arrivals, np.float64)[reqs.ids]
    queue = np.lexsort((reqs.ids, arrive)).tolist()       # first come, first served; ties by request id
    arrive_at, prompt, tokens = arrive.tolist(), reqs.prompt.tolist(), reqs.tokens.tolist()
    budget_cap = math.inf if token_budget is None else int(token_budget)
    chunk_cap = math.inf if prefill_chunk in (0, 1) else int(prefill_chunk)
    done = [0] * n
    running: list[int] = []
    steps, who, count = [], [], []  # one entry per (step, request): tokens it processes then
    clock, step, next_waiting, finished = 0.0, 0, 0, 0
    while finished < n:
        budget = budget_cap
        given: list[tuple[int, int]] = []
        # decode tokens of the running requests first, then a prompt under way, then newcomers
        for r in running:
            if done[r] >= prompt[r]:
                given.append((r, 1))
                budget -= 1
        for r in running:
            if done[r] < prompt[r] and budget > 0:
                g = int(min(prompt[r] - done[r], chunk_cap, budget))
                given.append((r, g))
                budget -= g
        while (next_waiting < n and len(running) < batch_size and budget > 0
               and arrive_at[queue[next_waiting]] <= clock + CLOCK_ERROR):
            r = queue[next_waiting]
            next_waiting += 1
            running.append(r)
            g = int(min(prompt[r], chunk_cap, budget)) if prompt[r] > 0 else 1
            given.append((r, g))
            budget -= g
        if not given:  # nothing running and no one here yet: the GPU waits for the next arrival
            clock = max(clock, arrive_at[queue[next_waiting]])
            continue
        step_tokens = 0
        for r, g in given:
            steps.append(step)
            who.append(r)
            count.append(g)
            done[r] += g
            step_tokens += g
        still = [r for r in running if done[r] < tokens[r]]
        finished += len(running) - len(still)
        running = still
        if step_seconds is not None:
            clock += float(step_seconds(step_tokens))
        step += 1
    # each request's tokens, in position order, take the steps its allocations name, in step order
    steps_a, who_a, count_a = np.asarray(steps, np.int64), np.asarray(who, np.int64), np.asarray(count, np.int64)
    by_request = np.argsort(who_a, kind="stable")
    token_step = np.repeat(steps_a[by_request], count_a[by_request])
    info = {"batching": "continuous", "batch_size": batch_size, "token_budget": token_budget,
            "prefill_chunk": int(prefill_chunk)}
    return _with_steps(trace, token_step[reqs.token_of_row], info)


def _with_steps(trace: Trace, step: np.ndarray, info: dict) -> Trace:
    """The trace with every row moved to `step`, rows in canonical order again, the batching recorded."""
    meta = dataclasses.replace(trace.meta, extra={**trace.meta.extra, "batching": info})
    t = trace.table
    t = t.set_column(t.schema.get_field_index("step"), t.schema.field("step"), pa.array(step.astype(np.uint32)))
    order = canonical_order(step, trace.column("request_id"), trace.column("token_pos"), trace.column("layer"))
    t = t.take(pa.array(order)).replace_schema_metadata({**(t.schema.metadata or {}), b"moesim": meta.to_json()})
    return Trace(t, meta, trace.path)


def poisson_arrivals(request_ids: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Arrival seconds of requests (in id order) from a Poisson process of `rate` per second: the first at 0,
    then exponential gaps of mean 1/rate from a generator seeded with `seed`. Indexed by request id."""
    ids = np.asarray(request_ids, np.int64)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=len(ids))
    out = np.full(int(ids.max()) + 1 if len(ids) else 0, np.nan)
    out[np.sort(ids)] = np.r_[0.0, np.cumsum(gaps[:-1])] if len(ids) else []
    return out


def read_arrivals(path: str, option: str = "--arrivals") -> dict[int, float]:
    """A CSV file with a header and columns request_id,arrival_s (seconds, zero or more): {request id: s}."""
    where = f"{option}: {path}"
    fix = "write a CSV with the header request_id,arrival_s and one line per request, e.g. 0,0.0"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: cannot read it ({e}); {fix}") from None
    if not rows or [c.strip() for c in rows[0]] != ["request_id", "arrival_s"]:
        raise ValueError(f"{where}: the first line must be the header request_id,arrival_s; {fix}")
    out: dict[int, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            rid, t = int(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise ValueError(f"{where}: line {line}: {','.join(row)!r} is not REQUEST_ID,SECONDS; {fix}") from None
        if rid < 0 or not (t >= 0) or math.isinf(t):
            raise ValueError(f"{where}: line {line}: request {rid} at {t} s; ids and arrival times are zero or more")
        if rid in out:
            raise ValueError(f"{where}: line {line}: request {rid} arrives twice")
        out[rid] = t
    return out


def file_arrivals(path: str, request_ids: np.ndarray) -> np.ndarray:
    """Arrival seconds for these requests from an arrivals file, indexed by request id; every one must be there."""
    times = read_arrivals(path)
    ids = np.asarray(request_ids, np.int64)
    missing = [int(r) for r in ids if int(r) not in times]
    if missing:
        raise ValueError(f"--arrivals: {path}: no arrival time for request {missing[0]} ({len(missing)} of the "
                         f"trace's {len(ids)} requests missing); add a line {missing[0]},SECONDS for each")
    out = np.full(int(ids.max()) + 1 if len(ids) else 0, np.nan)
    out[ids] = [times[int(r)] for r in ids]
    return out
