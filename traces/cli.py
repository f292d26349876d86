"""The `cmx trace` commands: import, gen and info.

`import` and `gen` write the trace to a temporary file beside the output and
rename it into place at the end, so a failed run leaves no half-written
trace at the output path. They reject an existing output unless `--force` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from traces.errors import TraceError
from traces.generator import GeneratorParams, generate_trace
from traces.importers import ImportedTrace, import_azure, import_mooncake
from traces.stats import TokenQuantiles, TraceStats, describe_trace

__all__ = ["register"]

logger = logging.getLogger(__name__)

IMPORTERS: dict[str, Callable[[str], ImportedTrace]] = {
    "mooncake": import_mooncake,
    "azure": import_azure,
}
"""Source formats accepted by `cmx trace import --format`."""

_DEFAULTS = GeneratorParams()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `trace` command and its subcommands to `subparsers`."""
    trace_parser = subparsers.add_parser(
        "trace",
        help="import, generate and describe request traces",
        description="Import, generate and describe canonical request traces "
        "(Parquet, one row per request).",
    )
    commands = trace_parser.add_subparsers(title="trace commands", metavar="COMMAND")
    commands.required = True
    _add_import_parser(commands)
    _add_gen_parser(commands)
    _add_info_parser(commands)


def _add_import_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "import",
        help="convert a Mooncake or Azure trace to a canonical trace file",
        description="Validate a public trace and write it as a canonical trace "
        "file. Azure timestamps without a zone are taken as UTC.",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=sorted(IMPORTERS),
        dest="source_format",
        help="source format: mooncake (JSON lines) or azure (2023 CSV)",
    )
    parser.add_argument("input", metavar="INPUT", help="source trace file to read")
    _add_output_arguments(parser)
    parser.set_defaults(run=run_import)


def _add_gen_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "gen",
        help="generate a seeded synthetic trace",
        description="Generate a bursty, long-context trace with multi-turn "
        "sessions. The same seed and options give a byte-identical file.",
    )
    _add_output_arguments(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="SEED",
        help="random seed, an integer >= 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=_DEFAULTS.requests,
        metavar="N",
        help="number of requests (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=_DEFAULTS.rate_per_s,
        dest="rate_per_s",
        metavar="R",
        help="mean arrival rate in requests per second (default: %(default)s)",
    )
    parser.add_argument(
        "--burstiness",
        type=float,
        default=_DEFAULTS.burstiness,
        metavar="B",
        help="Gamma shape of inter-arrival times, > 0: 1 is Poisson, smaller is "
        "burstier, and the CV is 1/sqrt(B) (default: %(default)s)",
    )
    parser.add_argument(
        "--max-input-tokens",
        type=int,
        default=_DEFAULTS.max_input_tokens,
        metavar="N",
        help="maximum prompt length in tokens (default: %(default)s)",
    )
    parser.set_defaults(run=run_gen)


def _add_info_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "info",
        help="print row count, duration, rate and token-length quantiles",
        description="Describe a canonical trace file. Quantiles interpolate "
        "linearly between ranks, as numpy's default percentile does.",
    )
    parser.add_argument("trace", metavar="TRACE", help="canonical trace file to read")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.set_defaults(run=run_info)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="TRACE.parquet",
        help="canonical trace file to write",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the output file if it exists"
    )


def run_import(args: argparse.Namespace) -> int:
    """Import `args.input` in `args.source_format` and write `args.output`."""
    output = _check_output(Path(args.output), args.force)
    trace = IMPORTERS[args.source_format](args.input)
    _write_atomically(trace, output)
    print(f"wrote {trace.rows} requests to {output}")
    return 0


def run_gen(args: argparse.Namespace) -> int:
    """Generate a trace from the command-line options and write `args.output`."""
    output = _check_output(Path(args.output), args.force)
    # A small --max-input-tokens also lowers the default medians, so that the
    # option works alone. A value below the minimum prompt length still fails.
    max_input_tokens = args.max_input_tokens
    params = GeneratorParams(
        requests=args.requests,
        rate_per_s=args.rate_per_s,
        burstiness=args.burstiness,
        max_input_tokens=max_input_tokens,
        input_median_tokens=_clamp(_DEFAULTS.input_median_tokens, max_input_tokens),
        turn_median_tokens=_clamp(_DEFAULTS.turn_median_tokens, max_input_tokens),
    )
    trace = generate_trace(params, args.seed)
    _write_atomically(trace, output)
    print(f"wrote {trace.rows} requests to {output}")
    return 0


def _clamp(default_tokens: int, max_input_tokens: int) -> int:
    """Lower a default median to `max_input_tokens` when that is smaller."""
    if _DEFAULTS.min_input_tokens <= max_input_tokens < default_tokens:
        return max_input_tokens
    return default_tokens


def run_info(args: argparse.Namespace) -> int:
    """Print the statistics of `args.trace` as a table or as JSON."""
    stats = describe_trace(args.trace)
    if args.json:
        print(json.dumps(dataclasses.asdict(stats)))
    else:
        _print_stats(stats, Console(file=sys.stdout))
    return 0


def _check_output(output: Path, force: bool) -> Path:
    """Reject an output path that cannot be written before any work starts."""
    if output.is_dir():
        raise TraceError(f"{output}: output is a folder; give a file name")
    if output.exists() and not force:
        raise TraceError(f"{output}: file exists; pass --force to replace it")
    if not output.parent.is_dir():
        raise TraceError(f"{output}: output folder {output.parent} does not exist")
    return output


def _write_atomically(trace: ImportedTrace, output: Path) -> None:
    """Write `trace` to a temporary file beside `output`, then rename it."""
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        trace.write(temporary)
        os.replace(temporary, output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise TraceError(f"{output}: cannot write the trace ({error})") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("wrote %d requests to %s", trace.rows, output)


def _print_stats(stats: TraceStats, console: Console) -> None:
    summary = Table(title=stats.path, show_header=False, box=None)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("requests", f"{stats.rows:,}")
    summary.add_row("duration", _format_optional(stats.duration_s, "s"))
    summary.add_row("mean rate", _format_optional(stats.mean_rate_per_s, "requests/s"))
    console.print(summary)

    tokens = Table(title="token lengths")
    tokens.add_column("tokens")
    for column in ("p50", "p90", "p99", "max"):
        tokens.add_column(column, justify="right")
    for label, quantiles in (
        ("input", stats.input_tokens),
        ("output", stats.output_tokens),
    ):
        tokens.add_row(label, *_format_quantiles(quantiles))
    console.print(tokens)


def _format_optional(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.3f} {unit}"


def _format_quantiles(quantiles: TokenQuantiles | None) -> list[str]:
    if quantiles is None:
        return ["n/a"] * 4
    values = (quantiles.p50, quantiles.p90, quantiles.p99, float(quantiles.max))
    return [_format_tokens(value) for value in values]


def _format_tokens(value: float) -> str:
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"
