"""Synthetic traces: a generator fitted to a real trace, or set by a few knobs.

The generator walks each request token by token and, for each token, the MoE
layers in order. At layer l a token's top-k experts are drawn so:

1. each expert the same request's previous token used at layer l is kept with
   probability `reuse[l]` (temporal locality);
2. the remaining slots are filled one at a time, without replacement, from
   the layer's popularity tilted towards the experts this token's layer-(l-1)
   experts favour: w(b) = popularity[l, b] * prod_a (T[a, b] / popularity[l, b])
   ** coupling[l], with T = `transition[l-1]` (a log-linear product of experts:
   0 = layers independent, larger = stronger coupling). A draw of an expert
   already chosen is redrawn (successive sampling), so every row holds k
   distinct experts.

Requests: lengths are resampled from the source's (prompt, decode) lengths and
scaled to the requested number of tokens. Requests run one after another; a
prompt is one step, each decode token one step (batch size 1).

`fit` measures popularity, successors and lengths with `inspect_trace`, then
calibrates `reuse` and `coupling` by sampling a small trace and
correcting towards the source's measured statistics (a few fixed rounds).
Random numbers come from a counter-based generator seeded per request, so a
seed gives the same trace, byte for byte, on any machine and thread count.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa

from ..files import atomic_write, load_npz, regular_file
from .io import Trace, read_meta
from .schema import DECODE, KEY_COLUMNS, MAX_ITEMS, PREFILL, TraceError, TraceMeta, arrow_schema
from .stats import inspect_trace

GENERATOR = "moesim.trace.synth"
FORMAT = "moesim-synth-model"
FORMAT_VERSION = 1
CARD_FIELDS = ("model", "num_layers", "moe_layers", "num_experts", "top_k", "shared_experts", "bytes_per_expert",
               "dense_bytes_per_layer", "dtype", "quantization", "revision")
CALIBRATION_TOKENS = 20_000
CALIBRATION_ROUNDS = 4
MAX_COUPLING = 8.0
# Successor-table cells (layers-1 x experts x experts, float64) a model may hold: 512 MB.
MAX_TRANSITION_CELLS = 64_000_000
# Seeds feed a 64-bit counter-based generator and numba's int64.
MAX_SEED = 2 ** 63 - 1
# Step and token positions are stored as uint32.
MAX_TOKENS = 2 ** 32 - 1


@dataclass
class SynthModel:
    card: dict[str, Any]            # TraceMeta fields the generated traces carry (model card)
    popularity: np.ndarray          # float64 [layers, experts]: fill distribution per layer
    reuse: np.ndarray               # float64 [layers]: keep probability of each previous-token expert
    coupling: np.ndarray            # float64 [layers]: strength of the pull of layer l-1's experts (0 at l=0)
    transition: np.ndarray          # float64 [layers-1, experts, experts]: successor distribution l -> l+1
    prompt_tokens: np.ndarray       # int64 [requests]: source prompt lengths
    decode_tokens: np.ndarray       # int64 [requests]: source decode lengths
    source: dict[str, Any] = field(default_factory=dict)  # how the model was made (fit or parametric)
    lacks: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return self.popularity.shape[0]

    @property
    def num_experts(self) -> int:
        return self.popularity.shape[1]

    @property
    def top_k(self) -> int:
        return int(self.card["top_k"])

    def check(self, where: str = "synth model") -> None:
        if self.popularity.ndim != 2 or 0 in self.popularity.shape:
            raise ValueError(f"{where}: 'popularity' has shape {self.popularity.shape}, expected [layers, experts]")
        L, E = self.popularity.shape
        if max(L - 1, 0) * E * E > MAX_TRANSITION_CELLS:
            raise ValueError(f"{where}: {L} layers x {E} experts need a {L - 1} x {E} x {E} successor table, more "
                             f"than {MAX_TRANSITION_CELLS:,} cells; use fewer layers or experts")
        try:
            # the card becomes the generated traces' metadata: check it as read_trace will
            TraceMeta(**{k: v for k, v in self.card.items() if k in CARD_FIELDS}).validate(where)
        except TypeError as e:
            raise ValueError(f"{where}: the card is incomplete or has unknown fields ({e})") from None
        want = {"reuse": (L,), "coupling": (L,), "transition": (max(L - 1, 0), E, E)}
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{where}: '{name}' has shape {getattr(self, name).shape}, expected {shape} "
                                 f"for {L} layers x {E} experts")
        if len(self.card.get("moe_layers", [])) != L or int(self.card.get("num_experts", -1)) != E:
            raise ValueError(f"{where}: card (moe_layers, num_experts) does not match popularity shape {L} x {E}")
        if not 1 <= self.top_k <= E:
            raise ValueError(f"{where}: top_k={self.top_k} must be in 1..{E}")
        if not np.all((self.reuse >= 0) & (self.reuse <= 1)):
            raise ValueError(f"{where}: 'reuse' must hold probabilities in [0, 1]")
        if not np.all((self.coupling >= 0) & np.isfinite(self.coupling)):
            raise ValueError(f"{where}: 'coupling' strengths must be finite and >= 0")
        for name in ("popularity", "transition"):
            v = getattr(self, name)
            if v.size and not (np.all(v >= 0) and np.all(np.isfinite(v))):
                raise ValueError(f"{where}: '{name}' must be finite and non-negative")
        if len(self.prompt_tokens) != len(self.decode_tokens) or len(self.prompt_tokens) == 0 \
                or min(self.prompt_tokens.min(), self.decode_tokens.min()) < 0 \
                or (self.prompt_tokens + self.decode_tokens).min() < 1:
            raise ValueError(f"{where}: prompt_tokens/decode_tokens must be equally long, non-empty, "
                             f"not negative, and every request needs at least one token")

    # ---------------------------------------------------------- files (never pickle)
    def _arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)}

    def _header(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "card": self.card, "source": self.source,
                "lacks": self.lacks}

    def save(self, path: str | os.PathLike) -> Path:
        """Write as .npz (arrays + a JSON header) or .json (everything as lists), atomically."""
        path = Path(path)
        if path.suffix == ".npz":
            head = np.frombuffer(json.dumps(self._header(), sort_keys=True).encode(), dtype=np.uint8)

            def write(tmp):
                with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to the temporary's name
                    np.savez_compressed(f, header=head, **self._arrays())
        elif path.suffix == ".json":
            doc = self._header() | {k: v.tolist() for k, v in self._arrays().items()}
            text = json.dumps(doc, sort_keys=True)

            def write(tmp):
                Path(tmp).write_text(text)
        else:
            raise ValueError(f"{path}: a synth model is saved as .npz or .json, not '{path.suffix}'")
        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SynthModel":
        path = Path(path)
        regular_file(path, "synth model")
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("card", "source", "lacks")]
        what = f"{FORMAT} file (moesim synth --save-model)"
        try:
            if path.suffix == ".npz":
                z = load_npz(path, what, ["header", *names])
                head = json.loads(bytes(z["header"]).decode())
                arrays = {n: z[n] for n in names}
            elif path.suffix == ".json":
                doc = json.loads(path.read_text())
                head = doc
                arrays = {n: doc[n] for n in names}
            else:
                raise ValueError(f"{path}: a synth model is a .npz or .json file, not '{path.suffix}'")
        except KeyError as e:
            raise ValueError(f"{path}: synth model lacks field {e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise ValueError(f"{path}: not a readable synth model ({e})") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT or head.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file "
                             f"(format={head.get('format') if isinstance(head, dict) else head!r}, "
                             f"version={head.get('version') if isinstance(head, dict) else None!r})")
        for key, kind in (("card", dict), ("source", dict), ("lacks", list)):
            if not isinstance(head.get(key), kind):
                raise ValueError(f"{path}: '{key}' must be a JSON {kind.__name__}, got {head.get(key)!r:.60}")
        typed = {}
        for n in names:
            want = np.int64 if n.endswith("tokens") else np.float64
            try:
                a = np.asarray(arrays[n])
                if a.dtype.kind not in "iuf" or (want is np.int64 and a.dtype.kind == "f" and not
                                                  np.all(np.isfinite(a) & (a == np.trunc(a)))):
                    raise ValueError
                typed[n] = a.astype(want)
            except (ValueError, TypeError):
                raise ValueError(f"{path}: '{n}' must hold {'whole numbers' if want is np.int64 else 'numbers'} "
                                 f"in a (nested) list") from None
        model = cls(card=head["card"], source=head["source"], lacks=head["lacks"], **typed)
        model.check(str(path))
        return model


# ---------------------------------------------------------------- sampling kernel
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _uniform(state):
    # splitmix64: state advances by a constant, output is a bijective mix of it
    state[0] += _GOLDEN
    return (_mix(state[0]) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def _draw(cdf, u):
    lo, hi = 0, cdf.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@numba.njit(cache=True, parallel=True)
def _sample(req_tokens, row_offsets, popularity, tilt, reuse, coupling, k, seed, out):
    L, E = popularity.shape
    for r in numba.prange(req_tokens.shape[0]):
        state = np.empty(1, np.uint64)
        state[0] = _mix(np.uint64(seed) * _GOLDEN + np.uint64(r) + np.uint64(1))
        prev = np.full((L, k), -1, np.int64)
        cur = np.empty((L, k), np.int64)
        taken = np.zeros(E, np.bool_)
        cdf = np.empty(E, np.float64)
        row = row_offsets[r]
        for t in range(req_tokens[r]):
            for l in range(L):
                n = 0
                if t > 0:
                    for j in range(k):
                        if _uniform(state) < reuse[l]:
                            cur[l, n] = prev[l, j]
                            taken[prev[l, j]] = True
                            n += 1
                # fill weights: popularity tilted by how much this token's layer-(l-1) experts
                # favour each expert (a log-linear "product of experts"; tilt = ratio ** strength)
                acc = 0.0
                if l > 0 and coupling[l] > 0:
                    for e in range(E):
                        w = popularity[l, e]
                        for i in range(k):
                            w *= tilt[l - 1, cur[l - 1, i], e]
                        acc += w
                        cdf[e] = acc
                else:
                    for e in range(E):
                        acc += popularity[l, e]
                        cdf[e] = acc
                tries = 0
                while n < k:
                    e = _draw(cdf, _uniform(state) * acc)
                    tries += 1
                    if tries > 64 * k:
                        # a distribution too concentrated to yield k distinct experts: take the
                        # lowest-numbered free one so the row stays valid
                        e = 0
                        while taken[e]:
                            e += 1
                    if not taken[e]:
                        taken[e] = True
                        cur[l, n] = e
                        n += 1
                for j in range(k):
                    taken[cur[l, j]] = False
                    out[row, j] = cur[l, j]
                    prev[l, j] = cur[l, j]
                row += 1


def _log_ratio(model: "SynthModel") -> np.ndarray:
    """log(transition / next layer's popularity): how much expert a at l favours b at l+1."""
    if model.num_layers < 2:
        return np.zeros((0, model.num_experts, model.num_experts))
    t = model.transition / np.maximum(model.transition.sum(axis=2, keepdims=True), 1e-300)
    p = model.popularity[1:, None, :] / model.popularity[1:].sum(axis=1)[:, None, None]
    return np.log(np.maximum(t, 1e-12)) - np.log(np.maximum(p, 1e-12))


def _lengths(model: SynthModel, tokens: int, requests: int | None, rng: np.random.Generator):
    total = model.prompt_tokens + model.decode_tokens
    if requests is None:
        requests = max(1, int(round(tokens / total.mean())))
    if requests < 1 or tokens < requests:
        raise ValueError(f"need at least one token per request: tokens={tokens}, requests={requests}")
    pick = rng.integers(len(total), size=requests)
    want = total[pick] * (tokens / total[pick].sum())
    # largest remainder, so the lengths add up to exactly `tokens`, at least one each
    n = np.maximum(np.floor(want).astype(np.int64), 1)
    short = tokens - n.sum()
    if short > 0:
        n[np.argsort(-(want - np.floor(want)), kind="stable")[:short]] += 1
    while n.sum() > tokens:  # the min-1 rule overshot: trim the longest
        n[np.argmax(n)] -= 1
    frac = model.prompt_tokens[pick] / total[pick]
    prompt = np.clip(np.round(n * frac).astype(np.int64), (frac > 0).astype(np.int64), n)
    return prompt, n - prompt


def _check_memory(rows: int, k: int, experts: int) -> None:
    """Refuse a trace that cannot fit in this machine's memory before allocating it (it is built whole)."""
    per_row = k * (1 if experts <= 256 else 2) + 15 + 48  # ids, key columns, and the int64 intermediates
    need = rows * per_row
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ValueError(f"tokens: {rows:,} rows (tokens x layers) would need ~{need / 2**30:,.0f} GiB to build, "
                         f"more than this machine's {have / 2**30:,.0f} GiB; generate fewer --tokens")


def sample(model: SynthModel, *, tokens: int, requests: int | None = None, seed: int = 0) -> Trace:
    """A trace of `tokens` tokens in `requests` requests (default: the source's mean length)."""
    model.check()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number in 0..{MAX_SEED}, got {seed!r}")
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be a whole number in 1..{MAX_TOKENS} (steps and positions are uint32), "
                         f"got {tokens!r}")
    L, E, k = model.num_layers, model.num_experts, model.top_k
    _check_memory(int(tokens) * L, k, E)
    rng = np.random.default_rng(seed)
    prompt, decode = _lengths(model, int(tokens), requests, rng)
    per_req = prompt + decode
    R = len(per_req)
    rows = int(per_req.sum()) * L
    row_offsets = np.r_[0, np.cumsum(per_req)[:-1]] * L
    meta = _meta(model, tokens=int(tokens), requests=R, seed=seed)
    np_ids = np.uint8 if E <= 256 else np.uint16
    ids = np.empty((rows, k), np_ids)
    pop = model.popularity / model.popularity.sum(axis=1, keepdims=True)
    # per-layer strength applied once here, so the kernel only multiplies; the clip keeps a
    # product of top_k factors finite
    tilt = np.exp(np.clip(model.coupling[1:, None, None] * _log_ratio(model), -600 / k, 600 / k))
    _sample(per_req.astype(np.int64), row_offsets.astype(np.int64), pop, tilt,
            model.reuse.astype(np.float64), model.coupling.astype(np.float64), k, int(seed), ids)

    # rows are generated in canonical order: requests one after another, a prompt as one step,
    # each decode token its own step, a token's layers in order
    request_id = np.repeat(np.arange(R, dtype=np.uint32), per_req * L)
    tok_req = np.repeat(np.arange(R), per_req)
    first_tok = np.r_[0, np.cumsum(per_req)[:-1]]
    token_pos = np.arange(per_req.sum()) - first_tok[tok_req]
    is_decode = token_pos >= prompt[tok_req]
    steps_per_req = (prompt > 0).astype(np.int64) + decode
    first_step = np.r_[0, np.cumsum(steps_per_req)[:-1]]
    tok_step = first_step[tok_req] + np.where(is_decode, (prompt[tok_req] > 0) + token_pos - prompt[tok_req], 0)
    layers = np.asarray(model.card["moe_layers"], dtype=np.uint16)
    cols = {
        "request_id": request_id,
        "phase": np.repeat(np.where(is_decode, DECODE, PREFILL).astype(np.uint8), L),
        "step": np.repeat(tok_step.astype(np.uint32), L),
        "token_pos": np.repeat(token_pos.astype(np.uint32), L),
        "layer": np.tile(layers, int(per_req.sum())),
    }
    schema = arrow_schema(meta, weights=False)
    arrays = [pa.array(cols[name], type=typ) for name, typ in KEY_COLUMNS.items()]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1), type=meta.id_type), k))
    return Trace(pa.Table.from_arrays(arrays, schema=schema), meta)


def _meta(model: SynthModel, **params) -> TraceMeta:
    card = {k: v for k, v in model.card.items() if k in CARD_FIELDS}
    lacks = sorted(set(model.lacks) | {"weights"})
    return TraceMeta(**card, source={"kind": "generator", "name": GENERATOR,
                                     "params": {**model.source, **params}},
                     lacks=lacks, notes=f"synthetic trace from {GENERATOR} ({model.source.get('mode')})")


# ---------------------------------------------------------------- fitting
def fit(trace: Trace | str | os.PathLike, *, calibration_tokens: int = CALIBRATION_TOKENS,
        rounds: int = CALIBRATION_ROUNDS, seed: int = 0) -> SynthModel:
    """Fit the generator to a trace (a path is streamed)."""
    meta = trace.meta if isinstance(trace, Trace) else read_meta(trace)
    report = inspect_trace(trace, successors=True)
    if not report["rows"]:
        raise TraceError(f"{report['file'] or '<in memory>'}: the trace holds no rows; the generator needs "
                         f"routing to fit")
    L, E, k = meta.num_moe_layers, meta.num_experts, meta.top_k
    counts = report["popularity"]["all"]["counts"].astype(np.float64)
    target_pop = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    target_reuse = np.array([np.nan if x is None else x for x in report["next_token_reuse"]["all"]["per_layer"]])
    succ = report.get("successor_counts")
    if succ is None and L > 1:
        raise ValueError(f"{report['file']}: {report['coupling'].get('skipped')}; the generator needs "
                         f"layer-to-layer successor counts")
    # add-one smoothing towards layer l+1's popularity, so unseen experts still have successors
    trans = (succ + target_pop[1:, None, :]) if L > 1 else np.zeros((0, E, E))
    trans = trans / trans.sum(axis=2, keepdims=True)
    cp = report["coupling"].get("all", {})
    target_coup = np.array([np.nan] + [np.nan if x is None else x for x in cp["successor_topk"]["per_layer"]]) \
        if L > 1 else np.array([np.nan])
    base_coup = np.array([np.nan] + [np.nan if x is None else x for x in cp["popularity_topk"]["per_layer"]]) \
        if L > 1 else np.array([np.nan])
    prompt = np.asarray(report["request_tokens"]["prefill"], np.int64)
    decode = np.asarray(report["request_tokens"]["decode"], np.int64)
    keep = prompt + decode > 0
    # chance overlap of two independent tokens at a layer, from the experts' inclusion probabilities
    incl = np.minimum(counts * 1.0 / np.maximum(counts.sum(axis=1, keepdims=True) / k, 1), 1)
    chance = (incl ** 2).sum(axis=1) / k
    reuse = np.clip((np.nan_to_num(target_reuse, nan=0) - chance) / (1 - chance + 1e-12), 0, 1)
    coupling = np.r_[0.0, np.full(L - 1, 0.5)]
    model = SynthModel(
        card={f: getattr(meta, f) for f in CARD_FIELDS},
        popularity=target_pop.copy(), reuse=reuse, coupling=coupling, transition=trans,
        prompt_tokens=prompt[keep], decode_tokens=decode[keep], lacks=list(meta.lacks),
        source={"mode": "fit", "fitted_from": report["file"], "fitted_source": {k: meta.source.get(k) for k in ("kind", "name")},
                "calibration_tokens": calibration_tokens, "calibration_rounds": rounds, "fit_seed": seed},
    )
    tokens = int(min(calibration_tokens, max(report["tokens"]["total"], 1)))
    slope = None
    for _ in range(rounds):
        got = inspect_trace(sample(model, tokens=tokens, seed=seed))
        got_reuse = np.array([np.nan if x is None else x for x in got["next_token_reuse"]["all"]["per_layer"]])
        # Damped steps (half the measured gap): reuse and coupling feed into each other down
        # the layers, and full steps oscillate. Popularity is left as measured: correcting it
        # here as well feeds back through the coupling and concentrates it.
        model.reuse = np.clip(model.reuse + 0.5 * np.nan_to_num(target_reuse - got_reuse) / (1 - chance + 1e-12), 0, 1)
        if L > 1:
            got_coup = np.r_[np.nan, [np.nan if x is None else x
                                      for x in got["coupling"]["all"]["successor_topk"]["per_layer"]]]
            if slope is None:  # the first round's gain over the popularity baseline, per unit strength
                slope = np.maximum(np.nan_to_num((got_coup - base_coup) / np.maximum(model.coupling, 1e-6)), 0.02)
            step = 0.5 * np.nan_to_num((target_coup - got_coup) / slope)
            model.coupling = np.r_[0.0, np.clip(model.coupling[1:] + step[1:], 0, MAX_COUPLING)]
    return model


# ---------------------------------------------------------------- parametric
def parametric(*, layers: int, experts: int, top_k: int, zipf_s: float = 1.0, reuse_p: float = 0.0,
               coupling: float = 0.0, seed: int = 0, prompt_tokens: int = 64, decode_tokens: int = 64,
               successor_zipf: float = 1.5, bytes_per_expert: int = 0, model: str = "synthetic") -> SynthModel:
    """A generator set by knobs: Zipf(zipf_s) popularity per layer (each layer its own expert order),
    keep probability reuse_p per previous-token expert, and coupling strength `coupling` (0 = none)
    towards each expert's Zipf(successor_zipf) preference over the next layer's experts."""
    if layers < 1 or experts < 1 or not 1 <= top_k <= experts:
        raise ValueError(f"need layers >= 1, experts >= 1 and 1 <= top_k <= experts "
                         f"(got layers={layers}, experts={experts}, top_k={top_k})")
    if experts > 65536 or layers > 65536 or layers * experts > MAX_ITEMS:
        raise ValueError(f"experts={experts}, layers={layers}: a trace holds at most 65,536 experts per layer "
                         f"and {MAX_ITEMS:,} (layer, expert) pairs")
    if (layers - 1) * experts * experts > MAX_TRANSITION_CELLS:
        raise ValueError(f"experts={experts}, layers={layers}: the successor table would hold "
                         f"{(layers - 1) * experts ** 2:,} cells, more than {MAX_TRANSITION_CELLS:,}; use fewer "
                         f"experts or layers")
    if bytes_per_expert < 0:
        raise ValueError(f"bytes_per_expert={bytes_per_expert} is negative")
    if not 0 <= reuse_p <= 1:
        raise ValueError(f"reuse_p={reuse_p} must be a probability in [0, 1]")
    if not 0 <= coupling <= MAX_COUPLING:
        raise ValueError(f"coupling={coupling} must be a strength in [0, {MAX_COUPLING}]")
    if zipf_s < 0 or successor_zipf < 0:
        raise ValueError(f"zipf exponents must be >= 0 (zipf_s={zipf_s}, successor_zipf={successor_zipf})")
    if prompt_tokens < 0 or decode_tokens < 0 or prompt_tokens + decode_tokens < 1:
        raise ValueError("prompt_tokens + decode_tokens must be at least 1")
    rng = np.random.default_rng(seed)
    rank_w = 1.0 / np.arange(1, experts + 1) ** zipf_s
    pop = np.stack([rank_w[np.argsort(rng.permutation(experts))] for _ in range(layers)])
    succ_w = 1.0 / np.arange(1, experts + 1) ** successor_zipf
    trans = np.stack([np.stack([succ_w[np.argsort(rng.permutation(experts))] for _ in range(experts)])
                      for _ in range(layers - 1)]) if layers > 1 else np.zeros((0, experts, experts))
    params = {"mode": "parametric", "layers": layers, "experts": experts, "top_k": top_k, "zipf_s": zipf_s,
              "reuse_p": reuse_p, "coupling": coupling, "successor_zipf": successor_zipf,
              "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "model_seed": seed}
    return SynthModel(
        card={"model": model, "num_layers": layers, "moe_layers": list(range(layers)), "num_experts": experts,
              "top_k": top_k, "shared_experts": 0, "bytes_per_expert": bytes_per_expert,
              "dense_bytes_per_layer": 0, "dtype": "unknown", "quantization": None, "revision": None},
        popularity=pop / pop.sum(axis=1, keepdims=True),
        reuse=np.full(layers, float(reuse_p)),
        coupling=np.r_[0.0, np.full(layers - 1, float(coupling))],
        transition=trans / trans.sum(axis=2, keepdims=True) if layers > 1 else trans,
        prompt_tokens=np.array([prompt_tokens], np.int64), decode_tokens=np.array([decode_tokens], np.int64),
        source=params, lacks=[] if decode_tokens else ["decode"],
    )
