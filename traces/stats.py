"""Summary statistics of a canonical trace file, computed by DuckDB.

Quantiles use DuckDB's `quantile_cont`: linear interpolation between the two
nearest ranks, which matches numpy's default `percentile` method ("linear").
DuckDB scans the Parquet file, so the trace is never loaded into Python.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from traces.errors import TraceFormatError
from traces.schema import read_trace_metadata

__all__ = ["TokenQuantiles", "TraceStats", "describe_trace"]

logger = logging.getLogger(__name__)

# NOTE: DuckDB reads the path as a glob pattern, so a file name containing
# `*`, `?` or `[` may also match other files beside it.
_STATS_SQL = """
SELECT
    count(*) AS rows,
    min(arrival_ms) AS first_arrival_ms,
    max(arrival_ms) AS last_arrival_ms,
    quantile_cont(input_tokens::DOUBLE, [0.5, 0.9, 0.99]) AS input_quantiles,
    max(input_tokens) AS input_max,
    quantile_cont(output_tokens::DOUBLE, [0.5, 0.9, 0.99]) AS output_quantiles,
    max(output_tokens) AS output_max
FROM read_parquet(?)
"""


@dataclass(frozen=True)
class TokenQuantiles:
    """Token-length quantiles of one column, in tokens."""

    p50: float
    p90: float
    p99: float
    max: int


@dataclass(frozen=True)
class TraceStats:
    """Summary of a trace file.

    `duration_s` is the last arrival minus the first, in seconds, and is None
    for an empty trace. `mean_rate_per_s` is rows / duration_s and is None
    when the duration is 0 or unknown. The token quantiles are None for an
    empty trace.
    """

    path: str
    rows: int
    duration_s: float | None
    mean_rate_per_s: float | None
    input_tokens: TokenQuantiles | None
    output_tokens: TokenQuantiles | None


def describe_trace(path: str | Path) -> TraceStats:
    """Compute the row count, duration, mean rate and token quantiles.

    Raises TraceFormatError when `path` is not a readable canonical trace.
    """
    name = str(path)
    read_trace_metadata(name)
    try:
        with duckdb.connect() as connection:
            result = connection.execute(_STATS_SQL, [name]).fetchall()
    except duckdb.Error as error:
        message = f"DuckDB cannot read the trace ({error})"
        raise TraceFormatError(name, message) from None

    (rows, first_ms, last_ms, input_q, input_max, output_q, output_max) = result[0]
    duration_s = None if rows == 0 else (last_ms - first_ms) / 1000.0
    mean_rate_per_s = rows / duration_s if duration_s else None
    stats = TraceStats(
        path=name,
        rows=int(rows),
        duration_s=duration_s,
        mean_rate_per_s=mean_rate_per_s,
        input_tokens=_quantiles(input_q, input_max),
        output_tokens=_quantiles(output_q, output_max),
    )
    logger.debug("described %s: %s", name, stats)
    return stats


def _quantiles(
    values: list[float] | None, maximum: int | None
) -> TokenQuantiles | None:
    """Build TokenQuantiles from DuckDB's [p50, p90, p99] list and max."""
    if values is None or maximum is None:
        return None
    p50, p90, p99 = (float(value) for value in values)
    return TokenQuantiles(p50=p50, p90=p90, p99=p99, max=int(maximum))
