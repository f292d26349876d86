"""The `cmx` command: one entry point whose subcommands live in their packages.

Each package contributes its subcommands through a `register(subparsers)`
function in its `cli` module. Every subparser sets `run`, a function that takes
the parsed arguments and returns the exit status. Errors raised on bad input
(each package's `Error` base) end the command with one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cmx import __version__

__all__ = ["build_parser", "main"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
# Exit status that a shell reports for a process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    # Imported here so that `cmx --help` stays fast and a broken optional
    # piece names itself instead of breaking import of this module.
    from cmx import demo
    from emulator import cli as emulator_cli
    from emulator.planning import cli as planning_cli
    from replay import cli as replay_cli
    from replay import locust_cli
    from traces import analyze_cli, compare, report
    from traces import cli as traces_cli

    parser = argparse.ArgumentParser(
        prog="cmx",
        description=(
            "Emulate a Huawei CloudMatrix384 supernode serving DeepSeek-R1 over "
            "gRPC, replay request traces against it and analyse the latencies "
            "with DuckDB."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cmx {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more detail (-v for INFO, -vv for DEBUG)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    subparsers.required = True

    traces_cli.register(subparsers)
    emulator_cli.register(subparsers)
    planning_cli.register(subparsers)
    replay_cli.register(subparsers)
    locust_cli.register(subparsers)
    analyze_cli.register(subparsers)
    compare.register(subparsers)
    report.register(subparsers)
    demo.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `cmx` command line and return its exit status."""
    from emulator.errors import EmulatorError
    from replay.errors import ReplayError
    from traces.errors import TraceError

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)

    try:
        status: int = args.run(args)
    except (TraceError, EmulatorError, ReplayError) as error:
        print(f"cmx: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cmx: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`cmx analyze ... | head`). Point
        # stdout at devnull so that the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


if __name__ == "__main__":
    sys.exit(main())
