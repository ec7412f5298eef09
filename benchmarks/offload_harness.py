"""Real expert offloading on a GPU, driven by a trace's routing, to hold moesim's timed replay against.

A random-weight model with a real model's layer dimensions (the first few MoE layers of Mixtral-8x7B or
Qwen3-30B-A3B, from moesim's model table) runs decode tokens at batch size 1, one token per step, as the
trace routed them:

- every expert's weights (gate, up and down projections, bf16, one contiguous block) live in pinned host
  memory; the GPU holds `capacity` expert slots, managed by LRU over all layers (one global cache);
- per layer, the dense part runs first (RMSNorm, the attention projections q/k/v and o as GEMVs, the
  router); with --routing-sync (the default) the host then reads the router's top-k back, as a runtime
  must to learn the routing, which waits for the GPU. The routing itself comes from the trace;
- the layer's experts are looked up in stream order (moesim's: a token's experts in stored order). A miss
  takes a free slot or evicts the least recently used expert that this layer does not use, and is
  copied host-to-GPU on a side stream (`non_blocking` from pinned memory) that first waits for the layer's
  dense part (routing is known then, and the slot's old expert is no longer read);
- the experts compute on the default stream, the resident ones first, then each fetched one once its copy
  has landed (the stream waits on the copy's event): SwiGLU, weighted by the trace's gate weights. With
  --grouped, the resident experts run as one batched group and the fetched ones as another after the last
  copy: fewer kernel launches, for small experts whose time is the host's, not the GPU's.

This is moesim's timed replay done for real (engine/timed.py): dense part, then demand fetches issued at
its end over one link, resident experts first, the others in arrival order. The harness also measures the
figures moesim takes: a lone expert copy and a smaller one (latency + bytes / bandwidth), back-to-back
expert copies, one expert's and one dense part's compute, and a pass with every expert resident (before
the sweep and after it: host-bound runs vary from pass to pass).
The time per token at each capacity is the mean of a measured pass over the tokens, which starts from an
empty cache after a warm-up pass over the first tokens. `offload_compare.py` replays the same routing
with moesim and prints measured against predicted.

    python benchmarks/offload_harness.py --trace traces/mixtral-8x7b-speculative-decode.parquet \
        --layers 4 --capacity 25% --capacity 50% --capacity 75% --out offload.json
    python benchmarks/offload_harness.py --trace traces/mixtral-8x7b-speculative-decode.parquet --device cpu \
        --layers 2 --tokens 8 --hidden 64 --ffn 32 --q-width 64 --kv-width 16 --capacity 4 --out smoke.json

Needs torch and moesim (to read the trace and lay out its access stream). A second run with the same
--out adds its run to the file.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import moesim
from moesim.trace import Trace, access_stream
from moesim.trace.importers.models import known_model

# Attention projection widths (heads x head_dim, KV heads x head_dim) from each config.json; the other
# dimensions come from moesim's model table (moesim.trace.importers.models).
ATTENTION = {
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (32 * 128, 8 * 128),  # 32 heads, 8 KV heads of 128
    "Qwen/Qwen3-30B-A3B": (32 * 128, 4 * 128),                    # 32 heads, 4 KV heads of 128
}
FORMAT = "moesim offload harness v1"
BYTES_PER_PARAM = 2  # bf16 on a GPU; the CPU smoke path computes in float32 but the card stays bf16


@dataclass(frozen=True)
class Dims:
    model: str
    hidden: int
    ffn: int          # expert intermediate size
    q_width: int      # attention heads x head_dim
    kv_width: int     # KV heads x head_dim
    num_experts: int

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * self.ffn  # gate, up, down

    @property
    def dense_params(self) -> int:
        """The dense part the harness runs per layer: q/k/v and o projections, and the router."""
        return self.hidden * (self.q_width + 2 * self.kv_width) + self.q_width * self.hidden + \
            self.num_experts * self.hidden


def model_dims(name: str, *, hidden=None, ffn=None, q_width=None, kv_width=None) -> Dims:
    """A model's dims from moesim's table, with any of them overridden (tiny dims for a CPU smoke run)."""
    m = known_model(name)
    if m is None or m.model not in ATTENTION:
        known = ", ".join(sorted(ATTENTION))
        raise ValueError(f"--model {name!r}: the harness knows the dims of {known} (or their aliases); "
                         f"pass --model")
    q, kv = ATTENTION[m.model]
    return Dims(m.model, hidden or m.hidden, ffn or m.expert_intermediate, q_width or q, kv_width or kv,
                m.num_experts)


# ---------------------------------------------------------------- routing
def cut_routing(trace: Trace | str | Path, *, layers: int, tokens: int | None, phase: str, dims: Dims) -> Trace:
    """The trace's first `layers` MoE layers (renumbered 0..layers-1) and first `tokens` steps at batch size 1,
    with a model card for the harness's model: bf16 experts and its dense part's bytes."""
    tr = trace if isinstance(trace, Trace) else moesim.read_trace(trace)
    meta = tr.meta
    where = str(tr.path or meta.model)
    if meta.num_experts != dims.num_experts:
        raise ValueError(f"{where}: the trace has {meta.num_experts} experts per layer, {dims.model} "
                         f"has {dims.num_experts}; pass the trace's --model")
    if not 1 <= layers <= meta.num_moe_layers:
        raise ValueError(f"--layers {layers}: {where} has {meta.num_moe_layers} MoE layers")
    phases = {"all": (0, 1), "prefill": (0,), "decode": (1,)}
    if phase not in phases:
        raise ValueError(f"--phase {phase!r}: choose one of {', '.join(phases)}")
    layer_idx = tr.layer_index()
    keep = (layer_idx >= 0) & (layer_idx < layers) & np.isin(tr.column("phase"), phases[phase])
    if not keep.any():
        raise ValueError(f"{where}: no {phase} rows in its first {layers} MoE layers")
    card = dataclasses.replace(
        meta, num_layers=layers, moe_layers=list(range(layers)), bytes_per_expert=dims.expert_params * BYTES_PER_PARAM,
        dense_bytes_per_layer=dims.dense_params * BYTES_PER_PARAM, dtype="bfloat16", quantization=None,
        notes=(meta.notes + " " if meta.notes else "") +
        f"Cut by offload_harness.py: MoE layers {meta.moe_layers[:layers]} renumbered 0..{layers - 1}, "
        f"{phase} rows; card set to {dims.model} in bf16 with the harness's dense part (q/k/v, o, router).")
    weights = tr.expert_weights()
    cols = dict(request_id=tr.column("request_id")[keep], phase=tr.column("phase")[keep],
                step=tr.column("step")[keep], token_pos=tr.column("token_pos")[keep], layer=layer_idx[keep],
                expert_ids=tr.expert_ids()[keep], expert_weights=None if weights is None else weights[keep])
    sub = Trace.from_arrays(card, **cols)
    st = access_stream(sub, prefill_chunk=1)
    if tokens is not None:
        if not 1 <= tokens <= st.num_steps:
            raise ValueError(f"--tokens {tokens}: {where} has {st.num_steps} {phase} tokens in those layers")
        n_seg = int(np.searchsorted(st.seg_step, tokens))
        rows = np.sort(st.row_order[:st.seg_row_offsets[n_seg]])
        sub = Trace(sub.table.take(rows), card, None)
        sub.validate("<cut routing>")
    return sub


def routing_record(tr: Trace) -> dict:
    """The cut routing as plain lists, so a results file says exactly which accesses ran."""
    return {"meta": json.loads(tr.meta.to_json()),
            **{c: tr.column(c).tolist() for c in ("request_id", "phase", "step", "token_pos", "layer")},
            "expert_ids": tr.expert_ids().reshape(-1).tolist()}  # flat; top_k per row (meta)


def routing_from_record(rec: dict) -> Trace:
    meta = moesim.TraceMeta(**rec["meta"])
    return Trace.from_arrays(meta, **{c: np.asarray(rec[c]) for c in ("request_id", "phase", "step", "token_pos",
                                                                          "layer")},
                             expert_ids=np.asarray(rec["expert_ids"]).reshape(-1, meta.top_k))


def parse_capacity(text: str | int, num_items: int, top_k: int) -> int:
    """'25%' (floored, as moesim does) or an expert count; at least top_k, so a layer's experts all fit."""
    s = str(text).strip()
    m = re.fullmatch(r"([0-9.]+)\s*%", s)
    if m:
        c = int(math.floor(float(m.group(1)) / 100 * num_items + 1e-9))
    elif re.fullmatch(r"[0-9]+", s):
        c = int(s)
    else:
        raise ValueError(f"--capacity {text!r}: write a percentage of the layers' experts (25%) or a count (8)")
    if not top_k <= c <= num_items:
        raise ValueError(f"--capacity {text!r} = {c} experts: must be between top-k ({top_k}) and all the "
                         f"layers' experts ({num_items})")
    return c


# ---------------------------------------------------------------- clock
class Clock:
    """Timestamps on the GPU's default stream (CUDA events), or the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) * 1e-3 if self.cuda else b - a

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


# ---------------------------------------------------------------- the model
class OffloadedMoE:
    """MoE layers with every expert in host memory and an LRU cache of expert slots in GPU memory."""

    def __init__(self, dims: Dims, num_layers: int, top_k: int, device: torch.device, dtype: torch.dtype,
                 routing_sync: bool = True, grouped: bool = False, seed: int = 0):
        self.dims, self.L, self.k = dims, num_layers, top_k
        self.device, self.dtype, self.routing_sync, self.grouped = device, dtype, routing_sync, grouped
        self.cuda = device.type == "cuda"
        self.clock = Clock(device)
        H, Fi, E = dims.hidden, dims.ffn, dims.num_experts
        self.num_items = num_layers * E
        self.P = dims.expert_params
        g = torch.Generator(device=device).manual_seed(seed)

        def weight(*shape):  # std 1/sqrt(fan-in), so activations neither vanish nor blow up over layers
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) / shape[-1] ** 0.5).to(dtype)

        self.wqkv = [weight(dims.q_width + 2 * dims.kv_width, H) for _ in range(num_layers)]
        self.wo = [weight(H, dims.q_width) for _ in range(num_layers)]
        self.wr = [weight(E, H) for _ in range(num_layers)]
        # the expert store: one row per (layer, expert) = moesim's item, gate|up rows then down rows
        self.store = torch.empty((self.num_items, self.P), dtype=dtype, pin_memory=self.cuda)
        for x in range(self.num_items):  # filled from the device: fast on a GPU, and the same code on a CPU
            self.store[x, :2 * Fi * H].copy_(weight(2 * Fi, H).reshape(-1))
            self.store[x, 2 * Fi * H:].copy_(weight(H, Fi).reshape(-1))
        self.slots = torch.empty((self.num_items, self.P), dtype=dtype, device=device)
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.h0 = torch.randn(1, H, generator=g, device=device, dtype=torch.float32).to(dtype)
        self.reset(self.num_items)

    # -- cache
    def reset(self, capacity: int, *, resident: bool = False):
        """An empty cache of `capacity` slots; or, with resident, every expert in its own slot."""
        self.capacity = capacity
        self.lru: OrderedDict[int, int] = OrderedDict()
        self.free = list(range(capacity - 1, -1, -1))  # pop() hands out slot 0 first
        if resident:
            assert capacity == self.num_items
            self.free = []
            for x in range(self.num_items):
                self.slots[x].copy_(self.store[x], non_blocking=True)
                self.lru[x] = x
        self.clock.sync()

    # -- compute
    def _norm(self, h):
        hf = h.float()
        return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(self.dtype)

    def dense(self, h, layer: int):
        """The layer's dense part: attention projections (no scores: at these contexts they move little
        memory) and the router. Returns (new hidden state, normalised input of the experts)."""
        hn = self._norm(h)
        q = F.linear(hn, self.wqkv[layer])[..., :self.dims.q_width]
        h = h + F.linear(q, self.wo[layer])
        hn = self._norm(h)
        logits = F.linear(hn, self.wr[layer])
        if self.routing_sync:
            logits.topk(self.k).indices.tolist()  # the host learns the routing (the trace's is used)
        return h, hn

    def expert(self, hn, slot: int, weight: float, out):
        Fi, H = self.dims.ffn, self.dims.hidden
        w = self.slots[slot]
        gate_up = F.linear(hn, w[:2 * Fi * H].view(2 * Fi, H))
        a, b = gate_up.split(Fi, dim=-1)
        out.add_(F.linear(F.silu(a) * b, w[2 * Fi * H:].view(H, Fi)), alpha=weight)

    def group(self, hn, slots: list, weights: list, out):
        """Several experts in one pass of batched kernels (gather their slots, bmm): 9 launches for the
        group instead of 5 per expert, which is what bounds small experts' time on the host."""
        Fi, H, n = self.dims.ffn, self.dims.hidden, len(slots)
        idx = torch.tensor(slots, device=self.device)
        gate_up = torch.matmul(self.slots[:, :2 * Fi * H].index_select(0, idx).view(n, 2 * Fi, H), hn.view(H, 1))
        a, b = gate_up.split(Fi, dim=1)
        y = torch.bmm(self.slots[:, 2 * Fi * H:].index_select(0, idx).view(n, H, Fi), F.silu(a) * b).view(n, H)
        out.add_((y * torch.tensor(weights, device=self.device, dtype=y.dtype).view(n, 1)).sum(0))

    def segment(self, h, layer: int, items, weights) -> tuple[torch.Tensor, int, int]:
        """One (step, layer): dense part, lookups and demand copies, expert compute. -> (h, hits, misses)."""
        h, hn = self.dense(h, layer)
        if self.cuda:
            routed = torch.cuda.Event()
            routed.record()
            self.copy_stream.wait_event(routed)
        # the layer's experts are looked up together when routing is known (moesim's segment accounting):
        # the resident ones are in use, so a miss evicts the least recently used expert the layer does not
        # need; when the layer's own experts fill the cache, a miss streams through a spare slot, not kept
        here, fetched, missing, busy = [], [], [], set(items)
        for x, w in zip(items, weights):
            slot = self.lru.get(x)
            if slot is not None:
                self.lru.move_to_end(x)
                here.append((slot, w))
            else:
                missing.append((x, w))
        spare = self.capacity  # rows past the cache's slots
        for x, w in missing:
            if self.free:
                slot = self.free.pop()
                self.lru[x] = slot
            else:
                victim = next((v for v in self.lru if v not in busy), None)
                if victim is None:
                    slot, spare = spare, spare + 1
                else:
                    slot = self.lru.pop(victim)
                    self.lru[x] = slot
            if self.cuda:
                with torch.cuda.stream(self.copy_stream):
                    self.slots[slot].copy_(self.store[x], non_blocking=True)
                    landed = torch.cuda.Event()
                    landed.record(self.copy_stream)
            else:
                self.slots[slot].copy_(self.store[x])
                landed = None
            fetched.append((slot, w, landed))
        out = torch.zeros_like(h)
        if self.grouped:  # the resident group, then the fetched group once the last copy has landed
            if here:
                self.group(hn, [slot for slot, _ in here], [w for _, w in here], out)
            if fetched:
                if fetched[-1][2] is not None:
                    torch.cuda.current_stream().wait_event(fetched[-1][2])
                self.group(hn, [slot for slot, _, _ in fetched], [w for _, w, _ in fetched], out)
            return h + out, len(here), len(fetched)
        for slot, w in here:
            self.expert(hn, slot, w, out)
        for slot, w, landed in fetched:
            if landed is not None:
                torch.cuda.current_stream().wait_event(landed)
            self.expert(hn, slot, w, out)
        return h + out, len(here), len(fetched)

    # -- passes
    def run(self, stream, weights, *, steps: int | None = None, keep_outputs: bool = False) -> dict:
        """Walk the access stream's first `steps` steps from the cache as it is; time each step."""
        n_steps = stream.num_steps if steps is None else min(steps, stream.num_steps)
        n_seg = int(np.searchsorted(stream.seg_step, n_steps))
        hits = np.zeros(self.L, np.int64)
        misses = np.zeros(self.L, np.int64)
        item = stream.item.tolist()
        wts = weights.tolist()
        off = stream.seg_offsets
        marks, outputs = [], []
        h = self.h0
        self.clock.sync()
        t0 = time.perf_counter()
        marks.append(self.clock.mark())
        for s in range(n_seg):
            layer = int(stream.seg_layer[s])
            a, b = int(off[s]), int(off[s + 1])
            h, nh, nm = self.segment(h, layer, item[a:b], wts[a:b])
            hits[layer] += nh
            misses[layer] += nm
            if s + 1 == n_seg or stream.seg_step[s + 1] != stream.seg_step[s]:
                marks.append(self.clock.mark())
                if keep_outputs:
                    outputs.append(h.float().cpu())
                h = self._next_token(h)
        self.clock.sync()
        wall = time.perf_counter() - t0
        step_s = [self.clock.seconds(marks[i], marks[i + 1]) for i in range(len(marks) - 1)]
        res = {"steps": n_steps, "hits": int(hits.sum()), "misses": int(misses.sum()),
               "hits_per_layer": hits.tolist(), "misses_per_layer": misses.tolist(),
               "total_s": float(sum(step_s)), "time_per_token_s": float(sum(step_s)) / max(n_steps, 1),
               "wall_s": wall, "step_s": step_s}
        if keep_outputs:
            res["outputs"] = outputs
        return res

    def _next_token(self, h):
        # the next token's input: this token's output, renormalised (an embedding stand-in that keeps
        # the values bounded over hundreds of tokens)
        return self._norm(h)

    def sweep(self, stream, weights, capacity: int, warmup_steps: int, keep_outputs: bool = False) -> dict:
        """Warm up at `capacity`, then a measured pass from an empty cache (as moesim replays)."""
        self.reset(capacity)
        self.run(stream, weights, steps=warmup_steps)
        self.reset(capacity)
        return {"capacity_experts": capacity, **self.run(stream, weights, keep_outputs=keep_outputs)}


# ---------------------------------------------------------------- calibration
def _median(xs) -> float:
    return float(np.median(np.asarray(xs)))


def measure_link(m: OffloadedMoE, reps: int) -> dict:
    """A lone expert copy and a lone 1/8 copy from an idle stream (issue included), and k back-to-back
    expert copies on one stream; the two lone sizes give moesim's latency and bandwidth."""
    if not m.cuda:
        return {}
    cs = m.copy_stream
    P, esz = m.P, m.store.element_size()

    def copy_once(n_elems: int, k: int, rep: int) -> float:
        cs.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(cs):
            a.record(cs)
            for j in range(k):
                x = (rep * k + j) % m.num_items
                m.slots[j % m.num_items, :n_elems].copy_(m.store[x, :n_elems], non_blocking=True)
            b.record(cs)
        b.synchronize()
        return a.elapsed_time(b) * 1e-3

    out = {}
    for label, n, k in (("expert", P, 1), ("expert/8", P // 8, 1), ("expert x8", P, min(8, m.num_items))):
        for r in range(2):
            copy_once(n, k, r)  # warm-up
        t = [copy_once(n, k, r) for r in range(reps)]
        out[label] = {"bytes": n * esz, "copies": k, "median_s": _median(t), "min_s": float(min(t)),
                      "max_s": float(max(t)), "reps": reps}
    b1, t1 = out["expert"]["bytes"], out["expert"]["median_s"]
    b8, t8 = out["expert/8"]["bytes"], out["expert/8"]["median_s"]
    bw = (b1 - b8) / (t1 - t8)
    kk = out["expert x8"]
    out["fit"] = {"method": "two lone copies (expert, expert/8): time = latency + bytes / bandwidth",
                  "bandwidth_Bps": bw, "latency_s": t1 - b1 / bw,
                  "back_to_back_Bps": kk["bytes"] * kk["copies"] / kk["median_s"],
                  "back_to_back_per_copy_s": kk["median_s"] / kk["copies"]}
    return out


def measure_compute(m: OffloadedMoE, reps: int) -> dict:
    """One expert's and one dense part's time: alone (the GPU idle before it) and back to back. With
    grouped experts, "expert" is a group of top-k experts' time divided by top-k."""
    m.reset(m.num_items)
    for x in range(m.k):
        m.slots[x].copy_(m.store[x])
    h = m.h0
    hn = m._norm(h)
    out = torch.zeros_like(h)
    clk = m.clock
    per = m.k if m.grouped else 1

    def timed(fn, k: int) -> float:
        clk.sync()
        a = clk.mark()
        for _ in range(k):
            fn()
        b = clk.mark()
        clk.sync()
        return clk.seconds(a, b) / k / (per if fn is expert else 1)

    def expert():
        if m.grouped:
            m.group(hn, list(range(m.k)), [0.5] * m.k, out)
        else:
            m.expert(hn, 0, 0.5, out)

    res = {}
    for name, fn in (("expert", expert), ("dense", lambda: m.dense(h, 0))):
        for _ in range(3):
            fn()
        res[f"{name}_alone_s"] = _median([timed(fn, 1) for _ in range(reps)])
        res[f"{name}_back_to_back_s"] = _median([timed(fn, 20) for _ in range(max(reps // 4, 3))])
    return res


# ---------------------------------------------------------------- machine and main
def machine(device: torch.device) -> dict:
    m = {"python": platform.python_version(), "torch": torch.__version__, "device": device.type,
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_link import machine as gpu_machine  # GPU, driver, PCIe link, copy engines

        m.update(gpu_machine())
    else:
        m["cpu"] = platform.processor() or platform.machine()
    return m


def run_harness(trace, *, model: str | None = None, layers: int, tokens: int | None, phase: str = "all",
                capacities=("25%", "50%", "75%"), device: str = "cuda", dtype: str | None = None,
                routing_sync: bool = True, grouped: bool = False, resident_before: bool = True,
                warmup_steps: int = 16, reps: int = 10, seed: int = 0,
                dims_override: dict | None = None, keep_outputs: bool = False) -> dict:
    tr = trace if isinstance(trace, Trace) else moesim.read_trace(trace)
    dims = model_dims(model or tr.meta.model, **(dims_override or {}))
    cut = cut_routing(tr, layers=layers, tokens=tokens, phase=phase, dims=dims)
    stream = access_stream(cut, prefill_chunk=1)
    if (stream.seg_tokens != 1).any():
        raise ValueError(f"{tr.path}: some steps hold several tokens; the harness runs batch size 1")
    w = cut.expert_weights()
    weights = (w[stream.row_order].reshape(-1) if w is not None
               else np.full(len(stream), 1.0 / stream.top_k)).astype(np.float64)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU; pass --device cpu for a smoke run")
    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype or
                                                                    ("bfloat16" if dev.type == "cuda" else "float32")]
    m = OffloadedMoE(dims, layers, stream.top_k, dev, tdtype, routing_sync=routing_sync, grouped=grouped, seed=seed)
    caps = [parse_capacity(c, m.num_items, stream.top_k) for c in capacities]
    t0 = time.perf_counter()
    link = measure_link(m, reps)
    compute = measure_compute(m, reps)

    def all_resident(when: str) -> dict:
        m.reset(m.num_items, resident=True)
        m.run(stream, weights, steps=warmup_steps)
        r = m.run(stream, weights, keep_outputs=keep_outputs)
        print(f"all resident ({when}): {r['time_per_token_s'] * 1e3:.3f} ms/token", flush=True)
        return r

    # the all-resident pass before the sweep as well as after it: the host-bound runs drifted faster over a
    # process's life, so one pass after the sweep would calibrate the compute on its fastest minute
    before = all_resident("before") if resident_before else None
    runs = []
    for c in caps:
        r = m.sweep(stream, weights, c, warmup_steps)
        runs.append(r)
        print(f"capacity {c:5d}: {r['hits']} hits, {r['misses']} misses, "
              f"{r['time_per_token_s'] * 1e3:.3f} ms/token", flush=True)
    resident = all_resident("after")
    return {"model": dims.model, "dims": dataclasses.asdict(dims), "trace": str(tr.path or tr.meta.model),
            "layers": layers, "tokens": stream.num_steps, "phase": phase, "top_k": stream.top_k,
            "accesses": len(stream), "num_items": m.num_items, "dtype": str(tdtype).removeprefix("torch."),
            "bytes_per_expert": cut.meta.bytes_per_expert, "dense_bytes_per_layer": cut.meta.dense_bytes_per_layer,
            "routing_sync": routing_sync, "grouped": grouped, "warmup_steps": warmup_steps, "seed": seed,
            "lookup": "segment",
            "link": link, "compute": compute, "capacities": runs, "resident": resident,
            **({"resident_before": before} if before else {}),
            "seconds": round(time.perf_counter() - t0, 1), "routing": routing_record(cut)}


def dumps(doc: dict) -> str:
    """JSON with one line per list of numbers (the routing and the step times would be 40,000 lines)."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[[-0-9.eE+,\s]*\]", lambda m: " ".join(m.group(0).split()), text) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--trace", required=True, help="a moesim trace (Parquet) whose routing drives the run")
    ap.add_argument("--model", help="whose dims to use (default: the trace's model); "
                                    f"one of {', '.join(sorted(ATTENTION))} or an alias")
    ap.add_argument("--layers", type=int, default=4, help="the first N MoE layers of the trace (default 4)")
    ap.add_argument("--tokens", type=int, help="the first N tokens (steps) of those layers (default: all)")
    ap.add_argument("--phase", default="all", choices=("all", "prefill", "decode"),
                    help="which rows to keep (prefill rows run one token per step, as decoded)")
    ap.add_argument("--capacity", action="append", help="GPU expert slots: 25%% of the layers' experts, or a "
                                                        "count; repeat for several (default 25%%, 50%%, 75%%)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (no streams, no pinning)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), help="default bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--routing-sync", action=argparse.BooleanOptionalAction, default=True,
                    help="read the router's top-k back to the host each layer, as a runtime must (default on)")
    ap.add_argument("--grouped", action="store_true",
                    help="compute a layer's resident experts, then its fetched ones, as one batched group each "
                         "(fewer kernel launches; default: one expert at a time, each as soon as it lands)")
    ap.add_argument("--resident-before", action=argparse.BooleanOptionalAction, default=True,
                    help="time an all-resident pass before the sweep too, not only after it (default on)")
    ap.add_argument("--warmup", type=int, default=16, help="tokens of the warm-up pass at each capacity")
    ap.add_argument("--reps", type=int, default=10, help="repetitions of each link and compute measurement")
    ap.add_argument("--seed", type=int, default=0)
    for name in ("hidden", "ffn", "q-width", "kv-width"):
        ap.add_argument(f"--{name}", type=int, help=f"override the model's {name} (tiny dims for a smoke run)")
    ap.add_argument("--out", required=True, help="JSON file to write; if it exists, this run is added to it")
    a = ap.parse_args(argv)
    dims_override = {k: getattr(a, k) for k in ("hidden", "ffn", "q_width", "kv_width") if getattr(a, k)}
    try:
        run = run_harness(a.trace, model=a.model, layers=a.layers, tokens=a.tokens, phase=a.phase,
                          capacities=a.capacity or ("25%", "50%", "75%"), device=a.device, dtype=a.dtype,
                          routing_sync=a.routing_sync, grouped=a.grouped, resident_before=a.resident_before,
                          warmup_steps=a.warmup, reps=a.reps, seed=a.seed,
                          dims_override=dims_override)
    except (ValueError, moesim.TraceError) as e:
        sys.exit(f"error: {e}")
    out = Path(a.out)
    run["machine"] = machine(torch.device(a.device))  # runs added to a file may come from another machine
    doc = {"format": FORMAT, "machine": run["machine"], "runs": []}
    if out.exists():
        doc = json.loads(out.read_text())
        if doc.get("format") != FORMAT:
            sys.exit(f"error: {out} exists and is not a harness results file; pass another --out")
    doc["runs"].append(run)
    out.write_text(dumps(doc))
    print(f"wrote {out} ({len(doc['runs'])} runs)")


if __name__ == "__main__":
    main()
