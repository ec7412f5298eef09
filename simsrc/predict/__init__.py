"""Prefetch predictors: each turns a trace into ranked, causal guesses of the experts layers will need.

A predictor is one module in this package that declares `NAME` (moesim.registry), `NEEDS_TRAIN` (it
learns from a *different* trace), `CAUSAL` (False only for the oracle bound), and
`predict(stream, trace, *, horizon, top_n, train, model, argument) -> Predictions`; `argument` is what
follows a ':' in the name (learned:MODEL). The contract tests run over every registered predictor.

`predict()` gives the Predictions; `plan()` applies horizon and budget and returns the engine's
prefetch plan (predict/plan.py owns it); `score()` (moesim.predict.score) grades them.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from ..files import regular_file
from ..hardware import Hardware
from ..registry import Registry
from ..trace import AccessStream, Trace, access_stream, read_trace
from . import learned
from .base import Predictions
from .plan import Prefetch, adaptive_horizon, select, to_plan

PREDICTORS = Registry("predictor", __name__)


def predictor_names() -> list[str]:
    """Registered names, as a user writes them (learned takes a file: learned:MODEL)."""
    return [f"{n}:MODEL" if n == "learned" else n for n in PREDICTORS.names()]


def canonical_predictor(name: str) -> str:
    """'None', ' none ' and 'NONE' alike -> 'none'; 'Learned:model.npz' -> 'learned:model.npz' (path as given)."""
    kind, sep, argument = str(name).strip().partition(":")
    return PREDICTORS.canonical(kind) + (sep + argument if sep else "")


def needs_train(name: str) -> bool:
    return bool(PREDICTORS.get(str(name).partition(":")[0]).NEEDS_TRAIN)


def _trace(t: Trace | str | os.PathLike) -> Trace:
    return t if isinstance(t, Trace) else read_trace(t)


def load_model(path: str | os.PathLike):
    """A fitted predictor: .npz -> the numpy co-activation model, anything else -> a torch GRU state_dict."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such predictor model; fit one with `moesim fit-predictor TRAIN --out {path}`")
    regular_file(path, "predictor model")  # a named pipe would block the read below
    with open(path, "rb") as f:
        zip_magic = f.read(4) == b"PK\x03\x04"
    if path.suffix == ".npz" or (zip_magic and path.suffix != ".pt"):
        try:
            return learned.CoactivationModel.load(path)
        except ValueError:
            if path.suffix == ".npz":
                raise
    from .learned_torch import GruModel
    return GruModel.load(path)


def predict(trace: Trace | str | os.PathLike, predictor: str = "recorded", *, stream: AccessStream | None = None,
            horizon: int = 1, top_n: int | None = None, train: Trace | str | os.PathLike | None = None,
            prefill_chunk: int = 1, model=None) -> Predictions:
    """Ranked predictions of `predictor` for every segment of the (replayed) trace, horizons 1..horizon.

    top_n: candidates kept per (issuing segment, target layer); default the trace's top-k.
    train: a *different* trace (moe-infinity, frequency). model: an already loaded learned model.
    """
    tr = _trace(trace)
    if stream is None:
        stream = access_stream(tr, prefill_chunk=prefill_chunk)
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    n = stream.top_k if top_n is None else int(top_n)
    if n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    kind, _, argument = canonical_predictor(predictor).partition(":")
    part = PREDICTORS.get(kind)
    if kind == "none" or horizon == 0:
        return Predictions.empty(kind)
    if part.NEEDS_TRAIN and train is None:
        raise ValueError(f"the {kind} predictor learns from a *different* trace: pass train=TRACE (--train TRACE)")
    return part.predict(stream, tr, horizon=horizon, top_n=n, train=_trace(train) if part.NEEDS_TRAIN else None,
                        model=model, argument=argument)


# Predictions made lately, for plan(reuse=True): a grid replays one access stream at many capacities
# and links, and predicting costs 10-20x a replay. An entry holds its stream and training trace, so
# the ids in its key stay theirs while it is kept.
_RECENT: OrderedDict = OrderedDict()
KEEP_RECENT = 8


def _train_identity(train):
    if train is None or isinstance(train, Trace):
        return id(train)
    path = Path(train).resolve()
    return str(path), path.stat().st_mtime_ns if path.exists() else None


def _recent_predictions(trace, stream, predictor, horizon, top_n, train) -> Predictions:
    key = (id(stream), predictor, horizon, top_n, _train_identity(train))
    if key in _RECENT:
        _RECENT.move_to_end(key)
        return _RECENT[key][2]
    pred = predict(trace, predictor, stream=stream, horizon=horizon, top_n=top_n, train=train)
    _RECENT[key] = (stream, train, pred)
    while len(_RECENT) > KEEP_RECENT:
        _RECENT.popitem(last=False)
    return pred


def plan(trace: Trace, stream: AccessStream, predictor: str, *, hardware: Hardware, expert_bytes: float,
         horizon: int = 1, top_n: int | None = None, threshold: float | None = None,
         step_cap_bytes: float | None = None, adaptive: bool = False,
         train: Trace | str | os.PathLike | None = None, reuse: bool = False, host_held: float = 1.0):
    """(Prefetch plan, the horizon used) for replay: predictions cut to the horizon and the budget.

    adaptive: horizon becomes the cap; the plan keeps only the horizon whose lead
    time just covers one layer's prefetches on this hardware's link (and, with a
    host tier holding the share host_held of all experts, their storage reads).
    reuse: the caller keeps `stream` for more replays (a grid worker): reuse recent predictions for it.
    """
    if reuse:
        pred = _recent_predictions(trace, stream, predictor, horizon, top_n, train)
    else:
        pred = predict(trace, predictor, stream=stream, horizon=horizon, top_n=top_n, train=train)
    used = horizon
    if adaptive and len(pred):
        per_layer = stream.top_k if top_n is None else int(top_n)
        used = adaptive_horizon(stream, trace.meta, hardware, expert_bytes, per_layer, int(pred.horizon.max()),
                                host_held)
        pred = select(pred, only_horizon=used, threshold=threshold)
    else:
        pred = select(pred, horizon=horizon, threshold=threshold)
    step_cap = -1
    if step_cap_bytes is not None:
        if not expert_bytes:
            raise ValueError("a bytes-per-step prefetch cap needs the expert size: pass bytes_per_expert")
        step_cap = int(step_cap_bytes // expert_bytes)
    return to_plan(pred, stream.num_segments, step_cap=step_cap), used


def fit_predictor(train: list[Trace | str | os.PathLike], out: str | os.PathLike, *, kind: str = "coactivation",
                  horizon: int = 1, **options):
    """Fit a learned predictor on training traces and save it (.npz, or a torch state_dict for 'gru')."""
    traces = [_trace(t) for t in train]
    if not traces:
        raise ValueError("fit-predictor needs at least one training trace")
    if kind == "coactivation":
        model = learned.fit(traces, horizon=horizon, **options)
    elif kind == "gru":
        from .learned_torch import fit_gru
        model = fit_gru(traces, **options)
    else:
        raise ValueError(f"unknown learned predictor kind {kind!r}; choose coactivation or gru")
    model.save(out)
    return model


__all__ = ["PREDICTORS", "Predictions", "Prefetch", "canonical_predictor", "fit_predictor", "load_model", "plan",
           "predict", "predictor_names"]
