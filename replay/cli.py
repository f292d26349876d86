"""The `cmx replay` subcommand: open-loop replay of a trace against an emulator."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from replay.client import TlsConfig, tls_from_options
from replay.metrics import SloMetric, parse_slo
from replay.pacing import DEFAULT_HANDOFF_S
from replay.runner import ReplayConfig, ReplaySummary, run_replay
from replay.summary import format_summary

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
            "still running. Durations of the window are in seconds of trace "
            "time, counted from the trace's first arrival. Exit status: 0 when "
            "the run completed, even if requests failed (their status and error "
            "are in the results and the summary); 130 after Ctrl-C; 2 for "
            "invalid options, a bad trace or a target that cannot be reached."
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
        "--start-s",
        type=float,
        default=0.0,
        metavar="S",
        help="start the window S seconds of trace time after the first arrival "
        "(default 0); the schedule counts from the window start",
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="send only requests that arrive less than S seconds after the window "
        "start: the window includes its start and excludes its end",
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="send only the first N requests of the window",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=0.0,
        metavar="S",
        help="leave requests arriving in the first S seconds of the window out of "
        "the measured set (default 0); they are still sent",
    )
    parser.add_argument(
        "--cooldown-s",
        type=float,
        default=0.0,
        metavar="S",
        help="leave requests arriving in the last S seconds before the window's "
        "last request out of the measured set (default 0)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="keep at most N requests in flight; a due request waits for a slot "
        "and the wait is recorded as concurrency_wait_ms (default: no cap, "
        "purely open-loop)",
    )
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="METRIC=MS",
        help="service-level objective for goodput, repeatable, for example "
        "--slo ttft_ms=2000 --slo tpot_ms=50; metrics: "
        + ", ".join(metric.value for metric in SloMetric),
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
    parser.add_argument(
        "--cancel-grace-s",
        type=float,
        default=5.0,
        metavar="S",
        help="after Ctrl-C, let in-flight requests run S seconds before "
        "cancelling them (default 5)",
    )
    parser.add_argument(
        "--lag-warning-ms",
        type=float,
        default=10.0,
        metavar="MS",
        help="warn when sends start more than MS milliseconds after their due "
        "time (default 10)",
    )
    parser.add_argument(
        "--timer-handoff-ms",
        type=float,
        default=DEFAULT_HANDOFF_S * 1000.0,
        metavar="MS",
        help="wait for each due time on a precise clock, for sub-millisecond "
        "send times: a timerfd on Linux, elsewhere a timer thread for the last "
        "MS milliseconds; 0 uses only the event loop's timers, which round up "
        f"to whole milliseconds (default {DEFAULT_HANDOFF_S * 1000.0:g})",
    )
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, trusting the system's CA certificates",
    )
    tls.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="connect with TLS, trusting the CA certificates in this file",
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="client certificate chain for mutual TLS (with --tls-key)",
    )
    tls.add_argument(
        "--tls-key",
        type=Path,
        metavar="PEM",
        help="client private key for mutual TLS (with --tls-cert)",
    )
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the server's certificate against, when it differs "
        "from the target's host",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="also print the run summary as JSON on stdout",
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
        start_s=args.start_s,
        warmup_s=args.warmup_s,
        cooldown_s=args.cooldown_s,
        timeout_s=args.timeout_s,
        max_concurrency=args.max_concurrency,
        slos=tuple(parse_slo(text) for text in args.slo),
        lag_warning_ms=args.lag_warning_ms,
        cancel_grace_s=args.cancel_grace_s,
        timer_handoff_s=args.timer_handoff_ms / 1000.0,
        tls=_tls_config(args),
    )
    summary = run_replay(config)
    _print_summary(summary)
    if args.json:
        print(json.dumps(summary.metrics.to_dict(), indent=2))
    # Failed requests are results to analyse, so a completed run exits 0.
    return EXIT_INTERRUPTED if summary.interrupted else 0


def _tls_config(args: argparse.Namespace) -> TlsConfig | None:
    """Return the TLS settings of the options, or None for plaintext."""
    return tls_from_options(
        enabled=args.tls,
        root_ca=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        server_name=args.tls_server_name,
    )


def _print_summary(summary: ReplaySummary) -> None:
    ended = "interrupted" if summary.interrupted else "done"
    cancelled = ""
    if summary.cancelled:
        cancelled = f", {summary.cancelled} cancelled by Ctrl-C"
    print(
        f"replay {ended}: sent {summary.sent} requests, {summary.failed} failed"
        f"{cancelled}; wrote {summary.rows_written} rows to {summary.output_path}",
        file=sys.stderr,
    )
    for line in format_summary(summary.metrics):
        print(f"  {line}", file=sys.stderr)
