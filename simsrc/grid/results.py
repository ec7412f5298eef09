"""The grid's output file, which is also its checkpoint, and the lock that gives it one writer.

The Parquet file is rewritten whole (temporary file, fsync, rename) every few seconds, so at any moment it
is complete; its metadata holds a hash of the grid's run set, so a changed spec is reported instead of
mixed in. A writer holds an exclusive lock on a sibling file (`OUT.lock`, flock) from opening the output
to its last write: a second grid on the same output stops at once instead of overwriting the first one's
rows, and nothing else (a dry run, a reader) needs the lock, because nothing else writes.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .spec import Grid

GRID_META_KEY = b"moesim_grid"

# lock descriptors this process holds: a forked worker closes its copies, so that the lock is the parent's
# alone and goes when the parent goes (flock belongs to the open file, which a fork shares)
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class OutputLock:
    """An exclusive, non-blocking flock on `OUT.lock`, removed when released (a killed holder's file stays,
    unlocked, and the next grid takes it)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> "OutputLock":
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise ValueError(f"{self.out}: cannot create its lock file {self.path} ({e.strerror}); "
                                 f"choose an --out in a folder you can write") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ValueError(f"{self.out}: cannot lock {self.path} ({e}); choose another --out") from None
                raise ValueError(f"{self.out}: another `moesim grid`{holder} is writing it; wait for it to finish, "
                                 f"or choose another --out") from None
            # the last holder removes the file when it lets go: a lock on a file already unlinked guards nothing
            try:
                here, now = os.fstat(fd), os.stat(self.path)
                current = (here.st_dev, here.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                _HELD.add(fd)
                return self
            os.close(fd)
        raise ValueError(f"{self.out}: could not lock {self.path}: other grids keep taking it; choose another --out")

    def release(self) -> None:
        if self.fd is None:
            return
        # unlink first, still holding it: whoever opened the old file and locks it next sees it is stale
        self.path.unlink(missing_ok=True)
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


class ResultFile:
    """The output Parquet file, rewritten whole and renamed into place: any moment it is complete.

    Opening it for writing takes the output's lock (released by `close()`, or leaving a `with` block);
    `read_only=True` only reads what is there, for a dry run: no lock, no folder, no file touched.
    """

    def __init__(self, path: str | os.PathLike, grid: Grid, *, restart: bool = False, extend: bool = False,
                 read_only: bool = False):
        self.path = Path(path)
        self.grid = grid
        self.read_only = read_only
        self.order = {r.key: i for i, r in enumerate(grid.runs)}
        self.rows: dict[str, dict] = {}
        self.lock = OutputLock(self.path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            if not read_only:
                for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)  # left by a killed writer (we hold the lock); the file is intact
            if self.path.exists() and not restart:
                self._load(extend)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "ResultFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.lock.release()

    def _load(self, extend: bool = False) -> None:
        try:
            pf = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{self.path}: exists but is not a readable results file ({e}); "
                             f"pass --restart to replace it or choose another --out") from None
        raw = (pf.schema_arrow.metadata or {}).get(GRID_META_KEY)
        if raw is None:
            raise ValueError(f"{self.path}: exists but was not written by `moesim grid`; choose another --out "
                             f"or pass --restart to replace it")
        info = json.loads(raw)
        if info.get("spec_hash") != self.grid.spec_hash:
            table = pf.read(columns=["run_key"])
            keys = set(table.column("run_key").to_pylist())
            common = len(keys & set(self.order))
            grown = common == len(keys)
            if not (extend and grown):
                hint = (f"pass --extend to keep them and run the {len(self.grid) - common} new runs, "
                        if grown else "")
                raise ValueError(
                    f"{self.path}: holds {len(keys)} rows of a different grid (spec {info.get('spec')}, "
                    f"{info.get('runs')} runs); {self.grid.source} now expands to {len(self.grid)} runs, {common} "
                    f"of them in the file. The spec or a trace changed: {hint}write to a new --out, or pass "
                    f"--restart to discard the old rows")
        for row in pf.read().to_pylist():
            self.rows[row["run_key"]] = row

    @property
    def done(self) -> set[str]:
        return set(self.rows)

    def failed(self) -> list[dict]:
        """Rows of this grid whose run failed, in grid order."""
        rows = [r for r in self.rows.values() if r.get("error") is not None and r["run_key"] in self.order]
        return sorted(rows, key=lambda r: self.order[r["run_key"]])

    def forget_failed(self) -> int:
        """Drop the failed rows, so that their runs run again; returns how many."""
        failed = [r["run_key"] for r in self.failed()]
        for key in failed:
            del self.rows[key]
        return len(failed)

    def add(self, row: dict) -> None:
        self.rows[row["run_key"]] = row

    def write(self) -> None:
        if self.read_only or self.lock.fd is None:
            raise RuntimeError(f"{self.path}: opened read-only (or closed); open it to write")
        rows = sorted(self.rows.values(), key=lambda r: self.order.get(r["run_key"], math.inf))
        table = rows_to_table(rows)
        info = {"spec_hash": self.grid.spec_hash, "spec": self.grid.source, "name": self.grid.name,
                "runs": len(self.grid), "moesim_version": __version__}
        table = table.replace_schema_metadata({GRID_META_KEY: json.dumps(info).encode()})
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows to one table with a type per column: a column mixing types (capacity 166 and '10%') is text."""
    columns: dict[str, list] = {}
    for row in rows:
        for k in row:
            columns.setdefault(k, [])
    for k, values in columns.items():
        values.extend(row.get(k) for row in rows)
    arrays = {}
    for k, values in columns.items():
        kinds = {_kind(v) for v in values if v is not None}
        if kinds <= {int, float, bool} and len(kinds) > 1 and bool not in kinds:
            values = [None if v is None else float(v) for v in values]
        elif len(kinds) > 1 and not kinds <= {list}:
            values = [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values]
        # NaN in a metric of an error row stays NaN; None becomes a null
        arrays[k] = pa.array(values, from_pandas=True)
    return pa.table(arrays)


def _kind(value) -> type:
    for t in (bool, int, float, str, list):
        if isinstance(value, t):
            return t
    return type(value)


def read_results(path: str | os.PathLike):
    """A grid's results as a pandas DataFrame (one row per run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file (write one with `moesim grid SPEC --out {path}`)")
    return pq.read_table(path).to_pandas()
