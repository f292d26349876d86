"""DuckDB views over results files and their traces.

`create_views` defines, on one connection:

- `results`: every row of every readable results file. The known results
  columns are typed as in `RESULT_COLUMN_TYPES`, NULL where a file lacks
  one, and any other columns the files carry are kept. Three columns are
  added: `run` (the run label), `speedup` (the run's replay speed-up, 1 when
  unknown) and `source_file` (the file the row came from).
- `measured_results`: the rows of `results` whose `measured` column is not
  false, that is, without the warm-up and cool-down rows of a replay.
- `trace`: the trace rows of each run, joined to results by
  `(run, request_id)`, with `trace_row` (0-based row in the trace file) and
  `session_turn` (1 for a session's first request by arrival, NULL without a
  session). A run's trace is the file named by `--trace`, or else the
  `trace_path` of its run configuration. A run whose trace cannot be found
  or read has no rows here, and `TraceViews.missing` gives the reason.
- `trace_reuse`: per trace request, the ideal prefix reuse, that is, what an
  infinite prefix cache could serve. A block is reused when its hash is in
  a request that comes earlier in the trace (by `arrival_ms`, then by row).
  `reused_tokens` adds up the tokens of the reused blocks, where block i
  (1-based) covers min(block_tokens, input_tokens - (i - 1) * block_tokens)
  tokens, so a partial last block counts only its own tokens.
  `reuse_ratio` = reused_tokens / input_tokens.

File paths and labels go into the view definitions as quoted SQL literals,
because DuckDB does not bind parameters in CREATE VIEW.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from traces.results_source import (
    DERIVED_COLUMNS,
    RESULT_COLUMN_TYPES,
    ColumnKind,
    ResultsFile,
    ResultsSource,
    column_kind,
)

__all__ = [
    "TRACE_COLUMN_TYPES",
    "TraceViews",
    "create_views",
    "sql_identifier",
    "sql_string",
]

logger = logging.getLogger(__name__)

# Trace columns the views read, with the DuckDB type each is read as.
TRACE_COLUMN_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "request_id": "VARCHAR",
        "arrival_ms": "DOUBLE",
        "input_tokens": "BIGINT",
        "output_tokens": "BIGINT",
        "prefix_block_hashes": "UBIGINT[]",
        "block_tokens": "BIGINT",
        "session_id": "VARCHAR",
    }
)
_TRACE_REQUIRED = ("request_id", "arrival_ms", "input_tokens")

MEASURED_RESULTS_VIEW_SQL = """
CREATE VIEW measured_results AS
SELECT * FROM results WHERE measured IS NOT FALSE
"""

TRACE_REUSE_VIEW_SQL = """
CREATE VIEW trace_reuse AS
WITH ordered AS (
    SELECT
        run,
        request_id,
        input_tokens,
        coalesce(block_tokens, 0) AS block_tokens,
        coalesce(prefix_block_hashes, []) AS prefix_block_hashes,
        row_number() OVER (PARTITION BY run ORDER BY arrival_ms, trace_row)
            AS arrival_rank
    FROM trace
),
blocks AS (
    SELECT
        run,
        request_id,
        arrival_rank,
        input_tokens,
        block_tokens,
        generate_subscripts(prefix_block_hashes, 1) AS block_index,
        unnest(prefix_block_hashes) AS block_hash
    FROM ordered
),
marked AS (
    SELECT
        *,
        min(arrival_rank) OVER (PARTITION BY run, block_hash) < arrival_rank
            AS seen_before,
        greatest(
            least(block_tokens, input_tokens - (block_index - 1) * block_tokens), 0
        ) AS block_size
    FROM blocks
),
per_request AS (
    SELECT
        run,
        request_id,
        count(*) AS prefix_blocks,
        count(*) FILTER (WHERE seen_before) AS reused_blocks,
        coalesce(sum(block_size) FILTER (WHERE seen_before), 0) AS reused_tokens
    FROM marked
    GROUP BY run, request_id
)
SELECT
    o.run,
    o.request_id,
    o.input_tokens,
    coalesce(p.prefix_blocks, 0) AS prefix_blocks,
    coalesce(p.reused_blocks, 0) AS reused_blocks,
    CAST(coalesce(p.reused_tokens, 0) AS BIGINT) AS reused_tokens,
    coalesce(p.reused_tokens, 0) / nullif(o.input_tokens, 0) AS reuse_ratio
FROM ordered AS o
LEFT JOIN per_request AS p USING (run, request_id)
"""


@dataclass(frozen=True)
class TraceViews:
    """Trace files found for the runs, and the reasons for runs without one.

    `paths` maps a run to the trace file read for it; `missing` maps a run
    to the reason it has none.
    """

    paths: Mapping[str, str]
    missing: Mapping[str, str]

    @property
    def available(self) -> bool:
        """Whether at least one run has its trace."""
        return bool(self.paths)


def sql_string(value: str) -> str:
    """Quote `value` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """Quote `name` as a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def create_views(
    connection: duckdb.DuckDBPyConnection,
    source: ResultsSource,
    trace_path: str | Path | None = None,
) -> TraceViews:
    """Create the views described in this module's docstring on `connection`.

    `trace_path`, when given, is the trace of every run; otherwise each run's
    trace is found from its run configuration. Returns which runs have a
    trace. A trace that cannot be found or read is reported in the result,
    not raised, because most queries do not need it.
    """
    connection.execute(_results_view_sql(source))
    connection.execute(MEASURED_RESULTS_VIEW_SQL)

    found, missing = _find_traces(source, trace_path)
    readable: dict[str, tuple[str, dict[str, pa.DataType]]] = {}
    for run, path in found.items():
        columns = _trace_columns(path)
        if isinstance(columns, str):
            missing[run] = columns
        else:
            readable[run] = (path, columns)

    connection.execute(_trace_view_sql(readable))
    connection.execute(TRACE_REUSE_VIEW_SQL)
    for run, reason in missing.items():
        logger.info("run %s has no trace rows: %s", run, reason)
    return TraceViews(
        paths=MappingProxyType({run: path for run, (path, _) in readable.items()}),
        missing=MappingProxyType(dict(missing)),
    )


def _results_view_sql(source: ResultsSource) -> str:
    """Build one SELECT per group of files that share run and columns."""
    groups: dict[tuple[object, ...], list[ResultsFile]] = {}
    for results_file in source.files:
        key = (
            results_file.run,
            results_file.speedup,
            tuple((name, str(kind)) for name, kind in results_file.columns.items()),
        )
        groups.setdefault(key, []).append(results_file)

    selects = [_results_group_select(files) for files in groups.values()]
    return "CREATE VIEW results AS\n" + "\nUNION ALL BY NAME\n".join(selects)


def _results_group_select(files: Sequence[ResultsFile]) -> str:
    first = files[0]
    expressions = [
        _typed_column(name, duckdb_type, first.columns.get(name))
        for name, duckdb_type in RESULT_COLUMN_TYPES.items()
    ]
    expressions += [
        sql_identifier(name)
        for name in first.columns
        if name not in RESULT_COLUMN_TYPES and name not in DERIVED_COLUMNS
    ]
    expressions += [
        f"{sql_string(first.run)} AS run",
        f"CAST({first.speedup!r} AS DOUBLE) AS speedup",
        "source_file",
    ]
    file_list = ", ".join(sql_string(item.path) for item in files)
    return (
        "SELECT " + ", ".join(expressions) + "\n"
        f"FROM read_parquet([{file_list}], filename = 'source_file')"
    )


def _typed_column(name: str, duckdb_type: str, arrow_type: pa.DataType | None) -> str:
    quoted = sql_identifier(name)
    if arrow_type is None:
        return f"CAST(NULL AS {duckdb_type}) AS {quoted}"
    if column_kind(arrow_type, duckdb_type) == ColumnKind.EXACT:
        return quoted
    return f"CAST({quoted} AS {duckdb_type}) AS {quoted}"


def _find_traces(
    source: ResultsSource, trace_path: str | Path | None
) -> tuple[dict[str, str], dict[str, str]]:
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    for run in source.runs:
        if trace_path is not None:
            candidates = [str(trace_path)]
            named = str(trace_path)
        else:
            named_value = source.run_config(run).get("trace_path")
            if not isinstance(named_value, str) or not named_value:
                missing[run] = "its run configuration names no trace; pass --trace"
                continue
            named = named_value
            results_dir = os.path.dirname(source.files_of(run)[0].path)
            candidates = [named, os.path.join(results_dir, os.path.basename(named))]
            if not os.path.isabs(named):
                candidates.insert(1, os.path.join(results_dir, named))

        existing = [path for path in candidates if os.path.isfile(path)]
        if existing:
            found[run] = existing[0]
        else:
            missing[run] = f"trace {named} not found; pass --trace"
    return found, missing


def _trace_columns(path: str) -> dict[str, pa.DataType] | str:
    """Return the columns of trace file `path`, or why it cannot be used."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"trace {path} cannot be read as Parquet ({first_line})"
    columns = {item.name: item.type for item in schema}
    missing = [name for name in _TRACE_REQUIRED if name not in columns]
    if missing:
        return f"trace {path} lacks column(s) {', '.join(missing)}"
    return columns


def _trace_view_sql(readable: Mapping[str, tuple[str, dict[str, pa.DataType]]]) -> str:
    if not readable:
        typed = ", ".join(
            f"CAST(NULL AS {duckdb_type}) AS {sql_identifier(name)}"
            for name, duckdb_type in TRACE_COLUMN_TYPES.items()
        )
        return (
            "CREATE VIEW trace AS SELECT CAST(NULL AS VARCHAR) AS run, "
            f"{typed}, CAST(NULL AS BIGINT) AS trace_row, "
            "CAST(NULL AS BIGINT) AS session_turn LIMIT 0"
        )

    runs_by_path: dict[str, list[str]] = {}
    columns_by_path: dict[str, dict[str, pa.DataType]] = {}
    for run, (path, columns) in readable.items():
        runs_by_path.setdefault(path, []).append(run)
        columns_by_path[path] = columns
    selects = [
        _trace_select(path, runs, columns_by_path[path])
        for path, runs in runs_by_path.items()
    ]
    body = "\nUNION ALL\n".join(selects)
    return f"""
CREATE VIEW trace AS
SELECT
    *,
    CASE WHEN session_id IS NOT NULL THEN
        row_number() OVER (
            PARTITION BY run, session_id ORDER BY arrival_ms, trace_row
        )
    END AS session_turn
FROM (
{body}
)
"""


def _trace_select(
    path: str, runs: Sequence[str], columns: Mapping[str, pa.DataType]
) -> str:
    expressions = ["runs.run"]
    for name, duckdb_type in TRACE_COLUMN_TYPES.items():
        quoted = sql_identifier(name)
        if name in columns:
            expressions.append(f"CAST(t.{quoted} AS {duckdb_type}) AS {quoted}")
        else:
            expressions.append(f"CAST(NULL AS {duckdb_type}) AS {quoted}")
    expressions.append("t.file_row_number AS trace_row")
    run_values = ", ".join(f"({sql_string(run)})" for run in runs)
    return (
        "SELECT " + ", ".join(expressions) + "\n"
        f"FROM read_parquet({sql_string(path)}, file_row_number = true) AS t\n"
        f"CROSS JOIN (VALUES {run_values}) AS runs(run)"
    )
