"""`cmx demo`: the whole path on one machine, with no download.

Generates (or takes) a trace, starts `cmx serve` as a child process on a free
loopback port, replays the trace against it open-loop, prints the DuckDB
summary and stops the server. Each step is the same command a user would
type, so the demo also shows how to run them one by one.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from emulator.errors import EmulatorError

__all__ = ["register", "start_server"]

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"listening on (\S+)")
_START_TIMEOUT_S = 60.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="generate a trace, serve, replay and summarise, all on loopback",
        description=(
            "Run the whole path on this machine: generate a seeded bursty, "
            "long-context trace (or use --trace), start the emulator on a free "
            "loopback port, replay the trace against it and print the latency "
            "summary. Files go to --out-dir."
        ),
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/demo"),
        help="folder for trace.parquet and results.parquet (default: runs/demo)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        help="replay this canonical trace instead of generating one",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=4.0,
        help="replay speed-up; the server's time scale is set to match, so the "
        "emulated load is the trace's own (default: 4)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=600,
        help="requests in the generated trace (default: 600)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the generated trace (default: 0)"
    )
    parser.add_argument(
        "--limit", type=int, help="replay only the first N requests of the trace"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        help="replay only requests in the first S seconds of trace time",
    )
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from cmx.cli import main as cmx_main

    if not (args.speedup > 0 and math.isfinite(args.speedup)):
        raise EmulatorError(f"--speedup must be a positive number, got {args.speedup}")
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.parquet"

    trace = args.trace
    if trace is None:
        trace = out_dir / "trace.parquet"
        _step(f"generating a bursty long-context trace -> {trace}")
        _check(
            cmx_main(
                [
                    "trace",
                    "gen",
                    "-o",
                    str(trace),
                    "--force",
                    "--seed",
                    str(args.seed),
                    "--requests",
                    str(args.requests),
                ]
            )
        )
    _check(cmx_main(["trace", "info", str(trace)]))

    _step(f"starting the emulator (time scale {args.speedup:g})")
    log_path = out_dir / "server.log"
    with start_server(log_path, time_scale=args.speedup) as target:
        _step(f"replaying {trace} against {target} at speed-up {args.speedup:g}")
        replay_args = [
            "replay",
            str(trace),
            "--target",
            target,
            "--speedup",
            str(args.speedup),
            "-o",
            str(results),
        ]
        if args.limit is not None:
            replay_args += ["--limit", str(args.limit)]
        if args.duration_s is not None:
            replay_args += ["--duration-s", str(args.duration_s)]
        _check(cmx_main(replay_args))

    _step(f"summary of {results} (DuckDB)")
    _check(cmx_main(["analyze", str(results)]))
    query = f"SELECT status, count(*) FROM '{results}' GROUP BY status"
    print(
        "\nquery it yourself with DuckDB:\n"
        f'  {sys.executable} -c "import duckdb; duckdb.sql(\\"{query}\\").show()"',
        flush=True,
    )
    return 0


@contextmanager
def start_server(
    log_path: Path, time_scale: float = 1.0, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """Run `cmx serve` on a free loopback port; yield its HOST:PORT.

    The server's output goes to `log_path`, so that a full pipe can never
    block it. It is stopped with SIGTERM on exit (SIGKILL if it does not stop
    within 15 s). Raises EmulatorError when it does not start.
    """
    command = [
        sys.executable,
        "-m",
        "cmx",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--time-scale",
        str(time_scale),
        *extra_args,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield _wait_for_port(process, log_path)
    finally:
        _stop(process)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        output = log_path.read_text(errors="replace")
        match = _LISTENING.search(output)
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    lines = log_path.read_text(errors="replace").strip().splitlines()
    raise EmulatorError(
        f"the emulator did not start (log {log_path}): "
        + (" | ".join(lines[-3:]) or "no output")
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logger.warning("emulator did not stop after SIGTERM; killing it")
            process.kill()
            process.wait()


def _step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def _check(status: int) -> None:
    if status != 0:
        raise SystemExit(status)
