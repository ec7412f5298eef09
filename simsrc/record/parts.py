"""A recording in progress: finished request batches as parts in a sidecar folder.

`<out>.parts/part-<first step>.parquet` holds one finished batch each, written
atomically, so a kill at any moment loses at most the batch being generated.
`assemble` joins the parts, in step order, into `<out>` (again atomically: a
temporary file renamed over the old one), so `<out>` is always a complete,
valid trace of the batches finished when it was last assembled. When the
recording ends the folder is removed; `--resume` rebuilds it from `<out>`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..trace import TraceMeta, TraceWriter, read_meta, write_trace
from ..trace.schema import META_KEY


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


class Parts:
    # Parts up to this many rows in all are also kept in memory, so assembling
    # after each batch writes them without reading every part back.
    CACHE_ROWS = 2_000_000

    def __init__(self, out: Path):
        self.out = out
        self.dir = parts_dir(out)
        self._cache: dict[str, pa.Table] = {}
        self._cached_rows = 0

    def files(self) -> list[Path]:
        # dot-files are TraceWriter temporaries of a part that never finished
        return sorted(p for p in self.dir.glob("part-*.parquet"))

    def exists(self) -> bool:
        return self.dir.is_dir() and bool(self.files())

    def start(self, *, resume: bool) -> None:
        """Prepare the folder; with resume, adopt an already assembled trace as the first part."""
        leftovers = self.exists() or self.out.exists()
        if leftovers and not resume:
            raise ValueError(f"{self.out}: a trace (or its unfinished parts in {self.dir}) already exists; "
                             f"pass --resume to continue it, or choose another --out")
        self.dir.mkdir(parents=True, exist_ok=True)
        # temporaries of an interrupted TraceWriter (ours: its naming, in our folders)
        for tmp in [*self.dir.glob(".part-*"), *self.out.parent.glob(f".{self.out.name}.*.part")]:
            tmp.unlink()
        if resume and not self.files() and self.out.exists():
            shutil.copyfile(self.out, self.dir / "part-000000000.parquet")

    def write(self, trace, first_step: int) -> Path:
        path = write_trace(trace, self.dir / f"part-{first_step:09d}.parquet")
        self._remember(path.name, trace.table)
        return path

    def _remember(self, name: str, table: pa.Table) -> None:
        if self._cached_rows + table.num_rows <= self.CACHE_ROWS:
            self._cache[name] = table
            self._cached_rows += table.num_rows

    def _table(self, path: Path) -> pa.Table:
        table = self._cache.get(path.name)
        if table is None:
            table = pq.read_table(path)
            self._remember(path.name, table)
        return table

    def metas(self) -> list[TraceMeta]:
        return [read_meta(p) for p in self.files()]

    def assemble(self, meta: TraceMeta) -> int:
        """Write all parts into the output trace under `meta`; returns its rows."""
        files = self.files()
        schema = pq.read_schema(files[0]).with_metadata({META_KEY: meta.to_json()})
        rows = 0
        with TraceWriter(self.out, schema) as w:
            for p in files:
                table = self._table(p).replace_schema_metadata(schema.metadata)
                if table.schema != schema:
                    raise ValueError(f"{p}: columns {table.schema.names} differ from the first part's "
                                     f"{schema.names}; the recording settings changed between runs")
                w.write(table)
                rows += table.num_rows
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
