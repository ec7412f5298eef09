"""moesim's prediction beside a real offloading run: replay what offload_harness.py ran and print a table.

For each run in the harness's JSON (its routing is stored in it: the exact accesses that ran) and each
cache size, this replays the routing with `moesim.replay(policy="lru", prefill_chunk=1)`:

- count mode, whose hits must equal the harness's (a check of both: it fails loudly if not);
- timed mode with **preset** figures, as a user would type them: `hardware="h100-sxm-pcie5"` (its host
  link: 53 GB/s, 20 us, 2 copy engines, measured on an H100 of the same PCIe 5.0 x16 kind) and the H200
  datasheet's 4.8 TB/s of HBM;
- timed mode with **calibrated** figures, all from the same run's measurements: bandwidth and latency from
  two lone copies (an expert and an eighth of one), one copy engine (the harness has one side stream), and
  the compute from the all-resident pass: `hbm` set so that moesim's expert time (bytes / hbm + launch) is
  the measured back-to-back expert time, and the card's dense bytes so that a token's dense parts take what
  the all-resident passes (the mean of the one before the sweep and the one after) left over. The zero-miss
  time then matches by construction; what is tested is the misses: the link, its overlap with compute,
  and the stalls.

A line "all resident" compares the all-resident pass with moesim at full capacity over an instant link
(bandwidth 1e9 GB/s, latency 0: compute only).

    python benchmarks/offload_compare.py                       # benchmarks/offload_h200.json
    python benchmarks/offload_compare.py results.json --markdown --runs 9-12
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

import moesim
from moesim.trace import Trace, TraceMeta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offload_harness import routing_from_record  # noqa: E402

PRESET = "h100-sxm-pcie5"
H200_HBM = "4800GB/s"  # NVIDIA H200 datasheet: 4.8 TB/s HBM3e
INSTANT = {"bandwidth": 1e9, "latency": 0.0}  # GB/s, us: a link that costs nothing, to time compute alone


def launch_seconds() -> float:
    """moesim's per-kernel launch charge, read off a replay: one token, one layer, one expert, no dense
    bytes, with link, HBM and FLOP rate all near-infinite, costs one launch for the dense part and one for
    the expert."""
    meta = TraceMeta(model="launch probe", num_layers=1, moe_layers=[0], num_experts=1, top_k=1,
                     bytes_per_expert=1, dense_bytes_per_layer=0, dtype="bfloat16")
    one = np.zeros(1, np.int64)
    tr = Trace.from_arrays(meta, request_id=one, phase=one + 1, step=one, token_pos=one, layer=one,
                           expert_ids=one.reshape(1, 1))
    row = moesim.replay(tr, policy="lru", capacity=1, mode="timed", hardware=PRESET, bandwidth=1e12,
                        latency=0.0, gpu_tflops=1e12, hbm=1e12, prefill_chunk=1)
    return row["total_s"] / 2


def resident_s(run: dict) -> float:
    """Time per token with every expert resident: the mean of the passes before and after the sweep
    (runs made before the harness timed one before have only the one after)."""
    passes = [run[k]["time_per_token_s"] for k in ("resident_before", "resident") if k in run]
    return sum(passes) / len(passes)


def calibration(run: dict) -> dict:
    """moesim's figures from the run's own measurements (see the module docstring)."""
    if not run["link"]:
        raise ValueError(f"{run['model']}: the run has no link measurements (a --device cpu run); "
                         f"compare GPU runs only")
    fit = run["link"]["fit"]
    launch_s = launch_seconds()
    expert_s = run["compute"]["expert_back_to_back_s"]
    per_token = resident_s(run)
    accesses_per_token = run["accesses"] / run["tokens"]
    dense_s = (per_token - accesses_per_token * expert_s) / run["layers"]
    if expert_s <= launch_s or dense_s <= launch_s:
        raise ValueError(f"{run['model']}: measured expert {expert_s * 1e6:.1f} us / dense {dense_s * 1e6:.1f} us "
                         f"per layer do not exceed moesim's {launch_s * 1e6:.0f} us launch; cannot calibrate hbm")
    hbm_Bps = run["bytes_per_expert"] / (expert_s - launch_s)
    return {"bandwidth_Bps": fit["bandwidth_Bps"], "latency_s": fit["latency_s"], "expert_s": expert_s,
            "dense_s": dense_s, "hbm_Bps": hbm_Bps, "dense_bytes_per_layer": int(round((dense_s - launch_s) * hbm_Bps))}


class OldLookupRule(ValueError):
    pass


def compare_run(run: dict) -> dict:
    if run.get("lookup") != "segment":
        # runs 1-12 (2026-12-01) looked a layer's experts up one at a time, protecting only those already
        # touched: moesim 0.1's timed rule, which 0.2 replaced by segment accounting (README, "Two modes")
        raise OldLookupRule(f"{run['model']}: this run predates segment accounting (its cache protected a "
                            f"layer's experts as they were touched); re-run offload_harness.py to compare it")
    tr = routing_from_record(run["routing"])
    cal = calibration(run)
    tr_cal = Trace(tr.table, dataclasses.replace(tr.meta, dense_bytes_per_layer=cal["dense_bytes_per_layer"]))
    preset = dict(hardware=PRESET, hbm=H200_HBM)
    calibrated = dict(hardware=PRESET, bandwidth=cal["bandwidth_Bps"] / 1e9, latency=cal["latency_s"] * 1e6,
                      hbm=cal["hbm_Bps"] / 1e9)

    def timed(trace, capacity, copy_engines=None, **figs):
        return moesim.replay(trace, policy="lru", capacity=capacity, mode="timed", prefill_chunk=1,
                             copy_engines=copy_engines, **figs)

    rows = []
    for c in run["capacities"]:
        cap = c["capacity_experts"]
        count = moesim.replay(tr, policy="lru", capacity=cap, mode="count", prefill_chunk=1)
        if (count["hits"], count["misses"]) != (c["hits"], c["misses"]):
            raise AssertionError(f"{run['model']} capacity {cap}: the harness counted {c['hits']} hits / "
                                 f"{c['misses']} misses, moesim count mode {count['hits']} / {count['misses']}")
        p = timed(tr, cap, **preset)
        k1 = timed(tr_cal, cap, copy_engines=1, **calibrated)
        k2 = timed(tr_cal, cap, copy_engines=2, **calibrated)
        if not p["hits"] == k1["hits"] == k2["hits"] == c["hits"]:
            raise AssertionError(f"{run['model']} capacity {cap}: timed-mode hits differ from the harness's")
        rows.append({"capacity": cap, "fraction": cap / run["num_items"], "hits": c["hits"], "misses": c["misses"],
                     "moesim_hits": count["hits"], "measured_s": c["time_per_token_s"],
                     "preset_s": p["total_s"] / p["steps"], "calibrated_1_s": k1["total_s"] / k1["steps"],
                     "calibrated_2_s": k2["total_s"] / k2["steps"]})
    n = run["num_items"]
    p = timed(tr, n, **{**preset, **INSTANT})
    k = timed(tr_cal, n, **{**calibrated, **INSTANT})
    rows.append({"capacity": "all resident", "fraction": 1.0, "hits": None, "misses": None, "moesim_hits": None,
                 "measured_s": resident_s(run), "preset_s": p["total_s"] / p["steps"],
                 "calibrated_1_s": k["total_s"] / k["steps"], "calibrated_2_s": k["total_s"] / k["steps"]})
    return {"run": run, "calibration": cal, "rows": rows}


def _err(pred: float, meas: float) -> str:
    return f"{(pred / meas - 1) * 100:+.1f}%"


def table(results: list[dict], markdown: bool = False) -> str:
    head = ["run", "model, layers x tokens", "capacity", "hits (harness = moesim)", "measured ms/token",
            "preset", "err", "calibrated, 1 engine", "err", "calibrated, 2 engines", "err"]
    body = []
    for res in results:
        run = res["run"]
        name = f"{run['model'].split('/')[-1]}, {run['layers']} x {run['tokens']}" + \
            ("" if run["routing_sync"] else ", no routing sync") + (", grouped" if run.get("grouped") else "")
        for r in res["rows"]:
            cap = r["capacity"] if isinstance(r["capacity"], str) else f"{r['capacity']} ({r['fraction']:.0%})"
            hits = "" if r["hits"] is None else f"{r['hits']:,} / {r['hits'] + r['misses']:,}"
            m = r["measured_s"]
            body.append([str(res["number"]), name, cap, hits, f"{m * 1e3:.3f}",
                         f"{r['preset_s'] * 1e3:.3f}", _err(r["preset_s"], m),
                         f"{r['calibrated_1_s'] * 1e3:.3f}", _err(r["calibrated_1_s"], m),
                         f"{r['calibrated_2_s'] * 1e3:.3f}", _err(r["calibrated_2_s"], m)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if 0 < i < 3 else "---:" for i in range(len(head))) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join("{:<%d}" % w if 0 < i < 3 else "{:>%d}" % w for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def calibration_lines(results: list[dict]) -> str:
    out = []
    for res in results:
        run, cal, link = res["run"], res["calibration"], res["run"]["link"]
        fit = link["fit"]
        out.append(f"run {res['number']}, {run['model']} ({run['bytes_per_expert']:,} B/expert): lone copy "
                   f"{link['expert']['median_s'] * 1e3:.3f} ms, 1/8 copy {link['expert/8']['median_s'] * 1e3:.3f} ms "
                   f"-> {cal['bandwidth_Bps'] / 1e9:.1f} GB/s, {cal['latency_s'] * 1e6:.1f} us; back to back "
                   f"{fit['back_to_back_Bps'] / 1e9:.1f} GB/s ({fit['back_to_back_per_copy_s'] * 1e3:.3f} ms a copy); "
                   f"expert {cal['expert_s'] * 1e6:.1f} us back to back ({run['compute']['expert_alone_s'] * 1e6:.1f} "
                   f"alone) -> hbm {cal['hbm_Bps'] / 1e9:.0f} GB/s; dense {cal['dense_s'] * 1e6:.1f} us a layer "
                   f"({run['compute']['dense_back_to_back_s'] * 1e6:.1f} back to back, "
                   f"{run['compute']['dense_alone_s'] * 1e6:.1f} alone); all resident "
                   + " / ".join(f"{k.replace('resident', '').strip('_') or 'after'} "
                                f"{run[k]['time_per_token_s'] * 1e3:.3f}"
                                for k in ("resident_before", "resident") if k in run) + " ms/token")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=str(Path(__file__).resolve().parent / "offload_h200.json"),
                    help="the harness's JSON (default: benchmarks/offload_h200.json)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--runs", help="which runs, numbered from 1 in file order: 9-12 or 1,4 (default all)")
    a = ap.parse_args(argv)
    doc = json.loads(Path(a.results).read_text())
    m = doc["machine"]
    print(f"{m.get('gpu', m.get('cpu', '?'))}, torch {m['torch']}, first run {m['date']}")
    numbers = range(1, len(doc["runs"]) + 1)
    if a.runs:
        try:
            numbers = sorted({n for part in a.runs.split(",") for n in
                              range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)})
        except ValueError:
            sys.exit(f"error: --runs {a.runs!r}: write run numbers as 9-12 or 1,4")
        if not numbers or numbers[0] < 1 or numbers[-1] > len(doc["runs"]):
            sys.exit(f"error: --runs {a.runs!r}: {a.results} holds runs 1-{len(doc['runs'])}")
    results = [{**compare_run(doc["runs"][n - 1]), "number": n} for n in numbers]
    print(calibration_lines(results))
    print()
    print(table(results, markdown=a.markdown))


if __name__ == "__main__":
    main()
