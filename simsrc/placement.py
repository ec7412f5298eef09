"""moesim plan: the expert placement to deploy, searched among those a runtime can express, each checked by replay.

A plan starts from the GPU memory left for experts: the GPU's memory less the non-expert weights (the trace
card's `dense_bytes_per_layer` for every layer, plus one expert's worth of FFN for each layer without
experts, as cost.py charges them; at --weight-bits when given), the KV cache of `batch` sequences of
`context` tokens (`kv_bytes_per_token` per layer), and a reserve for what the card does not hold (token
embeddings, output head, CUDA context, compute buffers). Then, per target:

  llama.cpp     A layer's experts are one tensor per projection (blk.N.ffn_{gate,up,down}_exps), so a
                placement is a set of layers whose expert tensors stay on the GPU; every other expert is
                computed on the CPU (the host action, no cache). With the host action a layer ends when
                its own GPU and host experts are done, so time per token is a sum over layers: each layer's
                saving is measured alone (one timed replay per layer) and the layers that save most are the
                best set of that size. Small models are searched exhaustively instead (every set that
                fits, each a timed replay). Output: `-ot` patterns, checked against every GGUF tensor name
                the model has, and the `--n-cpu-moe N` that says the same where one exists.
  ktransformers KTransformers' optimize rules place a layer's experts module as one (the per-layer search
                above, as a rule file), and its kt-kernel backend places single experts through a GPU
                expert mask whose `frequency` strategy keeps the most used experts across all layers on
                the GPU (`--kt-num-gpu-experts` per layer). Both are replayed; the faster is the plan.
  dynamic       A runtime with an expert cache per layer (fetch on a miss): one budget split across layers
                from each layer's miss curve (a count replay per cache size), by an exact allocation over
                layers (a knapsack; miss curves are not convex, so taking the best next slot greedily can
                stop on a plateau), then replayed timed beside the equal split.

Every placement is replayed by moesim.replay in timed mode; the prediction printed is that row, and the
plan's pin file (`--pin-file`) or per-layer capacity replays it again exactly.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from math import comb
from pathlib import Path

import numpy as np

from .config import KNOB, ReplayConfig, knob_name
from .hardware import dtype_bytes
from .replay import cache_for, expert_counts, expert_size, policy_state, replay
from .trace import AccessStream, Trace, access_stream, read_trace
from .units import parse_bytes, parse_count

TARGETS = ("llama.cpp", "ktransformers", "dynamic")
# knobs a plan sets itself for each placement it replays
CHOSEN_BY_PLAN = ("capacity", "scope", "action", "pin", "pin_file", "mode", "accounting", "per_layer", "per_step")
DEFAULT_RESERVE = 2**30  # embeddings, output head, CUDA context and compute buffers: the card holds none of them
EXHAUSTIVE_LIMIT = 64    # layer sets replayed one by one at most; above, the per-layer search


@dataclass(frozen=True)
class Budget:
    """The GPU memory arithmetic, in bytes."""
    gpu_memory: float
    non_expert: float
    kv_cache: float
    reserve: float
    expert_bytes: float
    num_experts: int    # routed experts per MoE layer
    num_layers: int     # MoE layers

    @property
    def for_experts(self) -> float:
        return self.gpu_memory - self.non_expert - self.kv_cache - self.reserve

    @property
    def experts(self) -> int:
        """Experts that fit, at most all of them."""
        return int(min(self.for_experts // self.expert_bytes, self.num_experts * self.num_layers))

    @property
    def layers(self) -> int:
        """Layers whose experts fit whole."""
        return int(min(self.for_experts // (self.expert_bytes * self.num_experts), self.num_layers))


@dataclass
class Placement:
    """One placement, replayed: what it keeps on the GPU, the replay knobs that reproduce it, and its row."""
    name: str
    replay: dict              # knobs on top of the plan's (action, capacity, scope)
    row: dict
    pins: tuple = ()          # (model layer, expert) kept on the GPU
    gpu_layers: tuple | None = None        # layers whose experts are all on the GPU (per-layer targets)
    layer_capacity: tuple | None = None    # (model layer, experts) cache budgets (dynamic)
    objective: str = "tpot"   # what the search minimises: tpot_s (time per output token) or total_s

    @property
    def cost(self) -> float:
        return float(self.row["tpot_s" if self.objective == "tpot" else "total_s"])

    @property
    def tpot_s(self) -> float:
        return float(self.row["tpot_s"])

    @property
    def hit_rate(self) -> float:
        return float(self.row["hit_rate"])

    @property
    def gpu_experts(self) -> int:
        return len(self.pins) if self.layer_capacity is None else sum(n for _, n in self.layer_capacity)


@dataclass
class Plan:
    target: str
    trace: str
    model: str
    budget: Budget
    search: str               # how the placement was found, in words
    chosen: Placement
    baseline: Placement       # no GPU experts (llama.cpp, ktransformers) or the equal split (dynamic)
    others: list = field(default_factory=list)      # placements replayed beside it (n-cpu-moe form, ...)
    artifacts: dict = field(default_factory=dict)   # runtime settings: name -> text
    notes: list = field(default_factory=list)
    knobs: dict = field(default_factory=dict)       # the replay knobs the plan was given (as written)

    def replay_options(self) -> dict:
        """moesim.replay keywords that replay the chosen placement (with the pin file for pins)."""
        return {**self.knobs, **self.chosen.replay}

    def to_json(self) -> dict:
        """The plan file: the pins `--pin-file` reads, and under "plan" what was chosen and predicted."""
        c = self.chosen
        described = {
            "target": self.target, "trace": self.trace, "model": self.model, "search": self.search,
            "replay": {k: v for k, v in self.replay_options().items() if k != "pin_file"},
            "objective": c.objective,
            "predicted": {"tpot_s": c.tpot_s, "hit_rate": c.hit_rate, "total_s": c.row["total_s"]},
            "baseline": {"name": self.baseline.name, "tpot_s": self.baseline.tpot_s,
                         "hit_rate": self.baseline.hit_rate, "total_s": self.baseline.row["total_s"]},
            "budget": dataclasses.asdict(self.budget), "artifacts": self.artifacts, "notes": self.notes,
        }
        if c.gpu_layers is not None:
            described["gpu_layers"] = list(c.gpu_layers)
        if c.layer_capacity is not None:
            described["layer_capacity"] = {str(layer): n for layer, n in c.layer_capacity}
        return {"pins": [list(p) for p in c.pins], "plan": _plain(described)}

    def write(self, path: str | os.PathLike) -> None:
        """Write the plan file beside `path` and rename it into place."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        data = self.to_json()
        # the pins on one line: a plan of thousands stays a file people can scroll past
        text = ('{\n "pins": ' + json.dumps(data["pins"]) + ',\n "plan": '
                + json.dumps(data["plan"], indent=1).replace("\n", "\n ") + "\n}\n")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def plan(trace: Trace | str | os.PathLike, *, target: str, gpu_memory=None, reserve=DEFAULT_RESERVE,
         context=None, batch=1, objective: str = "tpot", exhaustive_limit: int = EXHAUSTIVE_LIMIT,
         stream: AccessStream | None = None, **knobs) -> Plan:
    """Search the placements `target` (llama.cpp, ktransformers, dynamic) can express and replay them timed.

    gpu_memory: bytes or text ('24GiB'; default: the hardware's); reserve: memory kept back besides the
    non-expert weights and the KV cache (default 1 GiB); context, batch: tokens and sequences whose KV
    cache is reserved (needs kv_bytes_per_token); objective: "tpot" (time per output token) or "total" (the
    whole trace's time, for traces that emit no decode tokens as replayed). Other keywords are replay knobs (hardware, host_flops,
    host_bandwidth, weight_bits, policy for dynamic, train for ktransformers' expert frequencies, ...).
    """
    target = _target(target)
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    knobs = {knob_name(k): v for k, v in knobs.items() if v is not None}
    fixed = sorted(set(knobs) & set(CHOSEN_BY_PLAN))
    if fixed:
        raise ValueError(f"moesim plan chooses {', '.join(KNOB[k].option for k in fixed)} for each placement it "
                         f"replays; leave {'it' if len(fixed) == 1 else 'them'} out")
    cfg = ReplayConfig.make(**knobs)
    if cfg.mode != "timed":
        raise ValueError("moesim plan predicts time: it replays in timed mode")
    stream = stream if stream is not None else access_stream(tr, prefill_chunk=cfg.prefill_chunk)
    budget = memory_budget(tr.meta, cfg, gpu_memory=gpu_memory, reserve=reserve, context=context, batch=batch)
    where = str(tr.path) if tr.path else tr.meta.model
    if objective not in ("tpot", "total"):
        raise ValueError(f"--objective: {objective!r}; choose tpot (time per output token) or total")
    run = _Runner(tr, stream, knobs, objective)
    if objective == "tpot" and not math.isfinite(run.layers(()).tpot_s):
        raise ValueError(f"{where}: as replayed (--prefill-chunk {cfg.prefill_chunk}) no request emits a token "
                         f"after its first, so there is no time per output token: pass --objective total, or "
                         f"--prefill-chunk 1 to replay prompts as if decoded")
    if target == "llama.cpp":
        result = _llama_cpp(run, budget, exhaustive_limit)
    elif target == "ktransformers":
        result = _ktransformers(run, budget, exhaustive_limit, cfg)
    else:
        result = _dynamic(run, budget, cfg)
    result.update(target=target, trace=where, model=tr.meta.model, budget=budget,
                  knobs={k: _written(v) for k, v in knobs.items()})
    return Plan(**result)


def memory_budget(meta, cfg: ReplayConfig, *, gpu_memory=None, reserve=DEFAULT_RESERVE, context=None,
                  batch=1) -> Budget:
    """What the GPU holds besides experts, and so what is left for them (see the module's docstring)."""
    hw = cfg.hardware_spec()
    gpu = hw.gpu_memory if gpu_memory is None else parse_bytes(gpu_memory, "--gpu-memory", allow_zero=False)
    reserve = parse_bytes(reserve, "--reserve")
    expert_bytes, _ = expert_size(meta, cfg)
    if not expert_bytes:
        raise ValueError(f"{meta.model}: the trace does not say how many bytes an expert has; pass "
                         f"--bytes-per-expert")
    # a quantised model (--weight-bits) is quantised throughout, its non-expert weights too
    scale = hw.weight_bits / 8 / dtype_bytes(meta.dtype) if hw.weight_bits is not None else 1.0
    dense_layers = meta.num_layers - meta.num_moe_layers
    non_expert = scale * (meta.dense_bytes_per_layer * meta.num_layers + dense_layers * meta.bytes_per_expert)
    kv = 0.0
    if context is not None:
        context = parse_count(context, "--context", low=1)
        batch = parse_count(batch, "--batch", low=1)
        if hw.kv_bytes_per_token is None:
            raise ValueError("--context: the KV cache's size needs --kv-bytes-per-token, the bytes one token keeps "
                             "per layer (Mixtral-8x7B in bf16: 8 KV heads x 128 x 2 (K and V) x 2 bytes = 4KiB)")
        kv = float(context) * batch * hw.kv_bytes_per_token * meta.num_layers
    budget = Budget(float(gpu), float(non_expert), kv, float(reserve), float(expert_bytes), meta.num_experts,
                    meta.num_moe_layers)
    if budget.for_experts < 0:
        raise ValueError(f"{_gib(gpu)} of GPU memory holds no experts: non-expert weights {_gib(non_expert)} + KV "
                         f"cache {_gib(kv)} + reserve {_gib(reserve)} already take {_gib(gpu - budget.for_experts)}; "
                         f"pass a larger --gpu-memory, a smaller --reserve or --context, or --weight-bits")
    return budget


class _Runner:
    """Timed replays of one trace under the plan's knobs, remembered by placement."""

    def __init__(self, trace: Trace, stream: AccessStream, knobs: dict, objective: str = "tpot"):
        self.trace, self.stream, self.knobs, self.objective = trace, stream, knobs, objective
        self.meta = trace.meta
        self._rows: dict = {}

    def replay(self, **placement) -> dict:
        key = json.dumps(placement, sort_keys=True, default=str)
        if key not in self._rows:
            self._rows[key] = replay(self.trace, stream=self.stream, **self.knobs, **placement)
        return self._rows[key]

    def layers(self, gpu_layers) -> Placement:
        """Every expert of `gpu_layers` on the GPU, every other one computed on the host."""
        gpu_layers = tuple(sorted(gpu_layers))
        pins = tuple((layer, e) for layer in gpu_layers for e in range(self.meta.num_experts))
        return self.experts(pins, gpu_layers=gpu_layers)

    def experts(self, pins, name: str = "", gpu_layers=None) -> Placement:
        row = self.replay(action="host", capacity=0, pin=list(pins) or None)
        return Placement(name, {"action": "host", "capacity": 0}, row, tuple(pins), gpu_layers,
                         objective=self.objective)


# ---- llama.cpp: per layer

def _llama_cpp(run: _Runner, budget: Budget, exhaustive_limit: int) -> dict:
    meta = run.meta
    chosen, search, notes = _layer_search(run, budget, exhaustive_limit)
    chosen.name = "plan"
    baseline = run.layers(())
    baseline.name = "no GPU experts (--cpu-moe)"
    cpu_layers = [layer for layer in meta.moe_layers if layer not in chosen.gpu_layers]
    others, artifacts = [], {}
    n_cpu_moe = n_cpu_moe_for(meta, chosen.gpu_layers)
    if cpu_layers:
        pattern = llama_cpp_pattern(cpu_layers)
        check_pattern(pattern, meta, cpu_layers)
        artifacts["llama.cpp"] = f"-ngl 999 -ot '{pattern}=CPU'"
    else:
        artifacts["llama.cpp"] = "-ngl 999   (every expert fits: no -ot)"
    if n_cpu_moe is not None:
        artifacts["n-cpu-moe"] = ("-ngl 999 --cpu-moe" if not chosen.gpu_layers else
                                  f"-ngl 999 --n-cpu-moe {n_cpu_moe}" if n_cpu_moe else "-ngl 999")
    else:
        k = len(chosen.gpu_layers)
        suffix = run.layers(meta.moe_layers[len(meta.moe_layers) - k:])
        n = n_cpu_moe_for(meta, suffix.gpu_layers)
        suffix.name = f"--n-cpu-moe {n} (the last {k} layers)"
        others.append(suffix)
        notes.append(f"no --n-cpu-moe says this set (it keeps the first N layers' experts on the CPU, so its GPU "
                     f"layers are the last ones); --n-cpu-moe {n} is replayed beside it")
    if cpu_layers:
        notes.append(f"the -ot pattern was checked against the model's {len(gguf_tensor_names(meta))} GGUF tensor "
                     f"names: it matches exactly the {3 * len(cpu_layers)} expert tensors of the "
                     f"{len(cpu_layers)} CPU layers")
    return dict(search=search, chosen=chosen, baseline=baseline, others=others, artifacts=artifacts, notes=notes)


def _layer_search(run: _Runner, budget: Budget, exhaustive_limit: int) -> tuple[Placement, str, list]:
    """The best set of whole layers on the GPU within the budget, and how it was found."""
    layers, k = list(run.meta.moe_layers), budget.layers
    L, notes = len(layers), []
    if k >= L:
        return run.layers(layers), f"every layer's experts fit ({L} of {L})", notes
    if k == 0:
        return run.layers(()), "no layer's experts fit whole", notes
    sets = sum(comb(L, j) for j in range(k + 1))
    if sets <= exhaustive_limit:
        candidates = [run.layers(s) for j in range(k + 1) for s in itertools.combinations(layers, j)]
        # ties: fewer layers, then later ones (the --n-cpu-moe form)
        best = min(candidates, key=lambda p: (p.cost, len(p.gpu_layers), [-x for x in p.gpu_layers]))
        return best, (f"exhaustive: all {sets} sets of at most {k} of the {L} MoE layers, each a timed "
                      f"replay"), notes
    base = run.layers(())
    # to the picosecond: sums of the same durations in another order differ in the last bits, and a tie
    # should fall to the later layer (the --n-cpu-moe form), not to rounding
    saving = {layer: round(base.cost - run.layers((layer,)).cost, 12) for layer in layers}
    order = sorted(layers, key=lambda layer: (-saving[layer], -layer))  # ties toward later layers
    gpu = [layer for layer in order[:k] if saving[layer] > 0]
    chosen = run.layers(gpu)
    expected = base.cost - sum(saving[layer] for layer in gpu)
    what = "time per token" if run.objective == "tpot" else "total time"
    notes.append(f"the sum of the single-layer savings predicts a {what} of {expected * 1e3:.4f} ms; the set's "
                 f"own replay gives {chosen.cost * 1e3:.4f} ms")
    return chosen, (f"per layer: each layer's experts on the GPU alone ({L} timed replays); with every other "
                    f"expert on the host a layer waits only for its own experts, so the {what} is a sum over "
                    f"layers and the {len(gpu)} layers that save most are the best set that fits ({k})"), notes


def n_cpu_moe_for(meta, gpu_layers) -> int | None:
    """The --n-cpu-moe N that keeps exactly `gpu_layers`' experts on the GPU, or None.

    llama.cpp's --n-cpu-moe N keeps the expert tensors of blocks 0..N-1 on the CPU (block = the model's
    layer number, dense layers counted), so the GPU layers must be the last MoE layers."""
    gpu = sorted(gpu_layers)
    if not gpu:
        return meta.num_layers
    if gpu != [layer for layer in meta.moe_layers if layer >= gpu[0]]:
        return None
    # the smallest N that says it: below the first GPU layer, any block without experts needs no mention
    below = [layer for layer in meta.moe_layers if layer < gpu[0]]
    return below[-1] + 1 if below else 0


# ---- KTransformers: per layer (optimize rules) and per expert (kt-kernel's GPU expert mask)

def _ktransformers(run: _Runner, budget: Budget, exhaustive_limit: int, cfg: ReplayConfig) -> dict:
    meta = run.meta
    L, E = meta.num_moe_layers, meta.num_experts
    by_layer, layer_search, notes = _layer_search(run, budget, exhaustive_limit)
    by_layer.name = "optimize rules (whole layers)"
    per_layer = min(budget.experts // L, E)
    if cfg.train is not None:
        train = cfg.train if isinstance(cfg.train, Trace) else read_trace(cfg.train)
        counts, source = expert_counts(train, num_layers=L, num_experts=E), f"the training trace {cfg.train}"
    else:
        counts = expert_counts(run.trace, num_layers=L, num_experts=E)
        source = "this trace (it sees the workload it is judged on: pass --train for an unseen one)"
    hot = np.argsort(-counts, kind="stable")[:per_layer * L]
    pins = tuple(sorted((meta.moe_layers[int(x) // E], int(x) % E) for x in hot))
    by_expert = run.experts(pins, name=f"kt-kernel GPU expert mask ({per_layer} per layer)")
    baseline = run.layers(())
    baseline.name = "no GPU experts"
    chosen, other = (by_expert, by_layer) if by_expert.cost <= by_layer.cost else (by_layer, by_expert)
    artifacts = {
        "kt-kernel": (f"--kt-num-gpu-experts {per_layer} --kt-expert-placement-strategy frequency "
                      f"--init-expert-location STATS.pt"),
        "optimize rules": ktransformers_yaml(meta, by_layer.gpu_layers),
    }
    notes += [f"expert frequencies: {source}",
              f"kt-kernel keeps {per_layer} x {L} experts on the GPU, the most used across all layers by its "
              f"recorded activation statistics (the `frequency` strategy): record them on the workload this "
              f"trace stands for; the exact set is the plan file's pins",
              f"the optimize rules place whole layers, found as for llama.cpp ({layer_search.split(':')[0]}); "
              f"checked against the model's module names, their GPU rule matches exactly the experts modules of "
              f"layers {_layer_list(by_layer.gpu_layers) or '(none)'}"]
    if budget.experts % L:
        notes.append(f"{budget.experts % L} expert slot(s) left over: kt-kernel's count is per layer")
    chosen.name = f"plan: {chosen.name}"
    search = ("per expert: the most used experts across all layers (kt-kernel's frequency strategy), and per "
              "layer: the optimize-rule search; both replayed timed, the faster is the plan")
    return dict(search=search, chosen=chosen, baseline=baseline, others=[other], artifacts=artifacts,
                notes=notes)


# ---- dynamic: per-layer cache budgets

def _dynamic(run: _Runner, budget: Budget, cfg: ReplayConfig) -> dict:
    meta = run.meta
    L, E = meta.num_moe_layers, meta.num_experts
    B = budget.experts
    # the baseline holds the same experts: B // L a layer, one more for the first B % L layers
    even = [min(B // L + (i < B % L), E) for i in range(L)]
    equal = _cache_placement(run, even, f"equal split ({_span(even)} per layer)")
    notes = []
    if B >= L * E:
        chosen = _cache_placement(run, [E] * L, "plan: every expert")
        return dict(search=f"every expert fits ({L * E})", chosen=chosen, baseline=equal, notes=notes)
    curves = layer_miss_curves(run.trace, run.stream, run.knobs, max_capacity=min(E, B))
    alloc = allocate(curves, B)
    split = _cache_placement(run, alloc, "plan: per-layer budgets")
    predicted, even_misses = int(curves[np.arange(L), alloc].sum()), int(curves[np.arange(L), even].sum())
    notes.append(f"count replays: {predicted:,} misses with these budgets, {even_misses:,} with the equal split")
    if cfg.predictor != "none":
        notes.append(f"the miss curves are without prefetch; the timed replays use --predictor {cfg.predictor}")
    chosen = split
    if split.cost > equal.cost:
        chosen = _cache_placement(run, even, "plan: equal split")
        notes.append("the per-layer budgets have fewer misses but replay slower than the equal split: the plan "
                     "keeps the equal split")
    one_pass = cfg.policy == "lru" and cfg.action == "fetch" and cfg.segment_order == "hits-first"
    how = "one LRU pass" if one_pass else f"{min(E, B) + 1} count replays"
    search = (f"per-layer miss curves ({how}, {cfg.policy} per layer), {B} experts "
              f"allocated across the {L} layers for the fewest misses (exact), then replayed timed")
    return dict(search=search, chosen=chosen, baseline=equal, others=[], notes=notes)


def _span(counts) -> str:
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _cache_placement(run: _Runner, per_layer, name: str) -> Placement:
    layer_capacity = tuple((layer, int(n)) for layer, n in zip(run.meta.moe_layers, per_layer))
    capacity = ",".join(f"{layer}:{n}" for layer, n in layer_capacity)
    knobs = {"action": "fetch", "scope": "per-layer", "capacity": capacity}
    return Placement(name, knobs, run.replay(**knobs), (), None, layer_capacity, run.objective)


def layer_miss_curves(trace: Trace, stream: AccessStream, knobs: dict, max_capacity: int) -> np.ndarray:
    """misses[layer, c]: each MoE layer's misses with a cache of c experts per layer, c = 0..max_capacity.

    Caches per layer are apart, so one count replay at c per layer gives every layer's point at c; LRU's
    curve is one pass over the stream instead (lru_curve, exact: the same misses as those replays). The
    engine is called directly: replay()'s row counts every segment's distinct experts, which costs more
    than the replay itself on a large trace and which a curve does not need."""
    from .engine import PrefetchPlan, Stream, count_replay
    from .lru_curve import lru_counts
    from .predict import Prefetch
    L = stream.num_layers
    timed_only = {"predictor", "horizon", "top_n", "threshold", "prefetch_bytes_per_step", "adaptive"}
    base = {k: v for k, v in knobs.items() if k not in timed_only}

    def cache_at(c: int):
        cfg = ReplayConfig.make(**base, capacity=f"{c}/layer", scope="per-layer", mode="count")
        return cfg, cache_for(trace, stream, cfg, expert_size(trace.meta, cfg)[0])
    top_cfg, top = cache_at(max_capacity)
    if top_cfg.policy == "lru" and top_cfg.action == "fetch" and top_cfg.segment_order == "hits-first":
        counts = lru_counts(stream, top.part_of, top.pinned, "segment", int(top.part_capacity.max()))
        if counts is not None:
            layer_part = top.part_of[::stream.num_experts]
            lookups = (counts.lookups + counts.pinned).sum(axis=1)
            return np.stack([lookups - counts.layer_hits(cache_at(c)[1].part_capacity, layer_part).sum(axis=1)
                             for c in range(max_capacity + 1)], axis=1)
    engine_stream = Stream(stream.item, stream.seg_offsets, stream.seg_layer, stream.seg_step)
    none = Prefetch.none(stream.num_segments)
    plan = PrefetchPlan(none.offsets, none.item, none.target_seg, -1)
    curves = np.zeros((L, max_capacity + 1), np.int64)
    for c in range(max_capacity + 1):
        cfg, cache = cache_at(c)
        state, cache = policy_state(cfg, stream, cache)
        curves[:, c] = count_replay(engine_stream, cache, plan, state, L, accounting="segment",
                                   segment_order=cfg.segment_order)[1]
    return curves


def allocate(curves: np.ndarray, budget: int) -> list[int]:
    """Experts per layer (at most curves.shape[1] - 1 each, `budget` in all) with the fewest misses in total.

    Dynamic programming over layers: best[b] is the fewest misses of the layers so far with b experts."""
    L, C = curves.shape
    budget = min(budget, L * (C - 1))
    inf = np.iinfo(np.int64).max // 4
    best = np.full(budget + 1, inf, np.int64)
    best[0] = 0
    choice = np.zeros((L, budget + 1), np.int64)
    for layer in range(L):
        new = np.full(budget + 1, inf, np.int64)
        for c in range(C):
            if c > budget:
                break
            cand = best[:budget + 1 - c] + curves[layer, c]
            better = cand < new[c:]
            new[c:][better] = cand[better]
            choice[layer, c:][better] = c
        best = new
    # fewest misses over any total up to the budget; among equals, the fewest experts
    b = int(np.argmin(best))
    alloc = [0] * L
    for layer in range(L - 1, -1, -1):
        alloc[layer] = int(choice[layer, b])
        b -= alloc[layer]
    return alloc


# ---- names: llama.cpp's GGUF tensors, KTransformers' modules

def number_pattern(numbers) -> str:
    """A regex alternation matching exactly these whole numbers when set between delimiters ('1[0-5]|7')."""
    numbers = sorted(set(int(n) for n in numbers))
    parts = []
    for prefix, group in itertools.groupby(numbers, key=lambda n: n // 10):
        digits = [n % 10 for n in group]
        head = str(prefix) if prefix else ""
        for _, run in itertools.groupby(enumerate(digits), key=lambda p: p[1] - p[0]):
            run = [d for _, d in run]
            parts.append(f"{head}{run[0]}" if len(run) == 1 else f"{head}[{run[0]}-{run[-1]}]")
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def llama_cpp_pattern(layers) -> str:
    """The -ot pattern of these blocks' expert tensors. llama.cpp searches a tensor's name for the pattern
    (std::regex_search: unanchored), so the block number sits between `blk\\.` and `\\.`, and `\\.weight`
    keeps expert biases (gpt-oss has them) where they are."""
    return rf"blk\.{number_pattern(layers)}\.ffn_(up|down|gate)_exps\.weight"


def gguf_tensor_names(meta) -> list[str]:
    """Every tensor name a GGUF of this model shape has, in llama.cpp's naming (block N = layer N)."""
    model = meta.model.lower()
    if "deepseek" in model:
        attention = ["attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_kv_b",
                     "attn_output"]
    else:
        attention = ["attn_q", "attn_k", "attn_v", "attn_output"]
    names = ["token_embd.weight", "output_norm.weight", "output.weight"]
    for n in range(meta.num_layers):
        block = [*attention, "attn_norm", "ffn_norm"]
        if n in meta.moe_layers:
            block += ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
            if meta.shared_experts:
                block += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
        else:
            block += ["ffn_gate", "ffn_up", "ffn_down"]
        names += [f"blk.{n}.{t}.weight" for t in block]
        if n in meta.moe_layers and "deepseek" in model:
            names.append(f"blk.{n}.exp_probs_b.bias")
    return names


def expert_tensor_names(layers) -> list[str]:
    return [f"blk.{n}.ffn_{p}_exps.weight" for n in layers for p in ("gate", "up", "down")]


def check_pattern(pattern: str, meta, layers) -> None:
    """The pattern must match exactly the expert tensors of `layers` among all the model's tensor names."""
    found = {name for name in gguf_tensor_names(meta) if re.search(pattern, name)}
    want = set(expert_tensor_names(layers))
    if found != want:
        raise RuntimeError(f"the -ot pattern {pattern!r} matches {sorted(found ^ want)} wrongly; this is a bug")


def experts_module(meta, layer: int) -> str:
    """The transformers module that holds a layer's routed experts (what an optimize rule matches)."""
    block = "block_sparse_moe" if "mixtral" in meta.model.lower() else "mlp"
    return f"model.layers.{layer}.{block}.experts"


def module_names(meta) -> list[str]:
    """The transformers module names of a model of this shape, experts and their children included."""
    block = "block_sparse_moe" if "mixtral" in meta.model.lower() else "mlp"
    names = ["model", "model.embed_tokens", "model.norm", "lm_head"]
    for n in range(meta.num_layers):
        layer = f"model.layers.{n}"
        names += [layer, f"{layer}.self_attn", f"{layer}.self_attn.q_proj", f"{layer}.self_attn.o_proj",
                  f"{layer}.input_layernorm", f"{layer}.post_attention_layernorm"]
        if n in meta.moe_layers:
            names += [f"{layer}.{block}", f"{layer}.{block}.gate", f"{layer}.{block}.experts"]
            for e in range(meta.num_experts):
                expert = f"{layer}.{block}.experts.{e}"
                names += [expert, f"{expert}.gate_proj", f"{expert}.up_proj", f"{expert}.down_proj"]
            if meta.shared_experts:
                names += [f"{layer}.{block}.shared_experts", f"{layer}.{block}.shared_experts.up_proj"]
        else:
            names += [f"{layer}.mlp", f"{layer}.mlp.gate_proj", f"{layer}.mlp.up_proj", f"{layer}.mlp.down_proj"]
    return names


def ktransformers_rules(meta, gpu_layers) -> list[tuple[str, str]]:
    """(module-name regex, device) of the experts rules, in order: KTransformers applies the first rule whose
    pattern `re.search` finds in a module's name."""
    block = "block_sparse_moe" if "mixtral" in meta.model.lower() else "mlp"
    rules = []
    if gpu_layers:
        rules.append((rf"^model\.layers\.{number_pattern(gpu_layers)}\.{block}\.experts$", "cuda"))
    rules.append((rf"^model\.layers\.[0-9]+\.{block}\.experts$", "cpu"))
    return rules


def ktransformers_yaml(meta, gpu_layers) -> str:
    """Experts rules for a KTransformers optimize-rule file: these layers' experts on the GPU (Marlin), the
    others on the CPU backend."""
    rules = ktransformers_rules(meta, gpu_layers)
    _check_rules(rules, meta, gpu_layers)
    lines = [f"# moesim plan: the experts of layers {_layer_list(gpu_layers) or '(none)'} on the GPU, the rest on "
             f"the CPU backend.",
             "# Put these rules before the experts rule of the model's optimize-rule file: a module takes the "
             "first rule it matches."]
    for pattern, device in rules:
        gpu = device == "cuda"
        lines += ["- match:",
                  f'    name: "{pattern.replace(chr(92), chr(92) * 2)}"',
                  "  replace:",
                  "    class: ktransformers.operators.experts.KTransformersExperts",
                  "    kwargs:",
                  '      prefill_device: "cuda"',
                  '      prefill_op: "KExpertsTorch"',
                  f'      generate_device: "{device}"',
                  f'      generate_op: "{"KExpertsMarlin" if gpu else "KExpertsCPU"}"',
                  '      out_device: "cuda"',
                  "  recursive: False"]
    return "\n".join(lines) + "\n"


def _check_rules(rules, meta, gpu_layers) -> None:
    gpu = {experts_module(meta, n) for n in gpu_layers}
    experts = {experts_module(meta, n) for n in meta.moe_layers}
    for name in module_names(meta):
        device = next((d for pattern, d in rules if re.search(pattern, name)), None)
        want = "cuda" if name in gpu else ("cpu" if name in experts else None)
        if device != want:
            raise RuntimeError(f"the optimize rules send {name} to {device}, not {want}; this is a bug")


# ---- small helpers

def _target(name) -> str:
    key = str(name).strip().lower().replace("_", "").replace("-", "").replace(".", "")
    names = {t.replace(".", "").replace("-", ""): t for t in TARGETS}
    names.update({"llamacpp": "llama.cpp", "kt": "ktransformers"})
    if key not in names:
        raise ValueError(f"--target: unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return names[key]


def _layer_list(layers) -> str:
    """'0-3 7 9-11': runs of consecutive layer numbers."""
    out = []
    for _, run in itertools.groupby(enumerate(sorted(layers)), key=lambda p: p[1] - p[0]):
        run = [n for _, n in run]
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return " ".join(out)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _written(value):
    """A knob's value as a plan file can hold it (a Hardware object by its name)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return getattr(value, "name", None) or str(value)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
