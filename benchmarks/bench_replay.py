"""Replay throughput: accesses per second of `moesim.replay` per policy and mode, next to libCacheSim.

Two traces: the full MoE-Beyond DeepSeek-V2-Lite train set (~14.7 M expert
accesses, converted once and cached) and a 100 M-access synthetic trace from
`moesim.trace.synth.parametric` (cached too). Each (policy, mode) is timed as
`moesim.replay(trace, policy=P, capacity="10%", mode=M, stream=stream)` -- the
access stream is built once per trace, so what is timed is policy set-up plus
the compiled loop. Three modes: `count` (per-access accounting, the stream a
plain cache simulator replays), `count-segment` (count mode by (step, layer)
segment, the replay's default accounting) and `timed`. libCacheSim's
LRU/FIFO/LFU/Belady run on the same stream, written as its oracleGeneral
binary, in the same process, and their hit counts must equal count mode's
(the script fails otherwise).

Times are the process's CPU time, pinned to one core (the targets are per
core; on a shared machine other jobs' time does not count); wall times are in
the JSON as well. Each configuration runs once to warm up on the shipped sample
(same compiled signatures, so a slow policy on the big trace is not paid
twice), then up to --repeat times, best kept; a configuration stops repeating
once its runs took --max-config-s.

    python benchmarks/bench_replay.py                  # full: real + synthetic traces (~5-8 min)
    python benchmarks/bench_replay.py --quick          # the shipped sample only (no ../shared needed)
    python benchmarks/bench_replay.py --save           # also rewrite benchmarks/replay_baseline.json
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path(__file__).with_name("replay_baseline.json")
SAMPLE = ROOT / "traces" / "dsv2lite-moebeyond-sample.parquet"
REAL = Path("/work/shared/real-traces/moe-beyond-dsv2lite/train")
POLICIES = ("lru", "fifo", "lfu", "lfuda", "belady", "random", "static", "moe-infinity")
MODES = ("count", "count-segment", "timed")  # count: per access; count-segment: by (step, layer)
CAPACITY = "10%"
# the targets, M accesses/s on one core; the timed target is read as applying to the
# same four policies
TARGETS = {("lru", "count"): 100, ("fifo", "count"): 100, ("lfu", "count"): 30, ("belady", "count"): 30,
           ("lru", "timed"): 20, ("fifo", "timed"): 20, ("lfu", "timed"): 20, ("belady", "timed"): 40,
           ("moe-infinity", "count"): 30, ("moe-infinity", "count-segment"): 30, ("moe-infinity", "timed"): 15}
# DeepSeek-V2-Lite's shape (26 MoE layers x 64 routed experts, top-6) with some locality and coupling
SYNTH = dict(layers=26, experts=64, top_k=6, zipf_s=1.0, reuse_p=0.3, coupling=1.0, seed=0,
             prompt_tokens=64, decode_tokens=64, bytes_per_expert=17_301_504)


# ---------------------------------------------------------------- machine
def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    import numpy

    import moesim
    out = {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(), "platform": platform.platform(),
           "python": platform.python_version(), "numpy": numpy.__version__, "numba": numba.__version__,
           "moesim": moesim.__version__, "pinned_cpus": sorted(os.sched_getaffinity(0))}
    try:
        import libcachesim
        out["libcachesim"] = libcachesim.__version__
    except ImportError:
        out["libcachesim"] = None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "simsrc", "policies"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        out["git_commit"] = head.stdout.strip() or None
        out["engine_files_modified"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- traces (cached as Parquet)
def _digest(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def real_trace(cache_dir: Path):
    from moesim.trace import read_trace, write_trace
    from moesim.trace.importers import convert
    files = sorted(REAL.glob("*.csv"))
    if not files:
        raise SystemExit(f"{REAL}: no MoE-Beyond CSV files here; run with --quick to use the shipped sample")
    key = _digest([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    path = cache_dir / f"moe-beyond-dsv2lite-train-{key}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        write_trace(convert(files, format="moe-beyond"), path)
        print(f"  converted {len(files)} CSV files -> {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return read_trace(path)


def synth_traces(cache_dir: Path, accesses: int):
    """(the synthetic trace of about `accesses` accesses, a short one from the same model to train 'static')."""
    from moesim.trace import read_trace, write_trace
    from moesim.trace.synth import parametric, sample
    model = parametric(**SYNTH)
    tokens = math.ceil(accesses / (SYNTH["layers"] * SYNTH["top_k"]))
    path = cache_dir / f"synth-{_digest([SYNTH, tokens])}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        write_trace(sample(model, tokens=tokens, seed=1), path)
        print(f"  sampled {tokens:,} tokens -> {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return read_trace(path), sample(model, tokens=20_000, seed=2)


# ---------------------------------------------------------------- timing
def one_replay(trace, stream, policy: str, mode: str, train) -> tuple[float, float, dict]:
    import moesim
    kw = {"train": train} if policy == "static" else {}
    # count mode per access: the stream libCacheSim replays, so the two are compared on the same work
    kw["accounting"] = "access" if mode == "count" else "segment"
    w0, c0 = time.perf_counter(), time.process_time()
    row = moesim.replay(trace, policy=policy, capacity=CAPACITY, mode=mode.split("-")[0], stream=stream, **kw)
    return time.process_time() - c0, time.perf_counter() - w0, row


def best_of(fn, repeat: int, max_s: float) -> dict:
    """Run fn() -> (cpu_s, wall_s, result) up to `repeat` times, stopping once the runs took max_s."""
    cpu, wall, results = [], [], []
    while len(cpu) < repeat and (not cpu or sum(wall) < max_s):
        c, w, r = fn()
        cpu.append(c)
        wall.append(w)
        results.append(r)
    return {"cpu_s": [round(x, 4) for x in cpu], "wall_s": [round(x, 4) for x in wall], "results": results}


def bench_moesim(trace, stream, train, sample, sample_stream, policies, modes, args, warmed: dict) -> list[dict]:
    from moesim import policies as registry
    out = []
    n = len(stream)
    for policy in policies:
        if policy not in registry.POLICIES:
            print(f"  {policy}: not registered, skipped", flush=True)
            continue
        for mode in modes:
            entry = {"policy": policy, "mode": mode}
            try:
                if (policy, mode) not in warmed:
                    # the warm-up doubles as a speed probe: a policy that would take minutes on
                    # this trace is skipped (the first probe may include compiling, so probe twice)
                    for _ in range(2):
                        cpu_s, _, _ = one_replay(sample, sample_stream, policy, mode, sample)
                        warmed[policy, mode] = len(sample_stream) / max(cpu_s, 1e-9)
                        if n / warmed[policy, mode] <= args.max_run_s:
                            break
                estimate = n / warmed[policy, mode]
                if estimate > args.max_run_s:
                    entry["skipped"] = (f"about {estimate:.0f} s a run at its speed on the sample "
                                        f"({warmed[policy, mode] / 1e6:.2f} M/s) > --max-run-s {args.max_run_s:g}")
                    entry["sample_maccess_per_s"] = round(warmed[policy, mode] / 1e6, 3)
                    out.append(entry)
                    print("  " + _row_text(entry), flush=True)
                    continue
                runs = best_of(lambda: one_replay(trace, stream, policy, mode, train), args.repeat, args.max_config_s)
                hits = {r["hits"] for r in runs.pop("results")}
                if len(hits) != 1:
                    raise AssertionError(f"hits differ between identical runs: {sorted(hits)}")
                h = hits.pop()
                warmed[policy, mode] = n / min(runs["cpu_s"])  # a better speed probe for the next trace
                entry.update(runs, hits=h, hit_rate=round(h / n, 6),
                             maccess_per_s=round(n / min(runs["cpu_s"]) / 1e6, 2),
                             maccess_per_s_wall=round(n / min(runs["wall_s"]) / 1e6, 2))
            except Exception as e:  # noqa: BLE001 -- one broken policy must not lose the others' numbers
                entry["error"] = f"{type(e).__name__}: {e}"[:500]
            out.append(entry)
            print("  " + _row_text(entry), flush=True)
    return out


def bench_libcachesim(stream, capacity: int, cache_dir: Path, args) -> list[dict]:
    import numpy as np

    import _libcachesim as lcs
    items = np.ascontiguousarray(stream.item)
    path = cache_dir / f"stream-{hashlib.blake2b(items.tobytes(), digest_size=8).hexdigest()}.og"
    if not path.exists():
        t0 = time.perf_counter()
        lcs.write_oracle_general(items, path)
        print(f"  wrote libCacheSim oracleGeneral trace {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    n = len(items)
    out = []
    for policy in lcs.POLICIES:
        def run():
            w0, c0 = time.perf_counter(), time.process_time()
            miss_ratio = lcs.process(path, policy, capacity)
            return time.process_time() - c0, time.perf_counter() - w0, miss_ratio
        runs = best_of(run, args.repeat, args.max_config_s)
        h = lcs.hits_from_miss_ratio(runs.pop("results")[0], n)
        entry = {"policy": policy, **runs, "hits": h, "maccess_per_s": round(n / min(runs["cpu_s"]) / 1e6, 2),
                 "maccess_per_s_wall": round(n / min(runs["wall_s"]) / 1e6, 2)}
        out.append(entry)
        print(f"  libCacheSim {policy:<6} {entry['maccess_per_s']:8.2f} M/s  hits {h:,}", flush=True)
    return out


# ---------------------------------------------------------------- compile time
def compile_times(modes) -> dict:
    """Wall time of `moesim replay SAMPLE --mode M` with an empty numba cache, then again with it filled."""
    exe = shutil.which("moesim")
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from moesim.cli import main; sys.exit(main())"]
    out = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd + ["replay", str(SAMPLE), "--mode", mode], env=env, capture_output=True,
                                      text=True, timeout=900)
                times.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    out[mode] = {"error": (proc.stderr or proc.stdout).strip()[-500:]}
                    break
            else:
                out[mode] = {"first_run_s": round(times[0], 2), "cached_run_s": round(times[1], 2),
                             "compile_s": round(times[0] - times[1], 2)}
        print(f"  moesim replay --mode {mode}: {out[mode]}", flush=True)
    return out


# ---------------------------------------------------------------- report
def _row_text(e: dict, lcs: dict | None = None, base: dict | None = None) -> str:
    if "error" in e:
        return f"{e['policy']:<13} {e['mode']:<13} ERROR {e['error']}"
    if "skipped" in e:
        return f"{e['policy']:<13} {e['mode']:<13} skipped: {e['skipped']}"
    text = (f"{e['policy']:<13} {e['mode']:<13} {e['maccess_per_s']:9.2f} {e['maccess_per_s_wall']:9.2f} "
            f"{e['hit_rate']:9.2%} {len(e['cpu_s']):5d}")
    if lcs is not None:
        text += f" {lcs['maccess_per_s']:9.2f} {e['maccess_per_s'] / lcs['maccess_per_s']:7.2f}x"
    elif base is not None or TARGETS.get((e["policy"], e["mode"])):
        text += " " * 19
    if base is not None:
        text += f" {e['maccess_per_s'] / base['maccess_per_s']:8.2f}x"
    target = TARGETS.get((e["policy"], e["mode"]))
    if target:
        text += f"   >= {target:3d}: {'met' if e['maccess_per_s'] >= target else 'NOT met'}"
    return text


def report(name: str, t: dict, baseline: dict | None) -> None:
    print(f"\n{name}: {t['accesses']:,} accesses ({t['shape']}), capacity {CAPACITY} = {t['capacity_experts']} "
          f"experts; M accesses/s on one core (CPU time, best of runs)")
    print(f"{'policy':<13} {'mode':<13} {'M/s cpu':>9} {'M/s wall':>9} {'hit rate':>9} {'runs':>5} "
          f"{'libCS M/s':>9} {'ratio':>8} {'vs base':>8}")
    lcs = {e["policy"]: e for e in t.get("libcachesim", [])}
    base = {(e["policy"], e["mode"]): e for e in (baseline or {}).get("traces", {}).get(name, {}).get("moesim", [])
            if "maccess_per_s" in e}
    for e in t["moesim"]:
        print(_row_text(e, lcs.get(e["policy"]), base.get((e["policy"], e["mode"]))))


def check_agreement(t: dict) -> list[str]:
    ours = {e["policy"]: e for e in t["moesim"] if e["mode"] == "count" and "hits" in e}
    bad = []
    for e in t.get("libcachesim", []):
        if e["policy"] in ours and ours[e["policy"]]["hits"] != e["hits"]:
            bad.append(f"{e['policy']}: moesim count mode {ours[e['policy']]['hits']:,} hits, "
                       f"libCacheSim {e['hits']:,}")
        e["hits_agree"] = e["policy"] in ours and ours[e["policy"]]["hits"] == e["hits"]
    return bad


def targets(traces: dict) -> list[dict]:
    out = []
    for name, t in traces.items():
        got = {(e["policy"], e["mode"]): e for e in t["moesim"]}
        for (policy, mode), target in TARGETS.items():
            e = got.get((policy, mode))
            if e is None:
                continue
            rate = e.get("maccess_per_s")
            out.append({"trace": name, "policy": policy, "mode": mode, "target_maccess_per_s": target,
                        "maccess_per_s": rate, "met": rate is not None and rate >= target})
    return out


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the shipped sample trace only")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "moesim-bench-replay",
                    help="where converted/synthetic traces and libCacheSim files are kept between runs")
    ap.add_argument("--repeat", type=int, default=7, help="best of this many timed runs (the shared VM is noisy)")
    ap.add_argument("--max-config-s", type=float, default=10.0,
                    help="stop repeating a configuration once its runs took this long (wall)")
    ap.add_argument("--max-run-s", type=float, default=60.0,
                    help="skip a configuration whose one run would take longer (estimated from the sample)")
    ap.add_argument("--synth-accesses", type=int, default=100_000_000)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--no-libcachesim", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the first-run compile measurement")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--save", action="store_true", help=f"also write {BASELINE.name}")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad_modes = sorted(set(modes) - set(MODES))
    if bad_modes:
        ap.error(f"--modes: unknown {', '.join(bad_modes)}; choose from {', '.join(MODES)}")

    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # the targets are per core
    sys.path.insert(0, str(Path(__file__).parent))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    doc = {"benchmark": "replay throughput (benchmarks/bench_replay.py)", "quick": args.quick,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(), "load_avg_start": load_avg(),
           "settings": {"capacity": CAPACITY, "scope": "global", "repeat": args.repeat,
                        "max_config_s": args.max_config_s, "max_run_s": args.max_run_s,
                        "timer": "process CPU time (best), wall also kept",
                        "synthetic": {**SYNTH, "accesses": args.synth_accesses}},
           "targets_maccess_per_s": {f"{p} {m}": v for (p, m), v in TARGETS.items()}}
    print(f"pinned to CPU {cpu}; {doc['machine']['cpu_model']}, nproc {doc['machine']['nproc']}, "
          f"load average {doc['load_avg_start']}", flush=True)

    if not args.no_compile:
        print("first-run compile (empty NUMBA_CACHE_DIR) vs cached run:", flush=True)
        doc["compile"] = compile_times([m for m in modes if m in ("count", "timed")])

    from moesim.trace import access_stream, read_trace
    sample = read_trace(SAMPLE)
    sample_stream = access_stream(sample)
    if args.quick:
        plan = [("sample", lambda: (sample, sample))]
    else:
        plan = [("real", lambda: (real_trace(args.cache_dir), sample)),
                ("synthetic", lambda: synth_traces(args.cache_dir, args.synth_accesses))]
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    doc["traces"] = {}
    warmed: dict = {}  # (policy, mode) -> accesses/s on the sample, once warmed up
    failures = []
    for name, load in plan:
        print(f"\n{name} trace:", flush=True)
        trace, train = load()
        t0 = time.perf_counter()
        stream = access_stream(trace)
        meta = trace.meta
        t = {"source": meta.source.get("name"), "model": meta.model, "accesses": len(stream),
             "shape": f"{stream.num_layers} layers x {stream.num_experts} experts, top-{stream.top_k}",
             "stream_build_s": round(time.perf_counter() - t0, 2)}
        print(f"  {len(stream):,} accesses, stream built in {t['stream_build_s']} s", flush=True)
        t["moesim"] = bench_moesim(trace, stream, train, sample, sample_stream, policies, modes, args, warmed)
        import moesim
        t["capacity_experts"] = moesim.replay(trace, policy="fifo", capacity=CAPACITY, mode="count",
                                              stream=stream)["capacity_experts"]
        if not args.no_libcachesim:
            t["libcachesim"] = bench_libcachesim(stream, t["capacity_experts"], args.cache_dir, args)
            failures += [f"{name}: {b}" for b in check_agreement(t)]
        doc["traces"][name] = t
        del trace, train, stream
        gc.collect()

    doc["load_avg_end"] = load_avg()
    doc["targets"] = targets(doc["traces"])
    doc["total_s"] = round(time.perf_counter() - t_start, 1)
    for name, t in doc["traces"].items():
        report(name, t, baseline)
    if "compile" in doc:
        print("\nfirst run (compiles) vs second run (numba cache on disk), wall s:")
        for mode, c in doc["compile"].items():
            print(f"  moesim replay {SAMPLE.name} --mode {mode}: {c}")
    met = [x for x in doc["targets"] if x["met"]]
    print(f"\ntargets met: {len(met)} of {len(doc['targets'])}; load average {doc['load_avg_start']} -> "
          f"{doc['load_avg_end']}; {doc['total_s']} s in all")
    errors = [f"{n}: {e['policy']} {e['mode']}: {e['error']}" for n, t in doc["traces"].items()
              for e in t["moesim"] if "error" in e]
    for path in ([args.json_out] if args.json_out else []) + ([BASELINE] if args.save else []):
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    if errors:
        print("\nerrors:\n  " + "\n  ".join(errors), file=sys.stderr)
    if failures:
        print("\nhit counts differ from libCacheSim:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
