"""The points Parquet file of a sweep or search: one row per simulated point.

Columns, in order (rates per second of trace time, latencies in ms):

- identity: `kind` ("sweep" or "search"), `point_key` (the cache key),
  `deployment_id` (0 in a sweep), `rate_factor`, `rate_scaling`, `seed`,
  `trace_path`, `trace_sha256`, `trace_limit`, `trace_duration_s`;
- the figures of `PointMetrics`: `requests`, `ok`, `rejected`,
  `offered_rps`, `duration_s`, `throughput_rps`, `output_tokens_per_s`,
  `goodput_rps`, `goodput_output_tokens_per_s`, `slo_attainment`,
  `backlog_growth`, `completion_ratio`, `saturated`, `meets_slo`, then
  p50, p90 and p99 of `ttft_ms`, `tpot_ms`, `e2e_ms` and `queue_ms`;
- per NPU: `npus`, `output_tokens_per_s_per_npu`,
  `goodput_tokens_per_s_per_npu`;
- the SLOs applied: `slo_ttft_ms`, `slo_tpot_ms`, `slo_e2e_ms`,
  `slo_attainment_target`;
- findings: `is_max_slo_rate` and `refined` (sweep), `rank`,
  `is_best_of_deployment` and `on_pareto_front` (search); false or null in
  the other kind;
- `simulation_wall_s`, the wall time of the simulation that made the point;
- `deployment_<field>` for every `DeploymentConfig` field (enums as their
  names' values), and `deployment_json` with all of them.

The file metadata contains the run's settings as JSON under
`cmx.planning.run_config`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from emulator.planning.metrics import LATENCY_METRICS, PointMetrics, SloTargets
from emulator.planning.points import PointResult, TraceSource
from emulator.planning.search import SearchResult, deployment_to_mapping
from emulator.planning.sweep import SweepResult
from emulator.profiles import DeploymentConfig

__all__ = [
    "RUN_CONFIG_KEY",
    "points_schema",
    "search_rows",
    "sweep_rows",
    "write_points",
]

RUN_CONFIG_KEY = "cmx.planning.run_config"

_FIGURES: tuple[tuple[str, pa.DataType], ...] = (
    ("requests", pa.int64()),
    ("ok", pa.int64()),
    ("rejected", pa.int64()),
    ("offered_rps", pa.float64()),
    ("duration_s", pa.float64()),
    ("throughput_rps", pa.float64()),
    ("output_tokens_per_s", pa.float64()),
    ("goodput_rps", pa.float64()),
    ("goodput_output_tokens_per_s", pa.float64()),
    ("slo_attainment", pa.float64()),
    ("backlog_growth", pa.float64()),
    ("completion_ratio", pa.float64()),
    ("saturated", pa.bool_()),
    ("meets_slo", pa.bool_()),
    *((name, pa.float64()) for name in LATENCY_METRICS),
)
_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("kind", pa.string()),
    ("point_key", pa.string()),
    ("deployment_id", pa.int64()),
    ("rate_factor", pa.float64()),
    ("rate_scaling", pa.string()),
    ("seed", pa.int64()),
    ("trace_path", pa.string()),
    ("trace_sha256", pa.string()),
    ("trace_limit", pa.int64()),
    ("trace_duration_s", pa.float64()),
    *_FIGURES,
    ("npus", pa.int64()),
    ("output_tokens_per_s_per_npu", pa.float64()),
    ("goodput_tokens_per_s_per_npu", pa.float64()),
    ("slo_ttft_ms", pa.float64()),
    ("slo_tpot_ms", pa.float64()),
    ("slo_e2e_ms", pa.float64()),
    ("slo_attainment_target", pa.float64()),
    ("is_max_slo_rate", pa.bool_()),
    ("refined", pa.bool_()),
    ("rank", pa.int64()),
    ("is_best_of_deployment", pa.bool_()),
    ("on_pareto_front", pa.bool_()),
    ("simulation_wall_s", pa.float64()),
)


@dataclass(frozen=True)
class _Findings:
    is_max_slo_rate: bool = False
    refined: bool = False
    rank: int | None = None
    is_best_of_deployment: bool = False
    on_pareto_front: bool = False


def points_schema() -> pa.Schema:
    """Return the schema of a points file, deployment columns included."""
    deployment_columns = [
        (f"deployment_{name}", arrow_type)
        for name, arrow_type in _deployment_types().items()
    ]
    return pa.schema([*_COLUMNS, *deployment_columns, ("deployment_json", pa.string())])


def sweep_rows(result: SweepResult, source: TraceSource) -> list[dict[str, object]]:
    """Return one row per sweep point, in rate order."""
    return [
        _row(
            "sweep",
            0,
            point.result,
            point.metrics,
            source,
            result.config.slo,
            _Findings(
                is_max_slo_rate=index == result.max_slo_index,
                refined=point.refined,
            ),
        )
        for index, point in enumerate(result.points)
    ]


def search_rows(result: SearchResult, source: TraceSource) -> list[dict[str, object]]:
    """Return one row per search point, in deployment and rate order."""
    ranks = {entry.deployment_id: entry for entry in result.ranking}
    rows = []
    for point, on_front in zip(result.points, result.on_front, strict=True):
        entry = ranks[point.deployment_id]
        findings = _Findings(
            rank=entry.rank,
            is_best_of_deployment=entry.best_point is point,
            on_pareto_front=on_front,
        )
        rows.append(
            _row(
                "search",
                point.deployment_id,
                point.result,
                point.metrics,
                source,
                result.config.slo,
                findings,
            )
        )
    return rows


def write_points(
    rows: Sequence[Mapping[str, object]], path: Path, run_config: Mapping[str, object]
) -> None:
    """Write the rows as a points file, through a temporary name."""
    schema = points_schema()
    table = pa.Table.from_pylist(list(rows), schema=schema)
    metadata = {RUN_CONFIG_KEY: json.dumps(run_config, sort_keys=True)}
    partial = path.with_name(f"{path.name}.partial")
    pq.write_table(table.replace_schema_metadata(metadata), str(partial))
    partial.replace(path)


def _row(
    kind: str,
    deployment_id: int,
    result: PointResult,
    metrics: PointMetrics,
    source: TraceSource,
    slo: SloTargets,
    findings: _Findings,
) -> dict[str, object]:
    point = result.point
    npus = point.deployment.npus_used()
    row: dict[str, object] = {
        "kind": kind,
        "point_key": result.key,
        "deployment_id": deployment_id,
        "rate_factor": point.rate_factor,
        "rate_scaling": point.scaling.value,
        "seed": point.seed,
        "trace_path": str(source.path),
        "trace_sha256": source.sha256,
        "trace_limit": source.limit,
        "trace_duration_s": source.duration_s,
        **metrics.as_dict(),
        "npus": npus,
        "output_tokens_per_s_per_npu": metrics.output_tokens_per_s / npus,
        "goodput_tokens_per_s_per_npu": metrics.goodput_output_tokens_per_s / npus,
        "slo_ttft_ms": slo.ttft_ms,
        "slo_tpot_ms": slo.tpot_ms,
        "slo_e2e_ms": slo.e2e_ms,
        "slo_attainment_target": slo.attainment,
        **dataclasses.asdict(findings),
        "simulation_wall_s": result.wall_s,
    }
    fields = deployment_to_mapping(point.deployment)
    arrow_types = _deployment_types()
    for name, value in fields.items():
        if arrow_types[name] == pa.string() and not isinstance(
            value, (str, type(None))
        ):
            value = json.dumps(value)
        row[f"deployment_{name}"] = value
    row["deployment_json"] = json.dumps(fields, sort_keys=True)
    return row


def _deployment_types() -> dict[str, pa.DataType]:
    """Map each DeploymentConfig field to an Arrow type from its annotation."""
    hints = typing.get_type_hints(DeploymentConfig)
    types_by_field = {}
    for field in dataclasses.fields(DeploymentConfig):
        types_by_field[field.name] = _arrow_type(hints[field.name])
    return types_by_field


def _arrow_type(hint: object) -> pa.DataType:
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if len(arguments) == 1:
            return _arrow_type(arguments[0])
        return pa.string()
    if hint is bool:
        return pa.bool_()
    if hint is int:
        return pa.int64()
    if hint is float:
        return pa.float64()
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return pa.string()
    # Strings, and any other type, which the row stores as JSON text.
    return pa.string()
