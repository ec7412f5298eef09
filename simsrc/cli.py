"""The `moesim` command line: each command parses, calls one library function, prints."""
from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .trace import TraceError


def friendly_errors(fn):
    """Show bad input as one clear line (file, field, fix), never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TraceError, ValueError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot serialise {type(o).__name__}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moesim")
def main() -> None:
    """Replay real MoE routing against a modeled GPU expert cache and host link."""


# ---- commands (each section: parse, call one library function, print) ----


# ---- grid
@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Results Parquet file; also the checkpoint: run the same command again to resume.")
@click.option("--jobs", type=int, default=None, help="Local worker processes (default: CPU cores).")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True)
@click.option("--address", default=None, help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster).")
@click.option("--restart", is_flag=True, help="Discard the rows already in --out (e.g. after changing the spec).")
@click.option("--extend", is_flag=True, help="Keep the rows in --out when the spec only grew; run the new ones.")
@click.option("--dry-run", is_flag=True, help="Only expand the spec and say how many runs it has.")
@click.option("--checkpoint-every", default=2.0, show_default=True, help="Seconds between rewrites of --out.")
@friendly_errors
def grid(spec, out, jobs, executor, address, restart, extend, dry_run, checkpoint_every) -> None:
    """Run every combination a grid SPEC (TOML) names; one row per run in --out."""
    import os
    from .grid import ResultFile, expand, run_grid
    g = expand(spec)
    results = ResultFile(out, g, restart=restart, extend=extend)
    done = len(results.done)
    where = f"dask at {address}" if executor == "dask" and address else (
        f"{executor}, {jobs or os.cpu_count()} workers")
    click.echo(f"{g.name}: {len(g):,} runs, {done:,} already in {out}, {len(g) - done:,} to run ({where})",
               err=True)
    if dry_run:
        return
    with click.progressbar(length=len(g) - done, label="runs", show_eta=True, show_pos=True,
                           file=sys.stderr) as bar:
        report = run_grid(g, out, jobs=jobs, executor=executor, address=address, restart=restart, extend=extend,
                          progress=bar.update, flush_every_s=checkpoint_every, results=results)
    failed = f", {report.failed} failed (see the error column)" if report.failed else ""
    click.echo(f"wrote {report.out}: {report.runs:,} rows ({report.ran:,} run now{failed}) in {report.seconds:.1f} s")


# ---- plot
@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kind", required=True, type=click.Choice(["hit-rate", "stall", "layers", "predictor",
                                                         "activations", "popularity"]),
              help="hit-rate/stall/layers: grid RESULTS; predictor: score-predictor --json files; "
                   "activations/popularity: a TRACE.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Figure file: .png, .svg or .pdf.")
@click.option("--x", "x_axis", type=click.Choice(["auto", "bandwidth", "capacity"]), default="auto",
              show_default=True, help="stall: the x axis.")
@click.option("--y", "y_metric", type=click.Choice(["tpot", "stall", "total"]), default="tpot", show_default=True,
              help="stall: time per output token, stall time, or total time.")
@click.option("--by", type=click.Choice(["auto", "capacity", "policy"]), default="auto", show_default=True,
              help="layers: heatmap columns.")
@click.option("--metric", type=click.Choice(["hit_rate", "stall"]), default="hit_rate", show_default=True,
              help="layers: what the heatmap shows.")
@click.option("--policy", default=None, help="layers --by capacity: the policy (default: the first); "
                                             "activations: lru or lfu (default lru).")
@click.option("--capacity", type=float, default=None, help="layers --by policy: capacity fraction, e.g. 0.25.")
@click.option("--scope", type=click.Choice(["global", "per-layer"]), default=None,
              help="layers: which cache scope when the results hold both (default per-layer).")
@click.option("--request", type=int, default=None, help="activations: request id (default: the first).")
@click.option("--layers", "layer_list", default=None, help="activations: MoE layer indices, e.g. 0,8,25.")
@click.option("--slots", type=int, default=None, help="activations: cached experts per layer (default: 1/4).")
@click.option("--tokens", type=int, default=96, show_default=True, help="activations: tokens shown.")
@click.option("--title", default=None, help="Figure title (default: says what is drawn).")
@friendly_errors
def plot(sources, kind, out, x_axis, y_metric, by, metric, policy, capacity, scope, request, layer_list, slots,
         tokens, title) -> None:
    """Draw a figure from grid RESULTS (or scorecards, or a TRACE) into --out."""
    from .plots import plot as make_plot, save
    options = {"title": title}
    if kind == "stall":
        options.update(x=x_axis, y=y_metric)
    elif kind == "layers":
        options.update(by=by, metric=metric, policy=policy, capacity=capacity, scope=scope)
    elif kind == "activations":
        layers = None if layer_list is None else [int(v) for v in layer_list.split(",") if v.strip()]
        options.update(request=request, layers=layers, policy=policy or "lru", slots=slots, tokens=tokens)
    path = save(make_plot(list(sources), kind, **options), out)
    click.echo(f"wrote {path}")


# ---- replay
@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--policy", default="lru", show_default=True, help="lru, fifo, lfu, lfuda, belady, random, static, ...")
@click.option("--capacity", default="10%", show_default=True, help="10% of all experts, 166 experts, 4/layer or 12GiB")
@click.option("--scope", type=click.Choice(["global", "per-layer"]), default="global", show_default=True)
@click.option("--mode", type=click.Choice(["timed", "count"]), default="timed", show_default=True)
@click.option("--hardware", default="a100-pcie4", show_default=True, help="a preset (moesim hardware lists them)")
@click.option("--bandwidth", default=None, help="override the host link, e.g. 25GB/s")
@click.option("--latency", default=None, help="override per-transfer latency, e.g. 10us")
@click.option("--copy-engines", type=int, default=None, help="override concurrent transfers")
@click.option("--gpu-tflops", "--gpu-flops", "gpu_tflops", default=None,
              help="override dense tensor FLOP rate, e.g. 312T, 312TFLOPS or 3.12e14 (a bare 312 is TFLOP/s)")
@click.option("--hbm", default=None, help="override GPU memory bandwidth, e.g. 2000GB/s")
@click.option("--bytes-per-expert", default=None, help="override the trace's expert size, e.g. 17MB")
@click.option("--prefill-chunk", type=int, default=1, show_default=True,
              help="prefill tokens per step: 1 replays prompts as if decoded, 0 keeps recorded steps")
@click.option("--pin", "pins", multiple=True, help="LAYER:EXPERT kept resident outside the policy (repeatable)")
@click.option("--train", default=None, type=click.Path(dir_okay=False), help="training trace (static policy)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-layer", is_flag=True, help="also show hits, misses and stall per layer")
@click.option("--json", "as_json", is_flag=True, help="print the result row as JSON")
@click.option("--predictor", default="none", show_default=True,
              help="prefetch predictor: none, previous, recorded, moe-infinity, learned:MODEL, frequency, oracle")
@click.option("--horizon", type=int, default=1, show_default=True, help="prefetch this many layers ahead (cap if --adaptive)")
@click.option("--top-n", type=int, default=None, help="experts prefetched per target layer (default: top-k)")
@click.option("--threshold", type=float, default=None, help="prefetch only predictions scoring at least this")
@click.option("--prefetch-bytes-per-step", default=None, help="most prefetch bytes started per step, e.g. 200MB")
@click.option("--adaptive", is_flag=True, help="pick the horizon so prefetches land just in time (ExpertFlow)")
@friendly_errors
def replay(trace, policy, capacity, scope, mode, hardware, bandwidth, latency, copy_engines, gpu_tflops, hbm,
           bytes_per_expert, prefill_chunk, pins, train, seed, per_layer, as_json, predictor, horizon, top_n,
           threshold, prefetch_bytes_per_step, adaptive) -> None:
    """Replay TRACE against one cache configuration and print the result row."""
    from .replay import replay as run_replay
    pin = []
    for p in pins:
        layer, _, expert = p.partition(":")
        if not (layer.isdigit() and expert.isdigit()):
            raise click.BadParameter(f"{p!r}: write LAYER:EXPERT, e.g. 3:17", param_hint="--pin")
        pin.append((int(layer), int(expert)))
    row = run_replay(trace, policy=policy, capacity=capacity, scope=scope, mode=mode, hardware=hardware,
                     bandwidth=bandwidth, latency=latency, copy_engines=copy_engines, gpu_tflops=gpu_tflops,
                     hbm=hbm, bytes_per_expert=bytes_per_expert, prefill_chunk=prefill_chunk, pin=pin,
                     train=train, seed=seed, per_layer=per_layer, predictor=predictor, horizon=horizon,
                     top_n=top_n, threshold=threshold, prefetch_bytes_per_step=prefetch_bytes_per_step,
                     adaptive=adaptive)
    if as_json:
        echo_json(row)
        return
    click.echo(format_row(row))


def format_row(row: dict) -> str:
    """The result row as a short human table: inputs, then what they cost."""
    def num(v, unit=""):
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:.4g}{unit}"
        return f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"

    lines = [f"{row['trace']}  ({row['model']})",
             f"policy {row['policy']}, predictor {row['predictor']}, capacity {row['capacity']} = "
             f"{row['capacity_experts']} experts ({row['capacity_fraction']:.1%}), scope {row['scope']}, "
             f"mode {row['mode']}"]
    if row["mode"] == "timed":
        lines.append(f"hardware {row['hardware']}: link {num(row['bandwidth_gbps'])} GB/s, "
                     f"{num(row['latency_us'])} us/transfer, {row['copy_engines']} copy engines; "
                     f"GPU {num(row['gpu_tflops'])} TFLOP/s, {num(row['hbm_gbps'])} GB/s HBM")
    lines.append("")
    table = [("accesses", num(row["accesses"])), ("hits", num(row["hits"])), ("misses", num(row["misses"])),
             ("hit rate", f"{row['hit_rate']:.2%}")]
    if row.get("prefetch_issued"):
        table += [("prefetches issued", num(row["prefetch_issued"])), ("  used", num(row["prefetch_used"])),
                  ("  late", num(row["prefetch_late"])), ("  wasted", num(row["prefetch_wasted"])),
                  ("  harmful", num(row["prefetch_harmful"]))]
    table.append(("GB moved", f"{row['bytes_moved'] / 1e9:,.1f}"))
    if row["mode"] == "timed":
        table += [("total time", num(row["total_s"], " s")), ("stall time", num(row["stall_s"], " s")),
                  ("stall share", f"{row['stall_s'] / row['total_s']:.1%}" if row["total_s"] else "-"),
                  ("time per output token", num(row["tpot_s"] * 1e3, " ms")),
                  ("time to first token", num(row["ttft_s"] * 1e3, " ms"))]
    width = max(len(k) for k, _ in table)
    lines += [f"  {k:<{width}}  {v:>14}" for k, v in table]
    if "hits_per_layer" in row:
        lines += ["", "  layer      hits    misses  hit rate" + ("   stall s" if "stall_per_layer_s" in row else "")]
        for i, (h, m) in enumerate(zip(row["hits_per_layer"], row["misses_per_layer"])):
            stall = f"  {row['stall_per_layer_s'][i]:8.4f}" if "stall_per_layer_s" in row else ""
            lines.append(f"  {i:5d}  {h:8d}  {m:8d}  {h / max(h + m, 1):8.2%}{stall}")
    return "\n".join(lines)


# ---- fit-predictor
@main.command("fit-predictor")
@click.argument("train", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="model file: .npz (coactivation) or .pt (gru)")
@click.option("--kind", type=click.Choice(["coactivation", "gru"]), default="coactivation", show_default=True,
              help="coactivation: numpy, seconds; gru: a small PyTorch sequence model (needs torch)")
@click.option("--horizon", type=int, default=1, show_default=True, help="coactivation: fit horizons 1..H")
@click.option("--epochs", type=int, default=4, show_default=True, help="gru: passes over the training steps")
@click.option("--hidden", type=int, default=128, show_default=True, help="gru: hidden size")
@friendly_errors
def fit_predictor_cmd(train, out, kind, horizon, epochs, hidden) -> None:
    """Fit a learned prefetch predictor on TRAIN traces (never the ones you evaluate on)."""
    import time
    from .predict import fit_predictor
    t0 = time.perf_counter()
    options = {"epochs": epochs, "hidden": hidden} if kind == "gru" else {}
    fit_predictor(list(train), out, kind=kind, horizon=horizon, **options)
    click.echo(f"wrote {out}: {kind} predictor fitted on {len(train)} trace(s) in {time.perf_counter() - t0:.1f} s; "
               f"use it with --predictor learned:{out}")


# ---- score-predictor
@main.command("score-predictor")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--predictor", default="recorded", show_default=True,
              help="previous, recorded, moe-infinity, learned:MODEL, frequency, oracle")
@click.option("--horizon", type=int, default=1, show_default=True, help="score horizons 1..H")
@click.option("--top-n", type=int, default=None, help="predictions per target layer (default: top-k)")
@click.option("--threshold", type=float, default=None, help="keep only predictions scoring at least this")
@click.option("--train", default=None, type=click.Path(dir_okay=False), help="training trace (moe-infinity, frequency)")
@click.option("--prefill-chunk", type=int, default=1, show_default=True, help="as in replay")
@click.option("--hardware", default="a100-pcie4", show_default=True, help="for the in-time fraction")
@click.option("--bandwidth", default=None, help="override the host link, e.g. 25GB/s")
@click.option("--moe-beyond", "moe_beyond", is_flag=True,
              help="also the cache hit rate under MoE-Beyond's protocol (per-prompt cold LRU, 10 %, 10-token warm-up)")
@click.option("--json", "as_json", is_flag=True, help="print the scorecard as JSON")
@friendly_errors
def score_predictor_cmd(trace, predictor, horizon, top_n, threshold, train, prefill_chunk, hardware, bandwidth,
                        moe_beyond, as_json) -> None:
    """Precision, recall and F1 of a predictor on TRACE (all, per horizon, per layer), and how many land in time."""
    from .hardware import get_hardware, parse_bandwidth_gbps
    from .predict import predict
    from .predict.plan import select
    from .predict.score import format_scorecard, score
    from .trace import access_stream, read_trace
    tr = read_trace(trace)
    train_tr = read_trace(train) if train else None
    stream = access_stream(tr, prefill_chunk=prefill_chunk)
    pred = select(predict(tr, predictor, stream=stream, horizon=horizon, top_n=top_n, train=train_tr),
                  threshold=threshold)
    hw = get_hardware(hardware).with_overrides(
        bandwidth_gbps=None if bandwidth is None else parse_bandwidth_gbps(bandwidth))
    card = score(pred, stream, meta=tr.meta, hardware=hw, expert_bytes=float(tr.meta.bytes_per_expert))
    card["trace"] = trace
    if moe_beyond:
        from .predict.moe_beyond import engine_protocol
        card["moe_beyond"] = {"without": engine_protocol(tr, "none"),
                              "with": engine_protocol(tr, predictor, train=train_tr, top_n=top_n)}
    if as_json:
        echo_json(card)
        return
    click.echo(format_scorecard(card))
    if moe_beyond:
        w, wo = card["moe_beyond"]["with"], card["moe_beyond"]["without"]
        click.echo(f"  MoE-Beyond protocol (LRU 10 %, per prompt, 10-token warm-up): {wo['hit_rate']:.1%} hits "
                   f"without prefetch, {w['hit_rate']:.1%} with {predictor}")


# ---- hardware
@main.command("hardware")
@click.option("--json", "as_json", is_flag=True)
def hardware_cmd(as_json) -> None:
    """List the hardware presets and where each figure comes from."""
    import dataclasses

    from .hardware import PRESETS
    if as_json:
        echo_json({n: dataclasses.asdict(h) for n, h in PRESETS.items()})
        return
    click.echo(f"{'preset':<16}{'link GB/s':>10}{'lat us':>8}{'engines':>8}{'TFLOP/s':>9}{'HBM GB/s':>10}")
    for h in PRESETS.values():
        click.echo(f"{h.name:<16}{h.bandwidth_gbps:>10g}{h.latency_us:>8g}{h.copy_engines:>8d}"
                   f"{h.gpu_tflops:>9g}{h.hbm_gbps:>10g}")
    click.echo("")
    for h in PRESETS.values():
        click.echo(f"{h.name}: {h.source}")


# ---- convert
@main.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "moe-beyond", "vllm", "megatron", "csv", "npz", "speculative-moe",
                                 "bigmoeonedge", "stratamoe"]), help="Source format (auto: from names and content).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file to write (.parquet).")
@click.option("--model", default=None, help="Model id or alias (fills experts, layers, bytes for formats without them).")
@click.option("--num-experts", type=int, default=None, help="Routed experts per layer (vllm, megatron, csv, npz).")
@click.option("--moe-layers", default=None, help="MoE layer ids, e.g. '1-26' or '0,2,4' (vllm, megatron, csv, npz).")
@click.option("--num-layers", type=int, default=None, help="Decoder layers in the model, dense ones included.")
@click.option("--prompt-len", type=int, multiple=True, help="vllm: tokens before it are prefill; once, or once per request.")
@click.option("--rank", type=int, default=None, help="megatron: the data-parallel rank to keep (default 0).")
@click.option("--batch-size", type=int, default=None, help="megatron: requests per step (tokens split evenly).")
@friendly_errors
def convert(src, fmt, out, model, num_experts, moe_layers, num_layers, prompt_len, rank, batch_size) -> None:
    """Import traces other tools wrote (SRC: files, folders or globs) into one moesim trace."""
    import time
    import numpy as np
    from .trace import write_trace
    from .trace.importers import convert as convert_trace, input_files
    t0 = time.perf_counter()
    files = input_files(src, fmt)
    options = dict(model=model, num_experts=num_experts, moe_layers=moe_layers, num_layers=num_layers,
                   prompt_len=(prompt_len[0] if len(prompt_len) == 1 else list(prompt_len)) or None,
                   rank=rank, batch_size=batch_size)
    if len(files) > 1:
        with click.progressbar(length=len(files), label=f"reading {len(files)} files", file=sys.stderr) as bar:
            trace = convert_trace(files, fmt, progress=bar.update, **options)
    else:
        trace = convert_trace(files, fmt, **options)
    write_trace(trace, out)
    m = trace.meta
    tokens = int((trace.column("layer") == m.moe_layers[0]).sum()) if trace.num_rows else 0
    requests = len(np.unique(trace.column("request_id")))
    click.echo(f"wrote {out}: {trace.num_rows:,} rows, {requests} requests, ~{tokens:,} tokens, "
               f"{m.num_moe_layers} MoE layers x {m.num_experts} experts top-{m.top_k} "
               f"({m.source.get('name')}, lacks: {', '.join(m.lacks) or 'nothing'}) in {time.perf_counter() - t0:.1f} s")


# ---- inspect
@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON (for machines).")
@click.option("--batch-rows", default=1 << 20, show_default=True, help="Rows streamed per batch.")
@friendly_errors
def inspect(trace: str, as_json: bool, batch_rows: int) -> None:
    """What TRACE holds: model card, sizes, expert popularity, reuse, LRU curve, layer coupling."""
    from .trace.stats import format_report, inspect_trace, report_json
    report = inspect_trace(trace, batch_rows=batch_rows)
    if as_json:
        echo_json(report_json(report))
    else:
        click.echo(format_report(report))


# ---- curve
@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--policy", "policies", default="lru", show_default=True,
              help="one policy or several, comma-separated: lru,fifo,belady")
@click.option("--capacities", default="1%..100%", show_default=True,
              help="a range (1%..100%, 16..1664) of --points values, or a list: 10%,25%,166")
@click.option("--points", default=100, show_default=True, help="capacities in a range")
@click.option("--scope", type=click.Choice(["global", "per-layer"]), default="global", show_default=True)
@click.option("--method", type=click.Choice(["auto", "exact", "sampled"]), default="auto", show_default=True,
              help="exact: one pass (lru, fifo, belady) or a replay per capacity; sampled: replays on a "
                   "sample of requests; auto: one pass, else exact on small traces, sampled on large")
@click.option("--sample-rate", default=0.1, show_default=True, help="sampled: the share of requests replayed")
@click.option("--seed", type=int, default=0, show_default=True, help="the sample's, and the random policy's")
@click.option("--prefill-chunk", type=int, default=1, show_default=True, help="as in replay")
@click.option("--train", default=None, type=click.Path(dir_okay=False), help="training trace (static policy)")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write the rows: .csv, .parquet or .json")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@friendly_errors
def curve(trace, policies, capacities, points, scope, method, sample_rate, seed, prefill_chunk, train, out,
          as_json) -> None:
    """Hit rate of one or more policies at many capacities of TRACE (count mode)."""
    import pandas as pd

    from .curve import format_curve, hit_rate_curve, write_curve
    from .trace import access_stream, read_trace
    tr = read_trace(trace)
    stream = access_stream(tr, prefill_chunk=prefill_chunk)
    names = [p.strip() for p in policies.split(",") if p.strip()]
    df = pd.concat([hit_rate_curve(tr, name, capacities, method=method, points=points, sample_rate=sample_rate,
                                   scope=scope, seed=seed, stream=stream, train=train) for name in names],
                   ignore_index=True)
    if out:
        write_curve(df, out)
    if as_json:
        echo_json(df.astype(object).where(df.notna(), None).to_dict(orient="records"))  # NaN is not JSON
    else:
        click.echo(format_curve(df))
        if out:
            click.echo(f"wrote {out}")


# ---- synth
@main.command()
@click.option("--like", "like", type=click.Path(dir_okay=False), help="Fit the generator to this real trace.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Sample a saved synth model (.npz/.json).")
@click.option("--save-model", type=click.Path(dir_okay=False), help="Also save the fitted/parametric model (.npz/.json).")
@click.option("--layers", type=int, help="Parametric: MoE layers.")
@click.option("--experts", type=int, help="Parametric: experts per layer.")
@click.option("--top-k", type=int, help="Parametric: experts per token and layer.")
@click.option("--zipf", type=float, default=1.0, show_default=True, help="Parametric: popularity Zipf exponent.")
@click.option("--reuse", type=float, default=0.0, show_default=True,
              help="Parametric: keep probability of each previous-token expert.")
@click.option("--coupling", type=float, default=0.0, show_default=True,
              help="Parametric: pull of the previous layer's experts (0 = none).")
@click.option("--prompt-tokens", type=int, default=64, show_default=True, help="Parametric: prompt length.")
@click.option("--decode-tokens", type=int, default=64, show_default=True, help="Parametric: generated tokens.")
@click.option("--bytes-per-expert", type=int, default=0, show_default=True, help="Parametric: model card field.")
@click.option("--tokens", type=int, required=True, help="Tokens to generate.")
@click.option("--requests", type=int, default=None, help="Requests (default: tokens / mean request length).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output trace (.parquet).")
@friendly_errors
def synth(like, model_path, save_model, layers, experts, top_k, zipf, reuse, coupling, prompt_tokens,
          decode_tokens, bytes_per_expert, tokens, requests, seed, out) -> None:
    """Write a synthetic trace: fitted to a real one (--like), from a saved model, or parametric."""
    from .trace import write_trace
    from .trace.synth import SynthModel, fit, parametric, sample
    if sum(x is not None for x in (like, model_path, layers)) != 1:
        raise click.UsageError("give exactly one of --like TRACE, --model FILE, or --layers/--experts/--top-k")
    if like:
        model = fit(like, seed=seed)
    elif model_path:
        model = SynthModel.load(model_path)
    else:
        if experts is None or top_k is None:
            raise click.UsageError("parametric mode needs --layers, --experts and --top-k")
        model = parametric(layers=layers, experts=experts, top_k=top_k, zipf_s=zipf, reuse_p=reuse,
                           coupling=coupling, seed=seed, prompt_tokens=prompt_tokens,
                           decode_tokens=decode_tokens, bytes_per_expert=bytes_per_expert)
    if save_model:
        model.save(save_model)
    trace = sample(model, tokens=tokens, requests=requests, seed=seed)
    write_trace(trace, out)
    click.echo(f"wrote {out}: {trace.num_rows:,} rows, {tokens:,} tokens, "
               f"{trace.table.column('request_id')[-1].as_py() + 1:,} requests, seed {seed}")


# ---- record
@main.command()
@click.option("--model", "model_path", required=True, help="Local checkpoint folder or hub id (from_pretrained).")
@click.option("--prompts", required=True, type=click.Path(dir_okay=False),
              help='JSONL, one {"prompt": text} or {"input_ids": [...]} per line; the line is the request id.')
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file to write (.parquet).")
@click.option("--max-new-tokens", default=128, show_default=True, help="Tokens generated per request (greedy).")
@click.option("--batch-size", default=4, show_default=True, help="Requests generated together (one step per pass).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True, help="auto (the checkpoint's), float32, bfloat16, float16.")
@click.option("--revision", default=None, help="Hub revision to load (stored in the trace).")
@click.option("--record-predictions", "horizon", default=0, show_default=True,
              help="H: also record the top-k the next H MoE layers' routers pick on each layer's hidden state.")
@click.option("--record-logits", is_flag=True, help="Also keep every router logit (float16, num_experts per row).")
@click.option("--resume", is_flag=True, help="Continue an interrupted recording of the same prompts and settings.")
@friendly_errors
def record(model_path, prompts, out, max_new_tokens, batch_size, device, dtype, revision, horizon,
           record_logits, resume) -> None:
    """Run a transformers MoE model over PROMPTS and record every token's routing into a trace."""
    from .record import read_prompts, record as record_trace
    from .record.recorder import require_torch
    require_torch()
    import signal
    # a polite kill (SIGTERM) unwinds like Ctrl-C, so the trace on disk holds every finished batch
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prompt_list = read_prompts(prompts)
    tokens = [0]

    def shown(_):
        return f"{tokens[0]:,} tokens"

    with click.progressbar(length=len(prompt_list), label="requests", show_pos=True, item_show_func=shown,
                           file=sys.stderr) as bar:
        def progress(requests: int, new_tokens: int) -> None:
            tokens[0] += new_tokens
            bar.update(requests, tokens[0])

        s = record_trace(model_path, prompt_list, out, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         device=device, dtype=dtype, revision=revision, record_predictions=horizon,
                         record_logits=record_logits, resume=resume, progress=progress)
    click.echo(f"wrote {s.path}: {s.rows:,} rows; this run {s.requests} requests ({s.skipped} already there), "
               f"{s.tokens:,} tokens in {s.steps} steps, {s.seconds:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
