"""`cmx sweep` and `cmx search`: capacity planning in virtual time."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from emulator.cli import seed_value
from emulator.errors import ConfigError
from emulator.planning.confirm import (
    Confirmation,
    confirm_by_replay,
    confirm_by_simulate,
    export_point,
)
from emulator.planning.metrics import (
    LATENCY_METRICS,
    PointMetrics,
    SaturationTest,
    SloTargets,
)
from emulator.planning.points import LoadPoint, PointRunner, TraceSource
from emulator.planning.report import write_search_page, write_sweep_page
from emulator.planning.scaling import RateScaling, offered_rate_rps
from emulator.planning.search import (
    SearchConfig,
    SearchResult,
    SearchSpace,
    enumerate_deployments,
    load_search_space,
    run_search,
    sample_deployments,
)
from emulator.planning.sweep import SweepConfig, SweepResult, run_sweep
from emulator.planning.table import search_rows, sweep_rows, write_points
from emulator.profiles import (
    DeploymentConfig,
    Profiles,
    load_deployment,
    load_hardware,
    load_model,
)

__all__ = ["register"]

if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

logger = logging.getLogger(__name__)

DEFAULT_SWEEP_FACTORS = "1,1.5,2,3,4,6,8,12"
_CONFIRM_METHODS = ("simulate", "replay")


def register(subparsers: _Subparsers) -> None:
    """Add the `sweep` and `search` subcommands."""
    _register_sweep(subparsers)
    _register_search(subparsers)


def _register_sweep(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="simulate a trace at several request rates; find the largest "
        "rate that meets the SLOs",
        description=(
            "Scale TRACE to each rate factor (time compression or replication), "
            "simulate every point in virtual time on parallel processes, and "
            "report throughput, goodput and latency percentiles per point, the "
            "largest rate that meets the SLOs and where the system saturates. "
            "Writes OUT/points.parquet (one row per point), OUT/report.html and "
            "OUT/best/ (the best point's trace and deployment). Finished points "
            "are cached in OUT/cache, so a rerun simulates only missing ones."
        ),
    )
    _add_common_options(parser)
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument(
        "--factors",
        help=f"comma-separated rate factors, 1 = the trace's own rate "
        f"(default: {DEFAULT_SWEEP_FACTORS})",
    )
    rates.add_argument(
        "--rates-rps",
        help="comma-separated request rates in requests/s, converted to factors "
        "of the trace's mean rate",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="rounds of extra points between the largest SLO rate and the next "
        "point, --jobs points per round (default: 0)",
    )
    parser.set_defaults(run=_run_sweep)


def _register_search(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "search",
        help="simulate a grid of deployments under an NPU budget; rank them "
        "and draw the Pareto front",
        description=(
            "Simulate TRACE on every deployment of a search space (a JSON file "
            "of DeploymentConfig fields to vary; default: the bundled "
            "CloudMatrix384 space) that fits the NPU budget, at each rate "
            "factor. Ranks deployments by goodput output tokens/s per NPU at "
            "their best point meeting the SLOs, and flags the Pareto front of "
            "throughput per NPU against the latency metric. Writes "
            "OUT/points.parquet, OUT/report.html and OUT/best/."
        ),
    )
    _add_common_options(parser)
    parser.add_argument(
        "--space",
        type=Path,
        metavar="JSON",
        help="search space file (default: bundled cloudmatrix384_search_space.json)",
    )
    parser.add_argument(
        "--npu-budget",
        type=int,
        help="most NPUs a deployment may use (default: the space's, else the "
        "hardware's NPU count)",
    )
    parser.add_argument(
        "--factors",
        default="1",
        help="comma-separated rate factors to simulate each deployment at (default: 1)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="simulate N deployments drawn at random (seeded by --seed) instead of all",
    )
    parser.add_argument(
        "--max-deployments",
        type=int,
        default=200,
        help="reject a space with more deployments than this, unless --sample "
        "is given (default: 200)",
    )
    parser.add_argument(
        "--latency-metric",
        default="e2e_ms_p99",
        choices=LATENCY_METRICS,
        metavar="METRIC",
        help="latency of the Pareto front and of tie-breaks, e.g. ttft_ms_p99 "
        "(default: e2e_ms_p99)",
    )
    parser.set_defaults(run=_run_search)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", type=Path, help="canonical trace (Parquet)")
    parser.add_argument(
        "-o", "--out", type=Path, required=True, help="output directory"
    )
    parser.add_argument(
        "--scaling",
        choices=[s.value for s in RateScaling],
        default=RateScaling.COMPRESS.value,
        help="how to raise the rate: compress arrival times, or replicate the "
        "trace with new request ids and prefix hashes (default: compress)",
    )
    _add_slo_options(parser)
    _add_run_options(parser)
    _add_confirm_options(parser)
    _add_profile_options(parser)


def _add_slo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slo-ttft-ms", type=float, help="TTFT limit per request")
    parser.add_argument("--slo-tpot-ms", type=float, help="TPOT limit per request")
    parser.add_argument("--slo-e2e-ms", type=float, help="end-to-end limit per request")
    parser.add_argument(
        "--slo-attainment",
        type=float,
        default=0.99,
        help="fraction of requests that must meet every limit (default: 0.99)",
    )
    parser.add_argument(
        "--min-backlog-growth",
        type=float,
        default=2.0,
        help="saturation test: backlog of the last quarter over the first half "
        "(default: 2)",
    )
    parser.add_argument(
        "--max-completion-ratio",
        type=float,
        default=0.95,
        help="saturation test: completions over arrivals in the second half "
        "(default: 0.95)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed",
        type=seed_value,
        default=0,
        help="seed of the model and of replication, an integer >= 0 (default: 0)",
    )
    parser.add_argument(
        "--limit", type=int, help="use only the first N requests of the trace"
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        help="use only requests in the first S seconds of the trace, before scaling",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="simulations run in parallel (default: the number of cores)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="cache of finished points (default: OUT/cache)"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="simulate every point again, replacing cached ones",
    )


def _add_confirm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--confirm",
        choices=_CONFIRM_METHODS,
        help="run the best point again with `cmx simulate`, or replay it against "
        "`cmx serve`, and print the differences",
    )
    parser.add_argument(
        "--confirm-time-scale",
        type=float,
        default=10.0,
        help="time scale of the server and speed-up of the replay (default: 10)",
    )
    parser.add_argument(
        "--confirm-limit",
        type=int,
        default=500,
        help="requests replayed by --confirm replay (default: 500)",
    )


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hardware", metavar="JSON", help="hardware profile file")
    parser.add_argument("--model", metavar="JSON", help="model profile file")
    parser.add_argument(
        "--deployment",
        metavar="JSON",
        help="deployment file: the swept deployment, or the base of the search",
    )


def _run_sweep(args: argparse.Namespace) -> int:
    started_at = time.perf_counter()
    runner, base = _prepare(args)
    config = SweepConfig(
        rate_factors=_sweep_factors(args, runner.source),
        slo=_slo(args),
        saturation=_saturation(args),
        scaling=RateScaling(args.scaling),
        refine_rounds=args.refine,
        seed=args.seed,
    )
    result = run_sweep(runner, base, config)
    _write_sweep(result, runner, args.out, _run_config(args, "sweep"))
    console = _console()
    _print_sweep(console, result)
    best = result.best
    if best is not None:
        _finish_best(console, args, runner, best.result.point, best.metrics, config.slo)
    _print_totals(console, runner, args.out, started_at)
    return 0


def _run_search(args: argparse.Namespace) -> int:
    started_at = time.perf_counter()
    runner, base = _prepare(args)
    space = load_search_space(args.space)

    if args.npu_budget is not None:
        if args.npu_budget < 1:
            raise ConfigError(f"--npu-budget must be at least 1, got {args.npu_budget}")
        space = _with_budget(space, args.npu_budget)
    deployments, skipped = enumerate_deployments(space, base, runner.hardware_model)
    if args.sample is not None:
        if args.sample < 1:
            raise ConfigError(f"--sample must be at least 1, got {args.sample}")
        deployments = sample_deployments(deployments, args.sample, args.seed)

    if len(deployments) > args.max_deployments:
        raise ConfigError(
            f"{space.source} gives {len(deployments)} deployments, more than "
            f"--max-deployments {args.max_deployments}; narrow the space, pass "
            "--sample N or raise --max-deployments"
        )
    config = SearchConfig(
        rate_factors=_parse_factors(args.factors, "--factors"),
        slo=_slo(args),
        saturation=_saturation(args),
        scaling=RateScaling(args.scaling),
        latency_metric=args.latency_metric,
        seed=args.seed,
    )
    result = run_search(runner, deployments, config, skipped)

    _write_search(result, runner, args.out, _run_config(args, "search"))
    console = _console()
    _print_search(console, result)
    best = result.best
    if best is not None and best.best_point is not None:
        point = best.best_point
        _finish_best(
            console, args, runner, point.result.point, point.metrics, config.slo
        )
    _print_totals(console, runner, args.out, started_at)
    return 0


def _prepare(args: argparse.Namespace) -> tuple[PointRunner, DeploymentConfig]:
    scale = args.confirm_time_scale
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(
            f"--confirm-time-scale must be a positive finite number, got {scale}"
        )
    if args.confirm_limit < 1:
        raise ConfigError(
            f"--confirm-limit must be at least 1 request, got {args.confirm_limit}"
        )
    base = load_deployment(args.deployment)
    hardware_model = Profiles(
        load_hardware(args.hardware), load_model(args.model), base
    )
    source = TraceSource.open(args.trace, args.limit, args.duration_s)
    args.out.mkdir(parents=True, exist_ok=True)
    runner = PointRunner(
        source,
        hardware_model,
        args.cache_dir or args.out / "cache",
        jobs=args.jobs,
        fresh=args.fresh,
    )
    return runner, base


def _sweep_factors(args: argparse.Namespace, source: TraceSource) -> tuple[float, ...]:
    if args.rates_rps is None:
        return _parse_factors(args.factors or DEFAULT_SWEEP_FACTORS, "--factors")
    rates = _parse_factors(args.rates_rps, "--rates-rps")
    base_rps = offered_rate_rps(source.load())
    if base_rps is None:
        raise ConfigError(
            f"{source.path}: the trace has no arrival span, so --rates-rps cannot "
            "be converted to rate factors; use --factors"
        )
    return tuple(round(rate / base_rps, 6) for rate in rates)


def _parse_factors(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ConfigError(
            f"{option} must be comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not value > 0 for value in values):
        raise ConfigError(f"{option} must list positive numbers, got {text!r}")
    return values


def _slo(args: argparse.Namespace) -> SloTargets:
    return SloTargets(
        ttft_ms=args.slo_ttft_ms,
        tpot_ms=args.slo_tpot_ms,
        e2e_ms=args.slo_e2e_ms,
        attainment=args.slo_attainment,
    )


def _saturation(args: argparse.Namespace) -> SaturationTest:
    return SaturationTest(
        min_backlog_growth=args.min_backlog_growth,
        max_completion_ratio=args.max_completion_ratio,
    )


def _with_budget(space: SearchSpace, budget: int) -> SearchSpace:
    return dataclasses.replace(space, npu_budget=budget)


def _run_config(args: argparse.Namespace, kind: str) -> dict[str, object]:
    settings = {
        name: str(value) if isinstance(value, Path) else value
        for name, value in vars(args).items()
        if name != "run"
    }
    return {"kind": kind, **settings}


def _write_sweep(
    result: SweepResult, runner: PointRunner, out: Path, run_config: dict[str, object]
) -> None:
    write_points(sweep_rows(result, runner.source), out / "points.parquet", run_config)
    write_sweep_page(result, runner.source, out / "report.html")


def _write_search(
    result: SearchResult, runner: PointRunner, out: Path, run_config: dict[str, object]
) -> None:
    write_points(search_rows(result, runner.source), out / "points.parquet", run_config)
    write_search_page(result, runner.source, out / "report.html")


def _print_sweep(console: Console, result: SweepResult) -> None:
    table = Table(title=f"rate sweep; SLOs: {result.config.slo.describe()}")
    for header in (
        "factor",
        "offered req/s",
        "throughput req/s",
        "goodput req/s",
        "attainment",
        "TTFT p99 ms",
        "E2E p99 ms",
        "saturated",
        "meets SLOs",
    ):
        table.add_column(header, justify="right")
    for index, point in enumerate(result.points):
        m = point.metrics
        mark = " <- largest SLO rate" if index == result.max_slo_index else ""
        table.add_row(
            f"{point.rate_factor:g}" + ("*" if point.refined else ""),
            _number(m.offered_rps, 2),
            _number(m.throughput_rps, 2),
            _number(m.goodput_rps, 2),
            f"{m.slo_attainment:.1%}",
            _number(m.ttft_ms_p99, 0),
            _number(m.e2e_ms_p99, 0),
            "yes" if m.saturated else "no",
            ("yes" if m.meets_slo else "no") + mark,
        )
    console.print(table)
    best = result.best
    if best is None:
        console.print("no point meets the SLOs, not even the lowest rate")
    elif not result.limit_found:
        console.print(
            f"every point meets the SLOs; the limit lies above factor "
            f"{best.rate_factor:g}"
        )
    else:
        console.print(
            f"largest rate meeting the SLOs: factor {best.rate_factor:g} "
            f"({_number(best.metrics.offered_rps, 2)} requests/s offered)"
        )
    if result.saturation_index is not None:
        point = result.points[result.saturation_index]
        console.print(f"saturated from factor {point.rate_factor:g}")


def _print_search(console: Console, result: SearchResult, top: int = 10) -> None:
    metric = result.config.latency_metric
    table = Table(title=f"deployment search; SLOs: {result.config.slo.describe()}")
    for header in (
        "rank",
        "id",
        "NPUs",
        "deployment",
        "factor",
        "goodput tok/s/NPU",
        metric,
    ):
        table.add_column(header, justify="right")
    for entry in result.ranking[:top]:
        point = entry.best_point
        table.add_row(
            "-" if entry.rank is None else str(entry.rank),
            str(entry.deployment_id),
            str(entry.deployment.npus_used()),
            _describe(entry.deployment),
            "-" if point is None else f"{point.result.point.rate_factor:g}",
            "-" if point is None else _number(point.goodput_tokens_per_s_per_npu, 1),
            "-" if point is None else _number(point.latency_ms(metric), 0),
        )
    console.print(table)
    skipped = ", ".join(f"{count} {reason}" for reason, count in result.skipped.items())
    console.print(
        f"{len(result.deployments)} deployments, {len(result.points)} points, "
        f"{sum(result.on_front)} on the Pareto front"
        + (f"; skipped {skipped}" if skipped else "")
    )
    if result.best is None:
        console.print("no deployment meets the SLOs at any rate factor")


def _describe(deployment: DeploymentConfig) -> str:
    mtp = "MTP" if deployment.mtp_draft_tokens else "no MTP"
    return (
        f"P {deployment.prefill_instances}x{deployment.prefill_npus_per_instance}, "
        f"D {deployment.decode_instances}x{deployment.decode_npus_per_instance}, "
        f"{mtp}, batch {deployment.max_batch_per_npu}"
    )


def _finish_best(
    console: Console,
    args: argparse.Namespace,
    runner: PointRunner,
    point: LoadPoint,
    metrics: PointMetrics,
    slo: SloTargets,
) -> None:
    directory = args.out / "best"
    exported = export_point(runner, point, directory)
    command = " ".join(exported.simulate_command(directory / "simulate.parquet"))
    console.print(f"best point written to {directory}; reproduce it with:\n  {command}")
    if args.confirm is None:
        return
    saturation = _saturation(args)
    if args.confirm == "simulate":
        confirmation = confirm_by_simulate(
            runner, point, metrics, slo, saturation, directory
        )
    else:
        confirmation = confirm_by_replay(
            runner,
            point,
            slo,
            saturation,
            directory,
            time_scale=args.confirm_time_scale,
            limit=args.confirm_limit,
        )
    _print_confirmation(console, confirmation)


def _print_confirmation(console: Console, confirmation: Confirmation) -> None:
    baseline = "sweep" if confirmation.method == "simulate" else "simulate"
    table = Table(title=f"confirmation by {confirmation.method}")
    for header in ("figure", baseline, confirmation.method, "difference", "relative"):
        table.add_column(header, justify="right")
    for figure in confirmation.figures:
        relative = figure.relative
        table.add_row(
            figure.name,
            _number(figure.planned, 3),
            _number(figure.confirmed, 3),
            _number(figure.difference, 3),
            "-" if relative is None else f"{relative:+.2%}",
        )
    console.print(table)
    if confirmation.identical:
        console.print("every figure is identical")
    else:
        console.print(
            f"largest relative difference: {confirmation.max_relative_difference():.2%}"
        )


def _print_totals(
    console: Console, runner: PointRunner, out: Path, started_at: float
) -> None:
    console.print(
        f"{runner.simulated} points simulated, {runner.reused} taken from the "
        f"cache, in {time.perf_counter() - started_at:.1f} s; wrote "
        f"{out / 'points.parquet'} and {out / 'report.html'}"
    )


def _console() -> Console:
    # Rich draws 80 columns when stdout is not a terminal, which squeezes the
    # tables; 120 keeps them readable in logs and files.
    return Console() if sys.stdout.isatty() else Console(width=120)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
