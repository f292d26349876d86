"""`cmx compare A B`: the differences between two runs, with a verdict each.

Each side is one run (a results file, parts directory or glob). The metrics
come from the canned queries, so they use the same definitions: throughput
in trace time, percentiles by linear interpolation (`quantile_cont`), SLO
attainment and goodput from the `slo` query's 'all' row.

The verdict compares B with A. For a metric where lower is better
(latencies, send lag) or higher is better (throughput, attainment, hit
rate), B is `same` when |B - A| <= tolerance * |A|, and otherwise `better`
or `worse`. Shares (values from 0 to 1) use an absolute tolerance instead,
because a relative change of a share near 0 means little. A metric without
a better direction (request count) is `same` or `changed`; a metric that is
NULL on either side is `n/a`. The verdict is a threshold, not a statistical
test: with few requests, percentiles move by chance more than the tolerance.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import pyarrow as pa

from traces.analysis import Analysis, AnalysisError, QueryResult
from traces.analyze_cli import print_source_warnings
from traces.output_formats import OutputFormat, write_table
from traces.queries import PERCENTILE_METRICS, QUANTILES

__all__ = [
    "DEFAULT_SHARE_TOLERANCE",
    "DEFAULT_TOLERANCE",
    "METRICS",
    "Direction",
    "MetricComparison",
    "MetricSpec",
    "Verdict",
    "compare_runs",
    "judge",
    "register",
    "run",
]

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.05
DEFAULT_SHARE_TOLERANCE = 0.01
EXIT_WORSE = 1


class Direction(Enum):
    """Direction in which a metric improves."""

    LOWER_IS_BETTER = "lower"
    HIGHER_IS_BETTER = "higher"
    NEUTRAL = "neutral"


class Verdict(Enum):
    """Outcome of comparing run B with run A on one metric."""

    BETTER = "better"
    WORSE = "worse"
    SAME = "same"
    CHANGED = "changed"
    UNDEFINED = "n/a"


@dataclass(frozen=True)
class MetricSpec:
    """A compared metric: its name, direction and whether it is a 0..1 share."""

    name: str
    direction: Direction
    is_share: bool = False


@dataclass(frozen=True)
class MetricComparison:
    """One metric of runs A and B, the change B - A and its verdict.

    `relative_change` is (B - A) / |A|, None when A is 0 or either is NULL.
    """

    metric: str
    a: float | None
    b: float | None
    change: float | None
    relative_change: float | None
    verdict: Verdict


def _latency_specs() -> list[MetricSpec]:
    return [
        MetricSpec(f"{metric}_{label}", Direction.LOWER_IS_BETTER)
        for metric in PERCENTILE_METRICS
        for label, _ in QUANTILES
    ]


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("requests", Direction.NEUTRAL),
    MetricSpec("ok_share", Direction.HIGHER_IS_BETTER, is_share=True),
    MetricSpec("requests_per_s", Direction.HIGHER_IS_BETTER),
    MetricSpec("output_tokens_per_s", Direction.HIGHER_IS_BETTER),
    MetricSpec("slo_attainment", Direction.HIGHER_IS_BETTER, is_share=True),
    MetricSpec("goodput_per_s", Direction.HIGHER_IS_BETTER),
    MetricSpec("cache_hit_rate", Direction.HIGHER_IS_BETTER, is_share=True),
    *_latency_specs(),
    MetricSpec("send_lag_p99_ms", Direction.LOWER_IS_BETTER),
)


def judge(
    spec: MetricSpec,
    a: float | None,
    b: float | None,
    tolerance: float = DEFAULT_TOLERANCE,
    share_tolerance: float = DEFAULT_SHARE_TOLERANCE,
) -> MetricComparison:
    """Compare value `b` of run B with value `a` of run A for metric `spec`."""
    if a is None or b is None:
        return MetricComparison(spec.name, a, b, None, None, Verdict.UNDEFINED)

    change = b - a
    relative = change / abs(a) if a != 0 else None
    allowed = share_tolerance if spec.is_share else tolerance * abs(a)
    if abs(change) <= allowed:
        verdict = Verdict.SAME
    elif spec.direction is Direction.NEUTRAL:
        verdict = Verdict.CHANGED
    else:
        improved = (change < 0) == (spec.direction is Direction.LOWER_IS_BETTER)
        verdict = Verdict.BETTER if improved else Verdict.WORSE
    return MetricComparison(spec.name, a, b, change, relative, verdict)


def compare_runs(
    a: Mapping[str, float | None],
    b: Mapping[str, float | None],
    tolerance: float = DEFAULT_TOLERANCE,
    share_tolerance: float = DEFAULT_SHARE_TOLERANCE,
) -> list[MetricComparison]:
    """Judge every metric in METRICS from the metric values of runs A and B."""
    return [
        judge(spec, a.get(spec.name), b.get(spec.name), tolerance, share_tolerance)
        for spec in METRICS
    ]


def collect_metrics(
    analysis: Analysis, slo_params: Mapping[str, object]
) -> dict[str, float | None]:
    """Return the metric values of the single run behind `analysis`.

    Raises AnalysisError when the results hold more than one run.
    """
    runs = analysis.source.runs
    if len(runs) != 1:
        raise AnalysisError(
            f"{', '.join(analysis.source.patterns)} contains {len(runs)} runs "
            f"({', '.join(runs)}); compare takes one run on each side"
        )

    values: dict[str, float | None] = {spec.name: None for spec in METRICS}
    summary = _first_row(analysis.run_query("summary"))
    if summary is not None:
        for spec in METRICS:
            if spec.name in summary:
                values[spec.name] = _number(summary[spec.name])
        requests = summary["requests"]
        values["ok_share"] = summary["ok"] / requests if requests else None

    slo_rows = analysis.run_query("slo", slo_params).to_rows()
    overall = [
        row for row in slo_rows if row["input_bucket"] == row["output_bucket"] == "all"
    ]
    if overall:
        values["slo_attainment"] = _number(overall[0]["attainment"])
        values["goodput_per_s"] = _number(overall[0]["goodput_per_s"])

    send_lag = _first_row(analysis.run_query("send_lag"))
    if send_lag is not None:
        values["send_lag_p99_ms"] = _number(send_lag["p99_ms"])
    return values


def _first_row(result: QueryResult) -> dict[str, Any] | None:
    rows = result.to_rows()
    return rows[0] if rows else None


def _number(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `compare` subcommand to the `cmx` parser."""
    parser = subparsers.add_parser(
        "compare",
        help="compare two runs metric by metric, with a verdict per metric",
        description=(
            "Print each metric of run A and run B, the change B - A and a "
            "verdict: better, worse or same (within the tolerance). A and B are "
            "results files, directories or quoted globs of one run each."
        ),
    )
    parser.add_argument("a", metavar="A", help="results of the baseline run")
    parser.add_argument("b", metavar="B", help="results of the run to judge")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative change judged the same (default {DEFAULT_TOLERANCE})",
    )
    parser.add_argument(
        "--share-tolerance",
        type=float,
        default=DEFAULT_SHARE_TOLERANCE,
        help=(
            "absolute change of a 0..1 share judged the same "
            f"(default {DEFAULT_SHARE_TOLERANCE})"
        ),
    )
    parser.add_argument(
        "--ttft-slo-ms", default="none", help="TTFT SLO in ms (default: none)"
    )
    parser.add_argument(
        "--tpot-slo-ms", default="50", help="TPOT SLO in ms (default: 50)"
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
        "--fail-on-worse",
        action="store_true",
        help=f"exit with status {EXIT_WORSE} when any metric is worse",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Compare the runs and return the exit status (1 for worse with the flag)."""
    for name in ("tolerance", "share_tolerance"):
        value = getattr(args, name)
        if not value >= 0 or not math.isfinite(value):
            raise AnalysisError(f"--{name.replace('_', '-')} {value} must be >= 0")

    slo_params = {"ttft_slo_ms": args.ttft_slo_ms, "tpot_slo_ms": args.tpot_slo_ms}
    metrics = []
    for path in (args.a, args.b):
        with Analysis(path) as analysis:
            print_source_warnings(analysis)
            metrics.append(collect_metrics(analysis, slo_params))

    comparisons = compare_runs(
        metrics[0], metrics[1], args.tolerance, args.share_tolerance
    )
    write_table(
        _comparison_table(comparisons),
        OutputFormat(args.format),
        args.output,
        title=f"A = {args.a}, B = {args.b}",
    )
    worse = [item.metric for item in comparisons if item.verdict is Verdict.WORSE]
    if args.fail_on_worse and worse:
        logger.info("worse metrics: %s", ", ".join(worse))
        return EXIT_WORSE
    return 0


def _comparison_table(comparisons: list[MetricComparison]) -> pa.Table:
    rows = []
    for item in comparisons:
        row = asdict(item)
        row["verdict"] = item.verdict.value
        rows.append(row)
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("metric", pa.string()),
                ("a", pa.float64()),
                ("b", pa.float64()),
                ("change", pa.float64()),
                ("relative_change", pa.float64()),
                ("verdict", pa.string()),
            ]
        ),
    )
