"""The `cmx trace` commands: import, gen, info, export and the transforms.

`import`, `gen`, `export` and the transforms write their output to a
temporary file beside it and rename it into place at the end, so a failed
run leaves no half-written file at the output path. They reject an existing
output unless `--force` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from traces import cli_transforms
from traces.cli_common import (
    add_output_arguments,
    atomic_output,
    check_output,
    progress_bar,
    write_output,
)
from traces.cli_gen import add_gen_parser
from traces.errors import TraceError
from traces.export import ExportFormat, export_trace
from traces.importers import (
    ColumnMap,
    ImportOptions,
    ImportReport,
    SourceFormat,
    TimeUnit,
    import_trace_file,
)
from traces.stats import TokenQuantiles, TraceStats, describe_trace

__all__ = ["register"]

logger = logging.getLogger(__name__)

_GENERIC_FORMATS = (SourceFormat.CSV, SourceFormat.JSONL)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `trace` command and its subcommands to `subparsers`."""
    trace_parser = subparsers.add_parser(
        "trace",
        help="import, generate, describe and transform request traces",
        description="Import, generate, describe and transform canonical request "
        "traces (Parquet, one row per request).",
    )
    commands = trace_parser.add_subparsers(title="trace commands", metavar="COMMAND")
    commands.required = True
    _add_import_parser(commands)
    add_gen_parser(commands)
    _add_info_parser(commands)
    _add_export_parser(commands)
    cli_transforms.add_parsers(commands)


def _add_import_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "import",
        help="validate a source trace and convert it to a canonical trace file",
        description="Validate a source trace and write it as a canonical trace "
        "file. Stops at the first invalid row, naming file, row and field, unless "
        "--skip-bad-rows is given. Rows whose time goes backwards are sorted "
        "(with a warning) unless --strict is given.",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=[member.value for member in SourceFormat],
        dest="source_format",
        help="source format: mooncake (JSON lines), azure (2023 or 2024 CSV), "
        "burstgpt (CSV), or csv and jsonl with --map",
    )
    parser.add_argument("input", metavar="INPUT", help="source trace file to read")
    add_output_arguments(parser, "TRACE.parquet")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="reject rows whose time is earlier than the row before them "
        "(skip them with --skip-bad-rows) instead of sorting",
    )
    parser.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip invalid rows and report how many were skipped and why",
    )
    parser.add_argument(
        "--time-zone",
        default="UTC",
        metavar="ZONE",
        help="zone of source datetimes without one: UTC, an offset such as "
        "+08:00, or an IANA name such as Europe/Berlin (default: %(default)s)",
    )
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="csv/jsonl only: the source column of a canonical field (arrival, "
        "input_tokens, output_tokens, request_id, session_id, "
        "prefix_block_hashes, block_tokens); repeat for each field. Unmapped "
        "fields use their canonical name (arrival_ms for arrival)",
    )
    parser.add_argument(
        "--time-unit",
        choices=[member.value for member in TimeUnit],
        default=TimeUnit.MS.value,
        help="csv/jsonl only: the arrival column's unit. s, ms, us and ns count "
        "from the trace start; unix_* count from the Unix epoch and iso is an "
        "ISO-8601 datetime, both rebased to the first arrival (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--block-tokens",
        type=int,
        metavar="N",
        help="csv/jsonl only: tokens per hashed block when no block_tokens "
        "column exists",
    )
    parser.set_defaults(run=run_import)


def _add_info_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "info",
        help="print rate, burstiness, lengths, sessions and ideal prefix reuse",
        description="Describe a canonical trace file: rate, inter-arrival CV, "
        "peak rate per second, token-length quantiles (linear interpolation, as "
        "numpy's default percentile), sessions and the ideal prefix reuse ratio "
        "(the fraction of prompt tokens in blocks whose hash appeared in an "
        "earlier request). Streams the file through DuckDB.",
    )
    parser.add_argument("trace", metavar="TRACE", help="canonical trace file to read")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="skip the prefix reuse ratio, the slowest figure on large traces",
    )
    parser.set_defaults(run=run_info)


def _add_export_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "export",
        help="write a canonical trace as Mooncake JSON lines, CSV or JSON lines",
        description="Write a canonical trace in another format. csv and jsonl "
        "keep every column and import back with no --map; mooncake drops request "
        "and session ids.",
    )
    parser.add_argument("trace", metavar="TRACE", help="canonical trace file to read")
    parser.add_argument(
        "--format",
        required=True,
        choices=[member.value for member in ExportFormat],
        dest="export_format",
        help="output format",
    )
    add_output_arguments(parser, "FILE")
    parser.set_defaults(run=run_export)


def run_import(args: argparse.Namespace) -> int:
    """Import `args.input` in `args.source_format` and write `args.output`."""
    output = check_output(Path(args.output), args.force)
    source_format = SourceFormat(args.source_format)
    options = ImportOptions(
        strict=args.strict,
        skip_bad_rows=args.skip_bad_rows,
        time_zone=args.time_zone,
        columns=_column_map(args, source_format),
    )
    source = Path(args.input)
    size = source.stat().st_size if source.is_file() else 0
    with (
        atomic_output(output) as temporary,
        progress_bar(f"importing {source.name}", size, in_bytes=True) as advance,
    ):
        report = import_trace_file(
            source, source_format, temporary, options, progress=advance
        )
    print(f"wrote {report.rows_written} requests to {output}")
    _print_skipped(report)
    return 0


def _column_map(args: argparse.Namespace, source_format: SourceFormat) -> ColumnMap:
    generic_options = bool(args.map) or args.block_tokens is not None
    generic_options = generic_options or args.time_unit != TimeUnit.MS.value
    if source_format not in _GENERIC_FORMATS:
        if generic_options:
            raise TraceError(
                "--map, --time-unit and --block-tokens apply to --format csv or "
                f"jsonl, not {source_format.value}"
            )
        return ColumnMap()

    pairs: dict[str, str] = {}
    for text in args.map:
        field, separator, column = text.partition("=")
        if not separator or not field.strip() or not column.strip():
            raise TraceError(f"invalid --map {text!r}: expected FIELD=COLUMN")
        pairs[field.strip()] = column.strip()
    block_tokens = args.block_tokens if args.block_tokens is not None else 0
    if args.block_tokens is not None and not 1 <= block_tokens <= 2**31 - 1:
        raise TraceError(
            f"invalid --block-tokens {block_tokens}: expected an integer in "
            "[1, 2147483647]"
        )
    return ColumnMap.from_pairs(
        pairs,
        time_unit=TimeUnit(args.time_unit),
        default_block_tokens=block_tokens,
    )


def _print_skipped(report: ImportReport) -> None:
    if not report.skipped:
        return
    print(f"skipped {report.skipped_rows} of {report.records} rows:")
    for entry in report.skipped:
        print(f"  {entry.describe()}")


def run_info(args: argparse.Namespace) -> int:
    """Print the statistics of `args.trace` as a table or as JSON."""
    stats = describe_trace(args.trace, reuse=not args.no_reuse)
    if args.json:
        print(json.dumps(dataclasses.asdict(stats)))
    else:
        _print_stats(stats, Console(file=sys.stdout))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export `args.trace` to `args.output` in `args.export_format`."""
    export_format = ExportFormat(args.export_format)
    return write_output(
        args, lambda temporary: export_trace(args.trace, temporary, export_format)
    )


def _print_stats(stats: TraceStats, console: Console) -> None:
    summary = Table(title=stats.path, show_header=False, box=None)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("requests", f"{stats.rows:,}")
    summary.add_row("source", stats.source_format or "n/a")
    summary.add_row("trace start", stats.trace_start or "n/a")
    summary.add_row("duration", _format_optional(stats.duration_s, "s"))
    summary.add_row("mean rate", _format_optional(stats.mean_rate_per_s, "requests/s"))
    summary.add_row("inter-arrival CV", _format_optional(stats.interarrival_cv, ""))
    peak = stats.peak_rate_per_s
    summary.add_row("peak rate", "n/a" if peak is None else f"{peak:,} requests/s")
    summary.add_row("sessions", f"{stats.sessions:,}")
    summary.add_row("requests in sessions", f"{stats.session_requests:,}")
    turns = stats.max_turns
    summary.add_row("max turns per session", "n/a" if turns is None else f"{turns:,}")
    summary.add_row("prompt tokens", f"{stats.input_tokens_total:,}")
    summary.add_row("output tokens", f"{stats.output_tokens_total:,}")
    summary.add_row(
        "ideal prefix reuse", _format_optional(stats.prefix_reuse_ratio, "")
    )
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
    if value is None:
        return "n/a"
    return f"{value:,.3f} {unit}".rstrip()


def _format_quantiles(quantiles: TokenQuantiles | None) -> list[str]:
    if quantiles is None:
        return ["n/a"] * 4
    values = (quantiles.p50, quantiles.p90, quantiles.p99, float(quantiles.max))
    return [_format_tokens(value) for value in values]


def _format_tokens(value: float) -> str:
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"
