"""What a figure draws from, checked before it draws: grid results, predictor scorecards, or a trace.

Results and traces are both Parquet; a trace carries moesim's trace metadata, results carry a `hit_rate`
column. A source of the wrong sort is one line naming the file, what it is, and what the kind wanted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS, SCORECARDS, TRACE = "results", "scorecards", "trace"
RESULTS_OR_TRACE = "results or trace"
WANTS = {
    RESULTS: "grid results (the Parquet file `moesim grid SPEC --out results.parquet` writes)",
    SCORECARDS: "predictor scorecards (`moesim score-predictor TRACE --horizon H --json > card.json`)",
    TRACE: "one trace (a moesim trace Parquet file, such as those in traces/)",
    RESULTS_OR_TRACE: "grid results or one trace (the Parquet file `moesim grid SPEC --out results.parquet` "
                      "writes, or a moesim trace Parquet file)",
}


def accepts(wants: str) -> tuple[str, ...]:
    """The sorts of source a kind whose INPUT is `wants` draws from."""
    return (RESULTS, TRACE) if wants == RESULTS_OR_TRACE else (wants,)


def as_list(sources) -> list:
    from ..trace import Trace
    if isinstance(sources, (str, os.PathLike, dict, Trace)) or hasattr(sources, "columns"):
        return [sources]
    return list(sources)


def sort_of(source) -> tuple[str | None, str]:
    """(RESULTS, SCORECARDS, TRACE or None, what the source is in words)."""
    from ..trace import Trace
    if isinstance(source, Trace):
        return TRACE, "a trace"
    if hasattr(source, "columns"):  # a DataFrame
        return (RESULTS, "a results table") if "hit_rate" in source.columns else (None, "a table without hit_rate")
    if isinstance(source, dict):
        return (SCORECARDS, "a scorecard") if "by_horizon" in source else (None, "a dict without 'by_horizon'")
    path = Path(source)
    if not path.is_file():
        return None, "no such file"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PAR1":
        import pyarrow.parquet as pq
        from ..trace.schema import META_KEY
        try:
            schema = pq.read_schema(path)
        except Exception as e:  # noqa: BLE001 -- any unreadable footer is the same answer to the user
            return None, f"a damaged Parquet file ({e})"
        if META_KEY in (schema.metadata or {}):
            return TRACE, "a trace"
        if "hit_rate" in schema.names:
            return RESULTS, "grid results"
        return None, "a Parquet file that is neither a trace nor grid results"
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "neither Parquet nor JSON"
    if isinstance(card, dict) and "by_horizon" in card:
        return SCORECARDS, "a scorecard"
    return None, "JSON without a 'by_horizon' field"


def check(sources, wants: str, kind: str) -> list:
    """The sources as a list, each of the sort `kind` draws from, or a one-line error."""
    sources = as_list(sources)
    if not sources:
        raise ValueError(f"plot kind {kind!r} needs {WANTS[wants]}; none given")
    if wants == TRACE and len(sources) != 1:
        raise ValueError(f"plot kind {kind!r} draws {WANTS[wants]}; {len(sources)} sources given")
    for s in sources:
        sort, what = sort_of(s)
        if sort not in accepts(wants):
            if sort is None and what == "no such file":
                raise FileNotFoundError(f"{s}: no such file; plot kind {kind!r} draws {WANTS[wants]}")
            name = f"{s} is" if isinstance(s, (str, os.PathLike)) else "the source is"
            raise ValueError(f"{name} {what}, but plot kind {kind!r} draws {WANTS[wants]}")
    return sources


def results(sources, kind: str, where: dict | None = None):
    """Grid results as one DataFrame, only the rows that `where` ({column: value}) selects."""
    import pandas as pd
    from ..grid import read_results
    frames = [s if hasattr(s, "columns") else read_results(s) for s in check(sources, RESULTS, kind)]
    return select(pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], where)


def select(df, where: dict | None):
    """Rows whose `column` equals each value given (numbers compared as numbers: '8' selects 8.0)."""
    import numpy as np
    for column, value in (where or {}).items():
        if column not in df.columns:
            raise ValueError(f"cannot select on {column!r}: the results have no such column "
                             f"(they have {', '.join(c for c in df.columns if not c.endswith('_per_layer'))})")
        col = df[column]
        try:
            match = np.isclose(col.astype(float), float(value))
        except (TypeError, ValueError):
            match = col.astype(str) == str(value)
        if not match.any():
            have = ", ".join(sorted(map(str, col.dropna().unique())))
            raise ValueError(f"no result rows with {column} = {value}; the results have {column} in {{{have}}}")
        df = df[match]
    return df


def scorecards(sources, kind: str) -> list[dict]:
    return [s if isinstance(s, dict) else json.loads(Path(s).read_text())
            for s in check(sources, SCORECARDS, kind)]


def trace(sources, kind: str):
    from ..trace import Trace, read_trace
    (source,) = check(sources, TRACE, kind)
    return source if isinstance(source, Trace) else read_trace(source)


def model_layers(rows) -> list[int] | None:
    """The model layer number of each MoE layer for result rows of one trace: the rows' `moe_layers` column
    if they carry one, else the trace file they name (None when neither says)."""
    if "moe_layers" in rows.columns and rows["moe_layers"].notna().any():
        return [int(n) for n in rows["moe_layers"].dropna().iloc[0]]
    if "trace" not in rows.columns:
        return None
    path = Path(str(rows["trace"].iloc[0]))
    if not path.is_file():
        return None
    from ..trace import TraceError
    from ..trace import read_meta
    try:
        return list(read_meta(path).moe_layers)
    except TraceError:
        return None
