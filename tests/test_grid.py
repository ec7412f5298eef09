"""moesim grid: spec expansion, rows equal to direct replays, resume after kill -9, changed specs, Dask."""
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import moesim
from moesim.cli import main
from moesim.grid import OutputLock, expand, read_results, run_grid

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
SWITCH = TRACES / "switch-base-8-stratamoe.parquet"
MIXTRAL = TRACES / "mixtral-8x7b-speculative-decode.parquet"
PREDICTED = TRACES / "dsv2lite-moebeyond-test-predicted.parquet"
# wall times: the only columns allowed to differ between two runs of the same grid
VOLATILE = ["run_s", "read_s"]


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=VOLATILE).sort_values("run_key").reset_index(drop=True)


def test_spec_is_a_product_except_groups(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f"""
name = "product"
traces = ["{SWITCH}", "{MIXTRAL}"]
policies = ["lru", "lfu", "fifo"]
capacity = ["10%", 0.5]
mode = "count"
[[group]]
hardware = ["a100-pcie4", "h100-pcie5"]
seed = [3, 4]
""")
    grid = expand(spec)
    assert len(grid) == 2 * 3 * 2 * 2
    combos = {(r.trace, r.params["policy"], r.params["capacity"], r.params["hardware"], r.params["seed"])
              for r in grid.runs}
    assert len(combos) == 24
    # grouped values move together: no run pairs a100 with seed 4
    assert {(r.params["hardware"], r.params["seed"]) for r in grid.runs} == {("a100-pcie4", 3), ("h100-pcie5", 4)}
    assert all(r.params["mode"] == "count" for r in grid.runs)
    # traces outermost, so each trace's runs are contiguous
    names = [r.trace for r in grid.runs]
    assert names == sorted(names, key=[str(SWITCH), str(MIXTRAL)].index)


def test_globs_resolve_against_the_spec_folder(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (tmp_path / "traces").mkdir()
    for name in ("a.parquet", "b.parquet"):
        (tmp_path / "traces" / name).write_bytes(SWITCH.read_bytes())
    spec = write_spec(folder / "g.toml", 'trace = "../traces/*.parquet"\npolicy = "lru"\n')
    grid = expand(spec)
    assert [r.trace for r in grid.runs] == ["../traces/a.parquet", "../traces/b.parquet"]
    assert len({r.fingerprint for r in grid.runs}) == 1  # same bytes, same fingerprint
    assert len({r.key for r in grid.runs}) == 2          # but two runs: the trace name is part of the key


@pytest.mark.parametrize("text, words", [
    ('trace = "{t}"\npolicy = "lru"\ncapasity = ["10%"]\n', ["capasity", "unknown field"]),
    ('policy = "lru"\n', ["no traces"]),
    ('trace = "{t}"\n[[group]]\npolicy = ["lru", "lfu"]\ncapacity = ["10%"]\n', ["differ in length", "group"]),
    ('trace = "nothing-*.parquet"\n', ["matches no file"]),
    ('trace = "{t}"\npolicy = []\n', ["empty list", "policy"]),
    ('trace = "{t}"\npolicy = "lru"\npolicies = ["lfu"]\n', ["given twice"]),
    ('trace = "{t}"\npolicy = [lru]\n', ["not valid TOML"]),
])
def test_bad_specs_name_file_field_and_fix(tmp_path, text, words):
    spec = write_spec(tmp_path / "bad.toml", text.format(t=SWITCH))
    with pytest.raises(ValueError) as e:
        expand(spec)
    assert str(spec) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_rows_equal_direct_replays(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f"""
trace = ["{MIXTRAL}"]
policy = ["lru", "belady", "lfu"]
capacity = ["25%", 100]
bandwidth = ["8GB/s", "32GB/s"]
mode = "timed"
per_layer = true
""")
    out = tmp_path / "r.parquet"
    report = run_grid(spec, out, jobs=1)
    assert (report.runs, report.ran, report.failed) == (12, 12, 0)
    df = read_results(out)
    assert len(df) == 12 and df["run_key"].is_unique
    for row in df.itertuples():
        ref = moesim.replay(MIXTRAL, policy=row.policy, capacity=row.capacity if row.capacity != "100" else 100,
                            bandwidth=row.bandwidth, mode="timed", per_layer=True)
        for col in ("hits", "misses", "stall_s", "tpot_s", "bytes_moved", "capacity_experts", "bandwidth_gbps"):
            assert getattr(row, col) == ref[col], col
        assert list(row.hits_per_layer) == ref["hits_per_layer"]
    assert set(df["moesim_version"]) == {moesim.__version__}
    assert df["trace_fingerprint"].nunique() == 1 and df["error"].isna().all()


def test_seeds_a_policy_ignores_share_one_replay_and_every_row_is_still_written(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f"""
trace = ["{SWITCH}"]
policy = ["lru", "random"]
capacity = [12]
mode = "count"
seed = [0, 1, 2]
""")
    out = tmp_path / "r.parquet"
    report = run_grid(spec, out, jobs=1)
    assert (report.runs, report.ran) == (6, 6)
    df = read_results(out)
    assert len(df) == 6 and df["run_key"].is_unique and sorted(df["seed"]) == [0, 0, 1, 1, 2, 2]
    lru = df[df.policy == "lru"]
    assert lru["hits"].nunique() == 1 and (lru["run_s"] > 0).sum() == 1  # replayed once, copied twice
    for row in df.itertuples():  # and every row is what its own replay gives
        assert row.hits == moesim.replay(SWITCH, policy=row.policy, capacity=12, mode="count", seed=row.seed)["hits"]


def one_line_error(result) -> str:
    """The CLI's answer to bad input: a non-zero exit and one `Error:` line, no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("lines, words", [
    ('policy = 5\n', ["policy = 5", "unknown policy"]),
    ('horizon = "abc"\n', ["horizon", "'abc'", "whole number"]),
    ('policy = ["lru", "lur"]\n', ["'lur'", "did you mean 'lru'"]),
    ('capacity = ["10%", true]\n', ["capacity", "True"]),
    ('predictor = ["none", "learned:missing.npz"]\n', ["missing.npz", "no such predictor model", "fit-predictor"]),
    ('train = "missing.parquet"\n', ["train", "missing.parquet", "no such trace"]),
    ('predictor = ["none", "frequency"]\n', ["predictor 'frequency'", "needs a training trace", "train ="]),
    ('policy = ["lru", "static"]\n', ["policy 'static'", "needs a training trace"]),
])
def test_a_bad_value_stops_the_grid_before_any_run_in_one_line(tmp_path, lines, words):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\nmode = "count"\n' + lines)
    out = tmp_path / "r.parquet"
    result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(out), "--jobs", "1"])
    line = one_line_error(result)
    assert str(spec) in line
    for w in words:
        assert w in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]  # not a row run, not a file written


def test_a_run_failing_at_run_time_writes_the_rest_and_exits_non_zero(tmp_path):
    # a garbled predictor model passes the spec's checks (the file is there) and fails when a run loads it
    model = tmp_path / "coact.npz"
    model.write_bytes(b"not a model")
    spec = write_spec(tmp_path / "g.toml", f'''trace = "{SWITCH}"
policy = ["lru", "fifo"]
predictor = ["none", "learned:coact.npz", "recorded"]
capacity = 4
mode = "count"
''')
    out = tmp_path / "r.parquet"
    cmd = ["grid", str(spec), "--out", str(out), "--jobs", "1"]
    result = CliRunner().invoke(main, cmd)
    line = one_line_error(result)
    # the switch trace has no recorded predictions: those runs fail too, whatever the model
    assert "4 of 6 runs failed" in line and "First: policy=lru predictor=learned:" in line, line
    assert "wrote" in result.output and "(6 run now, 4 failed)" in result.output
    df = read_results(out).set_index(["policy", "predictor"])
    assert len(df) == 6 and df["error"].notna().sum() == 4
    for policy in ("lru", "fifo"):
        row = df.loc[(policy, "none")]
        assert pd.isna(row["error"])
        assert row["hits"] == moesim.replay(SWITCH, policy=policy, capacity=4, mode="count")["hits"]
    assert "pred_h" in df.loc[("lru", "recorded"), "error"]

    # run again: nothing to run, and still not a success, since the file holds failed runs
    again = CliRunner().invoke(main, cmd)
    assert "6 already in" in again.output and "(4 failed)" in again.output and "(0 run now)" in again.output
    assert "4 of 6 runs failed (4 in an earlier call)" in one_line_error(again)

    # fix the model: --retry-failed runs the four again, and only those; the learned ones now pass
    from moesim.predict import learned
    learned.fit(moesim.read_trace(SWITCH)).save(model)
    kept = df.loc[[("lru", "none"), ("fifo", "none")], "run_s"].tolist()
    retried = CliRunner().invoke(main, cmd + ["--retry-failed"])
    assert "4 failed, run again" in retried.output and "(4 run now, 2 failed)" in retried.output
    assert "2 of 6 runs failed" in one_line_error(retried)
    df = read_results(out).set_index(["policy", "predictor"])
    assert len(df) == 6 and df["run_key"].is_unique
    assert df.loc[[("lru", "none"), ("fifo", "none")], "run_s"].tolist() == kept  # not run again
    learned_rows = df.xs(f"learned:{model}", level="predictor")
    assert learned_rows["error"].isna().all() and (learned_rows["prefetch_issued"] > 0).all()


def test_a_second_grid_on_the_same_output_fails_at_once(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "fifo"]\nmode = "count"\n')
    other = write_spec(tmp_path / "h.toml", f'trace = "{SWITCH}"\npolicy = ["lfu"]\nmode = "count"\n')
    out = tmp_path / "r.parquet"
    run_grid(spec, out, jobs=1)
    before = out.read_bytes()
    assert not (tmp_path / "r.parquet.lock").exists()  # a finished grid leaves no lock file
    # another grid writing r.parquet: it holds the lock and its next checkpoint is half written
    half = tmp_path / ".r.parquet.4242.tmp"
    half.write_bytes(b"a checkpoint being written")
    with open(tmp_path / "r.parquet.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        for s in (other, spec):
            line = one_line_error(CliRunner().invoke(main, ["grid", str(s), "--out", str(out), "--jobs", "1"]))
            assert str(out) in line and "another `moesim grid` (pid 4242) is writing it" in line
        with pytest.raises(ValueError, match="another `moesim grid`"):
            run_grid(other, out, jobs=1, restart=True)
        # a dry run still answers, and touches nothing: not the temporary file, not the lock, not the output
        dry = CliRunner().invoke(main, ["grid", str(spec), "--out", str(out), "--dry-run"])
        assert dry.exit_code == 0 and "2 runs, 2 already in" in dry.output
        assert half.read_bytes() == b"a checkpoint being written"
    assert out.read_bytes() == before
    assert (tmp_path / "r.parquet.lock").read_text() == "4242\n"
    # once the other grid is gone, its lock file (a kill -9 leaves it) is taken over
    report = run_grid(other, out, jobs=1, restart=True)
    assert report.ran == 1 and list(read_results(out)["policy"]) == ["lfu"]
    assert not (tmp_path / "r.parquet.lock").exists() and not half.exists()


def test_a_dry_run_writes_nothing(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "fifo"]\nmode = "count"\n')
    out = tmp_path / "new" / "r.parquet"
    for flags in ([], ["--restart"], ["--retry-failed"]):
        result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(out), "--dry-run", *flags])
        assert result.exit_code == 0 and "2 runs, 0 already in" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]  # not even the folder


def test_a_forked_worker_does_not_keep_the_lock_of_a_killed_grid(tmp_path):
    out = tmp_path / "r.parquet"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import multiprocessing, os, sys, time
from moesim.grid import OutputLock
def work():  # runs after the fork's hooks: by then the worker has closed its copy of the lock
    print("worker", os.getpid(), flush=True)
    time.sleep(120)
OutputLock({str(out)!r}).acquire()
multiprocessing.get_context("fork").Process(target=work).start()
time.sleep(120)
"""], stdout=subprocess.PIPE, text=True)
    # wait for the worker itself to say so: a loaded machine may not have run it yet when its pid is known
    worker = int(holder.stdout.readline().split()[1])
    try:
        with pytest.raises(ValueError, match="is writing it"):
            OutputLock(out).acquire()
        holder.kill()
        holder.wait()
        assert Path(f"/proc/{worker}").exists()  # the grid's worker outlives it for a moment
        lock = OutputLock(out).acquire()  # but does not hold the grid's lock
        lock.release()
    finally:
        holder.kill()
        os.kill(worker, signal.SIGKILL)


def test_an_unreachable_dask_scheduler_is_one_line_soon(tmp_path):
    pytest.importorskip("distributed")
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "fifo"]\nmode = "count"\n')
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(tmp_path / "r.parquet"),
                                       "--executor", "dask", "--address", address])
    line = one_line_error(result)
    assert time.monotonic() - t0 < 20  # distributed alone would try for 30 s
    assert address in line and "no Dask scheduler answered" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]


def test_changed_spec_is_reported_not_mixed(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "lfu"]\nmode = "count"\n')
    out = tmp_path / "r.parquet"
    run_grid(spec, out, jobs=1)
    write_spec(spec, f'trace = "{SWITCH}"\npolicy = ["lru", "fifo"]\nmode = "count"\n')
    with pytest.raises(ValueError, match="different grid.*1 of them in the file.*--restart"):
        run_grid(spec, out, jobs=1)
    result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(out), "--jobs", "1"])
    assert result.exit_code != 0 and "different grid" in result.output
    with pytest.raises(ValueError, match="different grid"):
        run_grid(spec, out, jobs=1, extend=True)  # lfu's row is not in the new grid: extending cannot keep it
    report = run_grid(spec, out, jobs=1, restart=True)
    assert report.ran == 2
    assert set(read_results(out)["policy"]) == {"lru", "fifo"}


def test_a_grown_spec_extends_the_file_keeping_done_rows(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "lfu"]\nmode = "count"\n')
    out = tmp_path / "r.parquet"
    run_grid(spec, out, jobs=1)
    first = read_results(out).set_index("run_key")
    write_spec(spec, f'trace = "{SWITCH}"\npolicy = ["lru", "lfu", "fifo"]\nmode = "count"\n')
    with pytest.raises(ValueError, match="pass --extend to keep them and run the 1 new runs"):
        run_grid(spec, out, jobs=1)
    report = run_grid(spec, out, jobs=1, extend=True)
    assert (report.done_before, report.ran) == (2, 1)
    df = read_results(out).set_index("run_key")
    assert list(df["policy"]) == ["lru", "lfu", "fifo"]
    assert df.loc[first.index, "run_s"].tolist() == first["run_s"].tolist()  # kept, not re-run
    assert run_grid(spec, out, jobs=1).ran == 0  # the file now belongs to the grown spec


def test_rerun_of_a_finished_grid_runs_nothing(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "fifo"]\nmode = "count"\n')
    out = tmp_path / "r.parquet"
    run_grid(spec, out, jobs=1)
    before = out.read_bytes()
    (tmp_path / ".r.parquet.999.tmp").write_bytes(b"half a file from a killed writer")
    report = run_grid(spec, out, jobs=2)
    assert (report.done_before, report.ran) == (2, 0)
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".r.parquet.*.tmp"))


KILL_SPEC = f"""
name = "killed"
trace = ["{PREDICTED}", "{MIXTRAL}"]
policy = ["lru", "fifo", "lfu", "belady", "random"]
capacity = ["5%", "10%", "20%", "30%", "40%", "50%", "60%", "75%"]
mode = "count"
"""


def _rows(out: Path) -> int:
    try:
        return pq.ParquetFile(out).metadata.num_rows
    except Exception:
        return 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def test_grid_resumes_after_kill(tmp_path):
    spec = write_spec(tmp_path / "g.toml", KILL_SPEC)
    total = len(expand(spec))
    reference = tmp_path / "reference.parquet"
    run_grid(spec, reference, jobs=2)
    out = tmp_path / "r.parquet"
    cmd = [sys.executable, "-m", "moesim.cli", "grid", str(spec), "--out", str(out), "--jobs", "2",
           "--checkpoint-every", "0.05"]
    kills = 0
    for wanted in (1, total // 2):
        # kill -9 once the checkpoint holds at least `wanted` rows, mid-grid
        log = tmp_path / f"grid-{wanted}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while _rows(out) < wanted and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            workers = _children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            proc.wait()
            deadline = time.monotonic() + 10
            while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [w for w in workers if Path(f"/proc/{w}").exists()], "orphaned grid workers"
        proc.wait()
        assert 0 < _rows(out) <= total, log.read_text()
    assert kills >= 1, "the grid finished before it could be killed; make it bigger"
    assert _rows(out) < total or kills == 2
    finish = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    done_before = int(finish.stderr.split(" already in")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert 0 < done_before
    df = read_results(out)
    assert len(df) == total and df["run_key"].is_unique
    pd.testing.assert_frame_equal(comparable(df), comparable(read_results(reference)))
    # nothing of the killed runs is left behind in the folder
    assert not list(tmp_path.glob(".r.parquet.*.tmp")) and not (tmp_path / "r.parquet.lock").exists()


def test_a_running_grid_keeps_its_output_against_a_second_grid_and_dry_runs(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f"""
trace = "{MIXTRAL}"
policy = ["lru", "fifo", "lfu", "belady", "random"]
capacity = ["5%", "10%", "20%", "30%", "40%", "50%", "60%", "75%"]
bandwidth = ["8GB/s", "32GB/s"]
latency = ["5us", "10us", "20us", "40us"]
mode = "timed"
""")  # big enough (320 runs) to outlast a second process's start on a loaded machine
    other = write_spec(tmp_path / "h.toml", f'trace = "{SWITCH}"\npolicy = "lru"\nmode = "count"\n')
    out = tmp_path / "r.parquet"
    log = tmp_path / "grid.log"
    with open(log, "w") as err:
        first = subprocess.Popen([sys.executable, "-m", "moesim.cli", "grid", str(spec), "--out", str(out),
                                  "--jobs", "2", "--checkpoint-every", "0.02"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "r.parquet.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        # --restart: without the lock, it would replace the first grid's rows with its own
        second = subprocess.run([sys.executable, "-m", "moesim.cli", "grid", str(other), "--out", str(out),
                                 "--restart"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"Error: {out}: another `moesim grid` (pid {first.pid}) is writing it; wait for it to finish, "
            f"or choose another --out"]
        dry_runs = 0
        while first.poll() is None:  # dry runs, as fast as they come, while it rewrites its checkpoint
            result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(out), "--dry-run"])
            assert result.exit_code == 0, result.output
            dry_runs += 1
        assert dry_runs > 0, "the grid finished before the second one started; make it bigger"
    finally:
        first.kill()
    assert first.wait() == 0, log.read_text()
    df = read_results(out)
    assert sorted(df["run_key"]) == sorted(r.key for r in expand(spec).runs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml", "grid.log", "h.toml", "r.parquet"]


def test_trace_read_through_fsspec_url_gives_the_same_rows(tmp_path):
    local = write_spec(tmp_path / "a.toml", f'trace = "{MIXTRAL}"\npolicy = ["lru", "lfu"]\nmode = "count"\n')
    url = write_spec(tmp_path / "b.toml", f'trace = "file://{MIXTRAL}"\npolicy = ["lru", "lfu"]\nmode = "count"\n')
    run_grid(local, tmp_path / "a.parquet", jobs=1)
    run_grid(url, tmp_path / "b.parquet", jobs=1)
    a, b = read_results(tmp_path / "a.parquet"), read_results(tmp_path / "b.parquet")
    metrics = ["policy", "hits", "misses", "hit_rate", "trace_fingerprint"]
    pd.testing.assert_frame_equal(a[metrics], b[metrics])


def test_dask_executor_matches_local(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = write_spec(tmp_path / "g.toml", f"""
trace = ["{MIXTRAL}", "{SWITCH}"]
policy = ["lru", "lfu", "belady"]
capacity = ["25%", "50%"]
bandwidth = ["8GB/s", "32GB/s"]
mode = "timed"
per_layer = true
""")
    run_grid(spec, tmp_path / "local.parquet", jobs=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(tmp_path / "dask.parquet"),
                                           "--executor", "dask", "--address", cluster.scheduler_address])
        assert result.exit_code == 0, result.output
        assert f"dask at {cluster.scheduler_address}" in result.output
    local, dask = read_results(tmp_path / "local.parquet"), read_results(tmp_path / "dask.parquet")
    assert len(local) == 24
    pd.testing.assert_frame_equal(local.drop(columns=VOLATILE), dask.drop(columns=VOLATILE))


def test_cli_dry_run_counts_runs(tmp_path):
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = ["lru", "lfu"]\ncapacity = [1, 2, 3]\n')
    result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(tmp_path / "r.parquet"), "--dry-run"])
    assert result.exit_code == 0
    assert "6 runs, 0 already in" in result.output
    assert not (tmp_path / "r.parquet").exists()


def test_a_changed_training_trace_changes_the_runs(tmp_path):
    train = tmp_path / "train.parquet"
    train.write_bytes(SWITCH.read_bytes())
    spec = write_spec(tmp_path / "g.toml", f'trace = "{SWITCH}"\npolicy = "static"\ntrain = "train.parquet"\n'
                                           f'mode = "count"\n')
    before = expand(spec).runs[0]
    assert before.params["train"] == str(train)  # relative to the spec's folder
    train.write_bytes(MIXTRAL.read_bytes())
    assert expand(spec).runs[0].key != before.key


SWEEP_SPEC = f"""
name = "sweep"
trace = ["{PREDICTED}", "{MIXTRAL}"]
policy = ["lru", "fifo"]
capacity = ["1%", "5%", "10%", "25%", "50%", "100%", 0, 7]
scope = ["global", "per-layer"]
accounting = ["segment", "access"]
mode = "count"
per_layer = true
seed = [0, 1]
[[group]]
batch_size = [1, 3]
bytes_per_expert = ["1MB", "2MB"]
"""


def test_an_lru_capacity_sweep_is_one_curve_and_its_rows_equal_replays(tmp_path, monkeypatch):
    from moesim.grid import runs
    spec = write_spec(tmp_path / "g.toml", SWEEP_SPEC)
    grid = expand(spec)
    groups = runs.group_runs(grid.runs)
    lru = [g for g in groups if g[0].params["policy"] == "lru"]
    # one group per trace x scope x accounting x batching; all 8 capacities x 2 seeds in each
    assert len(lru) == 2 * 2 * 2 * 2 and all(len(g) == 16 for g in lru)
    assert sorted(len(g) for g in groups if g[0].params["policy"] == "fifo") == [2] * 128  # seed twins only
    out = tmp_path / "curve.parquet"
    report = run_grid(spec, out, jobs=2)
    assert (report.runs, report.ran, report.failed) == (len(grid), len(grid), 0)
    monkeypatch.setattr(runs, "CURVES", False)
    assert all(len(g) == 2 for g in runs.group_runs(grid.runs))
    replayed = tmp_path / "replayed.parquet"
    run_grid(spec, replayed, jobs=2)
    curve, plain = read_results(out), read_results(replayed)
    assert list(curve.columns) == list(plain.columns)
    pd.testing.assert_frame_equal(comparable(curve), comparable(plain))
    assert curve["error"].isna().all() and curve["hits_per_layer"].notna().all()


def test_a_resumed_sweep_runs_only_its_missing_capacities(tmp_path):
    from moesim.grid import GRID_META_KEY
    spec = write_spec(tmp_path / "g.toml", f"""
trace = "{MIXTRAL}"
policy = "lru"
capacity = ["1%", "10%", "20%", "40%", "80%"]
mode = "count"
per_layer = true
""")
    out = tmp_path / "r.parquet"
    run_grid(spec, out, jobs=1)
    full = read_results(out)
    # a grid killed after writing three of the five rows: the file as the checkpoint left it
    table = pq.read_table(out)
    keep = [k in set(full["run_key"][:3]) for k in table.column("run_key").to_pylist()]
    meta = table.schema.metadata[GRID_META_KEY]
    pq.write_table(table.filter(keep).replace_schema_metadata({GRID_META_KEY: meta}), out)
    report = run_grid(spec, out, jobs=1)
    assert (report.done_before, report.ran) == (3, 2)
    df = read_results(out)
    assert len(df) == 5 and df["run_key"].is_unique
    pd.testing.assert_frame_equal(comparable(df), comparable(full))
    result = CliRunner().invoke(main, ["grid", str(spec), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0 and "5 runs, 5 already in" in result.output


def test_a_sweep_with_a_capacity_its_trace_cannot_take_writes_that_run_s_error_alone(tmp_path):
    # a budget for layer 99, which the Switch sample does not have, fails that run alone (the sweep falls back
    # to a replay per run); the other two still equal their replays
    spec = write_spec(tmp_path / "g.toml", f"""
trace = "{SWITCH}"
policy = "lru"
capacity = ["10%", "50%", "99:3"]
scope = "per-layer"
mode = "count"
""")
    out = tmp_path / "r.parquet"
    report = run_grid(spec, out, jobs=1)
    assert (report.runs, report.failed) == (3, 1)
    df = read_results(out).set_index("capacity")
    assert df.loc["99:3", "error"] and "99" in df.loc["99:3", "error"]
    for cap in ("10%", "50%"):
        assert df.loc[cap, "hits"] == moesim.replay(SWITCH, policy="lru", capacity=cap, scope="per-layer",
                                                     mode="count")["hits"]


def test_a_sweep_told_in_routing_order_is_replayed_not_served_by_the_curve(tmp_path):
    """The one-pass LRU curve tells a segment's hits first; a sweep with --segment-order routing is replayed run
    by run, and its rows are the replays' (on a prompt kept whole, where the two orders part ways)."""
    from moesim.grid import runs
    spec = write_spec(tmp_path / "g.toml", f"""
trace = "{MIXTRAL}"
policy = "lru"
capacity = ["50%", "70%"]
mode = "count"
prefill_chunk = 0
segment_order = ["hits-first", "routing"]
""")
    groups = runs.group_runs(expand(spec).runs)
    assert sorted(len(g) for g in groups) == [1, 1, 2]  # routing: a run each; hits-first: one curve
    out = tmp_path / "r.parquet"
    run_grid(spec, out, jobs=1)
    df = read_results(out).set_index(["segment_order", "capacity"])
    for order in ("hits-first", "routing"):
        for cap in ("50%", "70%"):
            row = moesim.replay(MIXTRAL, policy="lru", capacity=cap, mode="count", prefill_chunk=0,
                                segment_order=order)
            assert df.loc[(order, cap), "hits"] == row["hits"], (order, cap)
    assert df.loc[("routing", "70%"), "hits"] != df.loc[("hits-first", "70%"), "hits"]  # 27,683 against 27,679
