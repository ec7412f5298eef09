"""The plain layouts anyone can write (documented in README, "Importing traces").

CSV: one row per (token, MoE layer) with columns request_id, token_pos, layer, experts e0..e{k-1};
optional phase (prefill/decode or 0/1), step, weights w0..w{k-1}.
NPZ: arrays request_id, token_pos, layer [rows], expert_ids [rows, k]; optional phase, step [rows],
expert_weights [rows, k]; optional scalars num_experts, num_layers, moe_layers [L], model (string).
Without a step column, requests run one after another: a prompt is one step, each decode token one.
Several files become one trace: each file's requests follow the previous file's (ids and steps shifted).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from ...files import load_npz
from ..io import Trace
from ..schema import DECODE, PHASES, PREFILL, TraceError, checked_cast
from ._meta import meta_for
from .common import Progress, expand_paths, parse_layers, sequential_steps

KEYS = ("request_id", "token_pos", "layer")
# What each key column is stored as; checked here so the error names the file's line.
KEY_TYPES = {"request_id": np.uint32, "token_pos": np.uint32, "layer": np.uint16, "step": np.uint32}


class _Part:
    """One file's rows: key columns, experts, weights, as read and checked."""

    def __init__(self, where: str, cols: dict[str, np.ndarray], ids: np.ndarray, weights: np.ndarray | None,
                 first_line: int | None):
        n = len(ids)
        self.where = where
        for k in (*KEYS, "step"):
            if k in cols:
                cols[k] = checked_cast(cols[k], KEY_TYPES[k], where, k, first_line=first_line).astype(np.int64)
        self.req, self.pos, self.layer = (cols[k] for k in KEYS)
        self.phase = cols["phase"] if "phase" in cols else np.zeros(n, dtype=np.uint8)
        self.step = cols["step"] if "step" in cols else sequential_steps(self.req, self.pos, self.phase)
        self.ids = checked_cast(ids, np.uint16, where, "expert id", first_line=first_line).astype(np.int64)
        self.weights = weights


def _build(where: str, name: str, parts: list[_Part], *, model, num_experts, moe_layers, num_layers,
           params) -> Trace:
    if len({p.weights is None for p in parts}) > 1:
        raise TraceError(f"{where}: some files have weights and some not; convert them apart or give all weights")
    # each file's requests and steps follow the previous file's
    req_off = step_off = 0
    reqs, steps = [], []
    for p in parts:
        reqs.append(p.req + req_off)
        steps.append(p.step + step_off)
        if len(p.req):
            req_off += int(p.req.max()) + 1
            step_off += int(p.step.max()) + 1
    req, step = np.concatenate(reqs), np.concatenate(steps)
    pos, layer, phase = (np.concatenate([getattr(p, a) for p in parts]) for a in ("pos", "layer", "phase"))
    ids = np.concatenate([p.ids for p in parts])
    weights = None if parts[0].weights is None else np.concatenate([p.weights for p in parts])
    if req_off > 1 << 32 or step_off > 1 << 32:
        raise TraceError(f"{where}: the files hold more than 2^32 requests or steps together; convert fewer at once")
    meta = meta_for(where, name, model=model, expert_ids=ids, layers=layer, num_experts=num_experts,
                    moe_layers=parse_layers(moe_layers), num_layers=num_layers,
                    lacks=([] if weights is not None else ["weights"]) + ([] if (phase == DECODE).any() else ["decode"]),
                    notes=f"Plain {name} layout" + (f", {len(parts)} files one after another" if len(parts) > 1
                                                    else "") + ".", params=params)
    return Trace.from_arrays(meta, request_id=req, phase=phase, step=step, token_pos=pos, layer=layer,
                             expert_ids=ids, expert_weights=weights, where=where)


def _phase_column(col: pa.Array, where: str) -> np.ndarray:
    if pa.types.is_integer(col.type):
        v = col.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((v != PREFILL) & (v != DECODE))
    else:
        s = np.asarray(col.to_pylist(), dtype=object)
        v = np.array([PHASES.get(str(x).strip().lower(), 9) for x in np.unique(s)])
        lut = dict(zip(np.unique(s).tolist(), v.tolist()))
        v = np.vectorize(lut.get, otypes=[np.int64])(s) if len(s) else np.zeros(0, np.int64)
        bad = np.flatnonzero(v == 9)
    if bad.size:
        raise TraceError(f"{where}: line {bad[0] + 2}: phase {col[int(bad[0])].as_py()!r} is neither "
                         f"prefill/0 nor decode/1")
    return v.astype(np.uint8)


def _csv_part(path: Path) -> _Part:
    where = str(path)
    try:
        table = pcsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TraceError(f"{where}: not a readable CSV ({e})") from None
    names = table.column_names
    missing = [k for k in KEYS if k not in names]
    e_cols = sorted((c for c in names if re.fullmatch(r"e\d+", c)), key=lambda c: int(c[1:]))
    if missing or not e_cols:
        raise TraceError(f"{where}: line 1: header lacks {', '.join(missing + ([] if e_cols else ['e0']))}; the plain "
                         f"CSV needs request_id,token_pos,layer,e0..e<k-1> (optional phase, step, w0..)")
    if [int(c[1:]) for c in e_cols] != list(range(len(e_cols))):
        raise TraceError(f"{where}: line 1: expert columns {e_cols} must be e0..e{len(e_cols) - 1} without gaps")
    allowed = {*KEYS, "phase", "step", *e_cols, *(f"w{i}" for i in range(len(e_cols)))}
    extra = [c for c in names if c not in allowed]
    if extra:
        raise TraceError(f"{where}: line 1: unknown column(s) {extra}; allowed: request_id, token_pos, layer, "
                         f"phase, step, e0..e{len(e_cols) - 1}, w0..w{len(e_cols) - 1}")
    for c in [*KEYS, *e_cols] + (["step"] if "step" in names else []):
        col = table.column(c)
        if not pa.types.is_integer(col.type) or col.null_count:
            raise TraceError(f"{where}: column {c} must hold whole numbers in every row (found {col.type}"
                             f"{', with empty cells' if col.null_count else ''})")
    w_cols = [f"w{i}" for i in range(len(e_cols))]
    has_w = [c in names for c in w_cols]
    if any(has_w) and not all(has_w):
        raise TraceError(f"{where}: line 1: give all weight columns {w_cols} or none")
    for c in w_cols if all(has_w) else []:
        col = table.column(c)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)) or col.null_count:
            raise TraceError(f"{where}: column {c} must hold a number in every row (found {col.type}"
                             f"{', with empty cells' if col.null_count else ''})")
    cols = {k: table.column(k).to_numpy() for k in KEYS}
    if "phase" in names:
        cols["phase"] = _phase_column(table.column("phase").combine_chunks(), where)
    if "step" in names:
        cols["step"] = table.column("step").to_numpy()
    ids = np.stack([table.column(c).to_numpy() for c in e_cols], axis=1)
    weights = np.stack([table.column(c).to_numpy().astype(np.float32) for c in w_cols], axis=1) if all(has_w) else None
    return _Part(where, cols, ids, weights, first_line=2)


def _npz_part(path: Path) -> tuple[_Part, dict]:
    where = str(path)
    z = load_npz(path, "plain .npz trace (arrays request_id, token_pos, layer, expert_ids)")
    missing = [k for k in (*KEYS, "expert_ids") if k not in z]
    if missing:
        raise TraceError(f"{where}: lacks array(s) {', '.join(missing)}; the plain .npz needs request_id, "
                         f"token_pos, layer [rows] and expert_ids [rows, k]")
    ids = z["expert_ids"]
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise TraceError(f"{where}: expert_ids must be an integer array [rows, k], got {ids.dtype} {ids.shape}")
    cols = {k: z[k] for k in (*KEYS, "phase", "step") if k in z}
    for k, v in cols.items():
        if v.shape != (len(ids),):
            raise TraceError(f"{where}: {k} has shape {v.shape}, expected ({len(ids)},) like expert_ids' rows")
    weights = z.get("expert_weights")
    if weights is not None and (weights.shape != ids.shape or weights.dtype.kind not in "fiu"):
        raise TraceError(f"{where}: expert_weights has {weights.dtype} shape {weights.shape}, expected numbers "
                         f"of shape {ids.shape}")
    if "phase" in cols:
        cols["phase"] = checked_cast(cols["phase"], np.uint8, where, "phase", hi=DECODE)
    stored = {}
    for k in ("num_experts", "num_layers"):
        if k in z:
            v = z[k]
            if v.shape != () and v.shape != (1,):
                raise TraceError(f"{where}: {k} must be one number, got shape {v.shape}")
            stored[k] = int(checked_cast(v.reshape(-1), np.int64, where, k, lo=1)[0])
    if "moe_layers" in z:
        stored["moe_layers"] = checked_cast(z["moe_layers"].reshape(-1), np.uint16, where, "moe_layers").tolist()
    if "model" in z:
        if z["model"].dtype.kind not in "US":
            raise TraceError(f"{where}: model must be a string, got {z['model'].dtype}")
        stored["model"] = str(z["model"])
    return _Part(where, cols, ids, None if weights is None else weights.astype(np.float32), first_line=None), stored


def read_csv(paths: str | os.PathLike | Iterable[str | os.PathLike], *, num_experts: int | None = None,
             moe_layers: str | Sequence[int] | None = None, num_layers: int | None = None, model: str | None = None,
             progress: Progress | None = None) -> Trace:
    """Plain CSV traces (see module docstring) -> one trace; several files run one after another."""
    files = expand_paths(paths, (".csv",))
    parts = []
    for f in files:
        parts.append(_csv_part(f))
        if progress:
            progress(1)
    return _build(str(files[0]), "csv", parts, model=model, num_experts=num_experts, moe_layers=moe_layers,
                  num_layers=num_layers, params={"file": files[0].name} if len(files) == 1 else
                  {"files": [f.name for f in files]})


def read_npz(paths: str | os.PathLike | Iterable[str | os.PathLike], *, num_experts: int | None = None,
             moe_layers: str | Sequence[int] | None = None, num_layers: int | None = None, model: str | None = None,
             progress: Progress | None = None) -> Trace:
    """Plain .npz traces (see module docstring) -> one trace. Loaded without pickle; the model card a file
    stores (num_experts, num_layers, moe_layers, model) fills what the options leave open."""
    files = expand_paths(paths, (".npz",))
    parts, stored = [], {}
    for f in files:
        part, card = _npz_part(f)
        for k, v in card.items():
            if k in stored and stored[k] != v:
                raise TraceError(f"{f}: stores {k}={v!r} but {files[0].name} stores {stored[k]!r}; "
                                 f"convert files of one model together")
            stored[k] = v
        parts.append(part)
        if progress:
            progress(1)
    return _build(str(files[0]), "npz", parts, model=model or stored.get("model"),
                  num_experts=num_experts or stored.get("num_experts"),
                  moe_layers=moe_layers if moe_layers is not None else stored.get("moe_layers"),
                  num_layers=num_layers or stored.get("num_layers"),
                  params={"file": files[0].name} if len(files) == 1 else {"files": [f.name for f in files]})
