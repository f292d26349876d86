"""Analysis of replay and simulation results with DuckDB.

`Analysis` opens one or more results paths: files, directories such as a
killed run's `<output>.parts`, or globs. It defines the `results`, `trace`
and `trace_reuse` views on a private DuckDB connection (see `traces.views`)
and runs the canned queries of `traces.queries` or ad hoc SQL on them.
`summarize` keeps the one-call summary of a single run.

Percentiles everywhere are DuckDB's `quantile_cont`, numpy's default
`linear` method; `traces.queries` states it in full with the other
definitions. Each query runs on its own cursor and is fetched in full,
because a DuckDB 2 relation keeps no result between calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pyarrow as pa

from traces.errors import TraceError, TraceFormatError
from traces.queries import (
    CANNED_QUERIES,
    PERCENTILE_METRICS,
    QUANTILES,
    CannedQuery,
    ParamKind,
    QueryParam,
    get_query,
)
from traces.results_source import ResultsSource, open_results
from traces.views import TraceViews, create_views

__all__ = [
    "CANNED_QUERIES",
    "PERCENTILE_METRICS",
    "QUANTILES",
    "Analysis",
    "AnalysisError",
    "QueryResult",
    "bind_params",
    "parse_param",
    "summarize",
]

logger = logging.getLogger(__name__)


class AnalysisError(TraceError):
    """A query that cannot run: unknown name, bad parameter, invalid SQL."""


@dataclass(frozen=True)
class QueryResult:
    """The rows of one query, as an Arrow table with the query's name."""

    name: str
    table: pa.Table

    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return list(self.table.column_names)

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return int(self.table.num_rows)

    def to_rows(self) -> list[dict[str, Any]]:
        """Return the rows as dictionaries of Python values (NULL is None)."""
        rows: list[dict[str, Any]] = self.table.to_pylist()
        return rows


class Analysis:
    """Views over results paths and the queries that run on them.

    Use it as a context manager, or call `close`. Raises TraceFormatError on
    construction when no results file is readable (see `open_results`).
    """

    def __init__(
        self,
        results_paths: str | Path | Sequence[str | Path],
        *,
        trace_path: str | Path | None = None,
    ) -> None:
        if trace_path is not None and not Path(trace_path).is_file():
            raise TraceFormatError(str(trace_path), "trace file not found")
        self.source: ResultsSource = open_results(results_paths)
        self._connection = duckdb.connect()
        try:
            self.traces: TraceViews = create_views(
                self._connection, self.source, trace_path
            )
        except duckdb.Error as error:
            self._connection.close()
            raise TraceFormatError(
                ", ".join(self.source.patterns),
                f"cannot define the analysis views ({_first_line(error)})",
            ) from None

    def __enter__(self) -> Analysis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the DuckDB connection."""
        self._connection.close()

    def run_query(
        self, name: str, params: Mapping[str, object] | None = None
    ) -> QueryResult:
        """Run canned query `name` with `params` over its defaults.

        Parameter values may be Python values or strings as typed on the
        command line. Raises AnalysisError for an unknown query or parameter,
        a value out of range, or a query that needs the trace when no run has
        one; TraceFormatError when DuckDB cannot read the files.
        """
        try:
            query = get_query(name)
        except KeyError as error:
            raise AnalysisError(str(error.args[0])) from None
        bound = bind_params(query, params or {})
        if query.needs_trace:
            self._require_trace(query)
        return QueryResult(name, self._fetch(query.sql, bound))

    def run_sql(
        self, sql: str, params: Mapping[str, object] | None = None
    ) -> QueryResult:
        """Run ad hoc `sql` over the views, binding `params` to `$name` markers.

        Raises AnalysisError with DuckDB's message when the SQL fails.
        """
        return QueryResult("sql", self._fetch(sql, params or {}, ad_hoc=True))

    def _require_trace(self, query: CannedQuery) -> None:
        if self.traces.available:
            return
        reasons = "; ".join(
            f"run {run}: {reason}" for run, reason in self.traces.missing.items()
        )
        raise AnalysisError(f"query {query.name!r} needs the trace ({reasons})")

    def _fetch(
        self, sql: str, params: Mapping[str, object], *, ad_hoc: bool = False
    ) -> pa.Table:
        cursor = self._connection.cursor()
        try:
            table: pa.Table = cursor.sql(sql, params=dict(params)).to_arrow_table()
        except (duckdb.IOException, duckdb.InvalidInputException) as error:
            raise TraceFormatError(
                ", ".join(self.source.patterns),
                f"cannot read as Parquet results ({_first_line(error)})",
            ) from None
        except duckdb.Error as error:
            if not ad_hoc:
                raise
            raise AnalysisError(self._sql_error_message(error)) from None
        finally:
            cursor.close()
        return table

    def _sql_error_message(self, error: duckdb.Error) -> str:
        message = f"SQL failed: {_first_line(error)}"
        if "trace" in str(error) and not self.traces.available:
            reasons = "; ".join(self.traces.missing.values())
            message += f" (the trace view is empty: {reasons})"
        return message


def bind_params(query: CannedQuery, values: Mapping[str, object]) -> dict[str, object]:
    """Return the bound parameters of `query`: defaults, `values`, constants.

    Raises AnalysisError naming the parameter for an unknown name or a value
    out of its range.
    """
    known = {param.name: param for param in query.params}
    unknown = [name for name in values if name not in known]
    if unknown:
        accepted = ", ".join(known) or "none"
        raise AnalysisError(
            f"query {query.name!r} has no parameter {unknown[0]!r} "
            f"(parameters: {accepted})"
        )

    bound: dict[str, object] = {}
    for param in query.params:
        value = values.get(param.name, param.default)
        bound[param.name] = parse_param(param, value)
    bound.update(query.fixed_params)
    return bound


def parse_param(param: QueryParam, value: object) -> object:
    """Convert `value` (a Python value or command-line text) for `param`.

    Returns a float, an int, None or a list, as the parameter's kind requires.
    Raises AnalysisError naming the parameter and the accepted range.
    """
    try:
        parsed = _convert(param.kind, value)
    except (TypeError, ValueError):
        parsed = _INVALID
    if parsed is _INVALID:
        raise AnalysisError(
            f"parameter {param.name} = {value!r} is invalid; expected "
            f"{param.kind.value}"
        )
    return parsed


_INVALID = object()


def _convert(kind: ParamKind, value: object) -> object:
    if kind is ParamKind.OPTIONAL_POSITIVE_FLOAT:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _convert(ParamKind.POSITIVE_FLOAT, value)
    if kind in (ParamKind.POSITIVE_FLOAT, ParamKind.NONNEGATIVE_FLOAT):
        number = _to_float(value)
        minimum_ok = number > 0 if kind is ParamKind.POSITIVE_FLOAT else number >= 0
        return number if minimum_ok and math.isfinite(number) else _INVALID
    if kind is ParamKind.POSITIVE_INT:
        integer = _to_int(value)
        return integer if integer >= 1 else _INVALID
    return _convert_edges(kind, value)


def _convert_edges(kind: ParamKind, value: object) -> object:
    items: Sequence[object]
    if isinstance(value, str):
        items = [item for item in value.split(",") if item.strip()]
    elif isinstance(value, Sequence):
        items = value
    else:
        return _INVALID
    convert = _to_int if kind is ParamKind.INT_EDGES else _to_float
    edges = [convert(item) for item in items]
    if not edges or edges[0] != 0 or not all(math.isfinite(edge) for edge in edges):
        return _INVALID
    if any(later <= earlier for earlier, later in zip(edges, edges[1:], strict=False)):
        return _INVALID
    return edges


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"not an integer: {value!r}")


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def summarize(results_path: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Return the summary of one run as a dictionary.

    Keys: requests, ok, failed, speedup, duration_s, requests_per_s,
    output_tokens_per_s, wall_requests_per_s, cache_hit_rate and
    `<metric>_p50/_p90/_p99` for ttft_ms, tpot_ms and e2e_ms. Values that
    are undefined (no rows, no ok rows, a zero-length window) are None,
    never NaN; a run with no rows has 0 requests.

    Raises TraceFormatError when no results file is readable, and
    AnalysisError when the path contains more than one run.
    """
    with Analysis(results_path) as analysis:
        runs = analysis.source.runs
        if len(runs) > 1:
            raise AnalysisError(
                f"{', '.join(analysis.source.patterns)} contains {len(runs)} runs "
                f"({', '.join(runs)}); summarize one run, or run the 'summary' "
                "query for a row per run"
            )
        rows = analysis.run_query("summary").to_rows()
        speedup = analysis.source.speedup(runs[0])

    if rows:
        summary = rows[0]
        summary.pop("run")
        return summary
    return _empty_summary(speedup)


def _empty_summary(speedup: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "speedup": speedup,
        "requests": 0,
        "ok": 0,
        "failed": 0,
        "duration_s": None,
        "requests_per_s": None,
        "output_tokens_per_s": None,
        "wall_requests_per_s": None,
        "cache_hit_rate": None,
    }
    for metric in PERCENTILE_METRICS:
        for label, _ in QUANTILES:
            summary[f"{metric}_{label}"] = None
    return summary
