"""A grid spec (TOML) expanded into runs, every name and value checked before the first run starts.

A spec names traces (paths or globs, relative to the spec's folder, or fsspec
URLs), then any of replay()'s keyword arguments. A list is an axis, anything
else is fixed; axes combine as a product, except those listed together in a
`[[group]]` table, which vary in step (run i takes the i-th value of each).
Each run is keyed by a hash of its parameters, its trace's name and content
(and the content of any training trace it reads), which is what lets the
checkpoint file (results.py) skip done runs and refuse a changed spec.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import policies as policy_registry
from ..config import KNOB, ReplayConfig, knob_name
from ..registry import suggest

SPEC_FIELDS = ("name", "description", "group")
# plural spellings a person writes naturally; the replay keyword is the column name
ALIASES = {"traces": "trace", "policies": "policy", "predictors": "predictor", "capacities": "capacity",
           "scopes": "scope", "modes": "mode", "seeds": "seed", "bandwidths": "bandwidth",
           "latencies": "latency"}
# replay arguments that name files, resolved against the spec's folder like traces
PATH_FIELDS = ("train", "pin_file", "arrivals")


@dataclass(frozen=True)
class Run:
    """One replay of a grid: the trace as the spec names it, where to read it, and replay's keywords."""

    key: str
    trace: str                # as written in the spec (after glob expansion): the `trace` column
    location: str             # absolute path or URL each worker reads
    fingerprint: str
    params: dict = field(hash=False)


@dataclass
class Grid:
    name: str
    source: str               # the spec file (or '<dict>')
    runs: list[Run]
    spec_hash: str

    def __len__(self) -> int:
        return len(self.runs)

    def describe(self, run: Run) -> str:
        """A run in a few words: its trace when the grid has several, and the parameters that vary."""
        varying = [k for k in run.params if len({_hash(r.params.get(k)) for r in self.runs}) > 1]
        words = [run.trace] if len({r.trace for r in self.runs}) > 1 else []
        words += [f"{k}={run.params[k]}" for k in varying]
        return " ".join(words) or run.trace


def load_spec(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such grid spec")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None


def expand(spec: dict | str | os.PathLike, *, base: str | os.PathLike | None = None) -> Grid:
    """The runs of a spec (a TOML file, or its dict with `base` the folder relative paths start from)."""
    if isinstance(spec, dict):
        where, raw = "<spec>", spec
        base = Path(base or ".")
    else:
        where, raw = str(spec), load_spec(spec)
        base = Path(spec).resolve().parent
    allowed = _replay_keywords()
    fixed: dict[str, Any] = {}
    axes: list[tuple[tuple[str, ...], list[tuple]]] = []
    for raw_key, value in raw.items():
        if raw_key in SPEC_FIELDS:
            continue
        key = _field(raw_key, allowed, where)
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{where}: field {raw_key!r} is an empty list; give at least one value")
            axes.append(((key,), [(v,) for v in value]))
        else:
            fixed[key] = value
    groups = raw.get("group", [])
    if isinstance(groups, dict):
        groups = [groups]
    for i, group in enumerate(groups):
        names, columns = [], []
        for raw_key, value in group.items():
            key = _field(raw_key, allowed, f"{where} [[group]] {i + 1}")
            if not isinstance(value, list):
                raise ValueError(f"{where}: [[group]] {i + 1} field {raw_key!r} must be a list (values that vary "
                                 f"together); move a fixed value out of the group")
            names.append(key)
            columns.append(value)
        if len({len(c) for c in columns}) > 1:
            lengths = ", ".join(f"{n}: {len(c)}" for n, c in zip(names, columns))
            raise ValueError(f"{where}: [[group]] {i + 1} lists differ in length ({lengths}); values in a group "
                             f"vary together, so give each the same number")
        if names:
            axes.append((tuple(names), list(zip(*columns))))
    all_keys = [k for names, _ in axes for k in names] + list(fixed)
    duplicated = {k for k in all_keys if all_keys.count(k) > 1}
    if duplicated:
        raise ValueError(f"{where}: field(s) {', '.join(sorted(duplicated))} given twice (plural and singular "
                         f"spelling, or both in and out of a [[group]]); keep one")
    trace_axis = [a for a in axes if "trace" in a[0]]
    if "trace" in fixed:
        axes.insert(0, (("trace",), [(fixed.pop("trace"),)]))
    elif not trace_axis:
        raise ValueError(f"{where}: no traces; add e.g. trace = [\"../traces/*.parquet\"]")
    # traces outermost, so runs of one trace sit together and a worker reads each trace once
    axes.sort(key=lambda a: "trace" not in a[0])

    fingerprints: dict[str, str] = {}
    runs: list[Run] = []
    seen: set[str] = set()
    checked: set[str] = set()
    for combo in itertools.product(*(values for _, values in axes)):
        params = dict(fixed)
        for (names, _), values in zip(axes, combo):
            params.update(zip(names, values))
        for name_written in _expand_traces(params.pop("trace"), base, where):
            location = _location(name_written, base)
            if location not in fingerprints:
                fingerprints[location] = trace_fingerprint(location)
            run_params = {k: _resolve_path(k, v, base) for k, v in params.items()}
            identity = _hash(run_params)
            if identity not in checked:
                # before a training trace is hashed, so a missing one is named as a spec error
                _check_values(run_params, where, base)
                checked.add(identity)
            # files a run reads besides its trace (a training trace) count by content too
            inputs = {k: trace_fingerprint(v) for k, v in run_params.items()
                      if k in PATH_FIELDS and isinstance(v, str) and (_is_url(v) or os.path.isfile(v))}
            key = run_key(fingerprints[location], name_written, run_params, inputs)
            if key in seen:
                continue  # the same run twice (e.g. overlapping globs): one row
            seen.add(key)
            runs.append(Run(key, name_written, location, fingerprints[location], run_params))
    name = str(raw.get("name") or (Path(where).stem if where != "<spec>" else "grid"))
    return Grid(name, where, runs, _hash(sorted(r.key for r in runs)))


def _check_values(params: dict, where: str, base: Path) -> None:
    """Read every value of a run as replay will, before any run starts: a typo, a wrong type or a missing
    file stops the grid here with the field named, instead of failing rows (or the grid) later."""
    for key, value in params.items():
        try:
            KNOB[key].parse(value, f"{where}: {key}")
        except ValueError as e:
            text = str(e)
            raise ValueError(text if text.startswith(where) else f"{where}: {key} = {value!r}: {text}") from None
    ReplayConfig.make(where=f"{where}: ", **params)  # and the rules between knobs the configuration holds
    train = params.get("train")
    if isinstance(train, str) and not _is_url(train) and not os.path.isfile(train):
        raise ValueError(f"{where}: train = {train!r}: no such trace (relative paths start at {base})")
    predictor = str(params.get("predictor", KNOB["predictor"].default))
    model = predictor.split(":", 1)[1] if predictor.startswith("learned:") else ""
    if model and not _is_url(model) and not os.path.isfile(model):
        raise ValueError(f"{where}: predictor = {predictor!r}: no such predictor model (relative paths start at "
                         f"{base}); fit one with `moesim fit-predictor TRAIN --out {model}`")
    user = _needs_train(params)
    if user and train is None:
        raise ValueError(f"{where}: {user} needs a training trace (a *different* trace whose expert counts it "
                         f"uses); add train = \"TRAIN.parquet\" to the spec, or to a [[group]] with it")


def _needs_train(params: dict) -> str | None:
    """What in a run needs `train` (replay refuses to start without it), said as the spec says it."""
    from ..predict import canonical_predictor, needs_train
    policy = policy_registry.canonical(str(params.get("policy", KNOB["policy"].default)))
    if policy == "static":  # replay() pins the experts the training trace used most
        return "policy 'static'"
    predictor = canonical_predictor(str(params.get("predictor", KNOB["predictor"].default)))
    return f"predictor {predictor!r}" if needs_train(predictor) else None


def run_key(fingerprint: str, trace: str, params: dict, inputs: dict | None = None) -> str:
    key = {"trace": trace, "fingerprint": fingerprint, "params": params}
    if inputs:
        key["inputs"] = inputs
    return _hash(key)[:24]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _replay_keywords() -> set[str]:
    return set(KNOB) | {"trace"}


def _field(raw_key: str, allowed: set[str], where: str) -> str:
    key = ALIASES.get(raw_key, raw_key).replace("-", "_")
    if key == "trace":
        return key
    try:
        return knob_name(key)
    except ValueError:
        near = suggest(key.replace("_", "-"), [k.replace("_", "-") for k in sorted(allowed)] + list(ALIASES))
        raise ValueError(f"{where}: unknown field {raw_key!r}{near}; a spec names trace and replay's options: "
                         f"{', '.join(sorted(allowed))} (plus name, description, [[group]])") from None


def _is_url(text: str) -> bool:
    return "://" in text


def _expand_traces(value, base: Path, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    out = []
    for pattern in values:
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: trace {pattern!r} is not a path; write a path, glob or URL as a string")
        if not glob.has_magic(pattern):
            out.append(pattern)
            continue
        if _is_url(pattern):
            import fsspec
            fs, _, found = fsspec.get_fs_token_paths(pattern)
            matches = sorted(fs.unstrip_protocol(p) for p in found)
        else:
            root = pattern if os.path.isabs(pattern) else str(base / pattern)
            matches = sorted(os.path.relpath(p, base) if not os.path.isabs(pattern) else p
                             for p in glob.glob(root))
        if not matches:
            raise ValueError(f"{where}: trace pattern {pattern!r} matches no file (relative paths start at "
                             f"{base}); fix the pattern")
        out.extend(matches)
    return out


def _location(trace: str, base: Path) -> str:
    if _is_url(trace):
        return trace
    path = Path(trace) if os.path.isabs(trace) else base / trace
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trace (named in the grid spec; relative paths start at {base})")
    return str(path.resolve())


def _resolve_path(key: str, value, base: Path):
    if key in PATH_FIELDS and isinstance(value, str) and not _is_url(value) and not os.path.isabs(value):
        return str((base / value).resolve())
    # a fitted predictor file: predictor = "learned:models/coact.npz"
    if key == "predictor" and isinstance(value, str) and value.startswith("learned:"):
        model = value.split(":", 1)[1]
        if model and not _is_url(model) and not os.path.isabs(model):
            return "learned:" + str((base / model).resolve())
    return value


_FINGERPRINTS: dict[tuple, str] = {}


def trace_fingerprint(location: str) -> str:
    """sha256 of the trace file's bytes (first 16 hex digits): the same data under any name or folder."""
    if _is_url(location):
        import fsspec
        fs, path = fsspec.core.url_to_fs(location)
        info = fs.info(path)
        stamp = (location, info.get("size"), str(info.get("mtime") or info.get("ETag") or info.get("etag")))
        opener = lambda: fs.open(path, "rb")  # noqa: E731
    else:
        st = os.stat(location)
        stamp = (location, st.st_size, st.st_mtime_ns)
        opener = lambda: open(location, "rb")  # noqa: E731
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        with opener() as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FINGERPRINTS[stamp] = h.hexdigest()[:16]
    return _FINGERPRINTS[stamp]
