"""Helpers every importer shares: finding files, parsing "[8, 26, ...]" lists, numbering steps."""
from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from ...files import regular_file
from ..schema import DECODE, TraceError, checked_cast

Progress = Callable[[int], None]  # called with how many more input files are done



# Files that travel with traces but are not traces: skipped when a folder or a pattern names them.
DOC_SUFFIXES = {".md", ".txt", ".rst", ".html", ".pdf", ".png", ".svg", ".yaml", ".yml", ".toml", ".cff"}
DOC_STEMS = {"license", "licence", "copying", "notice", "readme", "source", "authors", "changelog", "citation"}


def is_documentation(path: Path) -> bool:
    """SOURCE.md, README, LICENSE and the like, and hidden files: what a trace folder holds besides traces."""
    return path.name.startswith(".") or path.suffix.lower() in DOC_SUFFIXES or path.stem.lower() in DOC_STEMS


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike], suffixes: Sequence[str] = ()) -> list[Path]:
    """Files named by paths, folders (their files with these suffixes) and glob patterns, de-duplicated.

    Folders and patterns skip documentation (SOURCE.md, LICENSE, ...); a file named on its own is taken as
    given, and must be a regular file (a named pipe would block the reader forever)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not is_documentation(f)
                           and (not suffixes or f.suffix in suffixes))
            if not found:
                subs = sorted(f.name for f in p.iterdir() if f.is_dir() and not f.name.startswith("."))
                if subs:
                    raise TraceError(f"{p}: folder holds subfolders ({', '.join(subs)}) and no trace files; "
                                     f"convert one subfolder at a time, e.g. {p / subs[0]}")
                raise TraceError(f"{p}: folder holds no {'/'.join(suffixes) or 'trace'} files to import")
            out.extend(found)
        elif p.exists() or p.is_symlink():
            try:
                out.append(regular_file(p, "trace file"))
            except ValueError as e:
                raise TraceError(str(e)) from None
        elif any(c in str(p) for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(p)) if Path(f).is_file() and not is_documentation(Path(f)))
            if not found:
                raise TraceError(f"{p}: the pattern matches no files")
            out.extend(found)
        else:
            raise TraceError(f"{p}: no such file or folder")
    return list(dict.fromkeys(out))


def read_json(path: Path, what: str):
    """A JSON document, or one line naming the file and what it should be."""
    try:
        return json.loads(regular_file(path, what).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: not JSON ({e}); expected {what}") from None
    except ValueError as e:  # not a regular file
        raise TraceError(str(e)) from None


def json_ints(value, where: str, field: str, dtype=np.int64, **bounds) -> np.ndarray:
    """A JSON list (of lists) of whole numbers as an array: ragged lists, text, fractions or values out of
    range are one error naming the field (never a truncated 1.7 -> 1)."""
    try:
        a = np.asarray(value)
    except ValueError:
        raise TraceError(f"{where}: {field} is ragged (lists of different lengths)") from None
    if a.dtype == object and a.ndim == 1 and a.size and isinstance(a.flat[0], list):
        raise TraceError(f"{where}: {field} is ragged (lists of different lengths)")
    return checked_cast(a, dtype, where, field, **bounds)


_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[[ord(c) for c in "0123456789,[] \t"]] = True


def parse_id_lists(col: pa.Array | pa.ChunkedArray, k: int | None, where: str, field: str,
                   first_line: int = 2) -> np.ndarray:
    """Strings like "[8, 26, 56]" -> int32 array (rows, k), parsed straight from Arrow's byte buffer.

    Numpy over the raw bytes (digit runs -> numbers, commas and brackets counted per
    row) is several times faster than Arrow's regex kernels on millions of short
    lists. first_line: the file line of row 0 (2 after a one-line header), so errors
    name the line.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())
    n = len(col)

    def fail(r: int, why: str):
        raise TraceError(f"{where}: line {first_line + r}: {field} {str(col[r].as_py())!r} {why}; "
                         f"write it as \"[3, 17, 42]\" (non-negative integers in brackets, comma-separated)")

    if col.null_count:
        fail(int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]), "is empty")
    if n == 0:
        return np.zeros((0, k or 0), dtype=np.int32)
    _, offs_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offs_buf, dtype=np.int32, count=n + 1 + col.offset)[col.offset:]
    buf = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]]
    offsets = (offsets - offsets[0]).astype(np.int64)
    row_of_byte = np.repeat(np.arange(n, dtype=np.int32), np.diff(offsets))
    bad = ~_ALLOWED[buf]
    if bad.any():
        fail(int(row_of_byte[np.argmax(bad)]), "holds a character that is not a digit, comma or bracket")
    is_digit = (buf >= 48) & (buf <= 57)
    starts = np.flatnonzero(is_digit & ~np.r_[False, is_digit[:-1]])
    ends = np.flatnonzero(is_digit & ~np.r_[is_digit[1:], False]) + 1
    num_row = row_of_byte[starts]
    count = np.bincount(num_row, minlength=n)
    commas = np.bincount(row_of_byte[buf == ord(",")], minlength=n)
    opens = np.bincount(row_of_byte[buf == ord("[")], minlength=n)
    closes = np.bincount(row_of_byte[buf == ord("]")], minlength=n)
    broken = (opens != 1) | (closes != 1) | (commas != count - 1) | (count == 0)
    if broken.any():
        fail(int(np.argmax(broken)), "is not one bracketed, comma-separated list")
    # '[' before the first number and ']' after the last, exactly one comma between neighbours
    cum = np.cumsum(buf == ord(","))
    open_pos = np.flatnonzero(buf == ord("["))
    close_pos = np.flatnonzero(buf == ord("]"))
    first_num = np.r_[True, num_row[1:] != num_row[:-1]]
    last_num = np.r_[num_row[1:] != num_row[:-1], True]
    gap_ok = np.ones(len(starts), dtype=bool)
    gap_ok[1:] = first_num[1:] | (cum[starts[1:] - 1] - cum[ends[:-1] - 1] == 1)
    order_ok = np.ones(n, dtype=bool)
    order_ok[num_row[first_num]] &= open_pos[num_row[first_num]] < starts[first_num]
    order_ok[num_row[last_num]] &= close_pos[num_row[last_num]] >= ends[last_num]
    if not gap_ok.all() or not order_ok.all():
        r = int(num_row[np.argmin(gap_ok)]) if not gap_ok.all() else int(np.argmin(order_ok))
        fail(r, "is not one bracketed, comma-separated list")
    want = k if k is not None else int(count[0])
    wrong = np.flatnonzero(count != want)
    if wrong.size:
        r = int(wrong[0])
        raise TraceError(f"{where}: line {first_line + r}: {field} has {count[r]} experts but the trace has "
                         f"top-k {want}; every row needs exactly {want} ids")
    width = ends - starts
    if width.max() > 5:
        fail(int(num_row[np.argmax(width > 5)]), "holds an id above 65535")
    # value of each digit run: sum of digit * 10^(places to the run's end), summed per run
    digit_idx = np.flatnonzero(is_digit)
    run_end = np.repeat(ends, width)
    place = (run_end - digit_idx - 1).astype(np.int32)
    vals = np.add.reduceat((buf[digit_idx].astype(np.int32) - 48) * (10 ** place), np.r_[0, np.cumsum(width)[:-1]])
    return vals.reshape(n, want)


def sequential_steps(request_id: np.ndarray, token_pos: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Steps of requests served one after another at batch size 1: a request's prefill
    tokens share one step, then each decode token takes its own step."""
    n = len(request_id)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((token_pos, request_id))
    r, p, ph = request_id[order], token_pos[order], phase[order]
    new_token = np.r_[True, (r[1:] != r[:-1]) | (p[1:] != p[:-1])]
    new_req = np.r_[True, r[1:] != r[:-1]]
    prev_decode = np.r_[False, ph[:-1] == DECODE]
    # a step starts at each request's first token, at each decode token, and at a
    # prefill token that follows a decode token of the same request
    starts = new_token & (new_req | (ph == DECODE) | prev_decode)
    step_sorted = np.cumsum(starts) - 1
    out = np.empty(n, dtype=np.int64)
    out[order] = step_sorted
    return out


def prompt_number(path: Path) -> tuple[int, str]:
    """Sort key that puts prompt_2 before prompt_10 (the number in the name, then the name)."""
    m = re.search(r"(\d+)", path.stem)
    return (int(m.group(1)) if m else -1, path.name)


def parse_layers(spec: str | Sequence[int] | None) -> list[int] | None:
    """'1-26', '0,2,4' or a list -> sorted layer ids (each 0..65535: layer ids are stored as uint16)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return sorted(set(json_ints(list(spec), "--moe-layers", "layer id", np.uint16).tolist()))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi > MAX_LAYER_ID or lo > hi:
                raise ValueError(f"moe layers {spec!r}: range {part} must run upwards within 0..{MAX_LAYER_ID}")
            out.extend(range(lo, hi + 1))
        elif part.isdigit():
            if int(part) > MAX_LAYER_ID:
                raise ValueError(f"moe layers {spec!r}: layer {part} is above {MAX_LAYER_ID} (layer ids are uint16)")
            out.append(int(part))
        else:
            raise ValueError(f"moe layers {spec!r}: write them as '1-26' or '0,2,4'")
    return sorted(set(out))


MAX_LAYER_ID = 65535


def json_int_table(path: Path, key: str, what: str, layout: str) -> tuple[dict, np.ndarray]:
    """A JSON file and the integer table under `key`; one clear error for bad JSON, a missing key, ragged lists,
    fractions or text.

    what: the kind of file expected (for the message); layout: the table's expected nesting.
    """
    d = read_json(path, what)
    if not isinstance(d, dict):
        raise TraceError(f"{path}: holds a JSON {type(d).__name__}, not an object; not {what}")
    if key not in d:
        raise TraceError(f"{path}: no '{key}' key; not {what}")
    try:
        return d, json_ints(d[key], str(path), f"'{key}'")
    except TraceError as e:
        raise TraceError(f"{e}; expected {layout}") from None
