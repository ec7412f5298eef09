"""A learned predictor in numpy: per-layer co-activation (naive-Bayes log-odds) of the routing history.

In the spirit of MoE-Beyond (arXiv 2508.17137): multi-label prediction of a
layer's experts from the routing that came before. For a target (step, layer l)
at horizon h the history is what was known h layers earlier: the experts of the
last routed layer (position -h), of the layer before it (position -h-1), and of
layer l in the latest step already past (the previous token at batch size 1).
Training counts, per (horizon, layer), how often each expert fires after each
history expert; the score of expert e is the log-odds of its base rate plus the
evidence of every history expert, each smoothed towards the base rate. It is
fitted in one pass of matrix products -- seconds on a CPU for the whole
MoE-Beyond train set -- and saved as .npz (no pickle).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write, load_npz
from ..trace import AccessStream, Trace, access_stream
from .base import Predictions, from_dense, same_model, seg_at, seg_counts, seg_position

GROUPS = 3  # history groups: last routed layer, the one before it, same layer one step back
KIND = "moesim-coactivation-v1"


def history(stream: AccessStream, counts: np.ndarray, targets: np.ndarray, h: int) -> np.ndarray:
    """(len(targets), GROUPS * experts) features known h positions before each target."""
    L, E = stream.num_layers, stream.num_experts
    pos = seg_position(stream)[targets]
    back = L * -(-h // L)  # the same layer in the latest step that had routed h positions before
    out = np.zeros((len(targets), GROUPS * E), np.float32)
    for g, d in enumerate((h, h + 1, back)):
        src = seg_at(stream, pos - d)
        ok = src >= 0
        out[ok, g * E:(g + 1) * E] = counts[src[ok]]
    return out


@dataclass
class CoactivationModel:
    log_base: np.ndarray   # (H, L, E): log-odds of each expert's base rate
    evidence: np.ndarray   # (H, L, GROUPS*E, E): log-odds shift per history expert
    meta: dict

    @property
    def horizon(self) -> int:
        return self.log_base.shape[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as .npz, atomically (a failed write leaves any earlier file as it was)."""
        def write(tmp):
            with open(tmp, "wb") as f:  # np.savez would append .npz to a name without it
                np.savez_compressed(f, log_base=self.log_base, evidence=self.evidence,
                                    meta=np.array(json.dumps({"kind": KIND, **self.meta})))
        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CoactivationModel":
        """A fitted model, checked: its arrays' stored sizes before they are read, then their shapes against
        its own layers x experts, so a damaged file is one clear error, never a huge allocation or a
        broadcast error in the middle of a replay."""
        hint = "fit one with `moesim fit-predictor TRAIN --out MODEL.npz`"
        z = load_npz(path, f"moesim co-activation model ({hint})", ["meta", "log_base", "evidence"])
        try:
            meta = json.loads(str(z["meta"]))
        except (KeyError, json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}: not a moesim co-activation model (meta: {e}); {hint}") from None
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            kind = meta.get("kind") if isinstance(meta, dict) else meta
            raise ValueError(f"{path}: kind {kind!r} is not a {KIND} model; {hint}")
        L, E = meta.get("num_layers"), meta.get("num_experts")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (L, E)):
            raise ValueError(f"{path}: meta num_layers={L!r}, num_experts={E!r} must be whole numbers >= 1; {hint}")
        for name in ("log_base", "evidence"):
            if name not in z:
                raise ValueError(f"{path}: lacks array '{name}'; {hint}")
        log_base, evidence = z["log_base"], z["evidence"]
        H = log_base.shape[0] if log_base.ndim == 3 else -1
        for name, a, shape in (("log_base", log_base, (H, L, E)), ("evidence", evidence, (H, L, GROUPS * E, E))):
            if a.shape != shape or H < 1 or a.dtype.kind != "f" or not np.isfinite(a).all():
                raise ValueError(f"{path}: '{name}' is {a.dtype} {a.shape}, expected finite floats of shape "
                                 f"(horizons, layers, ...) = {shape} for {L} layers x {E} experts; the file is "
                                 f"damaged: {hint}")
        return cls(log_base, evidence, meta)

    def scores(self, stream: AccessStream, counts: np.ndarray, targets: np.ndarray, h: int) -> np.ndarray:
        x = history(stream, counts, targets, h)
        layer = stream.seg_layer[targets]
        out = np.empty((len(targets), stream.num_experts), np.float32)
        for l in np.unique(layer):
            sel = layer == l
            z = self.log_base[h - 1, l] + x[sel] @ self.evidence[h - 1, l]
            out[sel] = 1.0 / (1.0 + np.exp(-z))
        return out


def _logit(p):
    return np.log(p) - np.log1p(-p)


def fit(train: Trace | list[Trace], *, horizon: int = 1, smoothing: float = 1.0) -> CoactivationModel:
    """Count co-activations in training traces (replayed as decoded, one token per step)."""
    traces = train if isinstance(train, list) else [train]
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a whole number >= 1 (layers ahead), got {horizon!r}")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing!r}")
    empty = [str(t.path or "<in memory>") for t in traces if t.num_rows == 0]
    if empty:
        raise ValueError(f"{empty[0]}: the training trace holds no rows; a predictor fitted on nothing predicts "
                         f"nothing: train on traces with routing")
    L, E = same_model(traces)
    F = GROUPS * E
    xty = np.zeros((horizon, L, F, E))
    xsum = np.zeros((horizon, L, F))
    ysum = np.zeros((horizon, L, E))
    n = np.zeros((horizon, L))
    for tr in traces:
        stream = access_stream(tr, prefill_chunk=1)
        counts = seg_counts(stream)
        targets = np.arange(stream.num_segments)
        for h in range(1, horizon + 1):
            x = history(stream, counts, targets, h)
            for l in range(L):
                sel = stream.seg_layer == l
                xty[h - 1, l] += x[sel].T.astype(np.float64) @ counts[sel]
                xsum[h - 1, l] += x[sel].sum(axis=0)
                ysum[h - 1, l] += counts[sel].sum(axis=0)
                n[h - 1, l] += sel.sum()
    base = (ysum + smoothing) / (n[..., None] + 2 * smoothing)
    # P(e | history expert i), pulled towards the base rate by `smoothing` pseudo-observations
    cond = (xty + smoothing * base[:, :, None, :]) / (xsum[..., None] + smoothing)
    cond = np.clip(cond, 1e-6, 1 - 1e-6)
    evidence = _logit(cond) - _logit(np.clip(base, 1e-6, 1 - 1e-6))[:, :, None, :]
    meta = {"num_layers": L, "num_experts": E, "model": traces[0].meta.model, "smoothing": smoothing,
            "train": [str(t.path) if t.path else "<in memory>" for t in traces], "tokens": int(n[0].max())}
    return CoactivationModel(_logit(np.clip(base, 1e-6, 1 - 1e-6)).astype(np.float32), evidence.astype(np.float32),
                             meta)


def learned(stream: AccessStream, model, *, horizon: int, top_n: int) -> Predictions:
    L, E = model.meta["num_layers"], model.meta["num_experts"]
    if (L, E) != (stream.num_layers, stream.num_experts):
        raise ValueError(f"the learned model was fitted on {L} MoE layers x {E} experts, the trace has "
                         f"{stream.num_layers} x {stream.num_experts}; fit it on traces of the same model")
    counts = seg_counts(stream)
    targets = np.arange(stream.num_segments)
    parts = [from_dense(stream, targets, h, model.scores(stream, counts, targets, h), top_n, "learned")
             for h in range(1, min(horizon, model.horizon) + 1)]
    return Predictions.concat(parts, "learned")


NAME = "learned"
ORDER = 4
NEEDS_TRAIN = False
CAUSAL = True


def predict(stream: AccessStream, trace, *, horizon: int, top_n: int, train=None, model=None,
            argument: str = "") -> Predictions:
    """learned:MODEL, MODEL a file from `moesim fit-predictor` (or `model`, already loaded)."""
    if model is None:
        if not argument:
            raise ValueError("write the learned predictor as learned:MODEL, MODEL a file from "
                             "`moesim fit-predictor`")
        from . import load_model
        model = load_model(argument)
    if isinstance(model, CoactivationModel):
        return learned(stream, model, horizon=horizon, top_n=top_n)
    from .learned_torch import learned_gru
    return learned_gru(stream, model, horizon=horizon, top_n=top_n)
