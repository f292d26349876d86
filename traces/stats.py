"""Summary statistics of a canonical trace file, computed by DuckDB.

DuckDB scans the Parquet file with a memory limit and spills to a temporary
folder beyond it, so a trace of any size is described without loading it
into Python.

Definitions, for a trace of n rows in file order (which is arrival order):

- `duration_s`: last arrival minus first, in seconds; `mean_rate_per_s`:
  n / duration_s.
- `interarrival_cv`: population standard deviation of the n - 1 gaps between
  consecutive arrivals (sorted by time) divided by their mean.
- `peak_rate_per_s`: the most arrivals in one of the one-second windows
  [t0 + k, t0 + k + 1) s, where t0 is the first arrival.
- Token quantiles use DuckDB's `quantile_cont`: linear interpolation between
  the two nearest ranks, which matches numpy's default `percentile` method.
- `sessions`: distinct non-null session ids; `session_requests`: rows with a
  session id; `max_turns`: most rows sharing one session id.
- `prefix_reuse_ratio`, the ideal prefix reuse ratio: the fraction of all
  prompt tokens that lie in blocks whose hash appeared in an earlier row.
  It is the hit ratio of an infinite prefix cache that keeps every block
  of every earlier request. Block i of a row covers prompt tokens
  [i * B, min((i + 1) * B, input_tokens)) with B its block_tokens, so the
  reused tokens of a row are the sum of min(B, input_tokens - i * B) over
  its blocks i whose (B, hash) pair appeared in an earlier row. A hash
  repeated within one row does not count. The ratio is the sum of reused
  tokens over the sum of input_tokens; 0 for a trace without hashes. With
  chained block hashes (Mooncake's, the generator's), a block can only match
  when every block before it in the prompt matched too, so the ratio is
  also what a prefix-matching cache would hit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from traces.duck import connect
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
    max(output_tokens) AS output_max,
    sum(input_tokens)::HUGEINT AS input_total,
    sum(output_tokens)::HUGEINT AS output_total,
    count(DISTINCT session_id) AS sessions,
    count(session_id) AS session_requests
FROM read_parquet(?)
"""

_GAPS_SQL = """
SELECT stddev_pop(gap_ms) / avg(gap_ms), count(gap_ms)
FROM (
    SELECT arrival_ms - lag(arrival_ms) OVER (
        ORDER BY arrival_ms, file_row_number) AS gap_ms
    FROM read_parquet(?, file_row_number = true)
)
"""

_PEAK_SQL = """
SELECT max(arrivals) FROM (
    SELECT count(*) AS arrivals
    FROM read_parquet(?)
    GROUP BY floor((arrival_ms - ?) / 1000.0)
)
"""

_TURNS_SQL = """
SELECT max(turns) FROM (
    SELECT count(*) AS turns FROM read_parquet(?)
    WHERE session_id IS NOT NULL GROUP BY session_id
)
"""

_REUSE_SQL = """
WITH blocks AS (
    SELECT
        file_row_number AS row_number,
        block_tokens,
        input_tokens,
        unnest(prefix_block_hashes) AS block_hash,
        generate_subscripts(prefix_block_hashes, 1) - 1 AS block_index
    FROM read_parquet(?, file_row_number = true)
    WHERE block_tokens > 0
),
first_seen AS (
    SELECT block_tokens, block_hash, min(row_number) AS first_row
    FROM blocks
    GROUP BY block_tokens, block_hash
)
SELECT coalesce(sum(least(
    blocks.block_tokens, blocks.input_tokens - blocks.block_index * blocks.block_tokens
))::HUGEINT, 0)
FROM blocks JOIN first_seen USING (block_tokens, block_hash)
WHERE blocks.row_number > first_seen.first_row
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
    """Summary of a trace file, with the definitions of the module docstring.

    `duration_s`, `peak_rate_per_s` and the token quantiles are None for an
    empty trace. `mean_rate_per_s` is None when the duration is 0 or
    unknown, `interarrival_cv` when there are fewer than two gaps or their
    mean is 0, and `prefix_reuse_ratio` when it was not computed (the
    `reuse=False` option) or the trace is empty. `source_format` and
    `trace_start` come from the file metadata, None when absent.
    """

    path: str
    rows: int
    duration_s: float | None
    mean_rate_per_s: float | None
    input_tokens: TokenQuantiles | None
    output_tokens: TokenQuantiles | None
    interarrival_cv: float | None
    peak_rate_per_s: int | None
    input_tokens_total: int
    output_tokens_total: int
    sessions: int
    session_requests: int
    max_turns: int | None
    prefix_reuse_ratio: float | None
    source_format: str | None
    trace_start: str | None


def describe_trace(path: str | Path, reuse: bool = True) -> TraceStats:
    """Compute the statistics of the module docstring for one trace file.

    `reuse=False` skips the prefix reuse ratio, the one step whose cost grows
    with the number of hashed blocks rather than rows.

    Raises TraceFormatError when `path` is not a readable canonical trace.
    """
    name = str(path)
    metadata = read_trace_metadata(name)
    try:
        values = _query_all(name, reuse)
    except duckdb.Error as error:
        message = f"DuckDB cannot read the trace ({error})"
        raise TraceFormatError(name, message) from None

    stats = _build_stats(name, values, metadata)
    logger.debug("described %s: %s", name, stats)
    return stats


def _query_all(name: str, reuse: bool) -> dict[str, Any]:
    with connect() as connection:
        row = connection.execute(_STATS_SQL, [name]).fetchall()[0]
        columns = (
            "rows first_ms last_ms input_q input_max output_q output_max "
            "input_total output_total sessions session_requests"
        ).split()
        values: dict[str, Any] = dict(zip(columns, row, strict=True))
        if values["rows"] == 0:
            return values

        cv, gaps = connection.execute(_GAPS_SQL, [name]).fetchall()[0]
        values["cv"] = cv if gaps and gaps >= 2 else None
        peak_row = connection.execute(_PEAK_SQL, [name, values["first_ms"]])
        values["peak"] = peak_row.fetchall()[0][0]
        values["max_turns"] = connection.execute(_TURNS_SQL, [name]).fetchall()[0][0]
        if reuse:
            reused_row = connection.execute(_REUSE_SQL, [name]).fetchall()
            values["reused_tokens"] = int(reused_row[0][0])
    return values


def _build_stats(
    name: str, values: dict[str, Any], metadata: dict[str, str]
) -> TraceStats:
    rows = int(values["rows"])
    duration_s = None
    if rows:
        duration_s = (values["last_ms"] - values["first_ms"]) / 1000.0
    input_total = int(values["input_total"] or 0)
    reused_tokens = values.get("reused_tokens")
    reuse_ratio = None
    if reused_tokens is not None and input_total:
        reuse_ratio = reused_tokens / input_total
    cv = values.get("cv")
    return TraceStats(
        path=name,
        rows=rows,
        duration_s=duration_s,
        mean_rate_per_s=rows / duration_s if duration_s else None,
        input_tokens=_quantiles(values["input_q"], values["input_max"]),
        output_tokens=_quantiles(values["output_q"], values["output_max"]),
        interarrival_cv=float(cv) if cv is not None and cv == cv else None,
        peak_rate_per_s=values.get("peak"),
        input_tokens_total=input_total,
        output_tokens_total=int(values["output_total"] or 0),
        sessions=int(values["sessions"]),
        session_requests=int(values["session_requests"]),
        max_turns=values.get("max_turns"),
        prefix_reuse_ratio=reuse_ratio,
        source_format=metadata.get("source_format"),
        trace_start=metadata.get("trace_start"),
    )


def _quantiles(
    values: list[float] | None, maximum: int | None
) -> TokenQuantiles | None:
    """Build TokenQuantiles from DuckDB's [p50, p90, p99] list and max."""
    if values is None or maximum is None:
        return None
    p50, p90, p99 = (float(value) for value in values)
    return TokenQuantiles(p50=p50, p90=p90, p99=p99, max=int(maximum))
