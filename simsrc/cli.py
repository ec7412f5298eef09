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


if __name__ == "__main__":
    sys.exit(main())
