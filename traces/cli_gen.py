"""The `cmx trace gen` command: options for every GeneratorParams field."""

from __future__ import annotations

import argparse
from pathlib import Path

from traces.arrivals import ArrivalProcess
from traces.cli_common import (
    add_output_arguments,
    atomic_output,
    check_output,
    progress_bar,
)
from traces.generator import generate_trace_file
from traces.generator_params import GeneratorParams, LengthDistribution

__all__ = ["add_gen_parser", "run_gen"]

_DEFAULTS = GeneratorParams()

# (option, GeneratorParams field, type, metavar, help). Defaults come from
# GeneratorParams, so the help always shows the values the generator uses.
_NUMBER_OPTIONS: list[tuple[str, str, type, str, str]] = [
    ("--requests", "requests", int, "N", "number of requests"),
    ("--rate", "rate_per_s", float, "R", "mean arrival rate in requests per second"),
    (
        "--burstiness",
        "burstiness",
        float,
        "B",
        "Gamma shape of inter-arrival times in [0.001, 1000]: 1 is Poisson, "
        "smaller is burstier, and the CV is 1/sqrt(B) (gamma arrivals only)",
    ),
    ("--on-s", "on_mean_s", float, "S", "mean ON period in seconds (onoff)"),
    ("--off-s", "off_mean_s", float, "S", "mean OFF period in seconds (onoff)"),
    (
        "--off-rate-ratio",
        "off_rate_ratio",
        float,
        "F",
        "rate during OFF periods as a fraction of the ON rate, in [0, 1] (onoff)",
    ),
    (
        "--diurnal-amplitude",
        "diurnal_amplitude",
        float,
        "A",
        "relative swing of the rate R*(1 + A*sin(2*pi*t/P)), in [0, 1)",
    ),
    ("--diurnal-period-s", "diurnal_period_s", float, "P", "diurnal period, seconds"),
    (
        "--input-median",
        "input_median_tokens",
        int,
        "N",
        "median first-turn prompt length in tokens",
    ),
    ("--input-sigma", "input_sigma", float, "S", "lognormal sigma of prompt lengths"),
    (
        "--input-alpha",
        "input_pareto_alpha",
        float,
        "A",
        "Pareto tail index of prompt lengths in [0.1, 100]; smaller is heavier",
    ),
    ("--min-input-tokens", "min_input_tokens", int, "N", "minimum prompt length"),
    ("--max-input-tokens", "max_input_tokens", int, "N", "maximum prompt length"),
    ("--output-median", "output_median_tokens", int, "N", "median output length"),
    ("--output-sigma", "output_sigma", float, "S", "lognormal sigma of outputs"),
    ("--output-alpha", "output_pareto_alpha", float, "A", "Pareto tail of outputs"),
    ("--max-output-tokens", "max_output_tokens", int, "N", "maximum output length"),
    ("--mean-turns", "mean_turns", float, "T", "mean turns per session, >= 1"),
    (
        "--turn-median",
        "turn_median_tokens",
        int,
        "N",
        "median new-message length of a follow-up turn in tokens",
    ),
    ("--block-tokens", "block_tokens", int, "N", "tokens per hashed prefix block"),
    (
        "--shared-prefixes",
        "shared_prefixes",
        int,
        "K",
        "number of distinct shared prefixes used to reach --prefix-reuse",
    ),
]


def add_gen_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `cmx trace gen` to `commands`."""
    parser = commands.add_parser(
        "gen",
        help="generate a seeded synthetic trace",
        description="Generate a bursty, long-context trace with multi-turn "
        "sessions, streamed to the output in bounded memory. The same seed and "
        "options give a byte-identical file.",
    )
    add_output_arguments(parser, "TRACE.parquet")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="SEED",
        help="random seed, an integer >= 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--arrival",
        choices=[member.value for member in ArrivalProcess],
        default=_DEFAULTS.arrival_process.value,
        help="arrival process: gamma renewal, or onoff (Markov-modulated "
        "Poisson with ON and OFF periods) (default: %(default)s)",
    )
    for option, field, kind, metavar, text in _NUMBER_OPTIONS:
        parser.add_argument(
            option,
            type=kind,
            dest=field,
            default=None,
            metavar=metavar,
            help=f"{text} (default: {getattr(_DEFAULTS, field)})",
        )
    for option, field in (
        ("--input-dist", "input_distribution"),
        ("--output-dist", "output_distribution"),
    ):
        parser.add_argument(
            option,
            dest=field,
            choices=[member.value for member in LengthDistribution],
            default=getattr(_DEFAULTS, field).value,
            help=f"length distribution (default: {getattr(_DEFAULTS, field).value})",
        )
    parser.add_argument(
        "--prefix-reuse",
        type=float,
        dest="prefix_reuse_ratio",
        metavar="RATIO",
        help="target ideal prefix reuse ratio in [0, 1), reached by adding "
        "shared prefixes to first turns (default: none added)",
    )
    parser.set_defaults(run=run_gen)


def run_gen(args: argparse.Namespace) -> int:
    """Generate a trace from the command-line options and write `args.output`."""
    output = check_output(Path(args.output), args.force)
    params = params_from_args(args)
    with (
        atomic_output(output) as temporary,
        progress_bar("generating", params.requests) as advance,
    ):
        generate_trace_file(params, args.seed, temporary, progress=advance)
    print(f"wrote {params.requests} requests to {output}")
    return 0


def params_from_args(args: argparse.Namespace) -> GeneratorParams:
    """Build GeneratorParams from the options given, defaults for the rest.

    A --max-input-tokens below a default median also lowers that median, so
    that the option works alone. A median given explicitly is kept and
    checked as it is.
    """
    values = {
        field: getattr(args, field)
        for _, field, _, _, _ in _NUMBER_OPTIONS
        if getattr(args, field) is not None
    }
    maximum = values.get("max_input_tokens")
    if maximum is not None:
        for field in ("input_median_tokens", "turn_median_tokens"):
            default = getattr(_DEFAULTS, field)
            if field not in values and _DEFAULTS.min_input_tokens <= maximum < default:
                values[field] = maximum
    return GeneratorParams(
        arrival_process=ArrivalProcess(args.arrival),
        input_distribution=LengthDistribution(args.input_distribution),
        output_distribution=LengthDistribution(args.output_distribution),
        prefix_reuse_ratio=args.prefix_reuse_ratio,
        **values,
    )
