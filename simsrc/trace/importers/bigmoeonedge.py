"""BigMoeOnEdge route traces (github.com/Helldez/BigMoeOnEdge, `bmoe-cli` route_trace v1).

A `#` preamble (model path, arch, n_layer, n_expert, n_expert_used, then per-layer expert/dense bytes),
then `turn,phase,step,layer,slot,expert,weight,residency,expert_bytes`, one row per routed expert,
ordered by (phase, step, layer, slot). `step` is the token's context position. `residency` is the
phone's real LRU outcome (0 miss, 1 hit, 2 prefetch hit), meaningful for decode rows only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv

from ..io import Trace
from ..schema import DECODE, TraceError, TraceMeta, checked_cast

HEADER = ["turn", "phase", "step", "layer", "slot", "expert", "weight", "residency", "expert_bytes"]


def _int_field(path: Path, line: int, kv: dict, key: str, lo: int = 0, hi: int | None = None) -> int:
    if key not in kv:
        raise TraceError(f"{path}: line {line}: the preamble lacks {key}=; a BigMoeOnEdge route_trace v1 file "
                         f"names it (model=... n_layer= n_expert= n_expert_used=)")
    v = kv[key]
    if not v.isdigit() or not lo <= int(v) <= (hi if hi is not None else int(v)):
        raise TraceError(f"{path}: line {line}: {key}={v} is not a whole number in {lo}.."
                         f"{hi if hi is not None else 'up'}")
    return int(v)


def _preamble(path: Path) -> tuple[dict, list[tuple[int, int, int]], int]:
    head: dict = {}
    layers = []
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            n += 1
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            if "n_layer" in kv or "n_expert" in kv or "n_expert_used" in kv:
                head = {**kv, "line": n}
                for key, lo, hi in (("n_layer", 1, 65536), ("n_expert", 1, 65536), ("n_expert_used", 1, 65536)):
                    head[key] = _int_field(path, n, kv, key, lo, hi)
            elif "expert_bytes" in kv:
                layers.append(tuple(_int_field(path, n, kv, key) for key in ("layer", "expert_bytes", "dense_bytes")))
    if not head:
        raise TraceError(f"{path}: the '#' preamble lacks the 'model=... n_layer= n_expert= n_expert_used=' "
                         f"line of a BigMoeOnEdge route_trace v1 file")
    return head, layers, n


NUMERIC = {"turn": "integer", "phase": "integer", "step": "integer", "layer": "integer", "slot": "integer",
           "expert": "integer", "weight": "number", "residency": "integer", "expert_bytes": "integer"}


def read_bigmoeonedge(path: str | os.PathLike, *, progress=None) -> Trace:
    """One *.route.csv -> a trace of one request: prefill (one step) then one decode step per token."""
    path = Path(path)
    where = str(path)
    head, layer_bytes, skip = _preamble(path)
    try:
        t = pcsv.read_csv(path, read_options=pcsv.ReadOptions(skip_rows=skip))
    except (pa.ArrowInvalid, OSError) as e:
        raise TraceError(f"{where}: rows after the preamble are not a readable CSV ({e})") from None
    if t.column_names != HEADER:
        raise TraceError(f"{where}: line {skip + 1}: header {t.column_names} is not {','.join(HEADER)}")
    for name, kind in NUMERIC.items():
        typ = t.schema.field(name).type
        ok = pa.types.is_integer(typ) if kind == "integer" else (pa.types.is_floating(typ) or pa.types.is_integer(typ))
        if not ok or t.column(name).null_count:
            raise TraceError(f"{where}: column {name} must hold {'whole numbers' if kind == 'integer' else 'numbers'} "
                             f"in every row (found {typ}{', with empty cells' if t.column(name).null_count else ''})")
    c = {n: t.column(n).to_numpy() for n in HEADER}
    k, E, L = head["n_expert_used"], head["n_expert"], head["n_layer"]
    if k > E:
        raise TraceError(f"{where}: line {head['line']}: n_expert_used={k} is more than n_expert={E}")
    for name, hi in (("phase", DECODE), ("layer", L - 1), ("slot", k - 1)):
        checked_cast(c[name], np.int64, where, name, lo=0, hi=hi, first_line=skip + 2)
    order = np.lexsort((c["slot"], c["layer"], c["step"], c["phase"], c["turn"]))
    if len(order) % k:
        raise TraceError(f"{where}: {len(order)} rows is not a multiple of n_expert_used={k}")
    cell = {n: c[n][order] for n in HEADER}
    slot = cell["slot"].reshape(-1, k)
    if (slot != np.arange(k)).any():
        r = int(np.flatnonzero((slot != np.arange(k)).any(axis=1))[0]) * k
        raise TraceError(f"{where}: (phase {cell['phase'][r]}, step {cell['step'][r]}, layer {cell['layer'][r]}) "
                         f"does not hold exactly slots 0..{k - 1}")
    first = np.arange(0, len(order), k)
    phase = cell["phase"][first].astype(np.uint8)
    pos = cell["step"][first]
    layer = cell["layer"][first]
    # the engine prefills the prompt in one pass; decode steps follow one per token
    prompt = int(pos[phase != DECODE].max()) + 1 if (phase != DECODE).any() else 0
    step = np.where(phase == DECODE, pos - prompt + 1, 0)
    res = cell["residency"][cell["phase"] == DECODE]
    model_path = Path(head.get("model", "unknown"))
    quant = re.search(r"(Q\d_K_[A-Z]|Q\d_\d|F16|BF16)", model_path.name)
    eb = np.array([b for _, b, _ in layer_bytes]) if layer_bytes else np.zeros(1)
    db = np.array([b for _, _, b in layer_bytes]) if layer_bytes else np.zeros(1)
    meta = TraceMeta(
        model=model_path.stem, num_layers=L, moe_layers=list(range(L)), num_experts=E, top_k=k,
        bytes_per_expert=int(round(eb.mean())), dense_bytes_per_layer=int(round(db.mean())),
        dtype=f"gguf-{quant.group(1).lower()}" if quant else "gguf", quantization=quant.group(1) if quant else None,
        source={"kind": "importer", "name": "bigmoeonedge", "params": {
            "repository": "github.com/Helldez/BigMoeOnEdge", "file": path.name, "arch": head.get("arch")}},
        lacks=["multiple requests (one prompt)"],
        notes=(f"bmoe-cli on an Android phone, GGUF {quant.group(1) if quant else ''}, top-k set to {k} by "
               f"--n-expert-used (may differ from the model's native k). bytes_per_expert / dense_bytes_per_layer "
               f"are the mean over layers of the preamble's per-layer sizes (all in extra). extra.phone_decode_* "
               f"is the phone's real LRU outcome on decode rows (cache sized in MiB across all layers)."),
        extra={"phone_decode_accesses": int(len(res)), "phone_decode_hits": int((res > 0).sum()),
               "phone_decode_hit_rate": float((res > 0).mean()) if len(res) else None,
               "expert_bytes_per_layer": eb.astype(int).tolist(), "dense_bytes_per_layer": db.astype(int).tolist(),
               "prompt_tokens": prompt, "decode_tokens": int((phase == DECODE).sum() // L)},
    )
    if progress:
        progress(1)
    return Trace.from_arrays(meta, request_id=np.zeros(len(first), np.int64), phase=phase, step=step,
                             token_pos=pos, layer=layer, expert_ids=cell["expert"].reshape(-1, k),
                             expert_weights=cell["weight"].reshape(-1, k).astype(np.float32), where=where)


def read_bigmoeonedge_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """A *.metrics.csv (one row per decoded token, phone timings) -> DataFrame; the trailing
    '# summary k=v ...' line goes to df.attrs['summary'] (numbers as floats)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    summary = {}
    for line in lines:
        if line.startswith("#"):
            for k, v in re.findall(r"([\w/]+)=(\S+)", line):
                try:
                    summary[k] = float(v)
                except ValueError:
                    summary[k] = v
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body or not body[0].startswith("step,"):
        raise TraceError(f"{path}: not a BigMoeOnEdge metrics file (expected a 'step,steps,wall_ms,...' header)")
    import io
    df = pd.read_csv(io.StringIO("\n".join(body)))
    df.attrs["summary"] = summary
    return df
