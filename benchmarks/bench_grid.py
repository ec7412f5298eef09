"""Grid throughput: a 1,000-run count-mode grid on the full MoE-Beyond DeepSeek-V2-Lite train trace.

The trace (999 prompts, 2,448,290 rows, 14.7 M expert accesses) is the
converted public train set:

    moesim convert ../shared/real-traces/moe-beyond-dsv2lite/train --out /tmp/dsv2-train.parquet

The grid: 5 policies (lru, fifo, lfu, belady, random) x 25 capacities (2 %..98 %)
x 2 scopes (global, per-layer) x 4 seeds = 1,000 runs, `--jobs` local worker
processes. Reported: wall time of `run_grid` (expansion, the trace's fingerprint,
every worker reading the trace and building its access stream once, all replays,
checkpoint writes), and, from the rows' own `run_s`, where the time goes: the
replay engine per policy (ns per access) against reading the trace.

    python benchmarks/bench_grid.py --trace /tmp/dsv2-train.parquet          # compare with the baseline
    python benchmarks/bench_grid.py --trace ... --policies lru,fifo --save   # rewrite grid_baseline.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from moesim.grid import read_results, run_grid
from moesim.trace import access_stream, read_trace

BASELINE = Path(__file__).with_name("grid_baseline.json")
POLICIES = ["lru", "fifo", "lfu", "belady", "random"]
CAPACITIES = [f"{c}%" for c in range(2, 100, 4)]  # 25 values
SCOPES = ["global", "per-layer"]
SEEDS = [0, 1, 2, 3]


def spec_text(trace: str, policies: list[str], capacities: list[str], seeds: list[int]) -> str:
    return "\n".join([
        'name = "bench-grid"',
        f"trace = {json.dumps([trace])}",
        f"policy = {json.dumps(policies)}",
        f"capacity = {json.dumps(capacities)}",
        f"scope = {json.dumps(SCOPES)}",
        f"seed = {json.dumps(seeds)}",
        'mode = "count"',
        ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=os.environ.get("MOESIM_BENCH_TRACE", "/tmp/dsv2-train.parquet"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--capacities", type=int, default=len(CAPACITIES), help="use the first N capacities")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--save", action="store_true", help="write the result as the new baseline")
    args = ap.parse_args()
    if not Path(args.trace).is_file():
        raise SystemExit(f"{args.trace}: no such trace; convert the MoE-Beyond train set first (see the docstring)")
    policies = args.policies.split(",")

    t0 = time.perf_counter()
    trace = read_trace(args.trace)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    accesses = len(access_stream(trace, prefill_chunk=1))
    t_stream = time.perf_counter() - t0
    del trace

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(spec_text(str(Path(args.trace).resolve()), policies, CAPACITIES[:args.capacities],
                                  SEEDS[:args.seeds]))
        out = Path(tmp) / "results.parquet"
        t0 = time.perf_counter()
        report = run_grid(spec, out, jobs=args.jobs)
        wall = time.perf_counter() - t0
        df = read_results(out)
    assert report.failed == 0, df[df["error"].notna()]["error"].iloc[0]
    df["replay_s"] = df["run_s"] - df["read_s"]
    # rows of runs that differ only in a seed their policy ignores are copies (run_s 0): time only real replays
    replayed = df[df["run_s"] > 0]
    per_policy = {p: {"runs": int((df["policy"] == p).sum()),
                      "replays": int((replayed["policy"] == p).sum()),
                      "mean_replay_s": round(float(replayed.loc[replayed["policy"] == p, "replay_s"].mean()), 4),
                      "ns_per_access": round(float(replayed.loc[replayed["policy"] == p, "replay_s"].mean())
                                             / accesses * 1e9, 1)}
                  for p in policies}
    busy = float(df["replay_s"].sum())
    result = {
        "what": f"{len(df)}-run count-mode grid ({', '.join(policies)} x {args.capacities} capacities x "
                f"{len(SCOPES)} scopes x {args.seeds} seeds) on {Path(args.trace).name}, {accesses:,} accesses, "
                f"--jobs {args.jobs}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": len(df),
        "replays": len(replayed),
        "wall_s": round(wall, 1),
        "runs_per_s": round(len(df) / wall, 2),
        "replay_busy_s": round(busy, 1),
        "worker_read_s": round(float(df["read_s"].sum()), 1),
        "read_trace_s": round(t_read, 2),
        "access_stream_s": round(t_stream, 2),
        "per_policy": per_policy,
    }
    print(json.dumps(result, indent=2))
    if BASELINE.exists() and not args.save:
        base = json.loads(BASELINE.read_text())
        if base.get("runs") == result["runs"] and base.get("what") == result["what"]:
            print(f"baseline: {base['wall_s']} s wall -> now {result['wall_s']} s "
                  f"({result['wall_s'] / base['wall_s']:.2f}x)")
        else:
            print(f"baseline measured a different grid: {base.get('what')} in {base.get('wall_s')} s")
    if args.save:
        BASELINE.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {BASELINE}")


if __name__ == "__main__":
    main()
