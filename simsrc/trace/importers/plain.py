"""The plain layouts anyone can write (documented in README, "Importing traces").

CSV: one row per (token, MoE layer) with columns request_id, token_pos, layer, experts e0..e{k-1};
optional phase (prefill/decode or 0/1), step, weights w0..w{k-1}.
NPZ: arrays request_id, token_pos, layer [rows], expert_ids [rows, k]; optional phase, step [rows],
expert_weights [rows, k]; optional scalars num_experts, num_layers, moe_layers [L], model (string).
Without a step column, requests run one after another: a prompt is one step, each decode token one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from ..io import Trace
from ..schema import DECODE, PHASES, PREFILL, TraceError
from ._meta import meta_for
from .common import parse_layers, sequential_steps

KEYS = ("request_id", "token_pos", "layer")


def _build(where: str, name: str, cols: dict[str, np.ndarray], ids: np.ndarray, weights: np.ndarray | None,
           *, model, num_experts, moe_layers, num_layers, params) -> Trace:
    n = len(ids)
    req, pos, layer = (np.asarray(cols[k]).astype(np.int64) for k in KEYS)
    for k, v in (("request_id", req), ("token_pos", pos), ("layer", layer)):
        if n and v.min() < 0:
            raise TraceError(f"{where}: {k} {v.min()} is negative (row {int(np.argmin(v))})")
    phase = cols.get("phase")
    phase = np.zeros(n, dtype=np.uint8) if phase is None else phase.astype(np.uint8)
    step = cols.get("step")
    step = sequential_steps(req, pos, phase) if step is None else np.asarray(step).astype(np.int64)
    meta = meta_for(where, name, model=model, expert_ids=ids, layers=layer, num_experts=num_experts,
                    moe_layers=parse_layers(moe_layers), num_layers=num_layers,
                    lacks=([] if weights is not None else ["weights"]) + ([] if (phase == DECODE).any() else ["decode"]),
                    notes=f"Plain {name} layout.", params=params)
    return Trace.from_arrays(meta, request_id=req, phase=phase, step=step, token_pos=pos, layer=layer,
                             expert_ids=ids, expert_weights=weights)


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


def read_csv(path: str | os.PathLike, *, num_experts: int | None = None, moe_layers: str | Sequence[int] | None = None,
             num_layers: int | None = None, model: str | None = None, progress=None) -> Trace:
    """A plain CSV trace (see module docstring) -> trace."""
    path = Path(path)
    where = str(path)
    try:
        table = pcsv.read_csv(path)
    except pa.ArrowInvalid as e:
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
    cols = {k: table.column(k).to_numpy() for k in KEYS}
    if "phase" in names:
        cols["phase"] = _phase_column(table.column("phase").combine_chunks(), where)
    if "step" in names:
        cols["step"] = table.column("step").to_numpy()
    ids = np.stack([table.column(c).to_numpy() for c in e_cols], axis=1)
    if ids.size and ids.min() < 0:
        r = int(np.argmin(ids.min(axis=1)))
        raise TraceError(f"{where}: line {r + 2}: expert id {ids.min()} is negative")
    weights = np.stack([table.column(c).to_numpy().astype(np.float32) for c in w_cols], axis=1) if all(has_w) else None
    if progress:
        progress(1)
    return _build(where, "csv", cols, ids, weights, model=model, num_experts=num_experts, moe_layers=moe_layers,
                  num_layers=num_layers, params={"file": path.name})


def read_npz(path: str | os.PathLike, *, num_experts: int | None = None, moe_layers: str | Sequence[int] | None = None,
             num_layers: int | None = None, model: str | None = None, progress=None) -> Trace:
    """A plain .npz trace (see module docstring) -> trace. Loaded without pickle."""
    path = Path(path)
    where = str(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TraceError(f"{where}: not a readable .npz without pickled objects ({e})") from None
    with z:
        missing = [k for k in (*KEYS, "expert_ids") if k not in z.files]
        if missing:
            raise TraceError(f"{where}: lacks array(s) {', '.join(missing)}; the plain .npz needs request_id, "
                             f"token_pos, layer [rows] and expert_ids [rows, k]")
        ids = z["expert_ids"]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise TraceError(f"{where}: expert_ids must be an integer array [rows, k], got {ids.dtype} {ids.shape}")
        cols = {k: z[k] for k in (*KEYS, "phase", "step") if k in z.files}
        for k, v in cols.items():
            if v.shape != (len(ids),):
                raise TraceError(f"{where}: {k} has shape {v.shape}, expected ({len(ids)},) like expert_ids' rows")
        weights = z["expert_weights"] if "expert_weights" in z.files else None
        if weights is not None and weights.shape != ids.shape:
            raise TraceError(f"{where}: expert_weights has shape {weights.shape}, expected {ids.shape}")
        stored = {k: z[k] for k in ("num_experts", "num_layers", "moe_layers", "model") if k in z.files}
    if "phase" in cols and ((cols["phase"] != PREFILL) & (cols["phase"] != DECODE)).any():
        raise TraceError(f"{where}: phase holds values other than 0 (prefill) and 1 (decode)")
    if progress:
        progress(1)
    return _build(where, "npz", cols, ids, weights, model=model or (str(stored["model"]) if "model" in stored else None),
                  num_experts=num_experts or (int(stored["num_experts"]) if "num_experts" in stored else None),
                  moe_layers=moe_layers if moe_layers is not None else
                  (stored["moe_layers"].tolist() if "moe_layers" in stored else None),
                  num_layers=num_layers or (int(stored["num_layers"]) if "num_layers" in stored else None),
                  params={"file": path.name})
