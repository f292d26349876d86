"""Printing and saving query results as a table, JSON, CSV or Parquet.

JSON is an array with one object per row. NULL is written as `null`, and
so are NaN and infinite values, because JSON cannot represent them (the
canned queries return none, but ad hoc SQL might). CSV has a header row
and an empty field for NULL. Parquet keeps the column types and needs an
output file.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import logging
import math
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from traces.errors import TraceError

__all__ = [
    "OutputFormat",
    "format_cell",
    "render_rows",
    "to_json_value",
    "write_table",
]

logger = logging.getLogger(__name__)


class OutputFormat(Enum):
    """Output format of a query result."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"


def write_table(
    table: pa.Table,
    output_format: OutputFormat,
    output_path: str | Path | None = None,
    *,
    title: str | None = None,
    transpose: bool = False,
) -> None:
    """Write `table` in `output_format` to `output_path`, or to stdout.

    `transpose` prints a table with one row per column and one column per
    row, which reads better for a summary of a few runs. Raises TraceError
    when Parquet is asked for without an output path, or the output path
    cannot be written.
    """
    if output_format is OutputFormat.PARQUET:
        if output_path is None:
            raise TraceError("--format parquet needs an output file (-o FILE)")
        _write_parquet(table, Path(output_path))
        return

    rows: list[dict[str, Any]] = table.to_pylist()
    columns = list(table.column_names)
    if output_path is None:
        render_rows(rows, columns, output_format, sys.stdout, title, transpose)
        return
    buffer = io.StringIO()
    render_rows(rows, columns, output_format, buffer, title, transpose)
    try:
        Path(output_path).write_text(buffer.getvalue(), encoding="utf-8")
    except OSError as error:
        raise TraceError(f"cannot write {output_path}: {error.strerror}") from None


def render_rows(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    output_format: OutputFormat,
    stream: TextIO,
    title: str | None = None,
    transpose: bool = False,
) -> None:
    """Write `rows` (dictionaries keyed by `columns`) to `stream`."""
    if output_format is OutputFormat.JSON:
        values = [
            {key: to_json_value(value) for key, value in row.items()} for row in rows
        ]
        stream.write(json.dumps(values, allow_nan=False) + "\n")
    elif output_format is OutputFormat.CSV:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[key] is None else row[key] for key in columns])
    else:
        table = _rich_table(rows, columns, transpose)
        is_terminal = stream.isatty()
        console = Console(file=stream, width=None if is_terminal else 200)
        if title is not None:
            console.print(title, markup=False, highlight=False)
        console.print(table)


def to_json_value(value: object) -> object:
    """Return `value` as a JSON-ready value (non-finite floats become None)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return to_json_value(float(value))
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    return value


def format_cell(value: object) -> str:
    """Format one value for a printed table: '-' for NULL, 3 decimals or 4 digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or abs(value) >= 1:
            return f"{value:,.3f}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rich_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], transpose: bool
) -> Table:
    table = Table()
    if not rows:
        table.add_column("result")
        table.add_row("(no rows)")
        return table

    if transpose:
        table.add_column("metric")
        key_column = columns[0]
        for row in rows:
            table.add_column(str(row[key_column]), justify="right")
        for name in columns[1:]:
            table.add_row(name, *(format_cell(row[name]) for row in rows))
        return table

    for name in columns:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(format_cell(row[name]) for name in columns))
    return table


def _write_parquet(table: pa.Table, path: Path) -> None:
    try:
        pq.write_table(table, str(path))
    except OSError as error:
        raise TraceError(f"cannot write {path}: {error}") from None
