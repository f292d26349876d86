"""Summaries of replay results files, computed with DuckDB.

A results path is one Parquet file, a directory of them (such as the
`<output>.parts` directory a killed replay leaves behind) or a glob. Columns
are addressed by name; this module does not import `replay`.

Percentiles are `quantile_cont`, which interpolates linearly between the two
closest ranks: for n sorted values x_0..x_{n-1}, the q-quantile is
x_h with h = q * (n - 1), interpolated between x_floor(h) and x_ceil(h). This
is numpy's default `linear` method. They cover rows with status `ok` and skip
NULLs (a one-token output has no TPOT).

Throughput counts only `ok` requests and their output tokens. The wall
window runs from the first actual send to the last end of a stream (any
status). `requests_per_s` and `output_tokens_per_s` are in trace time, so
they divide by the window multiplied by the run's speed-up, which is read
from the file metadata (1 when absent). For example, a 15 s window of a run
at speed-up 20 covers 300 s of trace. `wall_requests_per_s` divides by the
wall window alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb

from traces.errors import TraceFormatError

__all__ = [
    "PERCENTILE_METRICS",
    "QUANTILES",
    "RESULTS_COLUMNS",
    "summarize",
]

logger = logging.getLogger(__name__)

STATUS_OK = "ok"
SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"cmx.results.schema_version"
RUN_CONFIG_KEY = b"cmx.results.run_config"
# Suffix of the directory where an unfinished replay keeps its flushed rows.
PARTS_SUFFIX = ".parts"

QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
PERCENTILE_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2e_ms")
RESULTS_COLUMNS: tuple[str, ...] = (
    "request_id",
    "status",
    "actual_send_ms",
    "wall_e2e_ms",
    "output_tokens_received",
    *PERCENTILE_METRICS,
)

COLUMNS_SQL = "SELECT * FROM read_parquet($path) LIMIT 0"

METADATA_SQL = "SELECT file_name, key, value FROM parquet_kv_metadata($path)"

SUMMARY_SQL = """
SELECT
    count(*) AS requests,
    count(*) FILTER (WHERE status = $ok) AS ok,
    count(*) FILTER (WHERE status <> $ok) AS failed,
    min(actual_send_ms) AS first_send_ms,
    max(actual_send_ms + wall_e2e_ms) AS last_end_ms,
    coalesce(sum(output_tokens_received) FILTER (WHERE status = $ok), 0)
        AS ok_output_tokens,
    quantile_cont(ttft_ms, $quantiles) FILTER (WHERE status = $ok) AS ttft_ms,
    quantile_cont(tpot_ms, $quantiles) FILTER (WHERE status = $ok) AS tpot_ms,
    quantile_cont(e2e_ms, $quantiles) FILTER (WHERE status = $ok) AS e2e_ms
FROM read_parquet($path)
"""


def summarize(results_path: str | Path) -> dict[str, Any]:
    """Return counts, throughput and latency percentiles of a results path.

    Keys: requests, ok, failed, speedup, duration_s, requests_per_s,
    output_tokens_per_s, wall_requests_per_s and `<metric>_p50/_p90/_p99` for
    ttft_ms, tpot_ms and e2e_ms. Values that are undefined (no rows, no ok
    rows, a zero-length window) are None, never NaN.

    Raises TraceFormatError when the path matches no file, a file is not a
    results file of schema version 1, or files from runs with different
    speed-ups are mixed.
    """
    pattern = _resolve_pattern(results_path)
    connection = duckdb.connect()
    try:
        _check_columns(connection, pattern)
        speedup = _read_speedup(connection, pattern)
        row = _fetch_summary_row(connection, pattern)
    finally:
        connection.close()
    return _build_summary(row, speedup)


def _resolve_pattern(results_path: str | Path) -> str:
    """Turn a file, directory or glob into a pattern for `read_parquet`."""
    path = Path(results_path)
    if path.is_dir():
        if not any(path.glob("*.parquet")):
            raise TraceFormatError(str(path), "directory contains no .parquet files")
        return str(path / "*.parquet")
    if path.is_file() or any(char in str(results_path) for char in "*?["):
        return str(results_path)

    message = "results file not found"
    parts_dir = path.with_name(path.name + PARTS_SUFFIX)
    if parts_dir.is_dir():
        message += (
            f"; the run did not finish, and its flushed rows are in {parts_dir} "
            "(pass that directory instead)"
        )
    raise TraceFormatError(str(path), message)


def _execute(
    connection: duckdb.DuckDBPyConnection,
    pattern: str,
    sql: str,
    params: dict[str, object],
) -> duckdb.DuckDBPyConnection:
    """Run `sql` on a fresh cursor, turning read failures into TraceFormatError."""
    try:
        return connection.cursor().execute(sql, params)
    except duckdb.Error as error:
        first_line = str(error).splitlines()[0]
        raise TraceFormatError(
            pattern, f"cannot read as Parquet results ({first_line})"
        ) from None


def _check_columns(connection: duckdb.DuckDBPyConnection, pattern: str) -> None:
    cursor = _execute(connection, pattern, COLUMNS_SQL, {"path": pattern})
    present = {column[0] for column in cursor.description or []}
    cursor.fetchall()
    missing = [name for name in RESULTS_COLUMNS if name not in present]
    if missing:
        raise TraceFormatError(
            pattern,
            f"missing results columns: {', '.join(missing)}; expected a file "
            "written by 'cmx replay'",
        )


def _read_speedup(connection: duckdb.DuckDBPyConnection, pattern: str) -> float:
    """Return the run's speed-up, checking each file's schema version."""
    rows = _execute(connection, pattern, METADATA_SQL, {"path": pattern}).fetchall()
    metadata_by_file: dict[str, dict[bytes, bytes]] = {}
    for file_name, key, value in rows:
        metadata_by_file.setdefault(file_name, {})[bytes(key)] = bytes(value)

    speedups: set[float] = set()
    for file_name, metadata in metadata_by_file.items():
        version = metadata.get(SCHEMA_VERSION_KEY)
        if version is None or version.decode(errors="replace") != SCHEMA_VERSION:
            found = "none" if version is None else version.decode(errors="replace")
            raise TraceFormatError(
                file_name,
                f"results schema version {found} is not supported (this version "
                f"reads {SCHEMA_VERSION}); expected a file written by 'cmx replay'",
            )
        speedups.add(_speedup_from_run_config(file_name, metadata.get(RUN_CONFIG_KEY)))

    if len(speedups) > 1:
        listed = ", ".join(f"{speedup:g}" for speedup in sorted(speedups))
        raise TraceFormatError(
            pattern,
            f"files come from runs with different speed-ups ({listed}); "
            "summarize each run on its own",
        )
    return speedups.pop() if speedups else 1.0


def _speedup_from_run_config(file_name: str, run_config: bytes | None) -> float:
    if run_config is None:
        return 1.0
    try:
        speedup = json.loads(run_config).get("speedup", 1.0)
    except (ValueError, AttributeError):
        raise TraceFormatError(
            file_name, "cmx.results.run_config metadata is not a JSON object"
        ) from None
    if not isinstance(speedup, int | float) or not speedup > 0:
        raise TraceFormatError(
            file_name, f"speedup {speedup!r} in the run config is not a number > 0"
        )
    return float(speedup)


def _fetch_summary_row(
    connection: duckdb.DuckDBPyConnection, pattern: str
) -> tuple[Any, ...]:
    params: dict[str, object] = {
        "path": pattern,
        "ok": STATUS_OK,
        "quantiles": [quantile for _, quantile in QUANTILES],
    }
    rows = _execute(connection, pattern, SUMMARY_SQL, params).fetchall()
    return tuple(rows[0])


def _build_summary(row: tuple[Any, ...], speedup: float) -> dict[str, Any]:
    (requests, ok, failed, first_send_ms, last_end_ms, ok_tokens, *percentiles) = row

    duration_s = None
    if first_send_ms is not None and last_end_ms is not None:
        duration_s = (last_end_ms - first_send_ms) / 1000.0
    wall_requests_per_s = _rate(ok, duration_s)
    wall_tokens_per_s = _rate(ok_tokens, duration_s)

    summary: dict[str, Any] = {
        "requests": requests,
        "ok": ok,
        "failed": failed,
        "speedup": speedup,
        "duration_s": duration_s,
        "requests_per_s": _to_trace_time(wall_requests_per_s, speedup),
        "output_tokens_per_s": _to_trace_time(wall_tokens_per_s, speedup),
        "wall_requests_per_s": wall_requests_per_s,
    }
    for metric, values in zip(PERCENTILE_METRICS, percentiles, strict=True):
        for index, (label, _) in enumerate(QUANTILES):
            summary[f"{metric}_{label}"] = None if values is None else values[index]
    return summary


def _rate(count: int, duration_s: float | None) -> float | None:
    if duration_s is None or duration_s <= 0:
        return None
    return count / duration_s


def _to_trace_time(wall_rate: float | None, speedup: float) -> float | None:
    # Trace time passes `speedup` times faster than the wall clock.
    return None if wall_rate is None else wall_rate / speedup
