"""The `cmx analyze` subcommand: canned queries and ad hoc SQL over results."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence

from traces.analysis import Analysis, AnalysisError, summarize
from traces.output_formats import OutputFormat, to_json_value, write_table
from traces.queries import CANNED_QUERIES, CannedQuery

__all__ = ["parse_param_assignments", "print_source_warnings", "register", "run"]

logger = logging.getLogger(__name__)

_HELP_WIDTH = 79


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `analyze` subcommand to the `cmx` parser."""
    parser = subparsers.add_parser(
        "analyze",
        help="query results files with DuckDB (summary, SLOs, time series, SQL)",
        description=(
            "Run a canned query or ad hoc SQL on results files written by "
            "'cmx replay' or 'cmx simulate'. Each RESULTS may be a file, a "
            "directory of Parquet files (such as a killed run's .parts "
            "directory) or a quoted glob; files that cannot be read are named "
            "and skipped. Every query groups its rows by run. Percentiles "
            "interpolate linearly between ranks (DuckDB quantile_cont, numpy's "
            "default)."
        ),
        epilog=_queries_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "results", nargs="*", metavar="RESULTS", help="results file, directory or glob"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--query",
        "-q",
        default="summary",
        choices=[query.name for query in CANNED_QUERIES],
        help="canned query to run (default: summary)",
    )
    what.add_argument(
        "--sql",
        help="ad hoc SQL over the views results, trace and trace_reuse",
    )
    parser.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a query parameter, e.g. -p window_s=30 (repeatable)",
    )
    parser.add_argument(
        "--trace",
        metavar="TRACE.parquet",
        help="trace of the runs (default: the trace_path in each run's config)",
    )
    parser.add_argument(
        "--format",
        "-f",
        choices=[item.value for item in OutputFormat],
        default=OutputFormat.TABLE.value,
        help="output format (default: table); parquet needs -o",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE")
    parser.add_argument(
        "--list-queries", action="store_true", help="list the canned queries and exit"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=(
            "print the summary of a single run as one JSON object (older "
            "shorthand; --format json works for every query)"
        ),
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the requested query and return the exit status.

    Raises TraceFormatError when no results file is readable and
    AnalysisError for a bad query, parameter or SQL.
    """
    if args.list_queries:
        print(_queries_epilog())
        return 0
    if not args.results:
        raise AnalysisError("no results path given; pass a results file or glob")
    if args.json:
        return _print_summary_json(args)

    params = parse_param_assignments(args.param)
    with Analysis(args.results, trace_path=args.trace) as analysis:
        print_source_warnings(analysis)
        if args.sql is not None:
            if params:
                raise AnalysisError("--param applies to canned queries, not --sql")
            result = analysis.run_sql(args.sql)
        else:
            _warn_missing_traces(analysis, args.query)
            result = analysis.run_query(args.query, params)

    write_table(
        result.table,
        OutputFormat(args.format),
        args.output,
        title=f"{result.name}: {', '.join(args.results)}",
        transpose=result.name == "summary",
    )
    if args.output is not None:
        print(f"wrote {result.num_rows} rows to {args.output}", file=sys.stderr)
    return 0


def parse_param_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """Split `NAME=VALUE` strings into a dictionary.

    Raises AnalysisError for an assignment without '='.
    """
    params: dict[str, str] = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator or not name.strip():
            raise AnalysisError(
                f"parameter {assignment!r} is not NAME=VALUE (e.g. window_s=30)"
            )
        params[name.strip()] = value.strip()
    return params


def print_source_warnings(analysis: Analysis) -> None:
    """Print one line on stderr per skipped file and per file read by name."""
    for skipped in analysis.source.skipped:
        print(
            f"cmx: warning: skipped {skipped.path}: {skipped.reason}", file=sys.stderr
        )
    for warning in analysis.source.warnings:
        print(f"cmx: warning: {warning}", file=sys.stderr)


def _warn_missing_traces(analysis: Analysis, query_name: str) -> None:
    query = next(item for item in CANNED_QUERIES if item.name == query_name)
    if not query.needs_trace or not analysis.traces.available:
        return
    for run, reason in analysis.traces.missing.items():
        print(f"cmx: warning: run {run} has no trace rows: {reason}", file=sys.stderr)


def _print_summary_json(args: argparse.Namespace) -> int:
    if args.sql is not None or args.query != "summary" or args.param:
        raise AnalysisError(
            "--json prints the summary only; use --format json with --query or --sql"
        )
    summary = summarize(args.results)
    print(json.dumps({key: to_json_value(value) for key, value in summary.items()}))
    return 0


def _queries_epilog() -> str:
    lines = ["canned queries (-q NAME, parameters as -p NAME=VALUE):"]
    for query in CANNED_QUERIES:
        needs_trace = " (needs the trace)" if query.needs_trace else ""
        lines.append(f"  {query.name}{needs_trace}")
        lines.extend(_wrapped(query.description, "      "))
        lines.extend(_param_lines(query))
    return "\n".join(lines)


def _param_lines(query: CannedQuery) -> list[str]:
    lines = []
    for param in query.params:
        default = param.default
        if isinstance(default, tuple):
            shown = ",".join(str(item) for item in default)
        else:
            shown = "none" if default is None else str(default)
        text = f"-p {param.name}=... {param.help} (default {shown})"
        lines.extend(_wrapped(text, "      ", "          "))
    return lines


def _wrapped(text: str, indent: str, later_indent: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        width=_HELP_WIDTH,
        initial_indent=indent,
        subsequent_indent=later_indent or indent,
        break_on_hyphens=False,
    )
