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
