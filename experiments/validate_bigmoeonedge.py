"""Validate moesim against a real offloading runtime: BigMoeOnEdge on a phone (Qwen3-30B-A3B, Gemma-4-26B-A4B,
gpt-oss-120b; GGUF Q4_K_M experts streamed from flash into a byte-budget LRU cache).

(a) Count mode with the runtime's byte budget against the decode hit rate its `residency` column records.
(b) `moesim calibrate` fitted on the first half of the decode steps only, predicting the second half's
    total and per-step time; the straight line wall = a + b x misses, fitted the same way, beside it.
(c) Whether the fitted figures mean what they say: bookkeeping per miss against the runtime's mgmt_ms per
    miss, link bandwidth against its measured read rate, predicted stall against its stall_ms.

    python experiments/validate_bigmoeonedge.py [--data DIR] [--out experiments/bigmoeonedge]

DIR holds {qwen,gemma,gptoss}.route.csv and .metrics.csv (default: $MOESIM_REAL_TRACES, else
../shared/real-traces beside the repository, + bigmoeonedge-qwen3-gemma4-gptoss). Writes results.json,
results.md and each model's calibrated hardware file into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

import moesim
from moesim.calibrate import PARAMS, calibrate, read_measured
from moesim.trace import access_stream
from moesim.trace.importers import read_bigmoeonedge

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"qwen": "4000MiB", "gemma": "4000MiB", "gptoss": "3000MiB"}  # the runtime's --cache-mb
TARGETS = {"qwen": (0.05, 0.08), "gemma": (0.05, 0.08), "gptoss": (0.15, 0.40)}  # held-out |total|, per-step MAE
LANES = 4  # the runtime's --io-threads: flash reads under way at once
# every run: the runtime's byte budget, one global LRU, the prompt as one step, four read lanes
FIXED = dict(prefill_chunk=0, copy_engines=LANES, latency=0)
OWN = "runtime's figures, compute fitted"
VARIANTS = {
    "moesim": dict(),
    "moesim + latency": dict(fit="bandwidth,latency,miss_overhead,overlap,hbm"),
    "moesim + kv": dict(fit="bandwidth,latency,miss_overhead,overlap,hbm,kv_bytes_per_token"),
    "moesim, wall only": dict(use_parts=False),
}


def byte_budget_lru(route_csv: Path, budget: float, *, layer_sizes: bool = True, routing_order: bool = True) -> dict:
    """The runtime's cache rule as its SOURCE.md reads it from expert_stream_source.cpp, written out here:
    one LRU over all layers, each expert counted at its own layer's size; per group (a decode token's layer,
    or a prefill layer holding every prompt token) the missing experts are inserted, then the group's
    routings made most recent in routing order, then the least recent evicted while over budget (stopping
    at one of the group). layer_sizes=False counts every expert at the mean size (as moesim does);
    routing_order=False makes the hits recent before the misses (as moesim's segment accounting does).
    Returns its decode hit rate and how many decode rows agree with the runtime's `residency` column."""
    sizes = {}
    with open(route_csv, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            kv = dict(p.split("=", 1) for p in line[1:].split() if "=" in p)
            if "expert_bytes" in kv:
                sizes[int(kv["layer"])] = int(kv["expert_bytes"])
    if not layer_sizes:
        mean = round(sum(sizes.values()) / len(sizes))
        sizes = dict.fromkeys(sizes, mean)
    df = pd.read_csv(route_csv, comment="#").sort_values(["phase", "step", "layer", "slot"], kind="stable")
    work = [g for _, g in df[df.phase == 0].groupby("layer")] + [g for _, g in df[df.phase == 1].groupby(["step", "layer"])]
    lru: dict = {}  # (layer, expert) -> None, least recent first
    used = 0.0
    agree = hits = rows = 0
    for g in work:
        routed = list(zip(g.layer.tolist(), g.expert.tolist()))
        group = list(dict.fromkeys(routed))
        hit = {x: x in lru for x in group}
        for x in group:
            if not hit[x]:
                lru[x] = None
                used += sizes[x[0]]
        if not routing_order:
            routed = [x for x in routed if hit[x]] + [x for x in routed if not hit[x]]
        for x in routed:
            lru.pop(x)
            lru[x] = None
        while used > budget:
            victim = next(iter(lru))
            if victim in hit:
                break
            del lru[victim]
            used -= sizes[victim[0]]
        if int(g.phase.iloc[0]) == 1:
            for x, res in zip(zip(g.layer.tolist(), g.expert.tolist()), g.residency.tolist()):
                rows += 1
                hits += hit[x]
                agree += hit[x] == (res > 0)
    return {"hit_rate": hits / rows, "rows_agreeing": agree, "rows": rows}


def noise_floor(meas, held: np.ndarray) -> dict:
    """What a model with a smooth compute time could reach at best on the held-out steps, given the measured
    stall and bookkeeping of every step exactly: compute as a running median (per-step error from compute
    spikes alone), or as the held-out mean (the total right)."""
    wall = meas.wall_s[held]
    wait = meas.parts["stall"][held] + meas.parts["overhead"][held]
    compute = pd.Series(meas.parts["compute"][held])
    out = {}
    for label, c in (("running median", compute.rolling(9, center=True, min_periods=1).median().to_numpy()),
                     ("mean", np.full(len(held), compute.mean()))):
        pred = c + wait
        out[label] = {"step_mape": float(np.mean(np.abs(pred - wall) / wall)),
                      "total_error": float((pred.sum() - wall.sum()) / wall.sum())}
    return out


def run(data: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = {"moesim_version": moesim.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "models": {}}
    for name, budget in MODELS.items():
        t0 = time.perf_counter()
        trace = read_bigmoeonedge(data / f"{name}.route.csv")
        metrics = data / f"{name}.metrics.csv"
        meas = read_measured(metrics)
        stream = access_stream(trace, prefill_chunk=0)
        count = moesim.replay(trace, stream=stream, mode="count", capacity=budget, prefill_chunk=0)
        budget_bytes = float(budget.removesuffix("MiB")) * 2**20
        rule = byte_budget_lru(data / f"{name}.route.csv", budget_bytes)
        rule_mean = byte_budget_lru(data / f"{name}.route.csv", budget_bytes, layer_sizes=False)
        rule_moesim = byte_budget_lru(data / f"{name}.route.csv", budget_bytes, layer_sizes=False, routing_order=False)
        r = {"capacity": budget, "capacity_experts": count["capacity_experts"],
             "bytes_per_expert_mean": trace.meta.bytes_per_expert,
             "expert_bytes_per_layer": sorted(set(trace.meta.extra["expert_bytes_per_layer"])),
             "hit_rate_decode": {"runtime": trace.meta.extra["phone_decode_hit_rate"],
                                 "moesim_count": count["hit_rate_decode"],
                                 "byte_budget_rule": rule["hit_rate"],
                                 "rule_rows_agreeing": rule["rows_agreeing"], "decode_rows": rule["rows"],
                                 "rule_mean_size": rule_mean["hit_rate"],
                                 "rule_mean_size_hits_first": rule_moesim["hit_rate"]},
             "calibrations": {}}
        cals = {}
        for label, opts in VARIANTS.items():
            cal = calibrate(trace, meas, capacity=budget, **FIXED, **opts)
            cals[label] = cal
            r["calibrations"][label] = _summary(cal)
        # the runtime's own figures, nothing fitted but compute: its read rate over four lanes, its
        # bookkeeping per miss, every read overlapping compute (what moesim assumed before calibrate)
        rt = cals["moesim"].runtime
        own = calibrate(trace, meas, capacity=budget, fit="hbm", **FIXED,
                        bandwidth=f"{rt['read_rate'] / 1e9}GB/s", miss_overhead=f"{rt['overhead_per_miss_s'] * 1e6}us")
        r["calibrations"][OWN] = _summary(own)
        main = cals["moesim"]
        main.write(out / f"{name}-calibrated.toml")
        r["line"] = {"a_s": main.line["a_s"], "b_s": main.line["b_s"],
                     "fit": main.splits["fit"]["line"], "held_out": main.splits["held_out"]["line"]}
        r["runtime"] = main.runtime
        held = np.flatnonzero(main.steps["split"].to_numpy() == "held_out")
        r["noise_floor"] = noise_floor(meas, held)
        r["runtime_misses_vs_moesim"] = _misses_per_step(data / f"{name}.route.csv", main.steps)
        r["held_out_measured"] = {"wall_s": main.splits["held_out"]["measured_s"],
                                  **main.splits["held_out"]["measured_parts_s"]}
        r["seconds"] = time.perf_counter() - t0
        results["models"][name] = r
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    return results


def _summary(cal) -> dict:
    return {"fitted": cal.fitted, "at_bound": list(cal.at_bound), "unpinned": list(cal.unpinned), "options": cal.options,
            "evaluations": cal.evaluations, "fit": cal.splits["fit"]["moesim"],
            "held_out": cal.splits["held_out"]["moesim"], "held_out_parts_s": cal.splits["held_out"]["moesim_parts_s"]}


def _misses_per_step(route_csv: Path, steps: pd.DataFrame) -> dict:
    """How close moesim's count-mode misses per step are to the runtime's (its residency column)."""
    df = pd.read_csv(route_csv, comment="#")
    dec = df[df.phase == 1]
    runtime = dec.groupby("step").residency.apply(lambda r: int((r == 0).sum())).to_numpy()
    mine = steps["misses"].to_numpy()
    return {"steps_equal": int((runtime == mine).sum()), "steps": len(mine),
            "runtime_misses": int(runtime.sum()), "moesim_misses": int(mine.sum()),
            "mean_abs_diff": float(np.mean(np.abs(runtime - mine)))}


def _pct(v, signed=True):
    return "-" if v is None else (f"{v:+.1%}" if signed else f"{v:.1%}")


def markdown(res: dict) -> str:
    m = res["models"]
    names = {"qwen": "Qwen3-30B-A3B", "gemma": "Gemma-4-26B-A4B", "gptoss": "gpt-oss-120b"}
    out = [f"# moesim against BigMoeOnEdge (moesim {res['moesim_version']})", "",
           "Generated by `python experiments/validate_bigmoeonedge.py`; every number below is from results.json.", "",
           "## (a) Decode hit rate, count mode with the runtime's byte budget", "",
           "| model | budget | experts held (mean size) | runtime | moesim count | the runtime's rule | rule, mean size "
           "| rule, mean size, hits made recent first |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        h = r["hit_rate_decode"]
        out.append(f"| {names[k]} | {r['capacity']} | {r['capacity_experts']:,} | {h['runtime']:.2%} | "
                   f"{h['moesim_count']:.2%} | {h['byte_budget_rule']:.2%} ({h['rule_rows_agreeing']:,} of "
                   f"{h['decode_rows']:,} rows agree) | {h['rule_mean_size']:.2%} | {h['rule_mean_size_hits_first']:.2%} |")
    out += ["", "## (b) Held-out decode time: fitted on steps 1..N/2, predicting N/2+1..N", "",
            "| model | target (total, per step) | moesim total | moesim per-step MAE | line total | line per-step MAE "
            "| moesim + latency | moesim + kv | wall only | runtime's figures | floor: running-median compute + "
            "measured waits |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        c = r["calibrations"]
        t = TARGETS[k]
        cell = lambda v: f"{_pct(v['held_out']['total_error'])} / {_pct(v['held_out']['step_mape'], False)}"
        nf = r["noise_floor"]["running median"]
        out.append(f"| {names[k]} | ±{t[0]:.0%}, {t[1]:.0%} | {_pct(c['moesim']['held_out']['total_error'])} | "
                   f"{_pct(c['moesim']['held_out']['step_mape'], False)} | {_pct(r['line']['held_out']['total_error'])} | "
                   f"{_pct(r['line']['held_out']['step_mape'], False)} | {cell(c['moesim + latency'])} | {cell(c['moesim + kv'])} | "
                   f"{cell(c['moesim, wall only'])} | {cell(c[OWN])} | "
                   f"{_pct(nf['total_error'])} / {_pct(nf['step_mape'], False)} |")
    out += ["", "## (c) The fitted figures against the runtime's own", "",
            "| model | miss_overhead | runtime mgmt per miss | bandwidth | runtime read rate (per lane, x4) "
            "| overlap | hbm | held-out stall: moesim vs runtime | stall + overhead | compute |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        c = r["calibrations"]["moesim"]
        f, rt, h = c["fitted"], r["runtime"], c["held_out"]
        out.append(f"| {names[k]} | {PARAMS['miss_overhead'].show(f['miss_overhead'])} | "
                   f"{rt['overhead_per_miss_s'] * 1e6:.4g} us | {PARAMS['bandwidth'].show(f['bandwidth'])} | "
                   f"{rt['read_rate_lane'] / 1e9:.3g} GB/s, {rt['read_rate'] / 1e9:.3g} GB/s | "
                   f"{f['overlap']:.3g}{' (not pinned)' if 'overlap' in c['unpinned'] else ''} | "
                   f"{PARAMS['hbm'].show(f['hbm'])} | "
                   f"{_pct(h.get('stall_error'))} | {_pct(h.get('waiting_error'))} | {_pct(h.get('compute_error'))} |")
    out += ["", "Misses per step, moesim's count mode against the runtime's `residency` column:", ""]
    for k, r in m.items():
        d = r["runtime_misses_vs_moesim"]
        out.append(f"- {names[k]}: {d['steps_equal']} of {d['steps']} steps equal, {d['moesim_misses']:,} vs "
                   f"{d['runtime_misses']:,} misses in all, mean |difference| {d['mean_abs_diff']:.2f} per step")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(os.environ.get("MOESIM_REAL_TRACES", ROOT.parent / "shared" / "real-traces"))
    ap.add_argument("--data", type=Path, default=default / "bigmoeonedge-qwen3-gemma4-gptoss")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "bigmoeonedge")
    args = ap.parse_args()
    res = run(args.data, args.out)
    print(markdown(res))


if __name__ == "__main__":
    main()
