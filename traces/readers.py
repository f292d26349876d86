"""Readers of source trace files, one record at a time, into a Staging.

Row numbers are 1-based: the line for JSON lines, the data row after the
header for CSV. Blank lines are skipped (and counted in a log message) and
do not change the numbering. A last line without a newline is accepted when
it parses. When it does not, the error reports a truncated last line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from traces.errors import TraceFormatError
from traces.fields import FieldError, RowProblem
from traces.staging import Staging

__all__ = ["CsvRecord", "ProgressCallback", "iter_csv_records", "iter_json_records"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]
"""Called with the number of source bytes read so far."""

_PROGRESS_EVERY_RECORDS = 16384
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CsvRecord:
    """One CSV data row: its number, values and whether it ends the file
    without a newline."""

    row: int
    values: list[str]
    truncated: bool


def iter_json_records(
    path: str,
    staging: Staging,
    progress: ProgressCallback | None = None,
    parse_float: Callable[[str], Any] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row, object) for each JSON line of `path`.

    Lines that are not valid UTF-8 or JSON objects go to `staging.reject`,
    which raises unless bad rows are skipped. `parse_float` is passed to
    `json.loads` (Decimal keeps every digit).
    """
    blank_lines = 0
    with _open_binary(path) as source:
        ends_with_newline = _ends_with_newline(source)
        row = 0
        for raw_line in source:
            row += 1
            if row == 1 and raw_line.startswith(_UTF8_BOM):
                raw_line = raw_line[len(_UTF8_BOM) :]
            if not raw_line.strip():
                blank_lines += 1
                continue
            truncated = not raw_line.endswith(b"\n") and not ends_with_newline
            record = _parse_json_line(raw_line, row, truncated, parse_float)
            if isinstance(record, FieldError):
                staging.reject(record, row)
                continue
            if truncated:
                _log_no_final_newline(path)
            yield row, record
            if progress is not None and row % _PROGRESS_EVERY_RECORDS == 0:
                progress(source.tell())
    _log_blank_lines(path, blank_lines)


def iter_csv_records(
    path: str,
    staging: Staging,
    progress: ProgressCallback | None = None,
) -> tuple[list[str], Iterator[CsvRecord]]:
    """Return the header of CSV file `path` and an iterator of its data rows.

    Raises TraceFormatError for an unreadable or empty file and a malformed
    header. Rows that the csv module cannot parse go to `staging.reject`.
    """
    source = _open_binary(path)
    ends_with_newline = _ends_with_newline(source)
    text = io.TextIOWrapper(
        source, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except csv.Error as error:
        text.close()
        raise TraceFormatError(path, f"malformed CSV header: {error}", row=0) from None
    if header is None or not any(name.strip() for name in header):
        text.close()
        raise TraceFormatError(path, "empty file: no header and no requests")
    names = [name.strip() for name in header]
    staging.empty_message = "no requests after the header"
    rows = _csv_rows(path, source, text, reader, staging, ends_with_newline, progress)
    return names, rows


def _csv_rows(
    path: str,
    source: BinaryIO,
    text: io.TextIOWrapper,
    reader: Any,
    staging: Staging,
    ends_with_newline: bool,
    progress: ProgressCallback | None,
) -> Iterator[CsvRecord]:
    blank_lines = 0
    pending: tuple[int, list[str]] | None = None
    with text:
        while True:
            try:
                values = next(reader, None)
            except csv.Error as error:
                row = reader.line_num - 1
                message = f"malformed CSV: {error}"
                staging.reject(
                    FieldError(None, RowProblem.MALFORMED_LINE, message), row
                )
                continue
            if values is None:
                break
            if not any(value.strip() for value in values):
                blank_lines += 1
                continue
            if pending is not None:
                yield CsvRecord(pending[0], pending[1], truncated=False)
            pending = (reader.line_num - 1, values)
            if progress is not None and pending[0] % _PROGRESS_EVERY_RECORDS == 0:
                progress(source.tell())
        if pending is not None:
            if not ends_with_newline:
                _log_no_final_newline(path)
            yield CsvRecord(pending[0], pending[1], truncated=not ends_with_newline)
    _log_blank_lines(path, blank_lines)


def column_positions(
    header: Sequence[str], required: Sequence[str], path: str
) -> dict[str, int]:
    """Map each required column to its index in `header`.

    Raises TraceFormatError naming the first missing column and the header.
    """
    positions: dict[str, int] = {}
    for column in required:
        if column not in header:
            raise TraceFormatError(
                path,
                f"missing column in the header {','.join(header)!r}; "
                f"expected {','.join(required)}",
                field=column,
            )
        positions[column] = header.index(column)
    return positions


def csv_value(record: CsvRecord, position: int, column: str, header_size: int) -> str:
    """Return the value of `column`, raising FieldError when it is absent."""
    values = record.values
    if position >= len(values) or not values[position].strip():
        raise FieldError(
            column,
            RowProblem.MISSING,
            f"missing value (fields in this row: {len(values)}, "
            f"in the header: {header_size})",
        )
    return values[position]


def check_field_count(record: CsvRecord, header_size: int) -> None:
    """Raise FieldError for a row with more fields than the header."""
    if len(record.values) > header_size:
        raise FieldError(
            None,
            RowProblem.FIELD_COUNT,
            f"{len(record.values)} fields but the header has {header_size}; "
            "quote values that contain commas",
        )


def as_truncated(error: FieldError) -> FieldError:
    """Return `error` reworded for a last line that has no newline."""
    return FieldError(
        error.field,
        RowProblem.TRUNCATED_LINE,
        f"{error.message} (truncated last line: the file ends without a newline)",
    )


def _open_binary(path: str) -> BinaryIO:
    try:
        return Path(path).open("rb")
    except FileNotFoundError:
        raise TraceFormatError(path, "file not found") from None
    except IsADirectoryError:
        raise TraceFormatError(path, "is a folder; give a trace file") from None
    except OSError as error:
        raise TraceFormatError(path, f"cannot read file ({error.strerror})") from None


def _ends_with_newline(source: BinaryIO) -> bool:
    """Return whether the file ends with a newline (True for an empty file)."""
    size = source.seek(0, io.SEEK_END)
    if size == 0:
        source.seek(0)
        return True
    source.seek(size - 1)
    last = source.read(1)
    source.seek(0)
    return last in (b"\n", b"\r")


def _parse_json_line(
    raw_line: bytes,
    row: int,
    truncated: bool,
    parse_float: Callable[[str], Any] | None,
) -> dict[str, Any] | FieldError:
    """Return the JSON object on one line, or the FieldError describing it."""
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as error:
        return FieldError(
            None,
            RowProblem.INVALID_UTF8,
            f"invalid UTF-8 at byte {error.start} of the line; save the file as UTF-8",
        )
    try:
        record = json.loads(line, parse_float=parse_float)
    except ValueError as error:
        # JSONDecodeError, or ValueError for an integer of more than 4300 digits.
        problem = str(error)
        if isinstance(error, json.JSONDecodeError):
            problem = f"{error.msg} at column {error.colno}"
        if truncated:
            return FieldError(
                None,
                RowProblem.TRUNCATED_LINE,
                "truncated last line: it has no newline and is not valid JSON "
                f"({problem}); remove it or complete it",
            )
        return FieldError(None, RowProblem.MALFORMED_LINE, f"malformed JSON: {problem}")

    if not isinstance(record, dict):
        return FieldError(
            None,
            RowProblem.MALFORMED_LINE,
            f"expected a JSON object, got {type(record).__name__}",
        )
    return record


def _log_blank_lines(path: str, blank_lines: int) -> None:
    if blank_lines:
        logger.warning("%s: skipped %d blank lines", path, blank_lines)


def _log_no_final_newline(path: str) -> None:
    logger.info("%s: the last line has no newline; it parsed as a complete row", path)
