"""Tests of the canonical trace schema: versions, column checks, writer."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traces.errors import TraceFormatError
from traces.schema import (
    ROW_GROUP_ROWS,
    TRACE_SCHEMA,
    TraceWriter,
    iter_trace_batches,
    read_trace,
    read_trace_metadata,
)


def _rows(count: int) -> pa.Table:
    return pa.table(
        {
            "request_id": [str(index) for index in range(count)],
            "arrival_ms": pa.array([float(index) for index in range(count)]),
            "input_tokens": pa.array([600] * count, type=pa.int64()),
            "output_tokens": pa.array([1] * count, type=pa.int64()),
            "prefix_block_hashes": pa.array(
                [[index, index + 1] for index in range(count)],
                type=pa.list_(pa.uint64()),
            ),
            "block_tokens": pa.array([512] * count, type=pa.int32()),
            "session_id": pa.array([None] * count, type=pa.string()),
        }
    )


def _write_raw(path: Path, table: pa.Table, version: str | None = "1") -> Path:
    metadata = (
        {} if version is None else {b"cmx.trace.schema_version": version.encode()}
    )
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def test_writer_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "trace.parquet"

    with TraceWriter(path, {"source_format": "test"}) as writer:
        for start in range(0, ROW_GROUP_ROWS + 10, 1000):
            writer.write(_rows(ROW_GROUP_ROWS + 10).slice(start, 1000))

    parquet = pq.ParquetFile(path)
    assert writer.rows_written == ROW_GROUP_ROWS + 10
    assert parquet.metadata.num_row_groups == 2
    assert parquet.metadata.row_group(0).num_rows == ROW_GROUP_ROWS
    assert read_trace_metadata(path) == {"schema_version": "1", "source_format": "test"}


def test_batches_stream_in_order(tmp_path: Path) -> None:
    path = tmp_path / "trace.parquet"
    with TraceWriter(path) as writer:
        writer.write(_rows(25))

    batches = list(iter_trace_batches(path, batch_rows=10))

    assert [batch.num_rows for batch in batches] == [10, 10, 5]
    assert all(batch.schema.equals(TRACE_SCHEMA) for batch in batches)
    assert read_trace(path).column("request_id").to_pylist()[-1] == "24"


def test_newer_version_rejected(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "v9.parquet", _rows(1), version="9")

    with pytest.raises(TraceFormatError) as raised:
        read_trace(path)

    assert str(raised.value) == (
        f"{path}: trace schema version 9 is newer than this cmx reads (1 to 1); "
        "upgrade cmx to read it"
    )


@pytest.mark.parametrize("version", ["0", "one", ""])
def test_invalid_version_rejected(tmp_path: Path, version: str) -> None:
    path = _write_raw(tmp_path / "bad.parquet", _rows(1), version=version)

    with pytest.raises(TraceFormatError) as raised:
        read_trace_metadata(path)

    assert f"invalid trace schema version {version!r}" in str(raised.value)


def test_missing_version_rejected(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "plain.parquet", _rows(1), version=None)

    with pytest.raises(TraceFormatError) as raised:
        read_trace(path)

    assert "no cmx.trace.schema_version" in str(raised.value)


def test_missing_column_rejected(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "cols.parquet", _rows(1).drop(["block_tokens"]))

    with pytest.raises(TraceFormatError) as raised:
        read_trace(path)

    assert str(raised.value) == f"{path}: missing columns: block_tokens"


def test_wrong_column_type_rejected(tmp_path: Path) -> None:
    table = _rows(1).set_column(2, "input_tokens", pa.array([600.0], type=pa.float64()))
    path = _write_raw(tmp_path / "types.parquet", table)

    with pytest.raises(TraceFormatError) as raised:
        read_trace(path)

    assert raised.value.field == "input_tokens"
    assert "column has type double; expected int64" in str(raised.value)


def test_large_types_accepted(tmp_path: Path) -> None:
    table = _rows(2)
    table = table.set_column(0, "request_id", table.column(0).cast(pa.large_string()))
    hashes = table.column("prefix_block_hashes").cast(pa.large_list(pa.uint64()))
    table = table.set_column(4, "prefix_block_hashes", hashes)
    path = _write_raw(tmp_path / "large.parquet", table)

    read = read_trace(path)

    assert read.schema.equals(TRACE_SCHEMA)
    assert read.column("prefix_block_hashes").to_pylist() == [[0, 1], [1, 2]]


def test_null_in_required_column(tmp_path: Path) -> None:
    table = _rows(3).set_column(
        3, "output_tokens", pa.array([1, None, 1], type=pa.int64())
    )
    path = _write_raw(tmp_path / "nulls.parquet", table)

    with pytest.raises(TraceFormatError) as raised:
        read_trace(path)

    assert raised.value.row == 2
    assert raised.value.field == "output_tokens"


def test_null_hash_rejected(tmp_path: Path) -> None:
    hashes = pa.array([[1], [2, None]], type=pa.list_(pa.uint64()))
    table = _rows(2).set_column(4, "prefix_block_hashes", hashes)
    path = _write_raw(tmp_path / "nullhash.parquet", table)

    with pytest.raises(TraceFormatError) as raised:
        read_trace(path)

    assert raised.value.row == 2
    assert "null hash in the list" in str(raised.value)
