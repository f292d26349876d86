"""The `cmx analyze` subcommand: summary of a replay results file."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from traces.analysis import PERCENTILE_METRICS, QUANTILES, summarize

__all__ = ["register", "run"]

logger = logging.getLogger(__name__)

_COUNT_ROWS = (
    ("requests", "requests"),
    ("ok", "ok"),
    ("failed", "failed"),
    ("speedup", "speed-up"),
    ("duration_s", "wall duration (s)"),
    ("requests_per_s", "ok requests/s (trace time)"),
    ("output_tokens_per_s", "output tokens/s (trace time)"),
    ("wall_requests_per_s", "ok requests/s (wall)"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `analyze` subcommand to the `cmx` parser."""
    parser = subparsers.add_parser(
        "analyze",
        help="summarize a replay results file (counts, throughput, latencies)",
        description=(
            "Print request counts, throughput and TTFT/TPOT/E2E percentiles of a "
            "results file written by 'cmx replay'. RESULTS may also be a "
            "directory of Parquet files or a glob."
        ),
    )
    parser.add_argument("results", metavar="RESULTS.parquet", help="results path")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary of `args.results` and return the exit status.

    Raises TraceFormatError when the path is not a readable results file.
    """
    summary = summarize(Path(args.results))
    if args.json:
        print(json.dumps(summary))
    else:
        Console().print(_summary_table(summary, str(args.results)))
    return 0


def _summary_table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in _COUNT_ROWS:
        table.add_row(label, _format_value(summary[key]))

    table.add_section()
    for metric in PERCENTILE_METRICS:
        for quantile_label, _ in QUANTILES:
            key = f"{metric}_{quantile_label}"
            table.add_row(f"{key} (emulated)", _format_value(summary[key]))
    return table


def _format_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return str(value)
