"""The `cmx replay` subcommand: open-loop replay of a trace against an emulator."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from replay.runner import ReplayConfig, ReplaySummary, run_replay

__all__ = ["EXIT_INTERRUPTED", "register", "run"]

logger = logging.getLogger(__name__)

# Same status as `cmx` gives for Ctrl-C elsewhere: 128 + SIGINT.
EXIT_INTERRUPTED = 130


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `replay` subcommand to the `cmx` parser."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a trace against an emulator and write per-request results",
        description=(
            "Send every request of a canonical trace to the emulator at its trace "
            "time divided by the speed-up, without waiting for earlier responses, "
            "and write one result row per request to Parquet. Ctrl-C stops "
            "sending and keeps the results; a second Ctrl-C cancels the requests "
            "still running."
        ),
    )
    parser.add_argument("trace", type=Path, metavar="TRACE.parquet", help="trace file")
    parser.add_argument(
        "--target",
        required=True,
        metavar="HOST:PORT",
        help="address of the emulator's gRPC server",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="divide trace time by this factor (> 0; default 1, trace speed)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="send only the first N requests"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="send only requests that arrive within the first S seconds of trace time",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="RESULTS.parquet",
        help="results file to write (replaced if it exists)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        metavar="T",
        help="deadline of each request in seconds (default 600)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run a replay from parsed arguments and return the exit status.

    Raises ReplayError for invalid options and TraceError for a bad trace;
    the `cmx` entry point prints those as one line.
    """
    config = ReplayConfig(
        trace_path=args.trace,
        target=args.target,
        output_path=args.output,
        speedup=args.speedup,
        limit=args.limit,
        duration_s=args.duration_s,
        timeout_s=args.timeout_s,
    )
    summary = run_replay(config)
    _print_summary(summary)
    return EXIT_INTERRUPTED if summary.interrupted else 0


def _print_summary(summary: ReplaySummary) -> None:
    ended = "interrupted" if summary.interrupted else "done"
    print(
        f"replay {ended}: sent {summary.sent} requests, {summary.failed} failed; "
        f"wrote {summary.rows_written} rows to {summary.output_path}",
        file=sys.stderr,
    )
