"""One replay configuration: every knob once, with its type, unit, default, valid range and help.

`KNOBS` is the schema. The CLI options of `moesim replay`, the keys a grid spec accepts, the input
columns of the result row and the README's option table are all generated from it, so a knob added
here appears everywhere. `ReplayConfig.make(**overrides)` parses what a user wrote (units, names,
ranges) once, into SI values, and every error names the option and what to write instead.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from .registry import normalise, suggest
from .units import GB, TFLOPS, US, parse_bool, parse_bytes, parse_count, parse_flops, parse_rate, parse_seconds

MODES = ("timed", "count")
ACCOUNTINGS = ("segment", "access")
SEGMENT_ORDERS = ("hits-first", "routing")
SCOPES = ("global", "per-layer")
BATCHINGS = ("static", "continuous")


@dataclass(frozen=True)
class Capacity:
    """A cache capacity as written ('10%', 0.25, 166, '4/layer', '12GiB', '1:3,2:5', 'auto'), checked for form;
    experts() resolves it. 'auto' is what the GPU's memory leaves for experts (moesim.cost.memory_budget)."""
    text: str
    kind: str     # fraction | experts | per_layer | bytes | layers | auto
    value: float
    layers: tuple = ()  # kind "layers": (model layer, experts) pairs, one cache budget per MoE layer

    @classmethod
    def parse(cls, value, option: str = "capacity") -> "Capacity":
        example = ("write 10% (of all experts), 0.25 (a fraction), 166 (experts), 4/layer, 12GiB, 1:3,2:5 (per layer) "
                   "or auto")
        if isinstance(value, Capacity):
            return value
        if isinstance(value, bool) or value is None:
            raise ValueError(f"{option}: {value!r} is not a capacity; {example}")
        if isinstance(value, str) and value.strip().lower() == "auto":
            return cls("auto", "auto", math.nan)
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"{option}: {value} experts is negative; {example}")
            return cls(str(value), "experts", float(value))
        if isinstance(value, float):
            return cls._fraction(value, str(value), option, example)
        text = str(value).strip()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*%", text)
        if m:
            pct = float(m.group(1))
            if pct > 100:
                raise ValueError(f"{option}: {text} is more than all experts; 100% holds every expert")
            return cls(text, "fraction", pct / 100)
        m = re.fullmatch(r"([0-9]+)\s*/\s*layer", text)
        if m:
            return cls(text, "per_layer", float(m.group(1)))
        if ":" in text:
            return cls._layers(text, option)
        if re.fullmatch(r"[0-9]+", text):
            return cls(text, "experts", float(text))
        # a number with a point is a fraction, as the same float is in Python and in a grid spec
        if re.fullmatch(r"[0-9]*\.[0-9]*", text) and text != ".":
            return cls._fraction(float(text), text, option, example)
        try:
            nbytes = parse_bytes(text, option)
        except ValueError:
            raise ValueError(f"{option}: cannot read capacity {text!r}; {example}") from None
        return cls(text, "bytes", nbytes)

    @classmethod
    def _layers(cls, text: str, option: str) -> "Capacity":
        # one budget per MoE layer (what `moesim plan --target dynamic` chooses); layers not named get none
        pairs = []
        for part in text.split(","):
            layer, _, n = part.strip().partition(":")
            if not (layer.strip().isdigit() and n.strip().isdigit()):
                raise ValueError(f"{option}: {part.strip()!r} in {text!r}: per-layer budgets are LAYER:EXPERTS, "
                                 f"comma-separated, e.g. 1:3,2:5 (the model's layer numbers)")
            pairs.append((int(layer), int(n)))
        layers = [layer for layer, _ in pairs]
        if len(set(layers)) != len(layers):
            raise ValueError(f"{option}: {text!r} names a layer twice; give each layer one budget")
        return cls(text, "layers", float(sum(n for _, n in pairs)), tuple(pairs))

    @classmethod
    def _fraction(cls, f: float, text: str, option: str, example: str) -> "Capacity":
        # a float is a fraction of all experts (0.25, 1.0); a count is an int, so 1.0 cannot mean "1 expert"
        if not (0 <= f <= 1) or math.isnan(f):
            raise ValueError(f"{option}: {text}: a float (a number with a decimal point) is a fraction of all "
                             f"experts, in [0, 1]; {example}")
        return cls(text, "fraction", f)

    def experts(self, *, num_items: int, num_layers: int, bytes_per_expert: float,
                gpu_memory: float | None = None, budget=None) -> tuple[int, bool]:
        """(experts the cache holds, whether the capacity was given per layer), checked against the trace.
        budget: the GPU memory budget (moesim.cost.MemoryBudget) that 'auto' takes its experts from."""
        if self.kind == "auto":
            if budget is None:
                raise ValueError("capacity 'auto' is what the GPU's memory leaves for experts; it needs the memory "
                                 "budget (moesim.cost.memory_budget), which replay() works out")
            return budget.capacity_experts, False
        if self.kind == "fraction":
            return int(math.floor(self.value * num_items + 1e-9)), False
        if self.kind == "layers":
            return int(self.value), True
        if self.kind == "per_layer":
            n, per_layer = int(self.value) * num_layers, True
        elif self.kind == "experts":
            n, per_layer = int(self.value), False
        else:
            if not bytes_per_expert:
                raise ValueError(f"capacity {self.text!r} is in bytes but the trace does not say how big an expert "
                                 f"is; pass bytes_per_expert (--bytes-per-expert)")
            if gpu_memory is not None and self.value > gpu_memory:
                raise ValueError(f"capacity {self.text} = {self.value / 2**30:.4g} GiB does not fit in the GPU's "
                                 f"{gpu_memory / 2**30:.4g} GiB; lower --capacity or pick other --hardware")
            n, per_layer = int(self.value // bytes_per_expert), False
        # more experts than the trace has is every expert (a grid sweeps one list over several models); the
        # row's capacity_experts says what was held
        return n, per_layer

    def per_moe_layer(self, moe_layers, num_experts: int) -> list[int]:
        """Kind "layers": the budget of each MoE layer, in MoE-layer order (0 for a layer not named)."""
        budget = dict(self.layers)
        unknown = sorted(set(budget) - set(moe_layers))
        if unknown:
            raise ValueError(f"capacity {self.text!r}: layer(s) {', '.join(map(str, unknown))} are not MoE layers of "
                             f"the trace ({list(moe_layers)})")
        over = [f"{layer}:{n}" for layer, n in self.layers if n > num_experts]
        if over:
            raise ValueError(f"capacity {self.text!r}: {', '.join(over)} is more than the {num_experts} experts a "
                             f"layer has")
        return [budget.get(layer, 0) for layer in moe_layers]


def _choice(choices: tuple[str, ...]) -> Callable:
    def parse(value, option):
        key = normalise(value)
        if key not in choices:
            raise ValueError(f"{option}: unknown value {value!r}{suggest(key, choices)}; choose one of "
                             f"{', '.join(choices)}")
        return key
    return parse


def _policy(value, option):
    from . import policies
    return policies.canonical(str(value))


def _predictor(value, option):
    from .predict import canonical_predictor
    return canonical_predictor(str(value))


def _hardware(value, option):
    """A preset's name, a hardware file's path, or a Hardware object, checked now (a file is read)."""
    from .hardware import Hardware, get_hardware
    if isinstance(value, Hardware):
        return value
    hw = get_hardware(value)
    return str(value) if str(value).endswith(".toml") else hw.name


def _optional(parse: Callable) -> Callable:
    return lambda value, option: None if value is None else parse(value, option)


def _pins(value, option):
    """(layer, expert) pairs; 'L:E' strings (the CLI's form) or pairs (Python, a grid spec)."""
    pins = []
    for p in value or ():
        if isinstance(p, str):
            layer, _, expert = p.partition(":")
            if not (layer.strip().isdigit() and expert.strip().isdigit()):
                raise ValueError(f"{option}: {p!r}: write LAYER:EXPERT, e.g. 3:17 (the model's layer number)")
            p = (int(layer), int(expert))
        if len(p) != 2 or any(isinstance(v, bool) or not float(v).is_integer() or v < 0 for v in p):
            raise ValueError(f"{option}: {p!r}: a pin is (layer, expert), two whole numbers")
        pins.append((int(p[0]), int(p[1])))
    return tuple(pins) or None


@dataclass(frozen=True)
class PinFile:
    """A file of pins as `moesim plan --out` writes it, read once: {"pins": [[layer, expert], ...]}, and
    optionally "plan" (what the planner chose and predicted; a replay reads only the pins)."""
    path: str
    pins: tuple

    def __str__(self) -> str:
        return self.path


def _pin_file(value, option):
    if isinstance(value, PinFile):
        return value
    import json
    from pathlib import Path
    path = str(value)
    form = '{"pins": [[layer, expert], ...]}'
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{option}: {path}: no such pin file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{option}: {path}: not a JSON pin file ({e}); write {form}") from None
    if not isinstance(data, dict) or not isinstance(data.get("pins"), list):
        raise ValueError(f"{option}: {path}: no list of pins; write {form}")
    unknown = sorted(set(data) - {"pins", "plan"})
    if unknown:
        raise ValueError(f"{option}: {path}: unknown key(s) {', '.join(map(repr, unknown))}; a pin file holds "
                         f"\"pins\" (and \"plan\", which moesim plan writes)")
    for i, p in enumerate(data["pins"]):
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            and v >= 0 for v in p)):
            raise ValueError(f"{option}: {path}: pins[{i}] = {p!r}: a pin is [layer, expert], two whole numbers "
                             f"(the model's layer number)")
    return PinFile(path, tuple((int(layer), int(expert)) for layer, expert in data["pins"]))


def _float(value, option):
    if isinstance(value, bool):
        raise ValueError(f"{option}: {value!r} is not a number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option}: {value!r} is not a number") from None
    if math.isnan(v):
        raise ValueError(f"{option}: NaN is not a threshold")
    return v


def _fraction(value, option):
    v = _float(value, option)
    if not 0 <= v <= 1:
        raise ValueError(f"{option}: {value!r} is a fraction in [0, 1]")
    return v


def _bits(value, option):
    v = _float(value, option)
    if not 0 < v <= 32:
        raise ValueError(f"{option}: {value!r} bits per weight; write e.g. 16, 8 or 4.5")
    return v


def _rate(value, option):
    v = _float(value, option)
    if not v > 0 or math.isinf(v):
        raise ValueError(f"{option}: {value!r}: write requests per second, a number more than zero, e.g. 2.5")
    return v


def _arrivals(value, option):
    """An arrival-times file: read now, so a wrong file is named before any replay runs."""
    if value is None:
        return None
    from .trace.batching import read_arrivals
    read_arrivals(str(value), option)
    return str(value)


def _reserve(value, option):
    """GPU memory kept out of the budget: ('fraction', f) of the GPU's memory, or ('bytes', n)."""
    if isinstance(value, tuple):
        return value
    text = str(value).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*%", text)
    if m:
        pct = float(m.group(1))
        if pct >= 100:
            raise ValueError(f"{option}: {text} leaves nothing of the GPU's memory; write e.g. 10% or 2GiB")
        return ("fraction", pct / 100)
    return ("bytes", parse_bytes(value, option))


def _action(value, option):
    from .actions import ACTIONS
    return ACTIONS.canonical(str(value))


def _weight(value, option):
    v = _float(value, option)
    if v < 0:
        raise ValueError(f"{option}: {value!r}: a routing weight is not negative; write e.g. 0.2")
    return v


def _action_names():
    from .actions import ACTIONS
    return ACTIONS.names()


def _host_capacity(value, option):
    cap = Capacity.parse(value, option)
    if cap.kind == "layers":
        raise ValueError(f"{option}: {cap.text!r}: the host tier is one cache for all layers; give experts, a share "
                         f"of them, bytes or auto")
    return cap


def _storage(value, option):
    from .hardware import get_storage
    return get_storage(value).name


def _storage_names():
    from .hardware import storage_presets
    return tuple(d.name for d in storage_presets().values())


def _host_capacity_text(cfg, hw, r):
    return (None if cfg.host_capacity is None else cfg.host_capacity.text, r.get("host_capacity_experts"))


def _path(value, option):
    if value is None:
        return None
    from .trace import Trace
    return value if isinstance(value, Trace) else str(value)


@dataclass(frozen=True)
class Knob:
    """One knob: its name (the Python keyword, grid key and CLI option), parser, default and help."""
    name: str
    default: Any
    parse: Callable[[Any, str], Any]
    help: str
    unit: str = ""            # the SI unit of the parsed value, where it has one
    group: str = "cache"      # cache | prefetch | hardware | actions | run | serving
    choices: Any = None       # a tuple, or a callable giving the registered names
    flag: bool = False        # a yes/no switch on the CLI
    aliases: tuple[str, ...] = ()
    column: Any = ""          # its result-row column ("": the knob's name; None: none; a tuple: several)
    show: Callable | None = None  # (config, hardware, resolved) -> the row's value(s); default: the parsed value

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def choice_names(self) -> tuple[str, ...]:
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices or ())


def _policy_names():
    from . import policies
    return policies.names()


def _predictor_names():
    from .predict import predictor_names
    return predictor_names()


def _text(name):
    """A row column that shows the knob as the user wrote it (or None)."""
    return lambda cfg, hw, resolved: cfg.text(name)


def _same(name):
    return lambda cfg, hw, resolved: resolved.get(name, getattr(cfg, name))


# The result row's input columns follow this order (kept from moesim 0.1, so rows compare across versions).
KNOBS: tuple[Knob, ...] = (
    Knob("policy", "lru", _policy, "cache policy: evicts on a miss", choices=_policy_names),
    Knob("predictor", "none", _predictor, "prefetch predictor (moesim.predict); learned:MODEL takes a file",
         group="prefetch", choices=_predictor_names),
    Knob("horizon", 1, lambda v, o: parse_count(v, o, low=0), "prefetch this many layers ahead (the cap if "
         "--adaptive)", group="prefetch", show=_same("horizon")),
    Knob("top_n", None, _optional(lambda v, o: parse_count(v, o, low=1)), "experts prefetched per target layer "
         "(default: the trace's top-k)", group="prefetch", show=_same("top_n")),
    Knob("threshold", None, _optional(_float), "prefetch only predictions scoring at least this",
         group="prefetch"),
    Knob("prefetch_bytes_per_step", None, _optional(lambda v, o: parse_bytes(v, o)), "most prefetch bytes started "
         "per step, e.g. 200MB", unit="bytes", group="prefetch", show=_text("prefetch_bytes_per_step")),
    Knob("adaptive", False, parse_bool, "pick the horizon so prefetches land just in time (ExpertFlow)",
         flag=True, group="prefetch"),
    Knob("capacity", "10%", Capacity.parse, "expert cache: 10% of all experts, 0.25 (a fraction), 166 experts, "
         "4/layer, 12GiB of expert memory, 1:3,2:5 (experts per MoE layer, with --scope per-layer), or auto: what "
         "the GPU's memory leaves (--kv-bytes-per-token, --context, --reserve)",
         column=("capacity", "capacity_experts", "capacity_fraction"),
         show=lambda cfg, hw, r: (cfg.capacity.text, r["capacity_experts"], r["capacity_fraction"])),
    Knob("scope", "global", _choice(SCOPES), "one cache for all layers, or a partition per layer", choices=SCOPES),
    Knob("mode", "timed", _choice(MODES), "timed: discrete-event, with the link and compute; count: hits only",
         choices=MODES),
    Knob("accounting", "segment", _choice(ACCOUNTINGS), "segment: a (step, layer)'s distinct experts are looked "
         "up together and none evicts another of the same layer, as a layer runs; access: one lookup per access in "
         "stream order, a plain cache simulator (count mode only)", choices=ACCOUNTINGS),
    Knob("prefill_chunk", 1, lambda v, o: parse_count(v, o, low=0), "prefill tokens per step: 1 replays prompts "
         "as if decoded, 0 keeps the recorded steps", group="run"),
    Knob("seed", 0, lambda v, o: parse_count(v, o, low=0, high=2**63 - 1), "seed of random choices", group="run"),
    Knob("hardware", "a100-pcie4", _hardware, "a preset (`moesim hardware` lists them) or a hardware FILE.toml",
         group="hardware", show=lambda cfg, hw, r: hw.name),
    Knob("bandwidth", None, _optional(parse_rate), "host -> GPU link, e.g. 25GB/s, 200Gbps (b is bits); a bare "
         "number below 1e6 is GB/s, from 1e6 on bytes/s", unit="bytes/s", group="hardware", column="bandwidth_gbps",
         show=lambda cfg, hw, r: hw.bandwidth / GB),
    Knob("latency", None, _optional(lambda v, o: parse_seconds(v, o)), "per transfer before its bytes flow, "
         "e.g. 10us; a bare number is µs", unit="s", group="hardware", column="latency_us",
         show=lambda cfg, hw, r: hw.latency / US),
    Knob("copy_engines", None, _optional(lambda v, o: parse_count(v, o, low=1)), "transfers under way at once",
         group="hardware", show=lambda cfg, hw, r: hw.copy_engines),
    Knob("lanes", None, _optional(lambda v, o: parse_count(v, o, low=1)), "byte pipes the transfers under way "
         "share, each --bandwidth / lanes: 1 for PCIe (a lone copy gets the whole link), one per reader for flash "
         "or NVMe read by several threads; at most --copy-engines x --stripes", group="hardware",
         show=lambda cfg, hw, r: hw.lanes),
    Knob("stripes", None, _optional(lambda v, o: parse_count(v, o, low=1)), "equal parts a transfer is split "
         "into, each taken by the earliest free lane: 3 for a runtime that reads an expert's gate, up and down "
         "tensors as three jobs", group="hardware", show=lambda cfg, hw, r: hw.stripes),
    Knob("gpu_flops", None, _optional(parse_flops), "dense tensor FLOP rate, e.g. 312T or 3.12e14; a bare "
         "number below 1e6 is TFLOP/s", unit="FLOP/s", group="hardware", aliases=("gpu_tflops",),
         column="gpu_tflops", show=lambda cfg, hw, r: hw.gpu_flops / TFLOPS),
    Knob("hbm", None, _optional(parse_rate), "GPU memory bandwidth, e.g. 2000GB/s", unit="bytes/s",
         group="hardware", column="hbm_gbps", show=lambda cfg, hw, r: hw.hbm / GB),
    Knob("bytes_per_expert", None, _optional(lambda v, o: parse_bytes(v, o, allow_zero=False)), "an expert's "
         "size, overriding the trace's, e.g. 17MB", unit="bytes", group="hardware", show=_same("bytes_per_expert")),
    Knob("pin", None, _pins, "LAYER:EXPERT kept resident outside the policy (repeatable; the model's layer "
         "number)", column="pinned_experts", show=lambda cfg, hw, r: r["pinned_experts"]),
    Knob("pin_file", None, _optional(_pin_file), 'a JSON file of pins, {"pins": [[layer, expert], ...]}, kept '
         "resident like --pin (what `moesim plan --out` writes)", column=None),
    Knob("train", None, _path, "a *different* trace whose expert counts drive the static policy and the "
         "moe-infinity and frequency predictors", group="run", column=None),
    Knob("per_layer", False, parse_bool, "also report hits, misses and stall per MoE layer", flag=True,
         group="run", column=None),
    Knob("launch", None, _optional(lambda v, o: parse_seconds(v, o)), "per kernel (a layer's dense part, an "
         "expert's GEMMs), e.g. 5us", unit="s", group="hardware", column="launch_us",
         show=lambda cfg, hw, r: hw.launch / US),
    # what a miss costs besides the copy, and what else a runtime may do on one (moesim.actions)
    Knob("action", "fetch", _action, "what a miss does: fetch it to the GPU, compute it on the host, or a rule "
         "that picks per miss (moesim.actions)", group="actions", choices=_action_names),
    Knob("host_below", 4, lambda v, o: parse_count(v, o, low=0), "threshold rule: compute a missing expert on "
         "the host when it serves fewer tokens than this", group="actions"),
    Knob("miss_overhead", None, _optional(lambda v, o: parse_seconds(v, o)), "host bookkeeping per miss on the "
         "critical path, paid one miss after another, e.g. 400us; a bare number is µs", unit="s",
         group="hardware", column="miss_overhead_us", show=lambda cfg, hw, r: hw.miss_overhead / US),
    Knob("overlap", None, _optional(_fraction), "fraction of a transfer the GPU computes through: 1 for "
         "asynchronous copy engines, 0 for a synchronous read", group="hardware",
         show=lambda cfg, hw, r: hw.overlap),
    Knob("host_flops", None, _optional(parse_flops), "the host's FLOP rate for experts computed there, e.g. 2T",
         unit="FLOP/s", group="hardware", column="host_tflops", show=lambda cfg, hw, r: hw.host_flops / TFLOPS),
    Knob("host_bandwidth", None, _optional(parse_rate), "the host's memory bandwidth for reading an expert's "
         "weights, e.g. 200GB/s", unit="bytes/s", group="hardware", column="host_gbps",
         show=lambda cfg, hw, r: hw.host_bandwidth / GB),
    Knob("kv_bytes_per_token", None, _optional(lambda v, o: parse_bytes(v, o)), "KV-cache bytes per token per "
         "layer that attention reads, so a step costs more as its context grows, e.g. 4KiB (default: the hardware "
         "file's)", unit="bytes",
         group="hardware", show=lambda cfg, hw, r: hw.kv_bytes_per_token),
    Knob("weight_bits", None, _optional(_bits), "bits per weight of the experts as moved and read (16 bf16, 8 "
         "int8/fp8, 4.5 Q4_K_M); sizes scale from the trace's dtype (default: the hardware file's)",
         group="hardware",
         show=lambda cfg, hw, r: hw.weight_bits),
    Knob("per_step", False, parse_bool, "also report each step's time (timed mode: the row's step_s list; the "
         "CLI writes it with --per-step-csv)", flag=True, group="run", column=None),
    # serving: which requests share a step (moesim.trace.batching), and the GPU memory budget (moesim.cost)
    Knob("batching", "static", _choice(BATCHINGS), "static: --batch-size requests start together and run until "
         "the longest ends; continuous: requests join and leave every step (vLLM, SGLang), prefill chunked "
         "within --token-budget", group="serving", choices=BATCHINGS),
    Knob("batch_size", 1, lambda v, o: parse_count(v, o, low=1), "requests per step: a static batch, or the most "
         "running at once under continuous batching (vLLM's max_num_seqs); 1 keeps the recorded steps",
         group="serving"),
    Knob("token_budget", None, _optional(lambda v, o: parse_count(v, o, low=1)), "continuous batching: most "
         "tokens a step processes (vLLM's max_num_batched_tokens); running requests' decode tokens first, then "
         "prefill chunks (default: no limit)", group="serving"),
    Knob("arrival_rate", None, _optional(_rate), "requests arrive as a Poisson process of this many per second "
         "(seeded by --seed); a step waits for its requests", unit="1/s", group="serving"),
    Knob("arrivals", None, _arrivals, "a CSV file of arrival times, columns request_id,arrival_s; a step waits "
         "for its requests", group="serving"),
    Knob("context", None, _optional(lambda v, o: parse_count(v, o, low=1)), "--capacity auto: tokens of KV cache "
         "each request holds (default: the trace's longest request)", group="serving", show=_same("context")),
    Knob("reserve", None, _optional(_reserve), "--capacity auto: GPU memory kept out of the budget (CUDA context, "
         "activations), a share of it or bytes, e.g. 2GiB (default 10%, what vLLM's default of 90% leaves)",
         group="serving", show=lambda cfg, hw, r: cfg.text("reserve") or ("10%" if cfg.capacity.kind == "auto"
                                                                          else None)),
    # the other actions on a miss (moesim.actions); last, so the columns of earlier rows keep their order
    Knob("weight_below", 0.2, _weight, "lowbit and skip rules: a missing expert whose routing weight "
         "(expert_weights; the largest among its tokens) is below this gets a low-bit copy / is skipped; without "
         "weights every miss is below", group="actions"),
    Knob("lowbit_bits", 4.0, _bits, "lowbit rule: bits per weight of the low-precision copy of an expert, e.g. 4 "
         "(int4) or 2", group="actions"),
    Knob("substitute_rank", None, _optional(lambda v, o: parse_count(v, o, low=1)), "substitute rule: a token may "
         "take a resident expert its router ranked within its first this-many (max rank; default: any rank)",
         group="actions"),
    # memory tiers, GPU <- host <- storage (moesim.engine.tiers); last, so the columns of earlier rows keep their order
    Knob("host_capacity", None, _optional(_host_capacity), "host-tier expert cache: experts live in storage, a GPU "
         "miss looks here and a host miss reads storage first; 50%, 1000 experts, 40GiB, or auto: what "
         "--host-memory leaves after the non-expert weights (default: no host tier, every expert in host memory)",
         group="tiers", column=("host_capacity", "host_capacity_experts"), show=_host_capacity_text),
    Knob("host_policy", "lru", _policy, "the host tier's cache policy", group="tiers", choices=_policy_names),
    Knob("storage", None, _optional(_storage), "a storage device preset whose figures the storage link takes", group="tiers", choices=_storage_names),
    Knob("storage_bandwidth", None, _optional(parse_rate), "storage -> host reads over all lanes, e.g. 7GB/s; a "
         "bare number below 1e6 is GB/s, from 1e6 on bytes/s", unit="bytes/s", group="tiers", column="storage_gbps",
         show=lambda cfg, hw, r: None if hw.storage_bandwidth is None else hw.storage_bandwidth / GB),
    Knob("storage_latency", None, _optional(lambda v, o: parse_seconds(v, o)), "per storage read before its bytes "
         "flow, e.g. 50us; a bare number is µs", unit="s", group="tiers", column="storage_latency_us",
         show=lambda cfg, hw, r: hw.storage_latency / US),
    Knob("storage_lanes", None, _optional(lambda v, o: parse_count(v, o, low=1)), "storage reads under way at "
         "once, each on a pipe of --storage-bandwidth / lanes (a runtime's read threads)", group="tiers",
         show=lambda cfg, hw, r: hw.storage_lanes),
    Knob("storage_stripes", None, _optional(lambda v, o: parse_count(v, o, low=1)), "equal parts a storage read "
         "is split into, each taken by the earliest free lane", group="tiers",
         show=lambda cfg, hw, r: hw.storage_stripes),
    Knob("host_memory", None, _optional(lambda v, o: parse_bytes(v, o)), "host memory for the model, e.g. 64GiB: "
         "the non-expert weights first (what does not fit is re-read from storage every forward pass), then the "
         "host tier", unit="bytes", group="tiers", show=lambda cfg, hw, r: hw.host_memory),
    # last, so the columns of earlier rows keep their order
    Knob("segment_order", "hits-first", _choice(SEGMENT_ORDERS), "with --accounting segment, the order the policy "
         "sees a segment's experts in: hits-first (its hits, then its misses, each at first use: the order of a "
         "token's experts does not matter) or routing (each at its last use, in routing order, as a runtime that "
         "touches experts as it routes them; victims are the same, the policy's order after the segment is not)",
         choices=SEGMENT_ORDERS),
)

KNOB = {k.name: k for k in KNOBS}
_ALIAS = {a: k.name for k in KNOBS for a in k.aliases}


def knob_name(key: str, where: str = "") -> str:
    """The knob a key names (aliases, '-' for '_'), or an error naming the nearest valid key."""
    k = str(key).strip().replace("-", "_")
    k = _ALIAS.get(k, k)
    if k not in KNOB:
        raise ValueError(f"{where}unknown option {key!r}{suggest(k.replace('_', '-'), [n.replace('_', '-') for n in KNOB])}; "
                         f"valid: {', '.join(KNOB)}")
    return k


@dataclass(frozen=True)
class ReplayConfig:
    """Every knob of a replay, parsed: names canonical, sizes in bytes, rates in bytes/s, times in s."""
    policy: str = "lru"
    capacity: Capacity = Capacity("10%", "fraction", 0.1)
    scope: str = "global"
    mode: str = "timed"
    accounting: str = "segment"
    segment_order: str = "hits-first"
    prefill_chunk: int = 1
    pin: tuple | None = None
    pin_file: PinFile | None = None
    train: Any = None
    seed: int = 0
    per_layer: bool = False
    predictor: str = "none"
    horizon: int = 1
    top_n: int | None = None
    threshold: float | None = None
    prefetch_bytes_per_step: float | None = None
    adaptive: bool = False
    hardware: Any = "a100-pcie4"
    bandwidth: float | None = None
    latency: float | None = None
    copy_engines: int | None = None
    lanes: int | None = None
    stripes: int | None = None
    gpu_flops: float | None = None
    hbm: float | None = None
    launch: float | None = None
    bytes_per_expert: float | None = None
    action: str = "fetch"
    host_below: int = 4
    miss_overhead: float | None = None
    overlap: float | None = None
    host_flops: float | None = None
    host_bandwidth: float | None = None
    kv_bytes_per_token: float | None = None
    weight_bits: float | None = None
    per_step: bool = False
    batching: str = "static"
    batch_size: int = 1
    token_budget: int | None = None
    arrival_rate: float | None = None
    arrivals: str | None = None
    context: int | None = None
    reserve: tuple | None = None  # None: 10% of the GPU's memory
    weight_below: float = 0.2
    lowbit_bits: float = 4.0
    substitute_rank: int | None = None
    host_capacity: Capacity | None = None  # None: no host tier
    host_policy: str = "lru"
    storage: str | None = None
    storage_bandwidth: float | None = None
    storage_latency: float | None = None
    storage_lanes: int | None = None
    storage_stripes: int | None = None
    host_memory: float | None = None
    # what the user wrote, for the result row's text columns (capacity '10%', prefetch cap '200MB')
    given: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def make(cls, config: "ReplayConfig | None" = None, *, where: str = "", **overrides) -> "ReplayConfig":
        """A config from keyword overrides (on top of `config`, else the defaults), every value checked."""
        base = config or cls()
        values, given = {}, dict(base.given)
        for key, value in overrides.items():
            name = knob_name(key, where)
            if name in values:
                raise ValueError(f"{where}{key!r} and another spelling of {name!r} are both given; keep one")
            if value is None:  # None leaves the knob as it is
                continue
            values[name] = KNOB[name].parse(value, f"{where}{KNOB[name].option}")
            given[name] = value
        cfg = dataclasses.replace(base, given=given, **values)
        if cfg.capacity.kind == "layers" and cfg.scope != "per-layer":
            raise ValueError(f"{where}--capacity {cfg.capacity.text}: budgets per layer are caches per layer; add "
                             f"--scope per-layer")
        if cfg.segment_order != "hits-first" and cfg.accounting == "access":
            raise ValueError(f"{where}--segment-order {cfg.segment_order} orders a (step, layer) segment's experts; "
                             f"--accounting access already tells the policy every access in stream order: drop one")
        if cfg.mode == "timed" and cfg.accounting == "access":
            raise ValueError(f"{where}--accounting access is count mode's (a plain cache simulator); timed mode "
                             f"runs a layer's experts together: use --mode count, or --accounting segment")
        cfg._check_serving(where)
        cfg._check_action(where)
        cfg._check_tiers(where)
        return cfg

    @property
    def tiers(self) -> bool:
        """Whether experts live in storage behind a host-tier cache (else every expert is in host memory)."""
        return self.host_capacity is not None

    def _check_tiers(self, where: str) -> None:
        """The tier knobs need a host tier, and its reads a storage link in timed mode."""
        if not self.tiers:
            stray = [k for k in ("storage", "storage_bandwidth", "storage_latency", "storage_lanes",
                                 "storage_stripes", "host_memory", "host_policy") if getattr(self, k) != KNOB[k].default]
            if stray:
                raise ValueError(f"{where}{KNOB[stray[0]].option} is a figure of the host and storage tiers, which "
                                 f"a replay has only with a host-tier cache: add --host-capacity (e.g. 50%, 40GiB, "
                                 f"or auto with --host-memory), or drop {KNOB[stray[0]].option}")
            return
        hw = self.hardware_spec()
        if self.host_capacity.kind == "auto" and hw.host_memory is None:
            raise ValueError(f"{where}--host-capacity auto is what host memory leaves after the non-expert weights: "
                             f"give --host-memory (e.g. 64GiB)")
        if self.mode == "timed" and hw.storage_bandwidth is None:
            raise ValueError(f"{where}--host-capacity: a host miss reads the expert from storage, and {hw.name} has "
                             f"no storage link: give --storage ({', '.join(_storage_names())}) or "
                             f"--storage-bandwidth, or use --mode count (host-tier hits only)")

    @property
    def serving(self) -> bool:
        """Whether the replay re-batches the trace's requests (else the recorded steps are kept)."""
        return self.batching == "continuous" or self.batch_size > 1

    @property
    def arrival_given(self) -> bool:
        return self.arrival_rate is not None or self.arrivals is not None

    def _check_serving(self, where: str) -> None:
        """The rules between the serving and memory knobs."""
        if self.arrival_rate is not None and self.arrivals is not None:
            raise ValueError(f"{where}--arrival-rate and --arrivals both say when requests arrive; keep one")
        if self.arrival_given and self.mode == "count":
            raise ValueError(f"{where}arrival times need a clock: count mode has none; use --mode timed, or drop "
                             f"--arrival-rate/--arrivals (every request waiting at the start)")
        if self.batching == "static" and self.token_budget is not None:
            raise ValueError(f"{where}--token-budget caps continuous batching's steps; add --batching continuous")
        if self.token_budget is not None and self.token_budget < self.batch_size:
            raise ValueError(f"{where}--token-budget {self.token_budget} is less than --batch-size "
                             f"{self.batch_size}: every running request needs a token each step (vLLM refuses "
                             f"the same); raise the budget or lower the batch size")
        if self.capacity.kind == "auto":
            if self.kv_bytes_per_token is None and self.hardware_spec().kv_bytes_per_token is None:
                raise ValueError(f"{where}--capacity auto keeps room for the KV cache: give --kv-bytes-per-token "
                                 f"(per token and layer: 2 x KV heads x head dim x bytes, e.g. 4KiB for Mixtral-8x7B "
                                 f"in bf16; 0 for none)")
        else:
            stray = [k for k in ("context", "reserve") if getattr(self, k) is not None]
            if stray:
                raise ValueError(f"{where}--{stray[0]} sizes the memory budget of --capacity auto; use --capacity "
                                 f"auto, or drop --{stray[0]}")

    def _check_action(self, where: str) -> None:
        """What the action rule needs of the mode (the trace's columns are checked when it is read)."""
        if self.action == "fetch":
            return
        from .actions import ACTIONS, weighs_times
        if self.accounting == "access":
            raise ValueError(f"{where}--action {self.action} decides per (step, layer) segment; --accounting access "
                             f"is a plain cache simulator that fetches every miss: use --accounting segment")
        if self.mode == "count" and weighs_times(self.action):
            clockless = [n for n in ACTIONS.names() if not weighs_times(n)]
            raise ValueError(f"{where}--action {self.action} decides by when a copy or the host would be done, and "
                             f"count mode has no clock: use --mode timed, or a rule that decides without one "
                             f"({', '.join(clockless)})")

    def hardware_spec(self):
        """The Hardware this replay runs on: the preset or file, with any figure overridden here."""
        from .hardware import get_hardware, with_storage
        hw = get_hardware(self.hardware)
        if self.storage is not None:
            hw = with_storage(hw, self.storage)
        hw = hw.with_overrides(storage_bandwidth=self.storage_bandwidth, storage_latency=self.storage_latency,
                               storage_lanes=self.storage_lanes, storage_stripes=self.storage_stripes,
                               host_memory=self.host_memory)
        return hw.with_overrides(bandwidth=self.bandwidth, latency=self.latency, copy_engines=self.copy_engines,
                                 lanes=self.lanes, stripes=self.stripes, gpu_flops=self.gpu_flops, hbm=self.hbm, launch=self.launch,
                                 miss_overhead=self.miss_overhead, overlap=self.overlap, host_flops=self.host_flops,
                                 host_bandwidth=self.host_bandwidth, kv_bytes_per_token=self.kv_bytes_per_token,
                                 weight_bits=self.weight_bits)

    def text(self, name: str) -> str | None:
        """A knob's value as the user wrote it (None if not given and no default text)."""
        v = self.given.get(name)
        return None if v is None else str(v)


def row_inputs(cfg: ReplayConfig, hw, resolved: dict) -> dict:
    """The result row's input columns, one or none per knob, in KNOBS order; `resolved` holds what only the
    replay knows (the horizon the adaptive rule chose, the top-n it used, the expert size in force)."""
    row = {}
    for k in KNOBS:
        if k.column is None:
            continue
        value = k.show(cfg, hw, resolved) if k.show else getattr(cfg, k.name)
        if isinstance(k.column, tuple):
            row.update(zip(k.column, value))
        else:
            row[k.column or k.name] = value
    return row


def options_table() -> str:
    """The README's table of replay options (generated: the README test checks it is current)."""
    rows = ["| option | default | unit | what it sets |", "| --- | --- | --- | --- |"]
    for k in KNOBS:
        default = "off" if k.flag else ("-" if k.default is None else f"`{k.default}`")
        choices = k.choice_names()
        extra = f" ({', '.join(choices)})" if choices and len(choices) <= 10 else ""
        rows.append(f"| `{k.option}` | {default} | {k.unit} | {k.help}{extra} |")
    return "\n".join(rows)
