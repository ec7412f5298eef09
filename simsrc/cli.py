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
        except (TraceError, ValueError, OSError) as e:
            # OSError: a file that cannot be read or written (permissions, a full disk) is one line too
            raise click.ClickException(str(e)) from None
    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(_json_safe(obj), indent=2, default=_json_default))


def _json_safe(obj):
    """NaN and infinities are not JSON: print them as null."""
    import math
    import numpy as np
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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
@click.option("--retry-failed", is_flag=True, help="Run again the runs whose rows in --out have an error.")
@click.option("--dry-run", is_flag=True, help="Only expand and check the spec and say how many runs it has; "
                                              "writes nothing.")
@click.option("--checkpoint-every", default=2.0, show_default=True, help="Seconds between rewrites of --out.")
@friendly_errors
def grid(spec, out, jobs, executor, address, restart, extend, retry_failed, dry_run, checkpoint_every) -> None:
    """Run every combination a grid SPEC (TOML) names; one row per run in --out.

    Exits non-zero when a run failed (its row has `error` set; the others are written)."""
    import os
    from .grid import ResultFile, expand, run_grid
    g = expand(spec)
    where = f"dask at {address}" if executor == "dask" and address else (
        f"{executor}, {jobs or os.cpu_count()} workers")
    # a dry run reads the file as it is (a grid may be writing it) and takes no lock
    with ResultFile(out, g, restart=restart, extend=extend, read_only=dry_run) as results:
        failed_before = len(results.failed())
        done = len(results.done) - (failed_before if retry_failed else 0)
        again = f" ({failed_before:,} failed{', run again' if retry_failed else ''})" if failed_before else ""
        click.echo(f"{g.name}: {len(g):,} runs, {done:,} already in {out}{again}, {len(g) - done:,} to run "
                   f"({where})", err=True)
        if dry_run:
            return
        with click.progressbar(length=len(g) - done, label="runs", show_eta=True, show_pos=True,
                               file=sys.stderr) as bar:
            report = run_grid(g, out, jobs=jobs, executor=executor, address=address, restart=restart,
                              extend=extend, retry_failed=retry_failed, progress=bar.update,
                              flush_every_s=checkpoint_every, results=results)
    failed = f", {report.failed} failed" if report.failed else ""
    click.echo(f"wrote {report.out}: {report.runs:,} rows ({report.ran:,} run now{failed}) in {report.seconds:.1f} s")
    if report.failed_total:
        earlier = report.failed_total - report.failed
        before = f" ({earlier:,} in an earlier call)" if earlier else ""
        raise click.ClickException(
            f"{report.failed_total:,} of {report.runs:,} runs failed{before}; their rows have `error` set. First: "
            f"{report.first_error}. Fix the cause, then run again with --retry-failed")


# ---- plot
def _plot_kinds():
    from .plots import PLOT_KINDS, kinds_help
    return PLOT_KINDS.names(), kinds_help()


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--kind", required=True, type=click.Choice(_plot_kinds()[0]), help=_plot_kinds()[1] + ".")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Figure file: .png, .svg or .pdf.")
@click.option("--x", "x", type=click.Choice(["auto", "bandwidth", "capacity"]), default=None,
              help="stall: the x axis (default auto: bandwidth when it varies).")
@click.option("--y", "y", type=click.Choice(["tpot", "stall", "total"]), default=None,
              help="stall: time per output token (default), stall time, or total time.")
@click.option("--by", type=click.Choice(["auto", "capacity", "policy"]), default=None,
              help="layers: heatmap columns (default auto: capacity when it varies).")
@click.option("--metric", type=click.Choice(["hit_rate", "stall"]), default=None,
              help="layers: what the heatmap shows (default hit_rate).")
@click.option("--policy", default=None, help="layers --by capacity: the policy (default: the first); "
                                             "activations: lru (default), fifo, lfu or lfuda; hit-rate from a "
                                             "trace: the policies to compute, comma-separated (default lru).")
@click.option("--capacity", type=float, default=None, help="layers --by policy: capacity fraction, e.g. 0.25.")
@click.option("--scope", type=click.Choice(["global", "per-layer"]), default=None,
              help="layers: which cache scope when the results hold both (default per-layer); hit-rate from a "
                   "trace: the cache's scope (default global).")
@click.option("--capacities", default=None,
              help="hit-rate from a trace: a range (1%..100%, the default) of --points values, or a list: 10%,25%,166.")
@click.option("--points", type=click.IntRange(min=2), default=None,
              help="hit-rate from a trace: capacities in a range (default 100).")
@click.option("--accounting", type=click.Choice(["segment", "access"]), default=None,
              help="hit-rate from a trace: as in replay (default segment).")
@click.option("--method", type=click.Choice(["auto", "exact", "sampled"]), default=None,
              help="hit-rate from a trace: as in `moesim curve` (default auto: LRU's one-pass curve, exact "
                   "replays of the others on small traces, sampled on large).")
@click.option("--sample-rate", type=float, default=None,
              help="hit-rate from a trace, sampled: the share of the accesses replayed (default 0.04).")
@click.option("--seed", type=int, default=None, help="hit-rate from a trace: the sample's (default 0).")
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE",
              help="Results kinds: only rows where a result column has this value, e.g. bandwidth_gbps=8 "
                   "(repeatable).")
@click.option("--request", type=int, default=None, help="activations: request id (default: the first long one).")
@click.option("--layers", "layers", default=None,
              help="activations: the model's layer numbers, e.g. 1,13,26 (default: four spread over the model).")
@click.option("--slots", type=int, default=None, help="activations: cached experts per layer (default: 1/4).")
@click.option("--tokens", type=int, default=None, help="activations: tokens shown (default 96).")
@click.option("--title", default=None, help="Figure title (default: says what is drawn).")
@click.pass_context
@friendly_errors
def plot(ctx, sources, kind, out, **given) -> None:
    """Draw a figure from grid RESULTS (or scorecards, or a TRACE) into --out."""
    from .plots import options, plot as make_plot, save
    given = {k: v for k, v in given.items() if v not in (None, ())}
    takes = options(kind)
    stray = [k for k in given if k not in takes]
    if stray:
        raise click.UsageError(f"--{stray[0]} does not apply to --kind {kind} "
                               f"(it takes {', '.join('--' + o for o in takes)})")
    if "where" in given:
        pairs = [w.partition("=") for w in given["where"]]
        bad = [w for w, (_, eq, _) in zip(given["where"], pairs) if not eq]
        if bad:
            raise click.BadParameter(f"{bad[0]!r}: write COLUMN=VALUE, e.g. bandwidth_gbps=8", param_hint="--where")
        given["where"] = {k.strip(): v.strip() for k, _, v in pairs}
    if "layers" in given:
        try:
            given["layers"] = [int(v) for v in given["layers"].split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"{given['layers']!r}: write the model's layer numbers, e.g. 1,13,26",
                                     param_hint="--layers") from None
    path = save(make_plot(list(sources), kind, **given), out)
    click.echo(f"wrote {path}")


# ---- replay
def config_options(command, only=None):
    """Add one click option per replay knob (moesim.config.KNOBS): names, defaults, help and choices come from
    there, so a knob added to the config is an option here with no edit to this file. only: these knobs."""
    from .config import KNOBS
    for k in reversed(KNOBS):
        if only is not None and k.name not in only:
            continue
        names = [k.option, *("--" + a.replace("_", "-") for a in k.aliases)]
        choices = k.choice_names()
        extra = f" [{', '.join(choices)}]" if choices else ""
        if k.flag:
            command = click.option(*names, k.name, is_flag=True, help=k.help)(command)
        elif k.name == "pin":
            command = click.option(*names, k.name, multiple=True, help=k.help)(command)
        else:
            command = click.option(*names, k.name, default=k.default, show_default=k.default is not None,
                                   help=k.help + extra)(command)
    return command


@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@config_options
@click.option("--json", "as_json", is_flag=True, help="print the result row as JSON (NaN as null)")
@click.option("--per-step-csv", type=click.Path(dir_okay=False), default=None,
              help="timed mode: write each step's seconds to this CSV (step,seconds), to lay beside a measurement")
@friendly_errors
def replay(trace, as_json, per_step_csv, **knobs) -> None:
    """Replay TRACE against one cache configuration and print the result row."""
    from .replay import replay as run_replay
    knobs["per_step"] = knobs.get("per_step") or per_step_csv is not None
    row = run_replay(trace, **{k: v for k, v in knobs.items() if v not in (None, ())})
    if per_step_csv:
        _write_step_csv(per_step_csv, row)
    click.echo(json.dumps(_json_safe(row), indent=2) if as_json else format_row(row))


def _write_step_csv(path: str, row: dict) -> None:
    """step,seconds per line, written beside the output and renamed into place (never a half-written file)."""
    import os
    if "step_s" not in row:
        raise ValueError("--per-step-csv: per-step times come from timed mode; drop --mode count")
    tmp = f"{path}.part"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("step,seconds\n")
            f.writelines(f"{i},{t!r}\n" for i, t in enumerate(row["step_s"]))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _overridden(row: dict) -> str:
    """' (bandwidth, latency overridden)' where the row's figures are not its preset's."""
    from .hardware import get_hardware
    from .units import GB, TFLOPS, US
    try:
        hw = get_hardware(row["hardware"])
    except ValueError:
        return ""
    preset = {"bandwidth_gbps": hw.bandwidth / GB, "latency_us": hw.latency / US, "copy_engines": hw.copy_engines,
              "gpu_tflops": hw.gpu_flops / TFLOPS, "hbm_gbps": hw.hbm / GB}
    changed = [k.rsplit("_", 1)[0].replace("_", " ") for k, v in preset.items() if row.get(k) != v]
    return f" ({', '.join(changed)} overridden)" if changed else ""


def _serving_line(row: dict) -> str:
    """How requests were batched and when they arrived, or '' for the recorded steps."""
    if row.get("batching", "static") == "static" and row.get("batch_size", 1) == 1:
        return ""
    text = f"batching {row['batching']}, batch size {row['batch_size']}"
    if row.get("token_budget") is not None:
        text += f", token budget {row['token_budget']:,}"
    if row.get("arrival_rate") is not None:
        text += f", Poisson arrivals {num_plain(row['arrival_rate'])}/s (seed {row['seed']})"
    elif row.get("arrivals") is not None:
        text += f", arrivals from {row['arrivals']}"
    return text + f", {row['steps']:,} steps"


def _percentiles(row: dict, name: str) -> str:
    """'12.1 / 30.5 / 41 ms', or in s when the largest is 10 s or more."""
    values = [row[f"{name}_p{p}_s"] for p in (50, 90, 99)]
    scale, unit = (1.0, " s") if max(values) >= 10 else (1e3, " ms")
    return " / ".join(f"{v * scale:.4g}" for v in values) + unit


def num_plain(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


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
    if row.get("below_token_footprint"):
        lines.append(f"warning: a global cache of {row['capacity_experts']} experts is smaller than one token's "
                     f"{row['token_footprint']} (MoE layers x top-k): LRU-like policies evict every expert before "
                     f"its reuse and hit almost nothing")
    if row["mode"] == "timed":
        lines.append(f"hardware {row['hardware']}{_overridden(row)}: link {num(row['bandwidth_gbps'])} GB/s, "
                     f"{num(row['latency_us'])} us/transfer, {row['copy_engines']} copy engines; "
                     f"GPU {num(row['gpu_tflops'])} TFLOP/s, {num(row['hbm_gbps'])} GB/s HBM")
    if row["mode"] == "timed" and row.get("host_capacity") is not None:
        lines.append(f"storage{' ' + row['storage'] if row.get('storage') else ''}: {num(row['storage_gbps'])} GB/s, "
                     f"{num(row['storage_latency_us'])} us/read, {row['storage_lanes']} lane(s), "
                     f"{row['storage_stripes']} stripe(s); host policy {row['host_policy']}")
    serving = _serving_line(row)
    if serving:
        lines.append(serving)
    if row.get("memory_budget"):
        lines.append(f"capacity auto: {row['memory_budget']}")
    lines.append("")
    table = [("accesses", num(row["accesses"])), ("hits", num(row["hits"])), ("misses", num(row["misses"])),
             ("hit rate", f"{row['hit_rate']:.2%}")]
    if row.get("host_computed"):
        table += [("computed on the host", num(row["host_computed"])),
                  ("host compute", num(row["host_compute_s"], " s"))]
    for experts, prefix, what in (("lowbit_fetched", "lowbit", "fetched as low-bit copies"),
                                  ("skipped", "skipped", "skipped"), ("substituted", "substituted", "substituted")):
        if row.get(experts):
            table += [(what, num(row[experts])), ("  their tokens", num(row[f"{prefix}_tokens"])),
                      ("  their routing weight", num(row[f"{prefix}_weight"]))]
    if row.get("overhead_s"):
        table += [("miss bookkeeping", num(row["overhead_s"], " s"))]
    if row.get("prefetch_issued"):
        table += [("prefetches issued", num(row["prefetch_issued"])), ("  used", num(row["prefetch_used"])),
                  ("  late", num(row["prefetch_late"])), ("  wasted", num(row["prefetch_wasted"])),
                  ("  harmful", num(row["prefetch_harmful"]))]
    table.append(("GB moved", f"{row['bytes_moved'] / 1e9:,.1f}"))
    if row.get("host_capacity") is not None:  # memory tiers: the host tier in front of storage
        rate = row["host_hit_rate"]
        table += [("host tier", f"{row['host_capacity']} = {row['host_capacity_experts']:,} experts"),
                  ("host-tier hits", num(row["host_hits"])),
                  ("host-tier hit rate", "-" if rate != rate else f"{rate:.2%}"),
                  ("storage reads", num(row["storage_reads"])),
                  ("GB read from storage", f"{row['storage_bytes'] / 1e9:,.1f}")]
        if row["paged_bytes"]:
            table.append(("GB paged per forward pass", f"{row['paged_bytes'] / 1e9:,.3g}"))
        if row["mode"] == "timed":
            table += [("storage stall", num(row["storage_stall_s"], " s")), ("paging", num(row["paging_s"], " s"))]
    if row["mode"] == "timed":
        table += [("total time", num(row["total_s"], " s")), ("stall time", num(row["stall_s"], " s")),
                  ("stall share", f"{row['stall_s'] / row['total_s']:.1%}" if row["total_s"] else "-"),
                  ("time per output token", num(row["tpot_s"] * 1e3, " ms")),
                  ("time to first token", num(row["ttft_s"] * 1e3, " ms"))]
        if serving:
            table += [("TTFT p50 / p90 / p99", _percentiles(row, "ttft")),
                      ("TPOT p50 / p90 / p99", _percentiles(row, "tpot")),
                      ("throughput", num(row["tokens_per_s"], " tokens/s"))]
            if row.get("idle_s"):
                table.append(("idle, waiting for requests", num(row["idle_s"], " s")))
    width = max(len(k) for k, _ in table)
    lines += [f"  {k:<{width}}  {v:>14}" for k, v in table]
    if "hits_per_layer" in row:
        lines += ["", "  layer      hits    misses  hit rate" + ("   stall s" if "stall_per_layer_s" in row else "")]
        layers = row.get("moe_layers") or range(len(row["hits_per_layer"]))  # the model's layer numbers
        for i, (n, h, m) in enumerate(zip(layers, row["hits_per_layer"], row["misses_per_layer"])):
            stall = f"  {row['stall_per_layer_s'][i]:8.4f}" if "stall_per_layer_s" in row else ""
            lines.append(f"  {n:5d}  {h:8d}  {m:8d}  {h / max(h + m, 1):8.2%}{stall}")
    return "\n".join(lines)


# ---- calibrate
def _calibrate_defaults():
    from .calibrate import DEFAULT_FIT, LOSSES, PARAMS
    return ",".join(DEFAULT_FIT), LOSSES, ", ".join(PARAMS)


@main.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--measured", required=True, type=click.Path(dir_okay=False),
              help="The real run's decode steps: a BigMoeOnEdge *.metrics.csv, or a CSV step,wall_ms "
                   "[,compute_ms,stall_ms,overhead_ms,io_ms,read_bytes] (_s and _us work too).")
@click.option("--fit", default=_calibrate_defaults()[0], show_default=True,
              help=f"Figures to fit, comma-separated, from: {_calibrate_defaults()[2]}.")
@click.option("--fit-fraction", default=0.5, show_default=True, type=float,
              help="Share of the decode steps, from the first, the fit sees; the rest are held out.")
@click.option("--loss", type=click.Choice(_calibrate_defaults()[1]), default="soft_l1", show_default=True,
              help="Robust loss on each step's relative error (linear: plain least squares).")
@click.option("--wall-only", is_flag=True, help="Fit the steps' wall times alone, not the measured parts' totals.")
@click.option("--max-evals", default=400, show_default=True, type=int, help="Most evaluations of the fit's objective.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Hardware file (TOML) to write, only if the fit converges; use it with --hardware FILE.toml.")
@click.option("--name", default=None, help="The hardware's name in the file (default: MEASURED's stem-calibrated).")
@click.option("--steps-csv", type=click.Path(dir_okay=False), default=None,
              help="Also write each step's measured, moesim and straight-line seconds.")
@click.option("--prefill-time", default=None,
              help="The run's measured prompt time (e.g. 6.33s), fitted with gpu_flops; default: MEASURED's own "
                   "(a BigMoeOnEdge summary's prefill_s, a plain CSV's '# prefill_s=' comment).")
@click.option("--no-prefill", is_flag=True, help="Leave the prompt's time out of the fit, even where MEASURED has it.")
@config_options
@click.option("--json", "as_json", is_flag=True, help="print the calibration as JSON (NaN as null)")
@friendly_errors
def calibrate(trace, measured, fit, fit_fraction, loss, wall_only, max_evals, out, name, steps_csv, prefill_time,
              no_prefill, as_json, **knobs) -> None:
    """Fit the timed model's figures to a real run's measured step times (--measured) on the first steps,
    report how well they predict the rest beside a straight line, and write a hardware file (--out)."""
    from .calibrate import calibrate as run_calibrate
    cal = run_calibrate(trace, measured, fit=fit, fit_fraction=fit_fraction, loss=loss, use_parts=not wall_only,
                        max_evals=max_evals, name=name, out=out, prefill_time=prefill_time,
                        fit_prefill=not no_prefill, **{k: v for k, v in knobs.items() if v not in (None, ())})
    if steps_csv:
        cal.steps.to_csv(steps_csv, index=False)
    if as_json:
        echo_json(cal.to_dict())
    else:
        click.echo(cal.report())
    if out:
        options = cal.replay_options()
        click.echo(f"wrote {out}: moesim replay {trace} --hardware {out}{' ' + options if options else ''}",
                   err=as_json)


# ---- fit-predictor
@main.command("fit-predictor")
@click.argument("train", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="model file: .npz (coactivation) or .pt (gru)")
@click.option("--kind", type=click.Choice(["coactivation", "gru"]), default="coactivation", show_default=True,
              help="coactivation: numpy, seconds; gru: a small PyTorch sequence model (needs torch)")
@click.option("--horizon", type=click.IntRange(min=1), default=1, show_default=True,
              help="coactivation: fit horizons 1..H")
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True,
              help="gru: passes over the training steps")
@click.option("--hidden", type=click.IntRange(1, 65536), default=128, show_default=True, help="gru: hidden size")
@friendly_errors
def fit_predictor_cmd(train, out, kind, horizon, epochs, hidden) -> None:
    """Fit a learned prefetch predictor on TRAIN traces (never the ones you evaluate on)."""
    import time
    from .files import refuse_inputs
    from .predict import fit_predictor
    refuse_inputs(out, train)
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
    from .hardware import get_hardware
    from .predict import predict
    from .units import parse_rate
    from .predict.plan import select
    from .predict.score import format_scorecard, score
    from .trace import access_stream, read_trace
    tr = read_trace(trace)
    train_tr = read_trace(train) if train else None
    stream = access_stream(tr, prefill_chunk=prefill_chunk)
    pred = select(predict(tr, predictor, stream=stream, horizon=horizon, top_n=top_n, train=train_tr),
                  threshold=threshold)
    hw = get_hardware(hardware).with_overrides(
        bandwidth=None if bandwidth is None else parse_rate(bandwidth, "--bandwidth"))
    card = score(pred, stream, meta=tr.meta, hardware=hw, expert_bytes=float(tr.meta.bytes_per_expert))
    card["trace"] = trace
    if moe_beyond:
        from .moe_beyond import engine_protocol
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

    from .hardware import presets
    from .units import GB, TFLOPS, US
    if as_json:
        echo_json({n: dataclasses.asdict(h) for n, h in presets().items()})
        return
    click.echo(f"{'preset':<16}{'link GB/s':>10}{'lat us':>8}{'engines':>8}{'TFLOP/s':>9}{'HBM GB/s':>10}"
               f"{'launch us':>10}{'GPU GiB':>8}")
    for h in presets().values():
        click.echo(f"{h.name:<16}{h.bandwidth / GB:>10g}{h.latency / US:>8g}{h.copy_engines:>8d}"
                   f"{h.gpu_flops / TFLOPS:>9g}{h.hbm / GB:>10g}{h.launch / US:>10g}{h.gpu_memory / 2**30:>8g}")
    click.echo("")
    for h in presets().values():
        click.echo(f"{h.name}: {h.source}")
    from .hardware import storage_presets  # storage devices for the tiers (--storage NAME)
    click.echo("")
    for d in storage_presets().values():
        click.echo(f"storage {d.name}: {', '.join(f'{k} {v:g}' for k, v in d.figures.items())}; {d.source}")


# ---- convert
@main.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "moe-beyond", "vllm", "megatron", "csv", "npz", "speculative-moe",
                                 "bigmoeonedge", "stratamoe", "onnx-genai"]),
              help="Source format (auto: from names and content).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trace file to write (.parquet).")
@click.option("--model", default=None, help="Model id or alias (fills experts, layers, bytes for formats without them).")
@click.option("--num-experts", type=click.IntRange(1, 65536), default=None,
              help="Routed experts per layer (vllm, megatron, csv, npz).")
@click.option("--moe-layers", default=None, help="MoE layer ids, e.g. '1-26' or '0,2,4' (vllm, megatron, csv, npz).")
@click.option("--num-layers", type=click.IntRange(1, 65536), default=None,
              help="Decoder layers in the model, dense ones included.")
@click.option("--prompt-len", type=click.IntRange(min=0), multiple=True,
              help="vllm: tokens before it are prefill; once, or once per request.")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="megatron: the data-parallel rank to keep (default 0).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="megatron: requests per step (tokens split evenly).")
@friendly_errors
def convert(src, fmt, out, model, num_experts, moe_layers, num_layers, prompt_len, rank, batch_size) -> None:
    """Import traces other tools wrote (SRC: files, folders or globs; documentation such as SOURCE.md is
    skipped) into one moesim trace; several files become one trace, file after file."""
    import time
    import numpy as np
    from .files import refuse_inputs
    from .trace import write_trace
    from .trace.importers import convert as convert_trace, input_files
    t0 = time.perf_counter()
    files = input_files(src, fmt)
    refuse_inputs(out, files)
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
@click.option("--batch-rows", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Rows streamed per batch.")
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
              help="one policy or several, comma-separated: lru,fifo,lfu,belady,moe-infinity")
@click.option("--capacities", default="1%..100%", show_default=True,
              help="a range (1%..100%, 16..1664) of --points values, or a list: 10%,25%,166")
@click.option("--points", default=100, show_default=True, help="capacities in a range")
@click.option("--scope", type=click.Choice(["global", "per-layer"]), default="global", show_default=True)
@click.option("--accounting", type=click.Choice(["segment", "access"]), default="segment", show_default=True,
              help="as in replay: a (step, layer)'s distinct experts looked up together, or every access")
@click.option("--batch-size", type=int, default=1, show_default=True, help="as in replay (static batching)")
@click.option("--method", type=click.Choice(["auto", "exact", "sampled"]), default="auto", show_default=True,
              help="exact: one pass (lru; fifo, belady per access) or a replay per capacity; sampled: replays "
                   "on a sample of the trace; auto: one pass, else exact on small traces, sampled on large")
@click.option("--sample-rate", type=float, default=None,
              help="sampled: the share of the accesses replayed (default 0.04)")
@click.option("--seed", type=int, default=0, show_default=True, help="the sample's, and the random policy's")
@click.option("--anchors", type=click.IntRange(min=0), default=None,
              help="sampled: capacities replayed on the whole trace to calibrate the rest (default one in 25, "
                   "at least 2 from 8 capacities on)")
@click.option("--prefill-chunk", type=int, default=1, show_default=True, help="as in replay")
@click.option("--train", default=None, type=click.Path(dir_okay=False), help="training trace (static policy)")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="also write the rows: .csv, .parquet or .json")
@click.option("--plot", "figure", default=None, type=click.Path(dir_okay=False),
              help="also draw the curves (as plot --kind hit-rate): .png, .svg or .pdf")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@friendly_errors
def curve(trace, policies, capacities, points, scope, accounting, batch_size, method, sample_rate, seed, anchors,
          prefill_chunk, train, out, figure, as_json) -> None:
    """Hit rate of one or more policies at many capacities of TRACE (count mode)."""
    import pandas as pd

    from .curve import format_curve, hit_rate_curve, replayed_stream, write_curve
    from .config import ReplayConfig
    from .trace import read_trace
    tr, stream = replayed_stream(read_trace(trace), ReplayConfig.make(batch_size=batch_size,
                                                                      prefill_chunk=prefill_chunk))
    names = [p.strip() for p in policies.split(",") if p.strip()]
    df = pd.concat([hit_rate_curve(tr, name, capacities, method=method, points=points, sample_rate=sample_rate,
                                   scope=scope, accounting=accounting, batch_size=batch_size, seed=seed,
                                   anchors=anchors, prefill_chunk=prefill_chunk, stream=stream, train=train)
                    for name in names],
                   ignore_index=True)
    if out:
        write_curve(df, out)
    if figure:
        from .plots import hit_rate_vs_capacity, save
        save(hit_rate_vs_capacity(df.assign(trace=trace, model=tr.meta.model, mode="count")), figure)
    if as_json:
        echo_json(df.astype(object).where(df.notna(), None).to_dict(orient="records"))  # NaN is not JSON
    else:
        click.echo(format_curve(df))
        for path in (out, figure):
            if path:
                click.echo(f"wrote {path}")


# ---- synth
@main.command()
@click.option("--like", "like", type=click.Path(dir_okay=False), help="Fit the generator to this real trace.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Sample a saved synth model (.npz/.json).")
@click.option("--save-model", type=click.Path(dir_okay=False), help="Also save the fitted/parametric model (.npz/.json).")
@click.option("--layers", type=click.IntRange(1, 65536), help="Parametric: MoE layers.")
@click.option("--experts", type=click.IntRange(1, 65536), help="Parametric: experts per layer.")
@click.option("--top-k", type=click.IntRange(min=1), help="Parametric: experts per token and layer.")
@click.option("--zipf", type=float, default=1.0, show_default=True, help="Parametric: popularity Zipf exponent.")
@click.option("--reuse", type=float, default=0.0, show_default=True,
              help="Parametric: keep probability of each previous-token expert.")
@click.option("--coupling", type=float, default=0.0, show_default=True,
              help="Parametric: pull of the previous layer's experts (0 = none).")
@click.option("--prompt-tokens", type=click.IntRange(min=0), default=64, show_default=True,
              help="Parametric: prompt length.")
@click.option("--decode-tokens", type=click.IntRange(min=0), default=64, show_default=True,
              help="Parametric: generated tokens.")
@click.option("--bytes-per-expert", type=click.IntRange(min=0), default=0, show_default=True,
              help="Parametric: model card field.")
@click.option("--tokens", type=click.IntRange(1, 2 ** 32 - 1), required=True, help="Tokens to generate.")
@click.option("--requests", type=click.IntRange(min=1), default=None,
              help="Requests (default: tokens / mean request length).")
@click.option("--seed", type=click.IntRange(0, 2 ** 63 - 1), default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output trace (.parquet).")
@friendly_errors
def synth(like, model_path, save_model, layers, experts, top_k, zipf, reuse, coupling, prompt_tokens,
          decode_tokens, bytes_per_expert, tokens, requests, seed, out) -> None:
    """Write a synthetic trace: fitted to a real one (--like), from a saved model, or parametric."""
    from .files import refuse_inputs
    from .trace import write_trace
    from .trace.synth import SynthModel, fit, parametric, sample
    if sum(x is not None for x in (like, model_path, layers)) != 1:
        raise click.UsageError("give exactly one of --like TRACE, --model FILE, or --layers/--experts/--top-k")
    refuse_inputs(out, [like, model_path])
    if save_model:
        refuse_inputs(save_model, [like, model_path, out], option="--save-model")
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


# ---- plan
# the replay knobs a plan passes on to every placement it replays (it chooses capacity, scope, action and pins)
PLAN_KNOBS = ("policy", "predictor", "horizon", "top_n", "prefill_chunk", "seed", "hardware", "bandwidth", "latency",
              "copy_engines", "gpu_flops", "hbm", "bytes_per_expert", "train", "launch", "miss_overhead", "overlap",
              "host_flops", "host_bandwidth", "kv_bytes_per_token", "weight_bits")


@main.command("plan")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--target", required=True, type=click.Choice(["llama.cpp", "ktransformers", "dynamic"]),
              help="the runtime: llama.cpp (whole layers' expert tensors, -ot / --n-cpu-moe), ktransformers "
                   "(optimize rules per layer, kt-kernel's GPU expert mask per expert), dynamic (an expert cache per "
                   "layer: per-layer budgets)")
@click.option("--gpu-memory", default=None, help="GPU memory, e.g. 24GiB (default: the hardware's)")
@click.option("--reserve", default="1GiB", show_default=True,
              help="memory kept back besides the non-expert weights and the KV cache: embeddings, output head, CUDA "
                   "context, compute buffers")
@click.option("--context", default=None, type=int, help="tokens of KV cache to reserve per sequence (with "
              "--kv-bytes-per-token)")
@click.option("--batch", default=1, show_default=True, type=int,
              help="sequences whose KV cache is reserved (the replay keeps the trace's own steps)")
@click.option("--objective", type=click.Choice(["tpot", "total"]), default="tpot", show_default=True,
              help="what the search minimises: time per output token, or the whole trace's time")
@functools.partial(config_options, only=PLAN_KNOBS)
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="write the plan file: its pins (what --pin-file reads) and what was chosen and predicted")
@click.option("--json", "as_json", is_flag=True, help="print the plan file's content as JSON")
@friendly_errors
def plan_cmd(trace, target, gpu_memory, reserve, context, batch, objective, out, as_json, **knobs) -> None:
    """Search the expert placements TARGET can express for TRACE and predict each one's time per token."""
    from .config import KNOB
    from .placement import plan
    # only what was given: the plan's replay command and file repeat it, and the defaults go without saying
    given = {k: v for k, v in knobs.items() if not (v is None or v is False or v == ()) and v != KNOB[k].default}
    p = plan(trace, target=target, gpu_memory=gpu_memory, reserve=reserve, context=context, batch=batch,
             objective=objective, **given)
    if out:
        p.write(out)
    if as_json:
        echo_json(p.to_json())
    else:
        click.echo(format_plan(p, out))


def format_plan(p, out: str | None = None) -> str:
    """A plan as people read it: the memory, the search, each placement's prediction, then the settings."""
    from .config import KNOB
    b = p.budget
    gib = (lambda n: f"{n / 2**30:.2f} GiB")
    lines = [f"{p.trace}  ({p.model})", f"target {p.target}", "",
             f"memory    {gib(b.gpu_memory)} GPU - {gib(b.non_expert)} non-expert weights - {gib(b.kv_cache)} KV "
             f"cache - {gib(b.reserve)} reserve = {gib(b.for_experts)} for experts",
             f"          {b.experts} of {b.num_layers * b.num_experts} experts fit ({b.expert_bytes / 2**20:.1f} MiB "
             f"each); {b.layers} of {b.num_layers} layers whole",
             *_wrapped("search    ", p.search), ""]
    rows = [p.baseline, p.chosen, *p.others]
    width = max(len(r.name) for r in rows)
    lines.append(f"  {'placement':<{width}}  GPU experts  hit rate  time/token     total  speed-up")
    for r in rows:
        speed = p.baseline.cost / r.cost if r.cost else float("nan")
        tpot = f"{r.tpot_s * 1e3:7.2f} ms" if r.tpot_s == r.tpot_s else "      - ms"
        lines.append(f"  {r.name:<{width}}  {r.gpu_experts:11,d}  {r.hit_rate:8.2%}  {tpot}  {r.row['total_s']:6.2f} s  "
                     f"{speed:7.2f}x")
    c = p.chosen
    lines.append("")
    if c.gpu_layers is not None:
        from .placement import _layer_list
        lines.append(f"GPU layers  {_layer_list(c.gpu_layers) or '(none)'}")
    if c.layer_capacity is not None:
        lines.append("budgets     " + " ".join(f"{layer}:{n}" for layer, n in c.layer_capacity))
    for name, text in p.artifacts.items():
        if "\n" in text:
            lines += ["", f"{name}:", text.rstrip("\n")]
        else:
            lines.append(f"{name:<11} {text}")
    if p.notes:
        lines.append("")
        for n in p.notes:
            lines += _wrapped("note: ", n)
    options = dict(p.replay_options())
    if c.pins:
        options["pin_file"] = out or "PLAN.json"
    words = []
    for k, v in options.items():
        knob = KNOB[k]
        words += [knob.option] if knob.flag else [knob.option, str(v)]
    lines += ["", f"replay: moesim replay {p.trace} " + " ".join(words)]
    if c.pins and not out:
        lines.append("        (write the pin file with --out PLAN.json)")
    return "\n".join(lines)


def _wrapped(head: str, text: str, width: int = 110) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * len(head),
                         break_long_words=False, break_on_hyphens=False)


if __name__ == "__main__":
    sys.exit(main())
