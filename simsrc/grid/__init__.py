"""Policy grids: expand a TOML spec into replay runs, run them locally or on Dask, resumably.

A spec names traces (paths or globs, relative to the spec's folder, or fsspec
URLs), then any of replay()'s keyword arguments. A list is an axis, anything
else is fixed; axes combine as a product, except those listed together in a
`[[group]]` table, which vary in step (run i takes the i-th value of each):

    name = "lru-vs-lfu"
    trace = ["../traces/*.parquet"]
    policy = ["lru", "lfu", "belady"]
    capacity = ["5%", "10%", "25%"]
    mode = "count"
    [[group]]
    hardware = ["rtx4090-pcie4", "a100-pcie4"]
    bandwidth = ["24GB/s", "25GB/s"]

The output Parquet file is the checkpoint: finished rows are rewritten into it
atomically (temporary file, fsync, rename) every few seconds, each row keyed by
a hash of its parameters and its trace's content, so a killed grid (even with
kill -9) run again skips the rows already there and loses or repeats none. The
file's metadata holds a hash of the grid's run set, so a changed spec is
reported instead of mixed in, and a lock on the output gives it one writer.

The parts: `spec` (spec -> runs, validated), `runs` (one run in a worker, runs
answered together), `results` (the checkpoint file and its lock), `executors`
(local processes, Dask, and run_grid, which joins them).
"""
from .executors import DASK_CONNECT_TIMEOUT_S, EXECUTORS, FLUSH_EVERY_S, GridReport, run_grid
from .results import GRID_META_KEY, OutputLock, ResultFile, read_results, rows_to_table
from .runs import KEEP_TRACES, execute, execute_group, group_runs, read_location
from .spec import ALIASES, PATH_FIELDS, SPEC_FIELDS, Grid, Run, expand, load_spec, run_key, trace_fingerprint

__all__ = ["ALIASES", "DASK_CONNECT_TIMEOUT_S", "EXECUTORS", "FLUSH_EVERY_S", "GRID_META_KEY", "Grid", "GridReport",
           "KEEP_TRACES", "OutputLock", "PATH_FIELDS", "ResultFile", "Run", "SPEC_FIELDS", "execute",
           "execute_group", "expand", "group_runs", "load_spec", "read_location", "read_results", "rows_to_table",
           "run_grid", "run_key", "trace_fingerprint"]
