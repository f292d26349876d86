"""The `cmx trace slice|scale|merge|sample` commands."""

from __future__ import annotations

import argparse

from traces.cli_common import add_output_arguments, write_output
from traces.transforms import merge_traces, sample_trace, scale_trace, slice_trace

__all__ = ["add_parsers"]


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the transform subcommands to `commands`."""
    _add_slice_parser(commands)
    _add_scale_parser(commands)
    _add_merge_parser(commands)
    _add_sample_parser(commands)


def _add_slice_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "slice",
        help="keep a time window and/or the first N requests",
        description="Keep the requests whose arrival lies in [--start-s, "
        "--end-s) seconds after the first arrival, then the first --first of "
        "them. Arrival times are kept as they are.",
    )
    parser.add_argument("trace", metavar="TRACE", help="canonical trace file to read")
    add_output_arguments(parser, "TRACE.parquet")
    parser.add_argument(
        "--start-s", type=float, default=0.0, metavar="S", help="window start (s)"
    )
    parser.add_argument("--end-s", type=float, metavar="S", help="window end (s)")
    parser.add_argument("--first", type=int, metavar="N", help="keep at most N rows")
    parser.set_defaults(run=_run_slice)


def _add_scale_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "scale",
        help="compress time and scale the request rate",
        description="Divide the time since the first arrival by --speedup, and "
        "scale the number of requests by --rate-factor: below 1 by keeping each "
        "request with that probability, above 1 by adding copies spread between "
        "each request and the next (ids and sessions get '#k', hashes are mixed "
        "so copies share no prefix blocks).",
    )
    parser.add_argument("trace", metavar="TRACE", help="canonical trace file to read")
    add_output_arguments(parser, "TRACE.parquet")
    parser.add_argument(
        "--speedup", type=float, default=1.0, metavar="F", help="time compression"
    )
    parser.add_argument(
        "--rate-factor",
        type=float,
        default=1.0,
        metavar="F",
        help="requests per unit of trace time, relative to the input",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(run=_run_scale)


def _add_merge_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "merge",
        help="merge traces into one, ordered by arrival",
        description="Merge traces by arrival time. Ids of input k become 'k:id'. "
        "Hashes of inputs after the first are mixed with their input number "
        "unless --shared-hashes is given. Inputs start together unless "
        "--absolute lines them up by their trace_start metadata.",
    )
    parser.add_argument(
        "traces", nargs="+", metavar="TRACE", help="canonical trace files (2 or more)"
    )
    add_output_arguments(parser, "TRACE.parquet")
    parser.add_argument(
        "--absolute",
        action="store_true",
        help="shift each input by its trace_start so they line up in real time",
    )
    parser.add_argument(
        "--shared-hashes",
        action="store_true",
        help="keep block hashes as they are, for inputs that share a hash space",
    )
    parser.set_defaults(run=_run_merge)


def _add_sample_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "sample",
        help="keep a seeded random sample of requests or sessions",
        description="Keep a random sample in trace order: each request (or "
        "session, with --by-session) with probability --fraction, or exactly "
        "--requests requests.",
    )
    parser.add_argument("trace", metavar="TRACE", help="canonical trace file to read")
    add_output_arguments(parser, "TRACE.parquet")
    parser.add_argument("--fraction", type=float, metavar="P", help="in [0, 1]")
    parser.add_argument("--requests", type=int, metavar="N", help="exact sample size")
    parser.add_argument(
        "--by-session",
        action="store_true",
        help="keep or drop whole sessions (with --fraction)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(run=_run_sample)


def _run_slice(args: argparse.Namespace) -> int:
    return write_output(
        args,
        lambda temporary: slice_trace(
            args.trace,
            temporary,
            start_s=args.start_s,
            end_s=args.end_s,
            first=args.first,
        ),
    )


def _run_scale(args: argparse.Namespace) -> int:
    return write_output(
        args,
        lambda temporary: scale_trace(
            args.trace,
            temporary,
            speedup=args.speedup,
            rate_factor=args.rate_factor,
            seed=args.seed,
        ),
    )


def _run_merge(args: argparse.Namespace) -> int:
    return write_output(
        args,
        lambda temporary: merge_traces(
            args.traces,
            temporary,
            absolute=args.absolute,
            shared_hashes=args.shared_hashes,
        ),
    )


def _run_sample(args: argparse.Namespace) -> int:
    return write_output(
        args,
        lambda temporary: sample_trace(
            args.trace,
            temporary,
            fraction=args.fraction,
            requests=args.requests,
            by_session=args.by_session,
            seed=args.seed,
        ),
    )
