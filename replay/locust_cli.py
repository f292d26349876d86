"""The `cmx locust` subcommand: run Locust with the ready locustfile.

It builds a `locust` command line from a few cmx options, passes every
argument after `--` to Locust unchanged, and can start an emulator on a free
loopback port for the run (`--serve`). It then runs Locust as a child process
and returns its exit status. Locust's own options (`--headless`,
`--run-time`, `--csv`, `--users`, ...) go after `--`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from replay.errors import ReplayError
from replay.locust_options import DEFAULT_RESULTS_DIR, LoadMode

__all__ = ["LOCUSTFILE", "build_locust_command", "register", "run"]

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `locust` subcommand to the `cmx` parser."""
    parser = subparsers.add_parser(
        "locust",
        help="run Locust against an emulator with the ready locustfile",
        description=(
            "Run Locust with the cmx locustfile: each user sends Generate calls "
            "built from the trace's requests, and each Locust process writes "
            "per-request Parquet results under --results. Arguments after '--' "
            "go to Locust unchanged, for example: cmx locust --trace T.parquet "
            "--serve -- --headless --run-time 5m --csv stats. Without "
            "--headless, Locust's web UI serves http://127.0.0.1:8089. The web "
            "UI, and the master that --workers starts, listen on 127.0.0.1 "
            "only, unless --web-host or --master-bind-host is given after '--'."
        ),
    )

    parser.add_argument(
        "--trace",
        type=Path,
        required=True,
        metavar="TRACE.parquet",
        help="canonical trace to send",
    )

    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--target", metavar="HOST:PORT", help="address of a running emulator"
    )
    target.add_argument(
        "--serve",
        action="store_true",
        help="start an emulator on a free loopback port for this run "
        "(its log goes to DIR/server.log, DIR from --results)",
    )

    parser.add_argument(
        "--mode",
        choices=[mode.value for mode in LoadMode],
        default=LoadMode.TRACE.value,
        help="trace: each request once at its trace time; users: Locust's "
        "users send requests drawn from the trace (default: trace)",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="divide trace time by this factor (> 0; default 1)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        metavar="X",
        help="with --serve: the emulator's time scale (default: the speed-up, "
        "which keeps the trace's own load)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(DEFAULT_RESULTS_DIR),
        metavar="DIR",
        help=f"folder of the Parquet results (default: {DEFAULT_RESULTS_DIR})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run a Locust master and N worker processes on this machine "
        "(Locust's --processes); in trace mode also N users unless -u is given",
    )

    parser.add_argument(
        "locust_args",
        nargs="*",
        metavar="-- LOCUST_ARGS",
        help="options passed to Locust after '--'",
    )
    parser.set_defaults(run=run)


def build_locust_command(args: argparse.Namespace, target: str) -> list[str]:
    """Return the Locust command line for parsed `cmx locust` arguments.

    Raises ReplayError when an option is invalid.
    """
    _check_options(args)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        target,
        "--cmx-trace",
        str(args.trace),
        "--cmx-mode",
        args.mode,
        "--cmx-speedup",
        str(args.speedup),
        "--cmx-results",
        str(args.results),
    ]
    locust_args: list[str] = list(args.locust_args)
    # Locust binds all interfaces by default; like `cmx serve`, stay on
    # loopback unless told otherwise.
    if not _given(locust_args, "--web-host"):
        command += ["--web-host", "127.0.0.1"]
    if args.workers is not None:
        command += ["--processes", str(args.workers)]
        if not _given(locust_args, "--master-bind-host"):
            command += ["--master-bind-host", "127.0.0.1"]
    if args.mode == LoadMode.TRACE.value and not _given(locust_args, "-u", "--users"):
        # Trace mode needs at least one user per worker process.
        users = str(args.workers or 1)
        command += ["--users", users, "--spawn-rate", users]
    return command + locust_args


def _given(locust_args: Sequence[str], *options: str) -> bool:
    """Return whether any of `options` is among the arguments for Locust."""
    return any(
        argument in options or argument.split("=", 1)[0] in options
        for argument in locust_args
    )


def run(args: argparse.Namespace) -> int:
    """Run Locust for parsed arguments and return its exit status.

    Raises ReplayError for invalid options, and EmulatorError when `--serve`
    cannot start the emulator; the `cmx` entry point prints those as one line.
    """
    _check_options(args)
    args.results.mkdir(parents=True, exist_ok=True)
    with _target(args) as target:
        command = build_locust_command(args, target)
        logger.info("running %s", " ".join(command))
        return _run_child(command)


def _check_options(args: argparse.Namespace) -> None:
    _check_positive("--speedup", args.speedup)
    if args.time_scale is not None:
        if not args.serve:
            raise ReplayError(
                "--time-scale sets the time scale of the emulator that --serve "
                "starts; without --serve, set it on 'cmx serve'"
            )
        _check_positive("--time-scale", args.time_scale)
    if args.workers is not None and args.workers < 1:
        raise ReplayError(f"--workers must be at least 1, not {args.workers}")


def _check_positive(option: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ReplayError(f"{option} must be a number > 0, not {value}")


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[str]:
    if not args.serve:
        yield args.target
        return

    from cmx.demo import start_server

    time_scale = args.time_scale if args.time_scale is not None else args.speedup
    log_path = args.results / "server.log"
    with start_server(log_path, time_scale=time_scale) as target:
        print(
            f"cmx locust: emulator at {target} (time scale {time_scale:g}, "
            f"log {log_path})",
            file=sys.stderr,
        )
        yield target


def _run_child(command: Sequence[str]) -> int:
    """Run `command` to its end and return its exit status.

    Ctrl-C reaches the child too, which then shuts down on its own, so the
    first one only waits for it. A second Ctrl-C kills it.
    """
    process = subprocess.Popen(command)
    interrupts = 0
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1:
                print("cmx locust: waiting for Locust to shut down", file=sys.stderr)
            else:
                process.kill()
