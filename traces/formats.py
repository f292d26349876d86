"""Source formats: how each one's records become canonical rows.

- Mooncake JSON lines: `timestamp` (ms from the trace start), `input_length`,
  `output_length` and `hash_ids` (one id per 512-token block of the prompt,
  the last block possibly partial). Times are kept as they are.
- Azure LLM inference CSV: `TIMESTAMP`, `ContextTokens`, `GeneratedTokens`;
  other columns are ignored. The 2023 files write times such as
  `2023-11-16 18:17:03.9799600` without a zone; the 2024 files write
  `2024-05-10 00:00:00.009930+00:00`. Times without a zone follow the time
  zone rule (UTC by default). Arrivals are rebased to the earliest time.
- BurstGPT CSV: `Timestamp` (seconds from 0:00:00 on the trace's first day,
  kept as they are), `Request tokens`, `Response tokens` and, when present,
  `Total tokens`, which must equal their sum. `Model` and `Log Type` are
  not stored. BurstGPT records a failed request with 0 response tokens;
  such rows are invalid, so they are rejected or, with skip_bad_rows,
  skipped and counted.
- Generic CSV or JSON lines with a ColumnMap naming the source column of
  each canonical field, and a TimeUnit for the arrival column.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from traces.errors import TraceError
from traces.fields import (
    FieldError,
    RowProblem,
    TimeZoneRule,
    check_count,
    check_hashes,
    check_text,
    check_time,
    parse_count_text,
    parse_datetime_ns,
    parse_hashes_text,
    parse_number_text,
)
from traces.readers import (
    CsvRecord,
    ProgressCallback,
    as_truncated,
    check_field_count,
    column_positions,
    csv_value,
    iter_csv_records,
    iter_json_records,
)
from traces.staging import Staging

__all__ = [
    "AZURE_COLUMNS",
    "BURSTGPT_COLUMNS",
    "MOONCAKE_BLOCK_TOKENS",
    "ColumnMap",
    "ImportOptions",
    "SourceFormat",
    "TimeUnit",
    "read_source",
    "uses_absolute_time",
]

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per `hash_ids` block in Mooncake traces."""

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
"""Columns the Azure importer reads. Other columns are ignored."""

BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
"""Columns the BurstGPT importer requires. `Total tokens` is checked when
present; other columns are ignored."""

_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


class SourceFormat(enum.Enum):
    """Source formats that `cmx trace import` reads."""

    MOONCAKE = "mooncake"
    AZURE = "azure"
    BURSTGPT = "burstgpt"
    CSV = "csv"
    JSONL = "jsonl"


class TimeUnit(enum.Enum):
    """Meaning of a generic source's arrival column.

    `s`, `ms`, `us` and `ns` are numbers from the trace start, kept as they
    are. `unix_*` are numbers since the Unix epoch (UTC) and `iso` is an
    ISO-8601 datetime. Both are rebased to the earliest arrival, whose
    absolute time is stored as `trace_start`.
    """

    S = "s"
    MS = "ms"
    US = "us"
    NS = "ns"
    UNIX_S = "unix_s"
    UNIX_MS = "unix_ms"
    UNIX_US = "unix_us"
    UNIX_NS = "unix_ns"
    ISO = "iso"

    @property
    def absolute(self) -> bool:
        """Whether the values are absolute times, rebased on import."""
        return self.value.startswith("unix_") or self is TimeUnit.ISO

    @property
    def ns_per_unit(self) -> int:
        """Nanoseconds per unit of a numeric value (1 for `iso`)."""
        base = self.value.removeprefix("unix_")
        return {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}.get(base, 1)


@dataclass(frozen=True)
class ColumnMap:
    """Source column (CSV) or key (JSON) of each canonical field.

    The defaults are the canonical names, so a trace exported with
    `cmx trace export --format csv` imports with no mapping. Optional
    fields whose column is absent from the source are left empty:
    request ids become row indexes, hashes empty and sessions null.
    `default_block_tokens` applies when no block_tokens column exists.
    """

    arrival: str = "arrival_ms"
    input_tokens: str = "input_tokens"
    output_tokens: str = "output_tokens"
    request_id: str = "request_id"
    session_id: str = "session_id"
    prefix_block_hashes: str = "prefix_block_hashes"
    block_tokens: str = "block_tokens"
    time_unit: TimeUnit = TimeUnit.MS
    default_block_tokens: int = 0

    @classmethod
    def from_pairs(cls, pairs: Mapping[str, str], **options: Any) -> ColumnMap:
        """Build a map from {canonical field: source column}.

        Raises TraceError for an unknown canonical field.
        """
        fields = [
            name
            for name in cls.__dataclass_fields__
            if name not in ("time_unit", "default_block_tokens")
        ]
        for name in pairs:
            if name not in fields:
                raise TraceError(
                    f"invalid column map field {name!r}: expected one of "
                    f"{', '.join(fields)}"
                )
        changes: dict[str, Any] = dict(pairs)
        return dataclasses.replace(cls(**options), **changes)

    def to_pairs(self) -> dict[str, str]:
        """Return {canonical field: source column} for the metadata."""
        return {
            "arrival": self.arrival,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "request_id": self.request_id,
            "session_id": self.session_id,
            "prefix_block_hashes": self.prefix_block_hashes,
            "block_tokens": self.block_tokens,
        }


@dataclass(frozen=True)
class ImportOptions:
    """Options of an import.

    `strict`: reject a row whose time is earlier than the row before it
    (default: sort the rows with a logged warning). `skip_bad_rows`: skip
    and count invalid rows instead of stopping at the first. `time_zone`:
    the rule for source datetimes without a zone. `columns`: the map of a
    generic CSV or JSON lines source.
    """

    strict: bool = False
    skip_bad_rows: bool = False
    time_zone: str = "UTC"
    columns: ColumnMap = field(default_factory=ColumnMap)


def uses_absolute_time(source_format: SourceFormat, options: ImportOptions) -> bool:
    """Return whether `source_format` has absolute times to rebase."""
    if source_format is SourceFormat.AZURE:
        return True
    if source_format in (SourceFormat.CSV, SourceFormat.JSONL):
        return options.columns.time_unit.absolute
    return False


def read_source(
    source_format: SourceFormat,
    path: str,
    staging: Staging,
    options: ImportOptions,
    progress: ProgressCallback | None,
) -> None:
    """Read every record of `path` into `staging`."""
    readers: dict[SourceFormat, Callable[..., None]] = {
        SourceFormat.MOONCAKE: _read_mooncake,
        SourceFormat.AZURE: _read_azure,
        SourceFormat.BURSTGPT: _read_burstgpt,
        SourceFormat.CSV: _read_generic_csv,
        SourceFormat.JSONL: _read_generic_jsonl,
    }
    readers[source_format](path, staging, options, progress)


def _read_mooncake(
    path: str,
    staging: Staging,
    options: ImportOptions,
    progress: ProgressCallback | None,
) -> None:
    for row, record in iter_json_records(path, staging, progress):
        try:
            _add_mooncake(record, row, staging)
        except FieldError as error:
            staging.reject(error, row)


def _add_mooncake(record: dict[str, Any], row: int, staging: Staging) -> None:
    for name in _MOONCAKE_FIELDS:
        if name not in record:
            raise FieldError(
                name,
                RowProblem.MISSING,
                "missing field; each line needs " + ", ".join(_MOONCAKE_FIELDS),
            )
    timestamp = check_time(record["timestamp"], "timestamp", "milliseconds", 10**6)
    arrival_ms = float(timestamp)
    input_tokens = check_count(record["input_length"], "input_length")
    output_tokens = check_count(record["output_length"], "output_length")
    hashes = check_hashes(
        record["hash_ids"],
        input_tokens,
        MOONCAKE_BLOCK_TOKENS,
        "hash_ids",
        "input_length",
    )
    staging.add(
        row, arrival_ms, input_tokens, output_tokens, hashes, MOONCAKE_BLOCK_TOKENS
    )


def _read_azure(
    path: str,
    staging: Staging,
    options: ImportOptions,
    progress: ProgressCallback | None,
) -> None:
    rule = TimeZoneRule(options.time_zone)
    header, records = iter_csv_records(path, staging, progress)
    positions = column_positions(header, AZURE_COLUMNS, path)
    for record in records:
        try:
            check_field_count(record, len(header))
            values = {
                column: csv_value(record, position, column, len(header))
                for column, position in positions.items()
            }
            timestamp_ns = parse_datetime_ns(values["TIMESTAMP"], rule, "TIMESTAMP")
            input_tokens = parse_count_text(values["ContextTokens"], "ContextTokens")
            output_tokens = parse_count_text(
                values["GeneratedTokens"], "GeneratedTokens"
            )
        except FieldError as error:
            staging.reject(
                as_truncated(error) if record.truncated else error, record.row
            )
            continue
        staging.add(record.row, timestamp_ns, input_tokens, output_tokens, [], 0)


def _read_burstgpt(
    path: str,
    staging: Staging,
    options: ImportOptions,
    progress: ProgressCallback | None,
) -> None:
    header, records = iter_csv_records(path, staging, progress)
    positions = column_positions(header, BURSTGPT_COLUMNS, path)
    total_position = header.index("Total tokens") if "Total tokens" in header else None
    for record in records:
        try:
            row_values = _burstgpt_values(record, header, positions, total_position)
        except FieldError as error:
            staging.reject(
                as_truncated(error) if record.truncated else error, record.row
            )
            continue
        arrival_ms, input_tokens, output_tokens = row_values
        staging.add(record.row, arrival_ms, input_tokens, output_tokens, [], 0)


def _burstgpt_values(
    record: CsvRecord,
    header: list[str],
    positions: dict[str, int],
    total_position: int | None,
) -> tuple[float, int, int]:
    check_field_count(record, len(header))
    values = {
        column: csv_value(record, position, column, len(header))
        for column, position in positions.items()
    }
    seconds_text = parse_number_text(values["Timestamp"], "Timestamp")
    seconds = check_time(seconds_text, "Timestamp", "seconds", 10**9)
    arrival_ms = float(Decimal(seconds) * 1000)
    input_tokens = parse_count_text(values["Request tokens"], "Request tokens")
    response = values["Response tokens"]
    if response.strip() in ("0", "0.0"):
        raise FieldError(
            "Response tokens",
            RowProblem.FAILED_REQUEST,
            "0 response tokens, which BurstGPT records for a failed request; "
            "pass --skip-bad-rows to skip failed requests",
        )
    output_tokens = parse_count_text(response, "Response tokens")
    if total_position is not None:
        total_text = csv_value(record, total_position, "Total tokens", len(header))
        total = parse_number_text(total_text, "Total tokens")
        if total != input_tokens + output_tokens:
            raise FieldError(
                "Total tokens",
                RowProblem.TOTAL_MISMATCH,
                f"Total tokens {total_text.strip()} is not Request tokens plus "
                f"Response tokens ({input_tokens} + {output_tokens})",
            )
    return arrival_ms, input_tokens, output_tokens


def _read_generic_csv(
    path: str,
    staging: Staging,
    options: ImportOptions,
    progress: ProgressCallback | None,
) -> None:
    columns = options.columns
    rule = TimeZoneRule(options.time_zone)
    header, records = iter_csv_records(path, staging, progress)
    required = (columns.arrival, columns.input_tokens, columns.output_tokens)
    positions = column_positions(header, required, path)
    optional = {
        name: header.index(name)
        for name in (
            columns.request_id,
            columns.session_id,
            columns.prefix_block_hashes,
            columns.block_tokens,
        )
        if name in header
    }
    for record in records:
        try:
            check_field_count(record, len(header))
            found = {
                name: csv_value(record, position, name, len(header))
                for name, position in positions.items()
            }
            for name, position in optional.items():
                text = record.values[position] if position < len(record.values) else ""
                found[name] = text
            _add_generic(found, record.row, staging, columns, rule, from_text=True)
        except FieldError as error:
            staging.reject(
                as_truncated(error) if record.truncated else error, record.row
            )


def _read_generic_jsonl(
    path: str,
    staging: Staging,
    options: ImportOptions,
    progress: ProgressCallback | None,
) -> None:
    columns = options.columns
    rule = TimeZoneRule(options.time_zone)
    for row, record in iter_json_records(path, staging, progress, parse_float=Decimal):
        try:
            for name in (columns.arrival, columns.input_tokens, columns.output_tokens):
                if name not in record:
                    raise FieldError(name, RowProblem.MISSING, "missing field")
            _add_generic(record, row, staging, columns, rule, from_text=False)
        except FieldError as error:
            staging.reject(error, row)


def _add_generic(
    found: Mapping[str, Any],
    row: int,
    staging: Staging,
    columns: ColumnMap,
    rule: TimeZoneRule,
    from_text: bool,
) -> None:
    """Check one generic record and add it to `staging`."""
    time = _generic_time(found[columns.arrival], columns, rule, from_text)
    input_tokens = _count(found[columns.input_tokens], columns.input_tokens, from_text)
    output_tokens = _count(
        found[columns.output_tokens], columns.output_tokens, from_text
    )

    block_tokens = columns.default_block_tokens
    block_value = found.get(columns.block_tokens)
    if block_value is not None and (not from_text or str(block_value).strip()):
        block_tokens = _block_tokens(block_value, columns.block_tokens, from_text)
    hashes: list[int] = []
    hash_value = found.get(columns.prefix_block_hashes)
    if hash_value is not None:
        field_name = columns.prefix_block_hashes
        check = parse_hashes_text if from_text else check_hashes
        hashes = check(
            hash_value, input_tokens, block_tokens, field_name, columns.input_tokens
        )
    if hashes and block_tokens == 0:
        raise FieldError(
            columns.block_tokens,
            RowProblem.MISSING,
            "hashes need a block size: map a block_tokens column or pass "
            "--block-tokens",
        )

    request_id = _optional_text(found.get(columns.request_id), columns.request_id)
    session_id = _optional_text(found.get(columns.session_id), columns.session_id)
    staging.add(
        row,
        time,
        input_tokens,
        output_tokens,
        hashes,
        block_tokens,
        request_id=request_id,
        session_id=session_id,
    )


def _generic_time(
    value: Any, columns: ColumnMap, rule: TimeZoneRule, from_text: bool
) -> float | int:
    """Return ms from the trace start (relative units) or ns since the epoch."""
    unit = columns.time_unit
    if unit is TimeUnit.ISO:
        if not isinstance(value, str):
            raise FieldError(
                columns.arrival,
                RowProblem.INVALID_TIME,
                f"invalid timestamp {value!r}: expected an ISO-8601 string",
            )
        return parse_datetime_ns(value, rule, columns.arrival)
    if from_text:
        value = parse_number_text(value, columns.arrival)
    number = check_time(value, columns.arrival, unit.value, unit.ns_per_unit)
    exact = Decimal(number) if not isinstance(number, float) else Decimal(repr(number))
    if unit.absolute:
        nanoseconds = (exact * unit.ns_per_unit).to_integral_value(ROUND_HALF_EVEN)
        return int(nanoseconds)
    return float(exact * unit.ns_per_unit / 1_000_000)


def _count(value: Any, name: str, from_text: bool) -> int:
    if from_text:
        return parse_count_text(value, name)
    return check_count(value, name)


def _block_tokens(value: Any, name: str, from_text: bool) -> int:
    """Return a block size in [0, 2**31); 0 means the row has no hashes."""
    if from_text:
        text = value.strip()
        value = 0 if text in ("0", "0.0") else parse_count_text(text, name)
    elif value == 0 and not isinstance(value, bool):
        value = 0
    else:
        value = check_count(value, name)
    if value > 2**31 - 1:
        raise FieldError(
            name, RowProblem.OUT_OF_RANGE, f"block size {value} is above 2**31 - 1"
        )
    return int(value)


def _optional_text(value: Any, name: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return check_text(value, name)
