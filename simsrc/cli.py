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
@click.option("--gpu-tflops", type=float, default=None, help="override dense tensor TFLOP/s")
@click.option("--hbm", default=None, help="override GPU memory bandwidth, e.g. 2000GB/s")
@click.option("--bytes-per-expert", default=None, help="override the trace's expert size, e.g. 17MB")
@click.option("--prefill-chunk", type=int, default=1, show_default=True,
              help="prefill tokens per step: 1 replays prompts as if decoded, 0 keeps recorded steps")
@click.option("--pin", "pins", multiple=True, help="LAYER:EXPERT kept resident outside the policy (repeatable)")
@click.option("--train", default=None, type=click.Path(dir_okay=False), help="training trace (static policy)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-layer", is_flag=True, help="also show hits, misses and stall per layer")
@click.option("--json", "as_json", is_flag=True, help="print the result row as JSON")
@friendly_errors
def replay(trace, policy, capacity, scope, mode, hardware, bandwidth, latency, copy_engines, gpu_tflops, hbm,
           bytes_per_expert, prefill_chunk, pins, train, seed, per_layer, as_json) -> None:
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
                     train=train, seed=seed, per_layer=per_layer)
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
    table.append(("GB moved", num(row["bytes_moved"] / 1e9)))
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
