"""Validate moesim against a real offloading runtime: BigMoeOnEdge on a phone (Qwen3-30B-A3B, Gemma-4-26B-A4B,
gpt-oss-120b; GGUF Q4_K_M experts streamed from flash into a byte-budget LRU cache).

(a) Count mode with the runtime's byte budget against the decode hit rate its `residency` column records.
(b) `moesim calibrate` fitted on the first half of the decode steps only, predicting the second half's
    total and per-step time; the straight line wall = a + b x misses, fitted the same way, beside it; and
    what the best smooth compute could reach, to tell the model's error from the run's noise.
(c) Whether the fitted figures mean what they say: bookkeeping per miss against the runtime's mgmt_ms per
    miss, link bandwidth against its measured read rate, predicted stall against its stall_ms.
Then where the rest of the error comes from: compute that rises through the run (against attention's KV
reads at the model's own KV size) and the prompt's time (prefill), which decode steps cannot calibrate.

The link is the runtime's: four read threads (--io-threads 4) are four lanes, and an expert's three
projection tensors are read as three jobs that free threads take (expert_stream_source.cpp), so
lanes=4, stripes=3; the fit then sees the runtime's io_ms (time reading, summed over lanes) too.

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

import dataclasses

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

import moesim
from moesim.calibrate import PARAMS, calibrate, read_measured
from moesim.trace.importers import known_model, read_bigmoeonedge, read_bigmoeonedge_metrics

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"qwen": "4000MiB", "gemma": "4000MiB", "gptoss": "3000MiB"}  # the runtime's --cache-mb
TARGETS = {"qwen": (0.05, 0.08), "gemma": (0.05, 0.08), "gptoss": (0.15, 0.40)}  # held-out |total|, per-step MAE
LANES = 4    # the runtime's --io-threads: flash reads under way at once
STRIPES = 3  # an expert's gate, up and down tensors, read as three jobs
# every run: the runtime's byte budget, one global LRU told each layer's experts in routing order, the prompt
# as one step, its link
FIXED = dict(prefill_chunk=0, segment_order="routing", copy_engines=LANES, lanes=LANES, stripes=STRIPES, latency=0)
OWN = "runtime's figures, compute fitted"
CARD_KV = "moesim + KV at the card's size"
DECODE_ONLY = "moesim, decode steps only"
VARIANTS = {
    "moesim": dict(),
    DECODE_ONLY: dict(fit_prefill=False),
    "moesim, one lane": dict(lanes=1, stripes=1, use_parts=False),
    "moesim + latency": dict(fit="bandwidth,latency,miss_overhead,overlap,hbm"),
    "moesim + kv fitted": dict(fit="bandwidth,miss_overhead,overlap,hbm,kv_bytes_per_token"),
    "moesim, wall only": dict(use_parts=False),
}
# KV-cache bytes per token per layer from the model card, where moesim has it (importers/models.py), in
# the runtime's KV type (llama.cpp's default, f16)
CARDS = {"qwen": "qwen3-30b-a3b"}
KV_DTYPE = "float16"


def byte_budget_lru(route_csv: Path, budget: float, *, layer_sizes: bool = True, order: str = "routing") -> dict:
    """The runtime's cache rule as its SOURCE.md reads it from expert_stream_source.cpp, written out here:
    one LRU over all layers, each expert counted at its own layer's size; per group (a decode token's layer,
    or a prefill layer holding every prompt token) the missing experts are inserted, then the group's
    routings made most recent in routing order, then the least recent evicted while over budget (stopping
    at one of the group). layer_sizes=False counts every expert at the mean size (as moesim did before it
    counted bytes); order "moesim" makes the group's hits recent before its misses, each in order of first
    use (as moesim's segment accounting does), instead of every routing in routing order.
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
        if order == "moesim":
            routed = [x for x in group if hit[x]] + [x for x in group if not hit[x]]
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


def smooth_floor(meas, held: np.ndarray, total_target: float) -> dict:
    """What any model whose compute is a smooth function of the step could reach on the held-out steps, given
    the measured stall and bookkeeping of every step exactly and compute chosen with hindsight on those very
    steps: a running median of the measured compute, the constant that minimises the per-step error, and the
    straight line in the step number that minimises it while keeping the total within `total_target` (the
    issue's two targets at once). A per-step target below these is out of reach of a smooth model."""
    wall = meas.wall_s[held]
    wait = meas.parts["stall"][held] + meas.parts["overhead"][held]
    compute = meas.parts["compute"][held]
    x = np.arange(len(held), dtype=float)
    mape = lambda c: float(np.mean(np.abs(c + wait - wall) / wall))  # noqa: E731
    total = lambda c: float(((c + wait).sum() - wall.sum()) / wall.sum())  # noqa: E731
    out = {}
    rm = pd.Series(compute).rolling(9, center=True, min_periods=1).median().to_numpy()
    out["running median"] = {"step_mape": mape(rm), "total_error": total(rm)}
    best = minimize_scalar(lambda a: mape(np.full(len(x), a)), bounds=(0, compute.max()), method="bounded")
    out["best constant"] = {"step_mape": float(best.fun), "total_error": total(np.full(len(x), best.x))}
    # a line a + b x: for each slope, the intercepts that keep the total within the target form an interval
    # (the total is linear in a), and the per-step error is convex in a within it
    lines = []
    for b in np.linspace(-2, 2, 81) * compute.mean() / len(x):
        lo = ((1 - total_target) * wall.sum() - wait.sum() - b * x.sum()) / len(x)
        hi = ((1 + total_target) * wall.sum() - wait.sum() - b * x.sum()) / len(x)
        r = minimize_scalar(lambda a: mape(a + b * x), bounds=(lo, hi), method="bounded")
        lines.append((float(r.fun), total(r.x + b * x)))
    m, t = min(lines)
    out["best line, total within target"] = {"step_mape": m, "total_error": t}
    return out


def compute_drift(meas, held: np.ndarray, fit: np.ndarray) -> dict:
    """The measured compute of each split (mean and median), and how it follows page faults."""
    c = meas.parts["compute"]
    out = {"fit_mean_s": float(c[fit].mean()), "fit_median_s": float(np.median(c[fit])),
           "held_mean_s": float(c[held].mean()), "held_median_s": float(np.median(c[held]))}
    return out


def prefill_check(trace, budget: str, main, decode_only, measured_s: float) -> dict:
    """The prompt's step (one batch per layer): as the hardware calibrated on decode steps alone predicts it
    (the base preset's FLOP rate: decode steps at one token are memory-bound and do not pin it), and as the
    calibration that also fits the prompt does. `_prefill(flops)` replays it on the calibrated hardware at
    another FLOP rate (another model's, on the same phone)."""
    def prefill(hw) -> float:
        row = moesim.replay(trace, capacity=budget, **FIXED, per_step=True, hardware=hw)
        return float(row["step_s"][0])
    return {"measured_s": measured_s, "decode_only_s": prefill(decode_only.hardware),
            "gpu_flops_base": decode_only.hardware.gpu_flops, "gpu_flops_fitted": main.fitted["gpu_flops"],
            "calibrated_s": main.prompt["moesim_s"],
            "_prefill": lambda flops: prefill(dataclasses.replace(main.hardware, gpu_flops=flops))}


def run(data: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = {"moesim_version": moesim.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "link": {"lanes": LANES, "stripes": STRIPES}, "models": {}}
    prefills = {}
    for name, budget in MODELS.items():
        t0 = time.perf_counter()
        trace = read_bigmoeonedge(data / f"{name}.route.csv")
        metrics = data / f"{name}.metrics.csv"
        meas = read_measured(metrics)
        count = moesim.replay(trace, mode="count", capacity=budget, prefill_chunk=0, segment_order="routing")
        hits_first = moesim.replay(trace, mode="count", capacity=budget, prefill_chunk=0)
        budget_bytes = float(budget.removesuffix("MiB")) * 2**20
        route = data / f"{name}.route.csv"
        rule = byte_budget_lru(route, budget_bytes)
        rule_order = byte_budget_lru(route, budget_bytes, order="moesim")
        rule_mean = byte_budget_lru(route, budget_bytes, layer_sizes=False)
        r = {"capacity": budget, "capacity_experts": count["capacity_experts"],
             "bytes_per_expert_mean": trace.meta.bytes_per_expert,
             "expert_bytes_per_layer": sorted(set(trace.meta.extra["expert_bytes_per_layer"])),
             "hit_rate_decode": {"runtime": trace.meta.extra["phone_decode_hit_rate"],
                                 "moesim_count": count["hit_rate_decode"],
                                 "moesim_count_hits_first": hits_first["hit_rate_decode"],
                                 "byte_budget_rule": rule["hit_rate"],
                                 "rule_rows_agreeing": rule["rows_agreeing"], "decode_rows": rule["rows"],
                                 "rule_moesim_order": rule_order["hit_rate"],
                                 "rule_moesim_order_rows_agreeing": rule_order["rows_agreeing"],
                                 "rule_mean_size": rule_mean["hit_rate"]},
             "calibrations": {}}
        cals = {}
        for label, opts in VARIANTS.items():
            cal = calibrate(trace, meas, capacity=budget, **{**FIXED, **opts})
            cals[label] = cal
            r["calibrations"][label] = _summary(cal)
        # the runtime's own figures, nothing fitted but compute and overlap: its read rate over its lanes,
        # its bookkeeping per miss
        rt = cals["moesim"].runtime
        own = calibrate(trace, meas, capacity=budget, fit="overlap,hbm", **FIXED,
                        bandwidth=f"{rt['read_rate'] / 1e9}GB/s", miss_overhead=f"{rt['overhead_per_miss_s'] * 1e6}us")
        r["calibrations"][OWN] = _summary(own)
        if name in CARDS:  # attention's KV reads at the model's own KV size, growing with the context
            kv = known_model(CARDS[name]).kv_bytes_per_token(KV_DTYPE)
            card = calibrate(trace, meas, capacity=budget, **FIXED, kv_bytes_per_token=kv)
            r["calibrations"][CARD_KV] = _summary(card)
            r["kv_bytes_per_token_card"] = kv
        main = cals["moesim"]
        main.write(out / f"{name}-calibrated.toml")
        r["line"] = {"a_s": main.line["a_s"], "b_s": main.line["b_s"],
                     "fit": main.splits["fit"]["line"], "held_out": main.splits["held_out"]["line"]}
        r["runtime"] = main.runtime
        split = main.steps["split"].to_numpy()
        held, fit = np.flatnonzero(split == "held_out"), np.flatnonzero(split == "fit")
        r["smooth_floor"] = smooth_floor(meas, held, TARGETS[name][0])
        r["compute"] = compute_drift(meas, held, fit)
        if name == "gptoss":
            df = read_bigmoeonedge_metrics(metrics)
            r["compute"]["corr_compute_majflt"] = float(np.corrcoef(df.compute_ms, df.majflt)[0, 1])
            r["compute"]["majflt_per_step_fit_held"] = [float(df.majflt.iloc[fit].mean()),
                                                        float(df.majflt.iloc[held].mean())]
        r["runtime_misses_vs_moesim"] = _misses_per_step(route, main.steps)
        r["held_out_measured"] = {"wall_s": main.splits["held_out"]["measured_s"],
                                  **main.splits["held_out"]["measured_parts_s"]}
        summary = read_bigmoeonedge_metrics(metrics).attrs["summary"]
        assert main.prompt["measured_s"] == float(summary["prefill_s"])
        prefills[name] = prefill_check(trace, budget, main, cals[DECODE_ONLY], float(summary["prefill_s"]))
        r["seconds"] = time.perf_counter() - t0
        results["models"][name] = r
    # one phone, one CPU: the FLOP rate fitted with Qwen's prompt, used for the other two models' prompts
    rate = prefills["qwen"]["gpu_flops_fitted"]
    for name, pf in prefills.items():
        prefill = pf.pop("_prefill")
        pf["predicted_at_qwen_rate_s"] = prefill(rate)
        results["models"][name]["prefill"] = pf
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


def _met(value, target) -> str:
    return "met" if value is not None and abs(value) <= target else "not met"


NAMES = {"qwen": "Qwen3-30B-A3B", "gemma": "Gemma-4-26B-A4B", "gptoss": "gpt-oss-120b"}


def markdown(res: dict) -> str:
    m = res["models"]
    names = NAMES
    out = [f"# moesim against BigMoeOnEdge (moesim {res['moesim_version']})", "",
           "Generated by `python experiments/validate_bigmoeonedge.py`; every number below is from results.json. "
           f"The link is the runtime's: {res['link']['lanes']} read lanes (its `--io-threads`), each expert read as "
           f"{res['link']['stripes']} jobs (its gate, up and down tensors); capacities in bytes, each layer's "
           "experts at their own size.", "",
           "## (a) Decode hit rate, count mode with the runtime's byte budget", "",
           "| model | budget | experts held (mean size) | runtime | moesim count, routing order | target | moesim, "
           "hits first | the runtime's rule | rule, hits first | rule, mean size |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        h = r["hit_rate_decode"]
        exact = "met" if h["moesim_count"] == h["runtime"] else "not met"
        out.append(f"| {names[k]} | {r['capacity']} | {r['capacity_experts']:,} | {h['runtime']:.2%} | "
                   f"{h['moesim_count']:.2%} | {exact} | {h['moesim_count_hits_first']:.2%} | "
                   f"{h['byte_budget_rule']:.2%} ({h['rule_rows_agreeing']:,} of "
                   f"{h['decode_rows']:,} rows agree) | {h['rule_moesim_order']:.2%} ({h['rule_moesim_order_rows_agreeing']:,} agree) | "
                   f"{h['rule_mean_size']:.2%} |")
    out += ["", "moesim runs with `--segment-order routing`: the runtime makes every routing recent in routing "
            "order (a prompt's expert at its last use). \"hits first\" is moesim's default order, a layer's hits made "
            "recent before its misses, each at first use; \"rule, hits first\" is the runtime's rule written out "
            "with that order instead of its own.", "",
            "## (b) Held-out decode time: fitted on steps 1..N/2, predicting N/2+1..N", "",
            "| model | target (total, per step) | moesim total | moesim per-step MAE | met | line total | line per-step "
            "MAE | floor: best smooth compute, total within target | floor: running median |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        c = r["calibrations"]["moesim"]["held_out"]
        t = TARGETS[k]
        fl, rm = r["smooth_floor"]["best line, total within target"], r["smooth_floor"]["running median"]
        met = f"{_met(c['total_error'], t[0])} / {_met(c['step_mape'], t[1])}"
        out.append(f"| {names[k]} | ±{t[0]:.0%}, {t[1]:.0%} | {_pct(c['total_error'])} | {_pct(c['step_mape'], False)} | "
                   f"{met} | {_pct(r['line']['held_out']['total_error'])} | {_pct(r['line']['held_out']['step_mape'], False)} | "
                   f"{_pct(fl['step_mape'], False)} ({_pct(fl['total_error'])}) | "
                   f"{_pct(rm['step_mape'], False)} ({_pct(rm['total_error'])}) |")
    out += ["", "The floors take the measured stall and bookkeeping of every held-out step exactly and choose the "
            "compute with hindsight on those same steps; a per-step target below them is out of reach of any model "
            "whose compute does not know which steps spike.", "",
            "Other readings (held-out total / per-step MAE):", "",
            "| model | " + " | ".join(label for label in res["models"]["qwen"]["calibrations"]) + " |",
            "| --- |" + " --- |" * len(res["models"]["qwen"]["calibrations"])]
    for k, r in m.items():
        cells = []
        for label in res["models"]["qwen"]["calibrations"]:
            v = r["calibrations"].get(label)
            cells.append("-" if v is None else f"{_pct(v['held_out']['total_error'])} / {_pct(v['held_out']['step_mape'], False)}")
        out.append(f"| {names[k]} | " + " | ".join(cells) + " |")
    out += ["", "## (c) The fitted figures against the runtime's own", "",
            "| model | miss_overhead | runtime mgmt per miss | bandwidth | runtime read rate (per lane, x lanes) | overlap "
            "| hbm | held-out stall vs runtime | io vs runtime | stall + overhead | compute |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        c = r["calibrations"]["moesim"]
        f, rt, h = c["fitted"], r["runtime"], c["held_out"]
        out.append(f"| {names[k]} | {PARAMS['miss_overhead'].show(f['miss_overhead'])} | "
                   f"{rt['overhead_per_miss_s'] * 1e6:.4g} us | {PARAMS['bandwidth'].show(f['bandwidth'])} | "
                   f"{rt['read_rate_lane'] / 1e9:.3g} GB/s, {rt['read_rate'] / 1e9:.3g} GB/s | "
                   f"{f['overlap']:.3g}{' (not pinned)' if 'overlap' in c['unpinned'] else ''} | "
                   f"{PARAMS['hbm'].show(f['hbm'])}{' (not pinned)' if 'hbm' in c['unpinned'] else ''} | {_pct(h.get('stall_error'))} | {_pct(h.get('io_error'))} | "
                   f"{_pct(h.get('waiting_error'))} | {_pct(h.get('compute_error'))} |")
    out += ["", "How far these figures repeat: the same run on another machine (another CPU, whose compiled replay "
            "may round otherwise) moved Gemma's bandwidth and overlap 0.5-0.6 %, its held-out stall 0.5 points and its "
            "total 0.04 points, where the data leave the fit a flat valley; a figure marked not pinned can end "
            "anywhere the data allow (Gemma's hbm: 98 and 43 GB/s)."]
    out += ["", "With one lane (every read sharing one pipe, as before lanes; wall times only, since one lane's "
            "reading time is not the runtime's four threads'), the fit's bandwidth is:"]
    for k, r in m.items():
        f = r["calibrations"]["moesim, one lane"]["fitted"]
        out.append(f"- {names[k]}: {PARAMS['bandwidth'].show(f['bandwidth'])}, overlap {f['overlap']:.3g} "
                   f"(held out {_pct(r['calibrations']['moesim, one lane']['held_out']['total_error'])} / "
                   f"{_pct(r['calibrations']['moesim, one lane']['held_out']['step_mape'], False)})")
    out += ["", "## Where the held-out error comes from", "",
            "| model | measured compute, fit half: mean / median | held-out half: mean / median | moesim held-out "
            "compute | KV at the card's size: held-out total / per step |",
            "| --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        d = r["compute"]
        card = r["calibrations"].get(CARD_KV)
        kv = (f"{_pct(card['held_out']['total_error'])} / {_pct(card['held_out']['step_mape'], False)} "
              f"({r['kv_bytes_per_token_card']:,} B a token a layer)") if card else "no card"
        out.append(f"| {names[k]} | {d['fit_mean_s'] * 1e3:.0f} / {d['fit_median_s'] * 1e3:.0f} ms | "
                   f"{d['held_mean_s'] * 1e3:.0f} / {d['held_median_s'] * 1e3:.0f} ms | "
                   f"{_pct(r['calibrations']['moesim']['held_out'].get('compute_error'))} | {kv} |")
    g = m["gptoss"]["compute"]
    out += ["", f"gpt-oss: compute follows the major page faults (correlation {g['corr_compute_majflt']:.2f}; "
            f"{g['majflt_per_step_fit_held'][0]:,.0f} a step in the fit half, {g['majflt_per_step_fit_held'][1]:,.0f} "
            "held out): non-expert weights re-read from flash under memory pressure, which the routing does not "
            "predict.", "",
            "## The prompt (prefill, one batch per layer)", "",
            "The calibration fits the prompt's measured time (the metrics file's `prefill_s`) with `gpu_flops`, the "
            "phone CPU's FLOP rate, beside the decode steps; calibrated on decode steps alone the rate stays the base "
            "preset's. The last column is a check across models: the rate fitted with Qwen's prompt, on the same "
            "phone, predicts the other two prompts.", "",
            "| model | measured | decode steps only (base FLOP rate) | fitted with the prompt | fitted FLOP rate | "
            "at Qwen's fitted rate |", "| --- | --- | --- | --- | --- | --- |"]
    for k, r in m.items():
        pf = r["prefill"]
        meas = pf["measured_s"]

        def cell(v):
            return f"{v:.2f} s ({(v - meas) / meas:+.0%})"
        out.append(f"| {names[k]} | {meas:.2f} s | {cell(pf['decode_only_s'])} | {cell(pf['calibrated_s'])} | "
                   f"{pf['gpu_flops_fitted'] / 1e9:.1f} GFLOP/s | {cell(pf['predicted_at_qwen_rate_s'])} |")
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
