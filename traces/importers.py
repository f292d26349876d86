"""Importers that convert public request traces into the canonical trace table.

Supported sources:

- Mooncake JSON lines: one object per line with `timestamp` (ms from the
  trace start), `input_length`, `output_length` and `hash_ids` (one id per
  512-token block of the prompt, the last block possibly partial).
- Azure LLM inference CSV (2023): columns `TIMESTAMP` (absolute, such as
  `2023-11-16 18:17:03.9799600`), `ContextTokens` and `GeneratedTokens`.
  Timestamps without a zone are taken as UTC. A trailing `Z` or `+HH:MM`
  offset is honoured when present.

Every importer validates each row and raises TraceFormatError naming the file,
the 1-based row (the line for JSON lines, the data row after the header for
CSV) and the field. Token counts must be integers >= 1. Integral values
written as floats (`6758.0`) are accepted. Rows whose timestamps go backwards
are sorted by arrival time (stable, so ties keep file order) with a logged
warning. Blank lines are skipped with a logged warning. No request is dropped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from traces.errors import TraceFormatError
from traces.schema import TRACE_SCHEMA, write_trace

__all__ = [
    "AZURE_COLUMNS",
    "MOONCAKE_BLOCK_TOKENS",
    "ImportedTrace",
    "import_azure",
    "import_mooncake",
]

logger = logging.getLogger(__name__)

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per `hash_ids` block in Mooncake traces."""

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
"""Columns the Azure importer reads. Other columns are ignored."""

_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_MAX_INT64 = 2**63 - 1
_MAX_UINT64 = 2**64 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NS_PER_S = 1_000_000_000
_AZURE_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})"
    r"(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?"
)


@dataclass(frozen=True)
class ImportedTrace:
    """A trace converted to the canonical schema, ready to write.

    `table` has TRACE_SCHEMA's columns with rows sorted by `arrival_ms`.
    `metadata` is stored in the file under `cmx.trace.` by `write_trace`:
    `source_format`, `source_file` and, when the source has absolute times,
    `trace_start` (ISO-8601 UTC).
    """

    table: pa.Table
    metadata: Mapping[str, str]

    @property
    def rows(self) -> int:
        """Number of requests in the trace."""
        return int(self.table.num_rows)

    def write(self, path: str | Path) -> None:
        """Write the trace as a canonical Parquet file at `path`."""
        write_trace(self.table, path, self.metadata)


@dataclass
class _Columns:
    """Column values gathered row by row before the table is built."""

    rows: list[int] = field(default_factory=list)
    arrival_ms: list[float] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    prefix_block_hashes: list[list[int]] = field(default_factory=list)


def import_mooncake(path: str | Path) -> ImportedTrace:
    """Read a Mooncake JSON lines trace.

    `timestamp` is kept as `arrival_ms` (ms from the trace start, >= 0).
    `request_id` is the 0-based index of the request in the file.
    `block_tokens` is 512 and `session_id` is null.

    Raises TraceFormatError for an unreadable or empty file and for the first
    invalid row, naming its line and field.
    """
    name = str(path)
    text = _read_text(name, encoding="utf-8")
    lines = text.split("\n")
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()

    columns = _Columns()
    blank_lines = 0
    for index, line in enumerate(lines):
        if not line.strip():
            blank_lines += 1
            continue
        row = index + 1
        truncated = index == len(lines) - 1 and not ends_with_newline
        record = _parse_json_line(line, name, row, truncated)
        _add_mooncake_record(record, columns, name, row)

    if not columns.rows:
        raise TraceFormatError(name, "empty file: no requests found")
    _warn_blank_lines(name, blank_lines)
    table = _build_table(columns, MOONCAKE_BLOCK_TOKENS, name)
    metadata = {"source_format": "mooncake", "source_file": Path(name).name}
    logger.info("imported %d requests from %s", table.num_rows, name)
    return ImportedTrace(table=table, metadata=metadata)


def import_azure(path: str | Path) -> ImportedTrace:
    """Read an Azure LLM inference trace (2023 CSV columns).

    `arrival_ms` is the time since the earliest `TIMESTAMP`, in ms with the
    source's sub-millisecond digits kept. Timestamps without a zone are taken
    as UTC. The earliest timestamp is stored as `trace_start` metadata in
    ISO-8601 UTC with nanosecond digits. `request_id` is the 0-based index of
    the data row. The source has no block hashes, so `prefix_block_hashes` is
    empty and `block_tokens` is 0.

    Raises TraceFormatError for an unreadable or empty file, a header without
    the required columns and the first invalid row, naming its row and field.
    """
    name = str(path)
    text = _read_text(name, encoding="utf-8-sig")
    if not text.strip():
        raise TraceFormatError(name, "empty file: no header and no requests")

    header, records = _read_csv_rows(text, name)
    positions = _azure_column_positions(header, name)
    ends_with_newline = text.endswith(("\n", "\r"))

    columns = _Columns()
    timestamps_ns: list[int] = []
    blank_lines = 0
    for index, (row, values) in enumerate(records):
        if not any(value.strip() for value in values):
            blank_lines += 1
            continue
        truncated = index == len(records) - 1 and not ends_with_newline
        try:
            timestamp_ns = _add_azure_record(values, positions, columns, name, row)
        except TraceFormatError as error:
            if not truncated:
                raise
            raise _as_truncated(error) from None
        timestamps_ns.append(timestamp_ns)

    if not columns.rows:
        raise TraceFormatError(name, "no requests after the header")
    _warn_blank_lines(name, blank_lines)

    start_ns = min(timestamps_ns)
    offsets_ns = np.asarray(timestamps_ns, dtype=np.int64) - start_ns
    columns.arrival_ms = (offsets_ns / 1e6).tolist()
    columns.prefix_block_hashes = [[] for _ in columns.rows]
    table = _build_table(columns, 0, name)
    metadata = {
        "source_format": "azure",
        "source_file": Path(name).name,
        "trace_start": _format_utc_ns(start_ns),
    }
    logger.info("imported %d requests from %s", table.num_rows, name)
    return ImportedTrace(table=table, metadata=metadata)


def _read_text(path: str, encoding: str) -> str:
    """Return the decoded contents of `path`, raising TraceFormatError."""
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        raise TraceFormatError(path, "file not found") from None
    except OSError as error:
        raise TraceFormatError(path, f"cannot read file ({error.strerror})") from None

    try:
        return content.decode(encoding)
    except UnicodeDecodeError as error:
        row = content[: error.start].count(b"\n") + 1
        raise TraceFormatError(
            path,
            f"invalid UTF-8 at byte {error.start}; save the file as UTF-8",
            row=row,
        ) from None


def _read_csv_rows(
    text: str, path: str
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Split CSV text into the header and (data row number, values) pairs."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        records = [(reader.line_num - 1, values) for values in reader]
    except csv.Error as error:
        row = reader.line_num - 1
        raise TraceFormatError(path, f"malformed CSV: {error}", row=row) from None
    return header, records


def _parse_json_line(
    line: str, path: str, row: int, truncated: bool
) -> dict[str, object]:
    """Return the JSON object on one line, raising TraceFormatError."""
    try:
        record = json.loads(line)
    except ValueError as error:
        # JSONDecodeError, or ValueError for an integer of more than 4300 digits.
        problem = str(error)
        if isinstance(error, json.JSONDecodeError):
            problem = f"{error.msg} at column {error.colno}"
        if truncated:
            raise TraceFormatError(
                path,
                f"truncated last line: it has no newline and is not valid JSON "
                f"({problem}); remove it or complete it",
                row=row,
            ) from None
        raise TraceFormatError(path, f"malformed JSON: {problem}", row=row) from None

    if not isinstance(record, dict):
        raise TraceFormatError(
            path, f"expected a JSON object, got {type(record).__name__}", row=row
        )
    return record


def _add_mooncake_record(
    record: dict[str, object], columns: _Columns, path: str, row: int
) -> None:
    """Validate one Mooncake record and append its values to `columns`."""
    for name in _MOONCAKE_FIELDS:
        if name not in record:
            raise TraceFormatError(
                path,
                "missing field; each line needs " + ", ".join(_MOONCAKE_FIELDS),
                row=row,
                field=name,
            )

    arrival_ms = _check_timestamp_ms(record["timestamp"], path, row, "timestamp")
    input_tokens = _check_count(record["input_length"], path, row, "input_length")
    output_tokens = _check_count(record["output_length"], path, row, "output_length")
    hashes = _check_hash_ids(record["hash_ids"], input_tokens, path, row)

    columns.rows.append(row)
    columns.arrival_ms.append(arrival_ms)
    columns.input_tokens.append(input_tokens)
    columns.output_tokens.append(output_tokens)
    columns.prefix_block_hashes.append(hashes)


def _check_timestamp_ms(value: object, path: str, row: int, name: str) -> float:
    """Return a JSON timestamp as float ms, raising TraceFormatError."""
    accepted = "expected a finite number of milliseconds >= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceFormatError(
            path,
            f"invalid timestamp {_short_repr(value)}: {accepted}",
            row=row,
            field=name,
        )
    arrival_ms = float(value) if isinstance(value, float) else _int_to_float(value)
    if not math.isfinite(arrival_ms) or arrival_ms < 0:
        raise TraceFormatError(
            path,
            f"invalid timestamp {_short_repr(value)}: {accepted}",
            row=row,
            field=name,
        )
    return arrival_ms


def _int_to_float(value: int) -> float:
    """Convert `value` to float, giving infinity when it is too large."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_count(value: object, path: str, row: int, name: str) -> int:
    """Return a token count as int >= 1, raising TraceFormatError."""
    accepted = "expected an integer >= 1"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceFormatError(
            path,
            f"invalid token count {_short_repr(value)}: not a number, {accepted}",
            row=row,
            field=name,
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise TraceFormatError(
            path,
            f"invalid token count {_short_repr(value)}: not finite, {accepted}",
            row=row,
            field=name,
        )
    if isinstance(value, float) and not value.is_integer():
        raise TraceFormatError(
            path,
            f"invalid token count {_short_repr(value)}: not an integer, {accepted}",
            row=row,
            field=name,
        )
    count = int(value)
    if not 1 <= count <= _MAX_INT64:
        raise TraceFormatError(
            path,
            f"invalid token count {_short_repr(value)}: {accepted} and < 2**63",
            row=row,
            field=name,
        )
    return count


def _check_hash_ids(value: object, input_tokens: int, path: str, row: int) -> list[int]:
    """Return Mooncake `hash_ids` as a list of ints, raising TraceFormatError."""
    if not isinstance(value, list):
        raise TraceFormatError(
            path,
            f"invalid hash_ids {_short_repr(value)}: expected a list of integers >= 0",
            row=row,
            field="hash_ids",
        )
    for position, hash_id in enumerate(value):
        valid = isinstance(hash_id, int) and not isinstance(hash_id, bool)
        if not valid or not 0 <= hash_id <= _MAX_UINT64:
            raise TraceFormatError(
                path,
                f"invalid hash_ids[{position}] {_short_repr(hash_id)}: "
                "expected an integer in [0, 2**64)",
                row=row,
                field="hash_ids",
            )

    max_blocks = -(-input_tokens // MOONCAKE_BLOCK_TOKENS)
    if len(value) > max_blocks:
        raise TraceFormatError(
            path,
            f"hash_ids has {len(value)} blocks of {MOONCAKE_BLOCK_TOKENS} tokens "
            f"but input_length {input_tokens} fills only {max_blocks}",
            row=row,
            field="hash_ids",
        )
    return value


def _azure_column_positions(header: list[str], path: str) -> dict[str, int]:
    """Map each required Azure column to its index in `header`."""
    names = [name.strip() for name in header]
    positions: dict[str, int] = {}
    for column in AZURE_COLUMNS:
        if column not in names:
            raise TraceFormatError(
                path,
                f"missing column in the header {','.join(names)!r}; "
                f"expected {','.join(AZURE_COLUMNS)}",
                field=column,
            )
        positions[column] = names.index(column)
    return positions


def _add_azure_record(
    values: list[str],
    positions: dict[str, int],
    columns: _Columns,
    path: str,
    row: int,
) -> int:
    """Validate one Azure CSV row and append its token counts to `columns`.

    Returns the row's timestamp in ns since the Unix epoch.
    """
    for column, position in positions.items():
        if position >= len(values) or not values[position].strip():
            raise TraceFormatError(
                path,
                f"missing value (fields in this row: {len(values)}); "
                f"each row needs {','.join(AZURE_COLUMNS)}",
                row=row,
                field=column,
            )

    timestamp_ns = _parse_timestamp_ns(values[positions["TIMESTAMP"]], path, row)
    input_tokens = _parse_count(
        values[positions["ContextTokens"]], path, row, "ContextTokens"
    )
    output_tokens = _parse_count(
        values[positions["GeneratedTokens"]], path, row, "GeneratedTokens"
    )

    columns.rows.append(row)
    columns.input_tokens.append(input_tokens)
    columns.output_tokens.append(output_tokens)
    return timestamp_ns


def _parse_count(text: str, path: str, row: int, name: str) -> int:
    """Return a CSV token count as int >= 1, raising TraceFormatError."""
    stripped = text.strip()
    try:
        return _check_count(int(stripped), path, row, name)
    except ValueError:
        pass
    try:
        number = float(stripped)
    except ValueError:
        raise TraceFormatError(
            path,
            f"invalid token count {text!r}: not a number, expected an integer >= 1",
            row=row,
            field=name,
        ) from None
    return _check_count(number, path, row, name)


def _parse_timestamp_ns(text: str, path: str, row: int) -> int:
    """Return an Azure timestamp as ns since the Unix epoch (UTC if no zone)."""
    expected = (
        "expected YYYY-MM-DD HH:MM:SS[.fraction] such as "
        "2023-11-16 18:17:03.9799600 (UTC unless a Z or +HH:MM zone follows)"
    )
    match = _AZURE_TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise TraceFormatError(
            path, f"invalid timestamp {text!r}: {expected}", row=row, field="TIMESTAMP"
        )

    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as error:
        raise TraceFormatError(
            path, f"invalid timestamp {text!r}: {error}", row=row, field="TIMESTAMP"
        ) from None

    fraction = match.group(7) or ""
    fraction_ns = int(fraction.ljust(9, "0")) if fraction else 0
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return (seconds - _zone_offset_s(match.group(8))) * _NS_PER_S + fraction_ns


def _zone_offset_s(zone: str | None) -> int:
    """Return the UTC offset in seconds of `Z`, `+HH:MM` or `-HH:MM` (0 if none)."""
    if zone is None or zone == "Z":
        return 0
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return sign * (hours * 3600 + minutes * 60)


def _format_utc_ns(timestamp_ns: int) -> str:
    """Format ns since the Unix epoch as ISO-8601 UTC with 9 fraction digits."""
    seconds, fraction_ns = divmod(timestamp_ns, _NS_PER_S)
    moment = _EPOCH + timedelta(seconds=seconds)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction_ns:09d}Z"


def _as_truncated(error: TraceFormatError) -> TraceFormatError:
    """Return `error` reworded for a last line that has no newline."""
    location = TraceFormatError(error.path, "", row=error.row, field=error.field)
    message = str(error)[len(str(location)) :]
    return TraceFormatError(
        error.path,
        f"{message} (truncated last line: the file ends without a newline)",
        row=error.row,
        field=error.field,
    )


def _warn_blank_lines(path: str, blank_lines: int) -> None:
    if blank_lines:
        logger.warning("%s: skipped %d blank lines", path, blank_lines)


def _build_table(columns: _Columns, block_tokens: int, path: str) -> pa.Table:
    """Build the canonical table, stably sorted by arrival time."""
    count = len(columns.rows)
    table = pa.table(
        {
            "request_id": pa.array([str(index) for index in range(count)]),
            "arrival_ms": pa.array(columns.arrival_ms, type=pa.float64()),
            "input_tokens": pa.array(columns.input_tokens, type=pa.int64()),
            "output_tokens": pa.array(columns.output_tokens, type=pa.int64()),
            "prefix_block_hashes": pa.array(
                columns.prefix_block_hashes, type=pa.list_(pa.uint64())
            ),
            "block_tokens": pa.array([block_tokens] * count, type=pa.int32()),
            "session_id": pa.nulls(count, type=pa.string()),
        },
        schema=TRACE_SCHEMA,
    )

    arrival_ms = np.asarray(columns.arrival_ms, dtype=np.float64)
    backwards = np.flatnonzero(np.diff(arrival_ms) < 0)
    if backwards.size == 0:
        return table
    logger.warning(
        "%s: %d rows arrive earlier than the row before them (first at row %d); "
        "sorting by arrival time, ties keep file order",
        path,
        backwards.size,
        columns.rows[int(backwards[0]) + 1],
    )
    order = np.argsort(arrival_ms, kind="stable")
    return table.take(pa.array(order))


def _short_repr(value: object) -> str:
    """Return the repr of a source value, cut to 40 characters for messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
