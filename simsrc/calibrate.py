"""calibrate(): fit the timed model's cost figures to a real run's measured step times, and say how well
they predict the steps the fit never saw.

A real run's per-step wall times (and, where the runtime reports them, their parts: compute, stall,
bookkeeping) are matched one to one to the trace's decode steps. The first `fit_fraction` of those steps,
in order, is the fit split: scipy's least_squares moves a few figures that mean something -- the link's
bandwidth, the bookkeeping per miss, the share of a transfer that overlaps compute, the memory bandwidth
that compute streams weights at, the KV bytes read per token of context -- until timed replays of the
trace match the fit split's measured step times (each step's relative error is one residual; each
measured part's total over the split is one more, weighted as much as all steps together). The rest of
the steps are held out: only predicted, never fitted. Beside moesim stands a straight line,
wall = a + b x misses (misses from count mode, per step), fitted the same way on the same steps.

Measured steps come from a BigMoeOnEdge `*.metrics.csv` or a plain CSV (see `read_measured`).
"""
from __future__ import annotations

import dataclasses
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from . import __version__
from .config import KNOB, ReplayConfig, knob_name
from .hardware import Hardware
from .registry import suggest
from .trace import AccessStream, Trace, access_stream, read_trace
from .trace.schema import DECODE
from .units import GB, US

# ---- measured steps

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
PARTS = ("compute", "stall", "overhead", "io")  # besides wall, what a measured step may be split into
BIGMOEONEDGE_HEADER = "step,steps,wall_ms"


class CalibrationError(ValueError):
    """The fit did not converge (nothing was written)."""


@dataclass(frozen=True)
class MeasuredSteps:
    """A real run's decode steps: the trace's step number of each, its wall time and its parts, in seconds."""
    path: str
    layout: str                     # "bigmoeonedge" | "csv"
    step: np.ndarray                # int64, ascending: the trace's `step` value of each decode step
    wall_s: np.ndarray              # float64 > 0
    parts: dict = field(default_factory=dict)  # part (PARTS) -> float64 s per step, >= 0
    read_bytes: np.ndarray | None = None       # bytes read per step, where the runtime counts them
    prefill_s: float | None = None             # the prompt's time (all prefill steps), where the file says it

    def __len__(self) -> int:
        return len(self.step)


def read_measured(path: str | Path) -> MeasuredSteps:
    """A measured-steps file -> MeasuredSteps; every error names the file, the column or step, and the fix.

    Two layouts. A BigMoeOnEdge `*.metrics.csv` (header `step,steps,wall_ms,io_ms,compute_ms,read_bytes,
    cache_hit_pct,stall_ms,mgmt_ms,...`; `mgmt_ms`, its bookkeeping, is read as overhead). Or a plain CSV,
    `#` lines being comments: `step` (the trace's step number of a decode step), `wall_s` or `wall_ms`, and
    optionally `compute_*`, `stall_*` (waiting for transfers), `overhead_*` (bookkeeping per miss), `io_*`
    (time reading, summed over read lanes) in `_s`, `_ms` or `_us`, and `read_bytes`.
    """
    import pandas as pd  # on first use: the CLI's start does not pay for it
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such measured-steps file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV of measured steps") from None
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not body:
        raise ValueError(f"{path}: no measured steps (write a header 'step,wall_ms' and one row per decode step)")
    if body[0].startswith(BIGMOEONEDGE_HEADER):
        from .trace.importers import read_bigmoeonedge_metrics
        df = read_bigmoeonedge_metrics(path).rename(columns={"mgmt_ms": "overhead_ms"})
        df = df[[c for c in df.columns if c in ("step", "wall_ms", "compute_ms", "stall_ms", "overhead_ms",
                                                 "io_ms", "read_bytes")]]
        layout = "bigmoeonedge"
        prefill = df.attrs.get("summary", {}).get("prefill_s")
    else:
        try:
            df = pd.read_csv(io.StringIO("\n".join(body)))
        except (pd.errors.ParserError, ValueError) as e:
            raise ValueError(f"{path}: not a readable CSV ({e})") from None
        layout = "csv"
        prefill = _comment_prefill(text, path)
    return dataclasses.replace(_measured_frame(df, str(path), layout), prefill_s=_prefill_seconds(prefill, str(path)))


def _comment_prefill(text: str, path) -> float | None:
    """A plain CSV's '# prefill_s=6.33' (or prefill_ms=) comment line, else None."""
    for line in text.splitlines():
        if line.startswith("#"):
            m = re.search(r"\bprefill_(s|ms|us)=(\S+)", line)
            if m:
                try:
                    return float(m.group(2)) * TIME_UNITS[m.group(1)]
                except ValueError:
                    raise ValueError(f"{path}: prefill_{m.group(1)}={m.group(2)!r} is not a number; write the "
                                     f"prompt's time as e.g. '# prefill_s=6.33'") from None
    return None


def _prefill_seconds(value, where: str) -> float | None:
    """A prompt time (seconds, or a string with its unit) checked: more than zero, or None."""
    if value is None:
        return None
    from .units import parse_seconds
    s = parse_seconds(value, where, default_unit=1.0)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{where}: the prompt's time (prefill) is {value!r}; it must be more than zero")
    return s


def _measured_frame(df: pd.DataFrame, where: str, layout: str) -> MeasuredSteps:
    import pandas as pd  # on first use: the CLI's start does not pay for it
    columns = {"wall": None, **{p: None for p in PARTS}}
    valid = "step, wall_s or wall_ms, and optionally compute_/stall_/overhead_/io_ in s, ms or us, read_bytes"
    for col in df.columns:
        c = str(col).strip()
        m = re.fullmatch(r"(wall|compute|stall|overhead|io)_(s|ms|us)", c)
        if c in ("step", "read_bytes"):
            continue
        if not m:
            raise ValueError(f"{where}: unknown column {c!r}{suggest(c, ['step', 'wall_s', 'wall_ms', 'read_bytes'])}; "
                             f"columns are {valid}")
        if columns[m.group(1)] is not None:
            raise ValueError(f"{where}: both {columns[m.group(1)][0]!r} and {c!r}; keep one unit for {m.group(1)}")
        columns[m.group(1)] = (c, TIME_UNITS[m.group(2)])
    if "step" not in df.columns or columns["wall"] is None:
        raise ValueError(f"{where}: needs a 'step' column and a 'wall_s' or 'wall_ms' column (columns are {valid})")

    def numbers(col: str) -> np.ndarray:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            raise ValueError(f"{where}: column {col!r}, data row {int(np.flatnonzero(bad)[0]) + 1}: "
                             f"{df[col].iloc[int(np.flatnonzero(bad)[0])]!r} is not a number")
        return v

    step = numbers("step")
    if (step != np.round(step)).any() or (step < 0).any():
        i = int(np.flatnonzero((step != np.round(step)) | (step < 0))[0])
        raise ValueError(f"{where}: column 'step', data row {i + 1}: {float(step[i]):g} is not a step number "
                         f"(a whole number >= 0)")
    step = step.astype(np.int64)
    uniq, counts = np.unique(step, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{where}: step {int(uniq[counts > 1][0])} appears {int(counts[counts > 1][0])} times; "
                         f"one row per decode step")
    order = np.argsort(step, kind="stable")
    col, unit = columns["wall"]
    wall = numbers(col)[order] * unit
    if (wall <= 0).any():
        i = int(np.flatnonzero(wall <= 0)[0])
        raise ValueError(f"{where}: step {int(step[order][i])}: {col} = {float(wall[i] / unit):g}; a step's wall time "
                         f"must be more than zero")
    parts = {}
    for part in PARTS:
        if columns[part] is None:
            continue
        col, unit = columns[part]
        v = numbers(col)[order] * unit
        if (v < 0).any():
            i = int(np.flatnonzero(v < 0)[0])
            raise ValueError(f"{where}: step {int(step[order][i])}: {col} = {float(v[i] / unit):g}; times are zero or more")
        parts[part] = v
    read = None
    if "read_bytes" in df.columns:
        read = numbers("read_bytes")[order]
        if (read < 0).any():
            raise ValueError(f"{where}: column 'read_bytes' has a negative value; bytes read are zero or more")
    return MeasuredSteps(where, layout, step[order], wall, parts, read)


def decode_steps(trace: Trace, stream: AccessStream) -> tuple[np.ndarray, np.ndarray]:
    """(the trace's step numbers of its decode steps, ascending; the replay step each one is).

    A recorded step holding decode tokens becomes exactly one replay step holding them (a prefill chunk
    split off it never holds decode tokens), so the two lists pair in order."""
    phase = trace.column("phase")
    recorded = np.unique(trace.column("step")[phase == DECODE].astype(np.int64))
    replayed = np.flatnonzero(stream.step_phase == DECODE)
    if len(recorded) != len(replayed):  # an invariant of access_stream, checked because a mismatch misleads
        raise RuntimeError(f"{len(recorded)} recorded decode steps but {len(replayed)} replayed ones")
    return recorded, replayed


def match_steps(measured: MeasuredSteps, trace: Trace, stream: AccessStream) -> np.ndarray:
    """The replay step of each measured step; an error unless the measured steps are the trace's decode steps."""
    name = Path(str(trace.path)).name if trace.path else trace.meta.model
    recorded, replayed = decode_steps(trace, stream)
    if not len(recorded):
        raise ValueError(f"{name} has no decode steps: a measured run's steps are decode steps (a prefill-only "
                         f"trace has nothing to match {measured.path} against)")
    extra = np.setdiff1d(measured.step, recorded)
    missing = np.setdiff1d(recorded, measured.step)
    span = f"{recorded[0]}..{recorded[-1]}" if recorded[-1] - recorded[0] + 1 == len(recorded) else \
        f"{len(recorded)} steps from {recorded[0]} to {recorded[-1]}"
    if len(extra):
        raise ValueError(f"{measured.path}: step {_few(extra)} is not a decode step of {name} (its decode steps "
                         f"are {span}); the measured run and the trace must be the same run")
    if len(missing):
        raise ValueError(f"{measured.path}: no row for decode step {_few(missing)} of {name} ({len(missing)} of "
                         f"{len(recorded)} missing); give one row per decode step ({span})")
    return replayed[np.searchsorted(recorded, measured.step)]


def _few(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:5])
    return shown + (f" (and {len(values) - 5} more)" if len(values) > 5 else "")


# ---- what may be fitted

@dataclass(frozen=True)
class Param:
    """A figure the fit may move: its bounds (SI), a typical size (the fit's unit), and how it prints."""
    name: str
    low: float
    high: float
    typical: float
    unit: str
    scale: float                    # printed value = SI / scale
    hardware: bool = True           # a Hardware field (goes in the file) or a replay knob only

    def show(self, v: float) -> str:
        return f"{v / self.scale:.4g} {self.unit}".rstrip()


PARAMS = {p.name: p for p in (
    Param("bandwidth", 1e6, 1e14, 1e9, "GB/s", GB),
    Param("latency", 0.0, 1.0, 10 * US, "us", US),
    Param("miss_overhead", 0.0, 1.0, 100 * US, "us", US),
    Param("overlap", 0.0, 1.0, 0.5, "", 1.0),
    Param("hbm", 1e6, 1e15, 1e10, "GB/s", GB),
    Param("gpu_flops", 1e6, 1e18, 1e11, "GFLOP/s", 1e9),
    Param("kv_bytes_per_token", 0.0, 1e9, 4096.0, "kB", 1e3, hardware=False),
    Param("storage_bandwidth", 1e6, 1e14, 1e9, "GB/s", GB),
    Param("storage_latency", 0.0, 1.0, 50 * US, "us", US),
)}
STORAGE_PARAMS = ("storage_bandwidth", "storage_latency")  # only where the replay reads from storage
# latency is left out by default: with experts of one size a transfer's latency and its bytes / bandwidth
# add up the same way, and only the copy engines' concurrency tells them apart
DEFAULT_FIT = ("bandwidth", "miss_overhead", "overlap", "hbm")
LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def fit_names(fit: str | Iterable[str]) -> tuple[str, ...]:
    """Parameter names from 'a,b' or a list, each checked against PARAMS."""
    names = [n.strip().replace("-", "_") for n in (fit.split(",") if isinstance(fit, str) else fit) if n.strip()]
    if not names:
        raise ValueError(f"--fit: name at least one of {', '.join(PARAMS)}")
    for n in names:
        if n not in PARAMS:
            raise ValueError(f"--fit: {n!r} cannot be fitted{suggest(n, PARAMS)}; choose from {', '.join(PARAMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--fit: {fit!r} names a parameter twice")
    return tuple(names)


# ---- the result

@dataclass
class Calibration:
    """What calibrate() found: fitted figures, how well they predict each split, beside a straight line."""
    trace: str
    measured: str
    layout: str
    fitted: dict[str, float]        # parameter -> SI value
    hardware: Hardware              # the base hardware with the fitted hardware figures
    knobs: dict[str, Any]           # the replay knobs the calibration ran with (fitted knob values included)
    steps: pd.DataFrame             # one row per measured step: step, split, measured_s, moesim_s, line_s, misses
    splits: dict[str, dict]         # "fit" / "held_out" -> moesim's and the line's errors, part totals
    line: dict[str, float]          # the straight line: a_s, b_s (per miss)
    runtime: dict[str, float]       # what the measured file says the runtime's figures are
    at_bound: tuple[str, ...]       # fitted parameters that ended on a bound
    unpinned: tuple[str, ...]       # fitted parameters the steps do not depend on at the optimum
    evaluations: int                # of the fit's objective (finite-difference Jacobians not counted)
    replays: int                    # timed and count replays run, all told
    message: str
    options: dict[str, Any]         # fit, fit_fraction, loss
    prompt: dict[str, float] = field(default_factory=dict)  # measured_s, moesim_s, error: where a prompt was fitted

    def to_toml(self) -> str:
        """The hardware file: every Hardware field, read back exactly by `--hardware FILE.toml`; knob-only
        figures (kv_bytes_per_token) and the cache the fit ran with are a comment, they are not hardware."""
        extra = [f"--{k.replace('_', '-')} {_knob_text(k, v)}" for k, v in self.knobs.items()
                 if k in PARAMS and not PARAMS[k].hardware]
        fixed = [f"--{k.replace('_', '-')} {_knob_text(k, v)}" for k, v in self.knobs.items()
                 if k not in PARAMS and k not in ("mode", "per_step")]
        head = [f"# written by moesim calibrate {__version__}; fitted: {', '.join(self.fitted)}",
                f"# the fit ran with: {' '.join(fixed) or '(defaults)'}"]
        if extra:
            head.append(f"# also fitted, a replay option rather than hardware: {' '.join(extra)}")
        return "\n".join(head) + "\n" + self.hardware.to_toml()

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml(), encoding="utf-8")
        tmp.replace(path)
        return path

    def replay_options(self) -> str:
        """The options that replay what was calibrated, given the written file."""
        return " ".join(f"--{k.replace('_', '-')} {_knob_text(k, v)}" for k, v in self.knobs.items()
                        if (k not in PARAMS or not PARAMS[k].hardware) and k not in ("mode", "per_step"))

    def to_dict(self) -> dict[str, Any]:
        return {"trace": self.trace, "measured": self.measured, "layout": self.layout, "options": self.options,
                "fitted": self.fitted, "at_bound": list(self.at_bound), "unpinned": list(self.unpinned), "evaluations": self.evaluations, "replays": self.replays,
                "message": self.message, "hardware": dataclasses.asdict(self.hardware),
                "knobs": {k: _knob_text(k, v) for k, v in self.knobs.items()},
                "splits": self.splits, "line": self.line, "runtime": self.runtime, "prompt": self.prompt,
                "steps": self.steps.to_dict(orient="list")}

    def report(self) -> str:
        """A short human report: the fitted figures beside the runtime's own, then errors by split."""
        n = len(self.steps)
        fit_n = int((self.steps["split"] == "fit").sum())
        lines = [f"{self.trace} against {self.measured} ({self.layout}): {n} decode steps, fitted on the "
                 f"first {fit_n}, {n - fit_n} held out",
                 f"least squares ({self.options['loss']}), {self.evaluations} evaluations, {self.replays} replays: "
                 f"{self.message}", "",
                 "fitted"]
        for k, v in self.fitted.items():
            note = ("   (not pinned: the steps do not depend on it here)" if k in self.unpinned else
                    "   (at its bound)" if k in self.at_bound else "")
            lines.append(f"  {k:<20} {PARAMS[k].show(v):>14}" + note)
        rt = self.runtime
        if rt:
            lines += ["", "the measured run says"]
            if "overhead_per_miss_s" in rt:
                lines.append(f"  {'overhead per miss':<20} {rt['overhead_per_miss_s'] / US:>11.4g} us   "
                             f"(its overhead / moesim's misses, all steps)")
            if "read_rate_lane" in rt:
                lines.append(f"  {'read rate':<20} {rt['read_rate_lane'] / GB:>9.4g} GB/s   per lane; "
                             f"{rt['read_rate'] / GB:.4g} GB/s over {rt['lanes']} lanes")
        rows = [("per-step MAE", "step_mape"), ("total time", "total_error"), ("compute", "compute_error"),
                ("stall+overhead", "waiting_error"), ("overhead", "overhead_error"), ("stall", "stall_error"),
                ("io", "io_error")]
        head = f"  {'':<16}" + "".join(f"{s.replace('_', ' ') + ' (' + str(self.splits[s]['steps']) + ')':>26}"
                                        for s in self.splits)
        lines += ["", head, f"  {'':<16}" + f"{'moesim':>13}{'line':>13}" * len(self.splits)]
        for label, key in rows:
            if not any(key in self.splits[s]["moesim"] for s in self.splits):
                continue
            cells = ""
            for s in self.splits:
                for who in ("moesim", "line"):
                    v = self.splits[s][who].get(key)
                    cells += f"{_pct(v, signed=key != 'step_mape'):>13}"
            lines.append(f"  {label:<16}{cells}")
        if self.prompt:
            p = self.prompt
            lines += ["", f"  prompt (prefill): measured {p['measured_s']:.4g} s, moesim {p['moesim_s']:.4g} s "
                          f"({_pct(p['error'])}), fitted with gpu_flops"]
        return "\n".join(lines)


def _pct(v, signed=True) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:+.1%}" if signed else f"{v:.1%}"


def _knob_text(name: str, v) -> str:
    """A knob's value as an option would be written (SI values with their unit)."""
    if name in PARAMS and isinstance(v, float):
        p = PARAMS[name]
        unit = {"GB/s": "GB/s", "us": "us", "kB": "kB", "GFLOP/s": "G", "": ""}[p.unit]
        return f"{v / p.scale:.6g}{unit}"
    given = getattr(v, "text", None)
    return str(given if given is not None else getattr(v, "name", v))


# ---- the fit

def calibrate(trace: Trace | str, measured: MeasuredSteps | str, *, fit: str | Iterable[str] = DEFAULT_FIT,
              fit_fraction: float = 0.5, loss: str = "soft_l1", use_parts: bool = True, max_evals: int = 400,
              name: str | None = None, out: str | Path | None = None, prefill_time: float | str | None = None,
              fit_prefill: bool = True, **knobs) -> Calibration:
    """Fit `fit` (names in PARAMS) to the measured steps' first `fit_fraction`, report on the rest.

    knobs: replay knobs held fixed (capacity, policy, prefill_chunk, copy_engines, hardware -- the base whose
    other figures the file keeps --, ...); a fitted one given here is the fit's starting point.
    loss: the robust loss on each step's relative error (soft_l1: a step off by much more than 10 % weighs
    less, so a few spikes do not set the figures); the split's total and its measured parts' totals are
    always plain least squares. use_parts: also fit the measured parts (compute, stall + overhead, overhead,
    and io: time reading summed over the lanes, which pins the bandwidth when --lanes is the runtime's readers).
    out: write the hardware file there, only if the fit converged. Raises CalibrationError if it did not.
    prefill_time: the run's measured prompt time (s, or e.g. '6.33s'); default: the measured file's own (a
    BigMoeOnEdge summary's prefill_s, a plain CSV's '# prefill_s=' comment). Where there is one and
    fit_prefill, gpu_flops joins the fit and the prompt's time is one more residual, weighted as the split's
    total is: decode steps at one token are memory-bound and do not pin the FLOP rate, a prompt of tens of
    tokens per expert does, and without it the time to first token is the base hardware's guess.
    """
    import pandas as pd  # on first use: the CLI's start does not pay for it
    tr = trace if isinstance(trace, Trace) else read_trace(trace)
    meas = measured if isinstance(measured, MeasuredSteps) else read_measured(measured)
    names = fit_names(fit)
    if loss not in LOSSES:
        raise ValueError(f"--loss: {loss!r}{suggest(loss, LOSSES)}; choose one of {', '.join(LOSSES)}")
    if not 0 < fit_fraction < 1:
        raise ValueError(f"--fit-fraction: {fit_fraction!r}; the share of steps fitted, strictly between 0 and 1 "
                         f"(the rest are held out), e.g. 0.5")
    if max_evals < 1:
        raise ValueError(f"--max-evals: {max_evals!r}; at least 1")
    given = {knob_name(k): v for k, v in knobs.items() if v is not None}
    if str(given.pop("mode", "timed")).strip().lower() != "timed":
        raise ValueError("--mode: calibration fits timed replays; drop --mode (timed is the default)")
    given.pop("per_step", None)
    cfg0 = ReplayConfig.make(**given)
    base = cfg0.hardware_spec()
    storage = [k for k in names if k in STORAGE_PARAMS]
    if storage and (not cfg0.tiers or base.storage_bandwidth is None):
        raise ValueError(f"--fit {storage[0]}: this replay reads nothing from storage; give the run's host tier "
                         f"and storage link as it had them (--host-capacity, and --storage or --storage-bandwidth: "
                         f"where the fit starts)")
    hw_fields = {f.name for f in dataclasses.fields(Hardware)}
    # the hardware figures go in as one Hardware object, so the config must not override them again (a
    # storage preset would put back the storage figures being fitted)
    cfg = dataclasses.replace(cfg0, hardware=base, storage=None,
                              **{k.name: None for k in KNOB.values() if k.name in hw_fields})
    cfg = ReplayConfig.make(cfg, mode="timed", per_step=True)

    stream = access_stream(tr, prefill_chunk=cfg.prefill_chunk)
    step_of = match_steps(meas, tr, stream)
    if prefill_time is not None and not fit_prefill:
        raise ValueError("--prefill-time and --no-prefill: give one (a prompt time to fit, or none)")
    prompt_s = (_prefill_seconds(prefill_time, "--prefill-time") if prefill_time is not None
                else meas.prefill_s if fit_prefill else None)
    prompt_steps = np.flatnonzero(stream.step_phase != DECODE)
    if prompt_s is not None:
        if not len(prompt_steps):
            raise ValueError(f"--prefill-time: {Path(str(tr.path)).name if tr.path else tr.meta.model} has no "
                             f"prefill steps to lay the prompt's time beside; drop --prefill-time (or --no-prefill)")
        if "gpu_flops" not in names:
            names = names + ("gpu_flops",)
    n = len(meas)
    n_fit = int(round(fit_fraction * n))
    need = max(2 * len(names), 4)
    if n_fit < need or n - n_fit < 2:
        raise ValueError(f"{meas.path}: {n} measured steps, {n_fit} to fit and {n - n_fit} held out at "
                         f"--fit-fraction {fit_fraction}; fitting {len(names)} parameters needs at least {need} "
                         f"fit steps and 2 held out: give a longer run, or fit fewer parameters (--fit)")
    split = np.where(np.arange(n) < n_fit, "fit", "held_out")
    fit_idx, held_idx = np.arange(n_fit), np.arange(n_fit, n)
    model = _Model(tr, stream, cfg, base, step_of)

    # the straight line, and per-step misses, from count mode
    misses = model.step_misses()
    line_ab = _fit_line(misses[fit_idx], meas.wall_s[fit_idx], loss)
    line_s = line_ab[0] + line_ab[1] * misses

    start = _start(names, cfg0, base, model, meas, fit_idx, misses, line_ab)
    if prompt_s is not None and getattr(cfg0, "gpu_flops", None) is None:
        start["gpu_flops"] = _prompt_flops(model, start, prompt_steps, prompt_s)
    scale = np.array([start[k] if start[k] > 0 else PARAMS[k].typical for k in names])
    lo = np.array([PARAMS[k].low for k in names]) / scale
    hi = np.array([PARAMS[k].high for k in names]) / scale
    x0 = np.clip(np.array([start[k] for k in names]) / scale, lo, hi)
    fit_runs = _runs(step_of[fit_idx])
    meas_fit = _sums(meas, fit_idx) if use_parts else {}
    wall_fit = meas.wall_s[fit_idx]

    def residuals(x: np.ndarray) -> np.ndarray:
        values = dict(zip(names, x * scale))
        step_s = model.step_seconds(values)[fit_idx]
        pairs = _compare(model.totals(values, fit_runs), meas_fit) if meas_fit else {}
        r = _residuals(step_s, wall_fit, pairs, loss)
        if prompt_s is None:
            return r
        return np.append(r, math.sqrt(n_fit) * (model.prompt_seconds(values, prompt_steps) - prompt_s) / prompt_s)

    from scipy.optimize import least_squares
    res = least_squares(residuals, x0, bounds=(lo, hi), diff_step=1e-3, max_nfev=max_evals, x_scale=1.0)
    if not res.success:
        raise CalibrationError(f"the fit did not converge ({res.message.rstrip('.')}, after {res.nfev} evaluations); nothing "
                               f"was written: allow more with --max-evals, fit fewer parameters (--fit), or check "
                               f"that {Path(meas.path).name} is a run of this trace")
    fitted = {k: float(v) for k, v in zip(names, res.x * scale)}
    # a figure the residuals do not move at the optimum is not pinned by this run (e.g. an overlap above
    # what the reads need: the GPU waits on them either way), whatever value it ended at
    slope = np.linalg.norm(res.jac, axis=0)
    unpinned = tuple(k for k, g in zip(names, slope) if g <= 1e-6 * max(slope.max(), 1e-300))
    at_bound = tuple(k for k in names if min(fitted[k] - PARAMS[k].low, PARAMS[k].high - fitted[k])
                     <= 1e-6 * max(PARAMS[k].typical, abs(fitted[k])))

    step_s = model.step_seconds(fitted)
    splits = {}
    for label, idx in (("fit", fit_idx), ("held_out", held_idx)):
        runs = _runs(step_of[idx])
        tot = model.totals(fitted, runs)
        m_tot = _sums(meas, idx)
        moesim = _errors(step_s[idx], meas.wall_s[idx])
        line = _errors(line_s[idx], meas.wall_s[idx])
        for p, (mine, theirs) in _compare(tot, m_tot).items():
            if theirs > 0:
                moesim[f"{p}_error"] = (mine - theirs) / theirs
        splits[label] = {"steps": len(idx), "first_step": int(meas.step[idx[0]]), "last_step": int(meas.step[idx[-1]]),
                         "measured_s": float(meas.wall_s[idx].sum()), "moesim_s": float(step_s[idx].sum()),
                         "line_s": float(line_s[idx].sum()), "misses": int(misses[idx].sum()),
                         "moesim": moesim, "line": line,
                         "measured_parts_s": m_tot, "moesim_parts_s": tot}

    hw = dataclasses.replace(base, **{k: v for k, v in fitted.items() if PARAMS[k].hardware},
                             name=name or f"{Path(meas.path).name.split('.')[0]}-calibrated")
    held = splits["held_out"]["moesim"]
    prompt = {}
    if prompt_s is not None:
        mine = model.prompt_seconds(fitted, prompt_steps)
        prompt = {"measured_s": prompt_s, "moesim_s": mine, "error": (mine - prompt_s) / prompt_s}
    hw = dataclasses.replace(hw, source=(
        f"moesim calibrate {__version__}: {', '.join(names)} fitted to {Path(meas.path).name} (steps "
        f"{splits['fit']['first_step']}-{splits['fit']['last_step']}, {n_fit} of {n} decode steps"
        f"{f' and its {prompt_s:.4g} s prompt' if prompt else ''}) replaying "
        f"{Path(str(tr.path)).name if tr.path else tr.meta.model}; held out {n - n_fit} steps: per-step MAE "
        f"{held['step_mape']:.1%}, total {held['total_error']:+.1%}; other figures from {base.name}"))
    # what the run needs besides the file: the knobs given that differ from their defaults
    default = ReplayConfig()
    knobs_used = {k: getattr(cfg0, k) for k in given if k not in hw_fields and k not in ("hardware", "storage")
                  and getattr(cfg0, k) != getattr(default, k)}
    knobs_used.update({k: v for k, v in fitted.items() if not PARAMS[k].hardware})
    runtime = _runtime_figures(meas, misses, int(hw.lanes))
    steps = pd.DataFrame({"step": meas.step, "split": split, "measured_s": meas.wall_s, "moesim_s": step_s,
                          "line_s": line_s, "misses": misses})
    cal = Calibration(trace=str(tr.path) if tr.path else tr.meta.model, measured=meas.path, layout=meas.layout,
                      fitted=fitted, hardware=hw, knobs=knobs_used, steps=steps, splits=splits,
                      line={"a_s": float(line_ab[0]), "b_s": float(line_ab[1])}, runtime=runtime,
                      at_bound=at_bound, unpinned=unpinned, evaluations=int(res.nfev), replays=model.evaluations, message=res.message,
                      options={"fit": list(names), "fit_fraction": fit_fraction, "loss": loss,
                               "use_parts": use_parts, "base": base.name}, prompt=prompt)
    if out is not None:
        cal.write(out)
    return cal


class _Model:
    """Timed replays of one trace and stream at given figures; repeated evaluations at the same figures
    are answered from a cache (least_squares asks for the same point more than once)."""

    def __init__(self, trace: Trace, stream: AccessStream, cfg: ReplayConfig, base: Hardware, step_of: np.ndarray):
        self.trace, self.stream, self.cfg, self.base, self.step_of = trace, stream, cfg, base, step_of
        self.evaluations = 0
        self._seen: dict = {}

    def _run(self, values: dict, cut: int | None = None, **extra) -> dict:
        from .replay import replay  # on first use: the CLI's start does not pay for it
        key = (tuple(sorted(values.items())), cut, tuple(sorted(extra.items())))
        if key not in self._seen:
            hw = self.hardware(values)
            knobs = {k: v for k, v in values.items() if not PARAMS[k].hardware}
            stream = self.stream if cut is None else _head(self.stream, cut)
            self._seen[key] = replay(self.trace, self.cfg, stream=stream, hardware=hw, **knobs, **extra)
            self.evaluations += 1
            if len(self._seen) > 4096:
                self._seen.clear()
        return self._seen[key]

    def step_seconds(self, values: dict) -> np.ndarray:
        """Each measured step's predicted wall time."""
        return np.asarray(self._run(values)["step_s"], np.float64)[self.step_of]

    def prompt_seconds(self, values: dict, prompt_steps: np.ndarray) -> float:
        """The prefill steps' predicted time, all told."""
        return float(np.asarray(self._run(values)["step_s"], np.float64)[prompt_steps].sum())

    def totals(self, values: dict, runs: list[tuple[int, int]]) -> dict[str, float]:
        """Compute, stall and overhead summed over runs of consecutive replay steps (first, last)."""
        out = {"compute": 0.0, "stall": 0.0, "overhead": 0.0, "io": 0.0}
        for first, last in runs:
            a = self._parts(values, int(np.searchsorted(self.stream.seg_step, first, "left")))
            b = self._parts(values, int(np.searchsorted(self.stream.seg_step, last, "right")))
            for p in out:
                out[p] += b[p] - a[p]
        return out

    def _parts(self, values: dict, cut: int) -> dict[str, float]:
        if cut == 0:
            return {"compute": 0.0, "stall": 0.0, "overhead": 0.0, "io": 0.0}
        row = self._run(values, None if cut == self.stream.num_segments else cut)
        hw = self.hardware(values)
        # io: time the lanes spend reading, summed over lanes (what a runtime's read threads report)
        return {"compute": row["gpu_compute_s"] + row["host_compute_s"], "stall": row["stall_s"],
                "overhead": row["overhead_s"], "io": row["bytes_moved"] * hw.lanes / hw.bandwidth}

    def hardware(self, values: dict) -> Hardware:
        return dataclasses.replace(self.base, **{k: v for k, v in values.items() if PARAMS[k].hardware})

    def step_misses(self) -> np.ndarray:
        """Misses in each measured step, from count mode (what the straight line is fitted against)."""
        from .replay import replay  # on first use: the CLI's start does not pay for it
        cuts = np.searchsorted(self.stream.seg_step, np.arange(self.stream.num_steps + 1), "left")
        cfg = ReplayConfig.make(self.cfg, mode="count", per_step=False)
        total = np.zeros(len(cuts), np.int64)
        for j, cut in enumerate(cuts):
            if cut:
                stream = self.stream if cut == self.stream.num_segments else _head(self.stream, int(cut))
                total[j] = replay(self.trace, cfg, stream=stream, hardware=self.base)["misses"]
        return np.diff(total)[self.step_of].astype(np.float64)


def _head(stream: AccessStream, cut: int) -> AccessStream:
    """The first `cut` segments as a stream; a request with no output yet within them is taken to emit at
    the head's last step, since replay() times a first token for every request that started (only the
    totals of a head are used here, never its time to first token)."""
    head = stream.head(cut)
    started = head.request_first_step < head.num_steps
    first_out = np.where(started, np.minimum(head.request_first_output_step, head.num_steps - 1),
                         head.request_first_output_step).astype(np.int32)
    return dataclasses.replace(head, request_first_output_step=first_out)


def _runs(steps: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive replay steps, as (first, last)."""
    s = np.sort(steps)
    breaks = np.flatnonzero(np.diff(s) != 1)
    firsts = np.r_[s[0], s[breaks + 1]]
    lasts = np.r_[s[breaks], s[-1]]
    return list(zip(firsts.tolist(), lasts.tolist()))


def _sums(meas: MeasuredSteps, idx: np.ndarray) -> dict[str, float]:
    return {p: float(v[idx].sum()) for p, v in meas.parts.items()}


# the parts fitted (stall alone is only reported: it leans on how much bookkeeping moesim hides)
FIT_PARTS = ("compute", "waiting", "overhead", "io")


def _compare(mine: dict[str, float], theirs: dict[str, float]) -> dict[str, tuple[float, float]]:
    """(moesim's, the measured) total of each part both have. moesim's stall_s is all the time its GPU waits
    -- for bookkeeping, which delays each copy, and for the copy --, so it answers the measured stall plus
    overhead ("waiting"); its stall without bookkeeping is taken as stall_s - overhead_s, exact when the
    bookkeeping is all on the critical path, as a runtime whose wall = compute + stall + overhead says."""
    out = {}
    if "compute" in theirs:
        out["compute"] = (mine["compute"], theirs["compute"])
    if "stall" in theirs:
        out["waiting"] = (mine["stall"], theirs["stall"] + theirs.get("overhead", 0.0))
    if "overhead" in theirs:
        out["overhead"] = (mine["overhead"], theirs["overhead"])
    if "stall" in theirs and "overhead" in theirs:
        out["stall"] = (mine["stall"] - mine["overhead"], theirs["stall"])
    if "io" in theirs:  # time reading summed over lanes: what pins the link's bandwidth (--lanes: the readers)
        out["io"] = (mine["io"], theirs["io"])
    return out


F_SCALE = 0.1  # the robust losses treat a step off by more than about 10 % as partly an outlier
ROBUST = {"linear": lambda z: z, "soft_l1": lambda z: 2.0 * (np.sqrt(1.0 + z) - 1.0),
          "huber": lambda z: np.where(z <= 1.0, z, 2.0 * np.sqrt(z) - 1.0), "cauchy": np.log1p, "arctan": np.arctan}


def _residuals(pred: np.ndarray, wall: np.ndarray, pairs: dict[str, tuple[float, float]], loss: str) -> np.ndarray:
    """What least_squares minimises the squares of: each step's relative error, passed through the robust
    loss (as scipy's `loss` would, with f_scale 10 %, but on these alone), then the split's total wall time
    and each fitted part's total, as relative errors weighted by sqrt(steps) -- a total off by x counts as
    much as every step off by x, and no robust loss makes a total an outlier."""
    r = (pred - wall) / wall
    z = (r / F_SCALE) ** 2
    steps = np.sign(r) * F_SCALE * np.sqrt(ROBUST[loss](z))
    w = math.sqrt(len(wall))
    totals = [w * (pred.sum() - wall.sum()) / wall.sum()]
    totals += [w * (mine - theirs) / theirs for p, (mine, theirs) in pairs.items() if p in FIT_PARTS and theirs > 0]
    return np.concatenate([steps, totals])


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    return {"step_mape": float(np.mean(np.abs(pred - meas) / meas)),
            "total_error": float((pred.sum() - meas.sum()) / meas.sum())}


def _fit_line(misses: np.ndarray, wall: np.ndarray, loss: str) -> np.ndarray:
    """wall = a + b x misses, fitted the way the model is (the same residuals, without parts: a line has none)."""
    from scipy.optimize import least_squares
    x0 = np.polyfit(misses, wall, 1)[::-1] if np.ptp(misses) > 0 else np.array([wall.mean(), 0.0])
    scale = np.maximum(np.abs(x0), [wall.mean() * 1e-3, wall.mean() * 1e-3 / max(misses.mean(), 1.0)])
    res = least_squares(lambda x: _residuals(x[0] * scale[0] + x[1] * scale[1] * misses, wall, {}, loss), x0 / scale)
    return res.x * scale


def _start(names, cfg0: ReplayConfig, base: Hardware, model: _Model, meas: MeasuredSteps, fit_idx: np.ndarray,
           misses: np.ndarray, line_ab: np.ndarray) -> dict[str, float]:
    """Where the fit starts: a value the user gave, else one read off the data (the line's intercept is the
    time of a step without misses, its slope the cost of one miss), else the base hardware's."""
    values = {k: float(getattr(base, k)) if PARAMS[k].hardware else float(getattr(cfg0, k) or 0.0) for k in names}
    given = {k for k in names if getattr(cfg0, k, None) is not None}
    a, b = float(max(line_ab[0], 1e-3 * meas.wall_s.mean())), float(max(line_ab[1], 0.0))
    n_fit = len(fit_idx)
    misses_fit = max(float(misses[fit_idx].sum()), 1.0)
    if "compute" in meas.parts:
        target = float(meas.parts["compute"][fit_idx].sum()) / n_fit
    else:
        target = a
    fixed = {k: v for k, v in values.items() if k in given}
    runs = _runs(model.step_of[fit_idx])
    base_compute = model.totals(fixed, runs)["compute"] / n_fit
    for k in ("hbm", "gpu_flops"):
        if k in names and k not in given and base_compute > 0:
            # the roofline is one or the other: scale whichever is fitted to make a step's compute the target;
            # again from there, twice, since launches do not scale (a start far off can end in a local minimum)
            rate = float(getattr(base, k))
            for _ in range(3):
                rate = float(np.clip(rate * base_compute / target, PARAMS[k].low, PARAMS[k].high))
                base_compute = model.totals({**fixed, k: rate}, runs)["compute"] / n_fit
            values[k] = rate
            fixed[k] = rate
    if "miss_overhead" in names and "miss_overhead" not in given:
        values["miss_overhead"] = (float(meas.parts["overhead"][fit_idx].sum()) / misses_fit
                                   if "overhead" in meas.parts else 0.2 * b)
    if "overlap" in names and "overlap" not in given:
        values["overlap"] = 0.5
    if "bandwidth" in names and "bandwidth" not in given and "io" in meas.parts and meas.read_bytes is not None \
            and meas.parts["io"][fit_idx].sum() > 0:
        # the measured read rate per lane, times the lanes
        values["bandwidth"] = float(np.clip(base.lanes * meas.read_bytes[fit_idx].sum() / meas.parts["io"][fit_idx].sum(),
                                            PARAMS["bandwidth"].low, PARAMS["bandwidth"].high))
    elif "bandwidth" in names and "bandwidth" not in given:
        per_miss = max(b - values.get("miss_overhead", 0.0), 0.2 * b, 1e-9)
        expert_bytes = cfg0.bytes_per_expert or float(model.trace.meta.bytes_per_expert) or 1.0
        values["bandwidth"] = float(np.clip(expert_bytes / per_miss, PARAMS["bandwidth"].low, PARAMS["bandwidth"].high))
    return values


def _prompt_flops(model: _Model, start: dict, prompt_steps: np.ndarray, prompt_s: float) -> float:
    """The FLOP rate at which the prompt takes its measured time, the other figures at their start (a
    decreasing function of the rate, solved in its logarithm); the base's rate where no rate in bounds does."""
    from scipy.optimize import brentq
    p = PARAMS["gpu_flops"]

    def gap(e: float) -> float:
        return model.prompt_seconds({**start, "gpu_flops": 10.0 ** e}, prompt_steps) - prompt_s
    lo, hi = math.log10(p.low), math.log10(p.high)
    if gap(lo) < 0 or gap(hi) > 0:  # even the slowest rate is too fast, or the fastest too slow
        return start["gpu_flops"]
    return float(10.0 ** brentq(gap, lo, hi, xtol=1e-3))


def _runtime_figures(meas: MeasuredSteps, misses: np.ndarray, lanes: int) -> dict[str, float]:
    """The runtime's own figures, where the measured file has them: overhead per miss (its overhead over
    moesim's misses in the same steps) and its read rate per lane and over `lanes` lanes."""
    out: dict[str, float] = {}
    if "overhead" in meas.parts and misses.sum() > 0:
        out["overhead_per_miss_s"] = float(meas.parts["overhead"].sum() / misses.sum())
    if "io" in meas.parts and meas.read_bytes is not None and meas.parts["io"].sum() > 0:
        out["read_rate_lane"] = float(meas.read_bytes.sum() / meas.parts["io"].sum())
        out["lanes"] = lanes
        out["read_rate"] = out["read_rate_lane"] * lanes
    if "stall" in meas.parts:
        out["stall_s"] = float(meas.parts["stall"].sum())
    return out


__all__ = ["Calibration", "CalibrationError", "DEFAULT_FIT", "MeasuredSteps", "PARAMS", "calibrate",
           "decode_steps", "match_steps", "read_measured"]
