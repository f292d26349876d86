"""Canonical trace schema: one row per request, stored as Parquet.

Units are part of the column names. Arrival times are milliseconds from the
trace start, kept as float64 so that sub-millisecond source times survive.
A float64 represents every whole nanosecond exactly up to 2**53 ns (about 104 days)
after the trace start, and rounds to 2 ns up to about 208 days.

| column                | type           | meaning                                   |
| --------------------- | -------------- | ----------------------------------------- |
| request_id            | string         | unique within the trace                   |
| arrival_ms            | float64        | arrival time, ms from trace start (>= 0)  |
| input_tokens          | int64          | prompt length in tokens (>= 1)            |
| output_tokens         | int64          | output length in tokens (>= 1)            |
| prefix_block_hashes   | list<uint64>   | hashes of the prompt's leading blocks     |
| block_tokens          | int32          | tokens per hashed block; 0 when no hashes |
| session_id            | string, null   | conversation the request belongs to       |

Rows are sorted by `arrival_ms`; rows with equal times keep their source
order. Block i of `prefix_block_hashes` covers prompt tokens
[i * block_tokens, min((i + 1) * block_tokens, input_tokens)), so a list has
at most ceil(input_tokens / block_tokens) hashes and its last block may be
partial.

The file metadata contains `cmx.trace.schema_version` and, where known,
other `cmx.trace.*` keys. They are `source_format`, `source_file`,
`trace_start` (the absolute time of arrival_ms 0, ISO-8601 UTC with
nanoseconds), `time_zone` (the rule applied to source times without a
zone), `skipped_rows` and `skipped_reasons` (rows an import skipped and
why), `generator_params`, `generator_seed` and `transforms` (a JSON list of
the transforms applied).

Versions: this code writes version 1 and reads every version from 1 to
SCHEMA_VERSION. A file of a newer version is rejected with a message that
names both versions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.errors import TraceFormatError

__all__ = [
    "ROW_GROUP_ROWS",
    "SCHEMA_VERSION",
    "TRACE_SCHEMA",
    "TraceWriter",
    "iter_trace_batches",
    "open_parquet_stream",
    "read_trace",
    "read_trace_metadata",
    "write_trace",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
ROW_GROUP_ROWS = 65536
"""Rows per Parquet row group, and the default batch size of readers."""

_VERSION_KEY = b"cmx.trace.schema_version"
_METADATA_PREFIX = "cmx.trace."

TRACE_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_ms", pa.float64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("prefix_block_hashes", pa.list_(pa.uint64()), nullable=False),
        pa.field("block_tokens", pa.int32(), nullable=False),
        pa.field("session_id", pa.string(), nullable=True),
    ]
)

# Types accepted on reading besides the canonical ones, because other writers
# (DuckDB, Polars) may store the same values with 64-bit offsets.
_COMPATIBLE_TYPES: dict[str, tuple[pa.DataType, ...]] = {
    "request_id": (pa.large_string(),),
    "prefix_block_hashes": (pa.large_list(pa.uint64()),),
    "session_id": (pa.large_string(),),
}


class TraceWriter:
    """Writer of a canonical trace file, batch by batch, in bounded memory.

    Rows are buffered until a row group of ROW_GROUP_ROWS rows is full, so
    the same rows give the same file whatever the batch sizes. `metadata`
    keys are stored under the `cmx.trace.` prefix. The file is complete only
    after `close()` (or the end of a `with` block). The writer does not check
    that arrivals are sorted; callers write them in order.
    """

    def __init__(
        self, path: str | Path, metadata: Mapping[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.rows_written = 0
        schema = TRACE_SCHEMA.with_metadata(_stored_metadata(metadata))
        self._writer = pq.ParquetWriter(str(self.path), schema, compression="zstd")
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def write(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Append `rows`, cast to TRACE_SCHEMA (pyarrow raises when it cannot)."""
        table = rows
        if isinstance(rows, pa.RecordBatch):
            table = pa.Table.from_batches([rows])
        table = table.select(TRACE_SCHEMA.names).cast(TRACE_SCHEMA)
        for batch in table.to_batches():
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def close(self) -> None:
        """Write the buffered rows and the file footer."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _flush(self, rows: int) -> None:
        # Chunk boundaries inside a row group change the encoded pages, so a
        # row group is combined into one chunk before it is written.
        table = pa.Table.from_batches(self._pending, schema=TRACE_SCHEMA)
        group = table.slice(0, rows).combine_chunks()
        self._writer.write_table(group, row_group_size=rows)
        rest = table.slice(rows)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self.rows_written += rows


def write_trace(
    table: pa.Table, path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write `table` as a canonical trace file at `path`.

    `table` is cast to TRACE_SCHEMA (raising pyarrow's error when it cannot
    be); `metadata` keys are stored under the `cmx.trace.` prefix.
    """
    with TraceWriter(path, metadata) as writer:
        writer.write(table)


def read_trace_metadata(path: str | Path) -> dict[str, str]:
    """Return the `cmx.trace.*` metadata of a trace file, without the prefix.

    Raises TraceFormatError when the file is not a readable canonical trace.
    """
    schema = _open_schema(path)
    stored = schema.metadata or {}
    return {
        key.decode()[len(_METADATA_PREFIX) :]: value.decode()
        for key, value in stored.items()
        if key.decode(errors="replace").startswith(_METADATA_PREFIX)
    }


def read_trace(path: str | Path) -> pa.Table:
    """Read a whole trace file, checked against TRACE_SCHEMA.

    Raises TraceFormatError for a file that is not a canonical trace or has
    a null in a required column.
    """
    batches = list(iter_trace_batches(path))
    return pa.Table.from_batches(batches, schema=TRACE_SCHEMA)


def iter_trace_batches(
    path: str | Path, batch_rows: int = ROW_GROUP_ROWS
) -> Iterator[pa.RecordBatch]:
    """Yield a trace file's rows in batches of TRACE_SCHEMA, so large traces stream.

    Raises TraceFormatError for a file that is not a canonical trace or has
    a null in a required column (naming the 1-based row).
    """
    name = str(path)
    _open_schema(name)
    parquet_file = open_parquet_stream(name)
    rows_before = 0
    for batch in parquet_file.iter_batches(
        batch_size=batch_rows, columns=TRACE_SCHEMA.names
    ):
        _check_no_nulls(batch, name, rows_before)
        rows_before += batch.num_rows
        yield _cast_batch(batch)


def open_parquet_stream(path: str | Path) -> pq.ParquetFile:
    """Open a Parquet file for reading batch by batch in bounded memory.

    pyarrow's default pre-buffering made the resident memory of a full scan
    grow with the number of row groups (measured with pyarrow 26: from 170
    MB to 270 MB over 16 row groups of 65,536 rows, flat without it).
    """
    return pq.ParquetFile(str(path), pre_buffer=False)


def _cast_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Return `batch` cast to TRACE_SCHEMA, as one record batch."""
    table = pa.Table.from_batches([batch]).cast(TRACE_SCHEMA).combine_chunks()
    batches = table.to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=TRACE_SCHEMA)
    return batches[0]


def _stored_metadata(metadata: Mapping[str, str] | None) -> dict[bytes, bytes]:
    stored = {_VERSION_KEY: SCHEMA_VERSION.encode()}
    for key, value in (metadata or {}).items():
        stored[(_METADATA_PREFIX + key).encode()] = value.encode()
    return stored


def _check_no_nulls(batch: pa.RecordBatch, path: str, rows_before: int) -> None:
    """Raise TraceFormatError at the first null of a required column."""
    for field in TRACE_SCHEMA:
        column = batch.column(field.name)
        if field.nullable or column.null_count == 0:
            continue
        first_null = column.is_null().index(True).as_py()
        raise TraceFormatError(
            path,
            "null value in a required column; re-import the source",
            row=rows_before + first_null + 1,
            field=field.name,
        )

    hashes = batch.column("prefix_block_hashes")
    flat = pc.list_flatten(hashes)
    if flat.null_count:
        position = flat.is_null().index(True).as_py()
        parent = pc.list_parent_indices(hashes)[position].as_py()
        raise TraceFormatError(
            path,
            "null hash in the list; re-import the source",
            row=rows_before + parent + 1,
            field="prefix_block_hashes",
        )


def _open_schema(path: str | Path) -> pa.Schema:
    """Return the Arrow schema of `path` after checking version and columns."""
    name = str(path)
    if not Path(name).is_file():
        raise TraceFormatError(name, "trace file not found")
    try:
        schema = pq.read_schema(name)
    except (pa.ArrowInvalid, OSError) as error:
        raise TraceFormatError(name, f"not a readable Parquet file ({error})") from None

    _check_version(schema, name)
    for field in TRACE_SCHEMA:
        _check_column(schema, field, name)
    return schema


def _check_version(schema: pa.Schema, path: str) -> None:
    version = (schema.metadata or {}).get(_VERSION_KEY)
    if version is None:
        raise TraceFormatError(
            path,
            "no cmx.trace.schema_version in the file metadata; "
            "convert the source with 'cmx trace import'",
        )
    text = version.decode(errors="replace")
    if not text.isdigit() or int(text) < 1:
        raise TraceFormatError(
            path,
            f"invalid trace schema version {text!r}: expected an integer from 1 "
            f"to {SCHEMA_VERSION}",
        )
    if int(text) > int(SCHEMA_VERSION):
        raise TraceFormatError(
            path,
            f"trace schema version {text} is newer than this cmx reads "
            f"(1 to {SCHEMA_VERSION}); upgrade cmx to read it",
        )


def _check_column(schema: pa.Schema, field: pa.Field, path: str) -> None:
    if field.name not in schema.names:
        missing = [name for name in TRACE_SCHEMA.names if name not in schema.names]
        raise TraceFormatError(path, f"missing columns: {', '.join(missing)}")
    found = schema.field(field.name).type
    accepted = (field.type, *_COMPATIBLE_TYPES.get(field.name, ()))
    if not any(_same_type(found, candidate) for candidate in accepted):
        raise TraceFormatError(
            path,
            f"column has type {found}; expected {field.type}",
            field=field.name,
        )


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    """Compare types, ignoring the name and nullability of list items."""
    if pa.types.is_list(found) or pa.types.is_large_list(found):
        same_kind = pa.types.is_large_list(found) == pa.types.is_large_list(expected)
        return same_kind and bool(found.value_type.equals(expected.value_type))
    return bool(found.equals(expected))
