"""Running a grid: the pending runs, grouped, handed to local worker processes or a Dask cluster, their rows
written to the checkpoint file as they come back."""
from __future__ import annotations

import contextlib
import itertools
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .results import ResultFile
from .runs import execute_group, group_runs
from .spec import Grid, Run, expand

FLUSH_EVERY_S = 2.0
EXECUTORS = ("local", "dask")
# a scheduler that is there answers in milliseconds; a wrong address should not cost distributed's 30 s
DASK_CONNECT_TIMEOUT_S = 5.0

Group = tuple[Run, ...]


@dataclass
class GridReport:
    out: Path
    runs: int
    done_before: int
    ran: int
    failed: int               # runs that failed in this call
    seconds: float
    failed_total: int = 0     # rows of the grid in `out` whose run failed, from this call or an earlier one
    first_error: str | None = None  # the first of those in grid order: the run in a few words, then its error


def run_grid(spec: dict | str | os.PathLike | Grid, out: str | os.PathLike, *, jobs: int | None = None,
             executor: str = "local", address: str | None = None, restart: bool = False, extend: bool = False,
             retry_failed: bool = False, progress: Callable[[int], None] | None = None,
             base: str | os.PathLike | None = None, flush_every_s: float = FLUSH_EVERY_S,
             results: ResultFile | None = None) -> GridReport:
    """Run every run of a grid not yet in `out`, writing rows to `out` as they finish.

    executor: 'local' (jobs processes; 1 runs in this process) or 'dask' (a
    distributed scheduler at `address`, or a LocalCluster of `jobs` workers when
    none is given). restart: discard the rows in `out`; extend: keep them when the spec only grew (its runs
    include every row there); retry_failed: run again the runs whose rows in `out` have `error` set.
    progress(n) is called with the runs finished since the last call. `out` is locked while this runs: a
    second grid on it fails at once. results: `out` already opened (and locked) as a ResultFile by the
    caller, who closes it (the CLI opens it to report what is done; it is not read twice).
    """
    t0 = time.perf_counter()
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose {' or '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs {jobs}: give at least 1 worker (or leave it out: one per core)")
    grid = spec if isinstance(spec, Grid) else expand(spec, base=base)
    with contextlib.ExitStack() as stack:
        if results is None:
            results = stack.enter_context(ResultFile(out, grid, restart=restart, extend=extend))
        retried = results.forget_failed() if retry_failed else 0
        pending = [r for r in grid.runs if r.key not in results.done]
        done_before = len(grid) - len(pending)
        groups = group_runs(pending)
        jobs = min(jobs or os.cpu_count() or 1, max(len(groups), 1))
        # connect before the first write, so that a wrong address changes no file
        rows_of = stack.enter_context(_open_executor(executor, address, jobs, bool(groups)))
        failed = 0
        last_write = time.monotonic()
        dirty = restart or extend or retried or not results.path.exists()
        try:
            for rows in rows_of(groups):
                for row in rows:
                    results.add(row)
                    failed += row.get("error") is not None
                dirty = True
                if progress:
                    progress(len(rows))
                if time.monotonic() - last_write >= flush_every_s:
                    results.write()
                    last_write, dirty = time.monotonic(), False
        finally:
            if dirty:
                results.write()
        errors = results.failed()
        first = None
        if errors:
            run = grid.runs[results.order[errors[0]["run_key"]]]
            first = f"{grid.describe(run)}: {errors[0]['error']}"
    return GridReport(results.path, len(grid), done_before, len(pending), failed, time.perf_counter() - t0,
                      len(errors), first)


@contextlib.contextmanager
def _open_executor(executor: str, address: str | None, jobs: int, needed: bool) -> Iterator:
    """A function from groups of runs to an iterable of their rows (one list per group), ready to run."""
    if not needed:
        yield lambda groups: iter(())
    elif executor == "local":
        yield lambda groups: _local(groups, jobs)
    else:
        with _dask_client(address, jobs) as client:
            yield lambda groups: _dask(client, groups)


def _local(groups: list[Group], jobs: int) -> Iterable[list[dict]]:
    if jobs <= 1 or len(groups) == 1:
        for group in groups:
            yield execute_group(group)
        return
    with ProcessPoolExecutor(max_workers=jobs, initializer=_die_with_parent) as pool:
        # a bounded window of tasks in flight, handed out trace by trace
        todo = iter(groups)
        running = set()
        for group in itertools.islice(todo, 4 * jobs):
            running.add(pool.submit(execute_group, group))
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    yield fut.result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        running.add(pool.submit(execute_group, nxt))
        finally:
            for fut in running:
                fut.cancel()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the grid process dies (even by kill -9), so none is orphaned."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _dask_client(address: str | None, jobs: int):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("the dask executor needs dask.distributed: pip install 'moesim[dask]'") from None
    if address is None:
        with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT_S)
    except ValueError as e:
        raise ValueError(f"--address {address}: not a scheduler address ({e}); write tcp://HOST:8786") from None
    except (OSError, TimeoutError) as e:
        raise ValueError(f"--address {address}: no Dask scheduler answered within {DASK_CONNECT_TIMEOUT_S:g} s "
                         f"({type(e).__name__}: {e}); check the address (tcp://HOST:8786) and that "
                         f"`dask scheduler` runs there") from None
    with client:
        yield client


def _dask(client, groups: list[Group]) -> Iterable[list[dict]]:
    from distributed import as_completed
    # workers read traces themselves (shared path or URL); tasks carry only parameters
    futures = [client.submit(execute_group, group, key=f"moesim-run-{group[0].key}", pure=False)
               for group in groups]
    for fut in as_completed(futures):
        yield fut.result()
        fut.release()
