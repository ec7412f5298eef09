"""Host link calibration: time host-to-GPU copies of expert-sized tensors and fit moesim's link model.

moesim's timed replay charges one expert fetch `latency + bytes / bandwidth`, with
`copy_engines` fetches in flight at once sharing one pipe of `bandwidth`
(simsrc/engine/timed.py). This script measures what that model stands for:

- single copies, pinned and pageable host memory, 64 KiB .. 1 GiB and the expert
  sizes of real models (bf16, 3 projection matrices: hidden x expert_intermediate each);
  each timed three ways:
    issued -- CUDA events: the start event is recorded on an idle stream, then the
              copy is issued, so the driver call is inside (what a demand fetch pays);
    queued -- the copy waits in the stream behind a GPU sleep when the start event
              fires: the DMA alone, without the driver call;
    wall   -- host clock from the copy call until the stream is synchronised;
- 1, 2 and 4 concurrent copies on separate streams, released together behind one
  GPU sleep: aggregate bandwidth, and whether a second stream hides latency;
- k back-to-back expert copies on one stream (k = 1, 6, 8; 1, 2 for Mixtral),
  as one layer's misses are fetched.

`time = latency + bytes / bandwidth` is fitted by least squares on the pinned,
single-stream, issued medians, weighted by 1 / time (relative error): the sizes
span four orders of magnitude, and unweighted the 1 GiB point's noise alone would
swamp a latency of a few microseconds.

Only numpy, torch and the standard library; moesim's presets are read from
simsrc/hardware.py (or `moesim.hardware` when installed) to print their predictions.

    python benchmarks/bench_link.py --out link.json            # ~40 s on an H100 host
    python benchmarks/bench_link.py --reps 10 --max-size 256MiB --out quick.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

KiB, MiB, GiB = 2**10, 2**20, 2**30
# expert bytes = 3 matrices x hidden x expert_intermediate x 2 B (bf16), dims from each config.json
EXPERTS = {
    "qwen3-30b-a3b": (2048, 768),       # Qwen/Qwen3-30B-A3B: hidden 2048, moe_intermediate_size 768
    "olmoe-1b-7b": (2048, 1024),        # allenai/OLMoE-1B-7B: hidden 2048, intermediate_size 1024
    "dsv2-lite": (2048, 1408),          # deepseek-ai/DeepSeek-V2-Lite: hidden 2048, moe_intermediate 1408
    "qwen1.5-moe-a2.7b": (2048, 1408),  # Qwen/Qwen1.5-MoE-A2.7B: hidden 2048, moe_intermediate 1408
    "mixtral-8x7b": (4096, 14336),      # mistralai/Mixtral-8x7B: hidden 4096, intermediate 14336
}
EXPERT_BYTES = {name: 3 * h * i * 2 for name, (h, i) in EXPERTS.items()}
POWERS = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1 * GiB]
STREAM_COUNTS = (1, 2, 4)
STREAM_SIZES = [256 * KiB, 1 * MiB, EXPERT_BYTES["dsv2-lite"], 64 * MiB, 256 * MiB]
BATCHES = [("dsv2-lite", (1, 6, 8)), ("olmoe-1b-7b", (1, 6, 8)), ("mixtral-8x7b", (1, 2))]
SLEEP_CYCLES = 2_000_000  # ~1 ms at H100 clocks: every copy is queued before the gate opens


# ---------------------------------------------------------------- machine
def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), "")
    except OSError:
        pass
    props = torch.cuda.get_device_properties(0)
    m = {"gpu": torch.cuda.get_device_name(0), "gpu_mem_gib": round(props.total_memory / GiB, 1),
         "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
         "cpu": cpu, "kernel": platform.release(),
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    fields = "name,driver_version,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max"
    csv = _sh(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"])
    if csv:
        m["nvidia_smi"] = dict(zip(fields.split(","), (v.strip() for v in csv.splitlines()[0].split(","))))
    # nvidia-smi -q's "GPU Link Info" block (generation, width, max) as the driver reports it
    q = _sh(["nvidia-smi", "-q"]).splitlines()
    start = next((i for i, l in enumerate(q) if "GPU Link Info" in l), None)
    if start is not None:
        m["nvidia_smi_link_info"] = [l.strip() for l in q[start:start + 14] if l.strip()]
    try:  # the number of copy engines is not in torch's device properties
        import cupy
        m["async_engine_count"] = int(cupy.cuda.runtime.getDeviceProperties(0)["asyncEngineCount"])
    except Exception:
        pass
    return m


def presets() -> dict:
    """moesim's H100 presets, read from their TOML files (simsrc/hardware/presets): this script runs on GPU
    machines where moesim is not installed. Figures are written as "53GB/s" and "20us"."""
    import re
    import tomllib
    folder = Path(__file__).resolve().parents[1] / "simsrc" / "hardware" / "presets"

    def number(text) -> float:
        return float(re.match(r"\s*([0-9.]+)", str(text)).group(1))

    out = {}
    for f in sorted(folder.glob("h100*.toml")):
        d = tomllib.loads(f.read_text())
        out[d["name"]] = {"bandwidth_gbps": number(d["bandwidth"]), "latency_us": number(d["latency"]),
                          "copy_engines": int(d["copy_engines"])}
    return out


# ---------------------------------------------------------------- model
def link_time_us(n_bytes: int, count: int, latency_us: float, bandwidth_gbps: float, engines: int) -> float:
    """moesim's link (engine/timed.py `_transfer`): `count` transfers issued at 0 on `engines` engines."""
    eng_free = [0.0] * max(engines, 1)
    pipe = 0.0
    xfer = n_bytes / (bandwidth_gbps * 1e3)  # bytes / (GB/s) in us
    for _ in range(count):
        e = min(range(len(eng_free)), key=eng_free.__getitem__)
        pipe = max(eng_free[e] + latency_us, pipe) + xfer
        eng_free[e] = pipe
    return pipe


def fit(sizes, times_us) -> tuple[float, float]:
    """Least squares of time = latency + bytes / bandwidth, relative error; -> (latency_us, bandwidth_gbps)."""
    x, t = np.asarray(sizes, float), np.asarray(times_us, float)
    w = 1.0 / t
    a = np.stack([np.ones_like(x), x], 1) * w[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(a, t * w, rcond=None)
    return float(lat), float(1e-3 / inv_bw)  # bytes/us -> GB/s


def stats(samples_us) -> dict:
    s = np.asarray(samples_us)
    p10, p50, p90 = np.percentile(s, [10, 50, 90])
    return {"median_us": float(p50), "p10_us": float(p10), "p90_us": float(p90), "min_us": float(s.min()),
            "n": len(s)}


# ---------------------------------------------------------------- measurements
class Link:
    def __init__(self, max_bytes: int):
        self.dev = torch.device("cuda", 0)
        # fill so every page is touched before timing (first-touch faults would be timed otherwise)
        self.pinned = torch.empty(max_bytes, dtype=torch.uint8, pin_memory=True).fill_(1)
        self.pageable = torch.empty(max_bytes, dtype=torch.uint8).fill_(1)
        self.dst = torch.empty(max_bytes, dtype=torch.uint8, device=self.dev)
        self.streams = [torch.cuda.Stream() for _ in range(max(STREAM_COUNTS))]
        self.gate = hasattr(torch.cuda, "_sleep")

    def _events(self, k):
        return [torch.cuda.Event(enable_timing=True) for _ in range(k)]

    def single(self, n: int, src: torch.Tensor, how: str) -> float:
        s = self.streams[0]
        with torch.cuda.stream(s):
            if how == "wall":
                s.synchronize()
                t0 = time.perf_counter()
                self.dst[:n].copy_(src[:n], non_blocking=True)
                s.synchronize()
                return (time.perf_counter() - t0) * 1e6
            a, b = self._events(2)
            if how == "queued":
                torch.cuda._sleep(SLEEP_CYCLES)
                a.record(s)
                self.dst[:n].copy_(src[:n], non_blocking=True)
            else:  # issued: the stream is idle when the start event is recorded
                s.synchronize()
                a.record(s)
                self.dst[:n].copy_(src[:n], non_blocking=True)
            b.record(s)
        b.synchronize()
        return a.elapsed_time(b) * 1e3

    def concurrent(self, n: int, k: int) -> float:
        """k copies of n bytes from distinct host buffers, one per stream, released together."""
        main = torch.cuda.current_stream()
        torch.cuda.synchronize()
        start, *ends = self._events(k + 1)
        if self.gate:
            torch.cuda._sleep(SLEEP_CYCLES)
        start.record(main)
        for i in range(k):
            s = self.streams[i]
            s.wait_event(start)
            with torch.cuda.stream(s):
                self.dst[i * n:(i + 1) * n].copy_(self.pinned[i * n:(i + 1) * n], non_blocking=True)
            ends[i].record(s)
        torch.cuda.synchronize()
        return max(start.elapsed_time(e) for e in ends) * 1e3

    def batch(self, n: int, k: int) -> float:
        """k back-to-back copies on one idle stream, issued one after another as a layer's misses are."""
        s = self.streams[0]
        s.synchronize()
        a, b = self._events(2)
        with torch.cuda.stream(s):
            a.record(s)
            for i in range(k):
                self.dst[i * n:(i + 1) * n].copy_(self.pinned[i * n:(i + 1) * n], non_blocking=True)
            b.record(s)
        b.synchronize()
        return a.elapsed_time(b) * 1e3


def run(reps: int, max_size: int) -> dict:
    sizes = {f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB": n for n in POWERS if n <= max_size}
    by_bytes = {}
    for name, n in EXPERT_BYTES.items():  # DeepSeek-V2-Lite and Qwen1.5-MoE share a size: one point
        by_bytes.setdefault(n, []).append(name)
    for n, names in by_bytes.items():
        if n <= max_size:
            sizes[" / ".join(names) + " expert"] = n
    need = max([max(sizes.values())] + [k * n for k in STREAM_COUNTS for n in STREAM_SIZES if n <= max_size]
               + [k * EXPERT_BYTES[m] for m, ks in BATCHES for k in ks if EXPERT_BYTES[m] <= max_size])
    link = Link(need)
    modes = [("pinned", "issued"), ("pinned", "queued"), ("pinned", "wall"), ("pageable", "issued")]
    if not link.gate:
        modes.remove(("pinned", "queued"))
    src = {"pinned": link.pinned, "pageable": link.pageable}

    for _ in range(3):  # warm-up: contexts, DMA mappings, clocks
        for n in sorted(set(sizes.values())):
            for mem, how in modes:
                link.single(n, src[mem], how)
    # rounds interleave the sizes so a drift in the host's state spreads over all of them
    # each timed copy follows an untimed one of its own kind: without it a pinned copy right after a
    # large pageable one measured 2-10x slower (first run on the H100), which no fetch stream sees
    raw = {(label, mem, how): [] for label in sizes for mem, how in modes}
    for _ in range(reps):
        for label, n in sizes.items():
            for mem, how in modes:
                link.single(n, src[mem], how)
                raw[label, mem, how].append(link.single(n, src[mem], how))
    single = [{"size": label, "bytes": sizes[label], "memory": mem, "timing": how, **stats(v)}
              for (label, mem, how), v in raw.items()]

    multi = []
    for n in STREAM_SIZES:
        if n > max_size:
            continue
        for k in STREAM_COUNTS:
            link.concurrent(n, k)
            st = stats([link.concurrent(n, k) for _ in range(reps)])
            multi.append({"bytes": n, "streams": k, **st, "aggregate_gbps": k * n / (st["median_us"] * 1e3)})

    batches = []
    for name, ks in BATCHES:
        n = EXPERT_BYTES[name]
        if n > max_size:
            continue
        for k in ks:
            link.batch(n, k)
            st = stats([link.batch(n, k) for _ in range(reps)])
            batches.append({"expert": name, "bytes": n, "k": k, **st,
                            "gbps": k * n / (st["median_us"] * 1e3)})
    return {"single": single, "streams": multi, "batches": batches, "gated": link.gate}


# ---------------------------------------------------------------- report
def analyse(res: dict, presets_: dict) -> dict:
    def pick(mem, how):
        return [r for r in res["single"] if r["memory"] == mem and r["timing"] == how]

    out = {}
    for mem, how in (("pinned", "issued"), ("pinned", "queued"), ("pinned", "wall"), ("pageable", "issued")):
        rows = pick(mem, how)
        if rows:
            lat, bw = fit([r["bytes"] for r in rows], [r["median_us"] for r in rows])
            out[f"{mem}_{how}"] = {"latency_us": lat, "bandwidth_gbps": bw}
    # a layer's misses back to back on one stream: T = k (latency + bytes / bandwidth), i.e. one engine
    b = res["batches"]
    if b:
        lat_b, inv_b = np.linalg.lstsq(np.array([[r["k"], r["k"] * r["bytes"]] for r in b], float)
                                       / np.array([[r["median_us"]] for r in b]),
                                       np.ones(len(b)), rcond=None)[0]
        out["batch_one_engine"] = {"latency_us": float(lat_b), "bandwidth_gbps": float(1e-3 / inv_b)}
    lat, bw = out["pinned_issued"]["latency_us"], out["pinned_issued"]["bandwidth_gbps"]
    # concurrent copies are released together behind a sleep, so the driver call is not in them
    q = out.get("pinned_queued", out["pinned_issued"])
    for r in res["single"]:
        r["gbps"] = r["bytes"] / (r["median_us"] * 1e3)
    for r in pick("pinned", "issued"):
        r["fit_us"] = lat + r["bytes"] / (bw * 1e3)
        r["fit_err"] = r["fit_us"] / r["median_us"] - 1
        for name, p in presets_.items():
            r[f"{name}_us"] = link_time_us(r["bytes"], 1, p["latency_us"], p["bandwidth_gbps"], 1)
            r[f"{name}_err"] = r[f"{name}_us"] / r["median_us"] - 1
    for r in res["streams"]:
        for e in (1, 2):
            r[f"fit_e{e}_us"] = link_time_us(r["bytes"], r["streams"], q["latency_us"], q["bandwidth_gbps"], e)
    for r in res["batches"]:
        for e in (1, 2):
            r[f"fit_e{e}_us"] = link_time_us(r["bytes"], r["k"], lat, bw, e)
        r["batchfit_us"] = link_time_us(r["bytes"], r["k"], lat_b, 1e-3 / inv_b, 1)
        for name, p in presets_.items():
            r[f"{name}_us"] = link_time_us(r["bytes"], r["k"], p["latency_us"], p["bandwidth_gbps"],
                                           p["copy_engines"])
    # stream-count speed-up of the aggregate over one stream, per size
    one = {r["bytes"]: r["aggregate_gbps"] for r in res["streams"] if r["streams"] == 1}
    for r in res["streams"]:
        r["speedup_vs_1"] = r["aggregate_gbps"] / one[r["bytes"]]
    return out


def _size(n: int) -> str:
    return f"{n / GiB:.0f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB" if n >= MiB else f"{n // KiB} KiB"


def report(res: dict, fits: dict, presets_: dict) -> None:
    print("fits: time = latency + bytes / bandwidth (least squares, relative error)")
    for k, f in fits.items():
        print(f"  {k:<17} latency {f['latency_us']:7.2f} us   bandwidth {f['bandwidth_gbps']:6.2f} GB/s")
    names = list(presets_)
    print("\nsingle copies, median us (p10-p90), GB/s; fit and preset errors vs pinned issued")
    head = (f"{'size':<38}{'bytes':>15}{'pinned issued':>24}{'GB/s':>7}{'queued':>10}{'wall':>10}"
            f"{'pageable':>11}{'GB/s':>7}{'fit err':>9}" + "".join(f"{n + ' err':>20}" for n in names))
    print(head)
    by = {(r["size"], r["memory"], r["timing"]): r for r in res["single"]}
    for label in dict.fromkeys(r["size"] for r in res["single"]):
        p = by[label, "pinned", "issued"]
        q = by.get((label, "pinned", "queued"), {"median_us": float("nan")})
        w, g = by[label, "pinned", "wall"], by[label, "pageable", "issued"]
        spread = f"{p['median_us']:.1f} ({p['p10_us']:.1f}-{p['p90_us']:.1f})"
        print(f"{label:<38}{p['bytes']:>15,}{spread:>24}{p['gbps']:>7.1f}{q['median_us']:>10.1f}"
              f"{w['median_us']:>10.1f}{g['median_us']:>11.1f}{g['gbps']:>7.1f}{p['fit_err']:>+9.1%}"
              + "".join(f"{p[n + '_err']:>+20.1%}" for n in names))
    print("\nconcurrent pinned copies, one per stream, released together (fit: the queued one)")
    print(f"{'bytes each':>12}{'streams':>8}{'median us':>11}{'agg GB/s':>10}{'x 1 stream':>11}"
          f"{'fit 1 eng':>11}{'fit 2 eng':>11}")
    for r in res["streams"]:
        print(f"{_size(r['bytes']):>12}{r['streams']:>8}{r['median_us']:>11.1f}{r['aggregate_gbps']:>10.1f}"
              f"{r['speedup_vs_1']:>11.2f}{r['fit_e1_us']:>11.1f}{r['fit_e2_us']:>11.1f}")
    print("\nk back-to-back expert copies on one stream")
    print("  (model errors: fit = single-copy fit with 1 or 2 engines; batch fit = k (latency + bytes/bw) "
          "fitted on these rows; presets as they stand)")
    cols = ["fit_e1", "fit_e2", "batchfit"] + names
    print(f"{'expert':<16}{'k':>3}{'median us':>11}{'p10-p90':>17}{'GB/s':>7}" + "".join(f"{c:>16}" for c in cols))
    for r in res["batches"]:
        spread = f"{r['p10_us']:.0f}-{r['p90_us']:.0f}"
        print(f"{r['expert']:<16}{r['k']:>3}{r['median_us']:>11.1f}{spread:>17}{r['gbps']:>7.1f}"
              + "".join(f"{r[c + '_us'] / r['median_us'] - 1:>+16.1%}" for c in cols))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="link.json", help="JSON file to write")
    ap.add_argument("--reps", type=int, default=40, help="timed repetitions per point (median reported)")
    ap.add_argument("--max-size", default="1GiB", help="largest single copy, e.g. 256MiB")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_link.py needs a CUDA GPU")
    unit = {"KiB": KiB, "MiB": MiB, "GiB": GiB}
    num = a.max_size.rstrip("KMGiB")
    max_size = int(float(num) * unit[a.max_size[len(num):]]) if a.max_size[len(num):] in unit else int(a.max_size)
    t0 = time.perf_counter()
    m = machine()
    print(json.dumps(m, indent=1))
    presets_ = presets()
    res = run(a.reps, max_size)
    fits = analyse(res, presets_)
    report(res, fits, presets_)
    doc = {"machine": m, "reps": a.reps, "expert_dims": {k: {"hidden": h, "expert_intermediate": i, "matrices": 3,
                                                              "dtype": "bf16", "bytes": EXPERT_BYTES[k]}
                                                          for k, (h, i) in EXPERTS.items()},
           "fit_method": "least squares of latency + bytes/bandwidth on medians, weighted by 1/time",
           "fits": fits, "presets": presets_, **res, "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {a.out} in {doc['seconds']} s")


if __name__ == "__main__":
    main()
