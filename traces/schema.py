"""Canonical trace schema: one row per request, stored as Parquet.

Units are part of the column names. Arrival times are milliseconds from the
trace start, kept as float64 so that sub-millisecond source times survive.

| column                | type           | meaning                                   |
| --------------------- | -------------- | ----------------------------------------- |
| request_id            | string         | unique within the trace                   |
| arrival_ms            | float64        | arrival time, ms from trace start (>= 0)  |
| input_tokens          | int64          | prompt length in tokens (>= 1)            |
| output_tokens         | int64          | output length in tokens (>= 1)            |
| prefix_block_hashes   | list<uint64>   | hashes of the prompt's leading blocks     |
| block_tokens          | int32          | tokens per hashed block; 0 when no hashes |
| session_id            | string, null   | conversation the request belongs to       |

The file metadata carries `cmx.trace.schema_version` and, where known, the
source format, source file and absolute trace start.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from traces.errors import TraceFormatError

__all__ = [
    "SCHEMA_VERSION",
    "TRACE_SCHEMA",
    "iter_trace_batches",
    "read_trace",
    "read_trace_metadata",
    "write_trace",
]

SCHEMA_VERSION = "1"
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


def write_trace(
    table: pa.Table, path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write `table` as a canonical trace file at `path`.

    `table` is cast to TRACE_SCHEMA (raising pyarrow's error when it cannot
    be); `metadata` keys are stored under the `cmx.trace.` prefix.
    """
    stored = {_VERSION_KEY: SCHEMA_VERSION.encode()}
    for key, value in (metadata or {}).items():
        stored[(_METADATA_PREFIX + key).encode()] = value.encode()
    table = table.select(TRACE_SCHEMA.names).cast(TRACE_SCHEMA)
    table = table.replace_schema_metadata(stored)
    pq.write_table(table, str(path), row_group_size=65536, compression="zstd")


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
    """Read a whole trace file, checked against TRACE_SCHEMA."""
    _open_schema(path)
    return pq.read_table(str(path), columns=TRACE_SCHEMA.names).cast(TRACE_SCHEMA)


def iter_trace_batches(
    path: str | Path, batch_rows: int = 65536
) -> Iterator[pa.RecordBatch]:
    """Yield a trace file's rows in batches, so large traces stream."""
    _open_schema(path)
    parquet_file = pq.ParquetFile(str(path))
    for batch in parquet_file.iter_batches(
        batch_size=batch_rows, columns=TRACE_SCHEMA.names
    ):
        yield pa.Table.from_batches([batch]).cast(TRACE_SCHEMA).to_batches()[0]


def _open_schema(path: str | Path) -> pa.Schema:
    """Return the Arrow schema of `path` after checking version and columns."""
    name = str(path)
    if not Path(name).is_file():
        raise TraceFormatError(name, "trace file not found")
    try:
        schema = pq.read_schema(name)
    except (pa.ArrowInvalid, OSError) as error:
        raise TraceFormatError(name, f"not a readable Parquet file ({error})") from None

    version = (schema.metadata or {}).get(_VERSION_KEY)
    if version is None:
        raise TraceFormatError(
            name,
            "no cmx.trace.schema_version in the file metadata; "
            "convert the source with 'cmx trace import'",
        )
    if version.decode() != SCHEMA_VERSION:
        raise TraceFormatError(
            name,
            f"trace schema version {version.decode()} is not supported "
            f"(this version reads {SCHEMA_VERSION})",
        )

    missing = [field for field in TRACE_SCHEMA.names if field not in schema.names]
    if missing:
        raise TraceFormatError(name, f"missing columns: {', '.join(missing)}")
    return schema
