"""Staging of imported rows: validation results in, a canonical trace out.

Readers hand every source record to a Staging, either as a valid row (`add`)
or as an invalid one (`reject`). Valid rows are kept in chunks, in memory or
spilled to a Parquet file in a work folder, so that a file of any size is
imported in bounded memory. `finish` then orders the rows by time, turns
absolute times into ms from the trace start, drops duplicate ids when asked
and hands the canonical batches to a callback.

Sorting and the duplicate-id check run in DuckDB, which spills to the work
folder when the rows do not fit in its memory limit. Rows already in time
order (the usual case) are streamed without sorting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.duck import connect, quote_literal
from traces.errors import TraceFormatError
from traces.fields import MAX_INT64, FieldError, RowProblem, format_utc_ns
from traces.schema import ROW_GROUP_ROWS, TRACE_SCHEMA, open_parquet_stream

__all__ = ["ImportReport", "SkippedRows", "Staging"]

logger = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class SkippedRows:
    """Rows skipped for one kind of problem in one field."""

    field: str | None
    problem: RowProblem
    rows: int
    first_row: int
    first_message: str

    def describe(self) -> str:
        """Return one line such as `3 rows: not a number in 'input_length'
        (first at row 5: ...)`."""
        where = f" in '{self.field}'" if self.field else ""
        noun = "row" if self.rows == 1 else "rows"
        return (
            f"{self.rows} {noun}: {self.problem.value}{where} "
            f"(first at row {self.first_row}: {self.first_message})"
        )


@dataclass(frozen=True)
class ImportReport:
    """Counts of the rows an import read, wrote, reordered and skipped.

    `records` counts the source's data records (blank lines excluded).
    `reordered_rows` counts rows whose time is earlier than a row before them
    in the source, which were moved into time order.
    """

    source: str
    records: int
    rows_written: int
    reordered_rows: int
    skipped: tuple[SkippedRows, ...]

    @property
    def skipped_rows(self) -> int:
        """Number of records skipped, over all reasons."""
        return sum(entry.rows for entry in self.skipped)


@dataclass
class _Chunk:
    source_row: list[int]
    time: list[float] | list[int]
    request_id: list[str]
    input_tokens: list[int]
    output_tokens: list[int]
    prefix_block_hashes: list[list[int]]
    block_tokens: list[int]
    session_id: list[str | None]


def _new_chunk() -> _Chunk:
    return _Chunk([], [], [], [], [], [], [], [])


class Staging:
    """Collector of one import's rows, with its checks across rows.

    `absolute_time`: times are int ns since the Unix epoch, rebased to the
    earliest row. Otherwise they are float ms from the trace start, kept as
    they are. `ids_from_source`: request ids come from the source and are
    checked for duplicates; otherwise each row's id is the 0-based index of
    its record. `work_dir`: folder for the spill file and DuckDB's temporary
    files; None keeps everything in memory.
    """

    def __init__(
        self,
        path: str,
        *,
        absolute_time: bool,
        ids_from_source: bool,
        strict: bool,
        skip_bad_rows: bool,
        work_dir: Path | None,
    ) -> None:
        self.path = path
        self.records = 0
        self.empty_message = "empty file: no requests found"
        """Error message for a source without records; readers may change it."""
        self._absolute_time = absolute_time
        self._ids_from_source = ids_from_source
        self._strict = strict
        self._skip_bad_rows = skip_bad_rows
        self._work_dir = work_dir
        self._time_type = pa.int64() if absolute_time else pa.float64()
        self._chunk = _new_chunk()
        self._batches: list[pa.RecordBatch] = []
        self._spill: pq.ParquetWriter | None = None
        self._spill_path = (work_dir / "staged.parquet") if work_dir else None
        self._rows = 0
        self._latest_time: float | int | None = None
        self._earliest_time: float | int | None = None
        self._latest_row = 0
        self._reordered = 0
        self._first_reordered_row = 0
        self._skipped: dict[tuple[str | None, RowProblem], SkippedRows] = {}

    def add(
        self,
        row: int,
        time: float | int,
        input_tokens: int,
        output_tokens: int,
        hashes: list[int],
        block_tokens: int,
        request_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        """Keep one valid row. `time` is ns (absolute) or ms (relative)."""
        self.records += 1
        if self._latest_time is not None and time < self._latest_time:
            if self._strict:
                self._reject_out_of_order(row, time)
                return
            if not self._reordered:
                self._first_reordered_row = row
            self._reordered += 1
        else:
            self._latest_time = time
            self._latest_row = row
        if self._earliest_time is None or time < self._earliest_time:
            self._earliest_time = time

        chunk = self._chunk
        chunk.source_row.append(row)
        chunk.time.append(time)  # type: ignore[arg-type]
        chunk.request_id.append(
            request_id if request_id is not None else str(self.records - 1)
        )
        chunk.input_tokens.append(input_tokens)
        chunk.output_tokens.append(output_tokens)
        chunk.prefix_block_hashes.append(hashes)
        chunk.block_tokens.append(block_tokens)
        chunk.session_id.append(session_id)
        self._rows += 1
        if len(chunk.source_row) >= ROW_GROUP_ROWS:
            self._flush_chunk()

    def reject(self, error: FieldError, row: int) -> None:
        """Count an invalid record, or raise TraceFormatError unless skipping."""
        self.records += 1
        self._count_skipped(error, row, rows=1)

    def _count_skipped(self, error: FieldError, row: int, rows: int) -> None:
        if not self._skip_bad_rows:
            raise TraceFormatError(self.path, error.message, row=row, field=error.field)
        key = (error.field, error.problem)
        entry = self._skipped.get(key)
        if entry is None:
            self._skipped[key] = SkippedRows(
                error.field, error.problem, rows, row, error.message
            )
        else:
            self._skipped[key] = SkippedRows(
                entry.field,
                entry.problem,
                entry.rows + rows,
                entry.first_row,
                entry.first_message,
            )

    def _reject_out_of_order(self, row: int, time: float | int) -> None:
        self.records -= 1
        message = (
            f"timestamp {self._format_time(time)} is earlier than "
            f"{self._format_time(self._latest_time)} at row {self._latest_row}; "
            "sort the source, or import without --strict to sort it"
        )
        self.reject(FieldError(None, RowProblem.OUT_OF_ORDER, message), row)

    def _format_time(self, time: float | int | None) -> str:
        if self._absolute_time and isinstance(time, int):
            return format_utc_ns(time)
        return f"{time} ms"

    def _flush_chunk(self) -> None:
        chunk = self._chunk
        if not chunk.source_row:
            return
        batch = pa.RecordBatch.from_pydict(
            {
                "source_row": pa.array(chunk.source_row, type=pa.int64()),
                "time": pa.array(chunk.time, type=self._time_type),
                "request_id": pa.array(chunk.request_id, type=pa.string()),
                "input_tokens": pa.array(chunk.input_tokens, type=pa.int64()),
                "output_tokens": pa.array(chunk.output_tokens, type=pa.int64()),
                "prefix_block_hashes": pa.array(
                    chunk.prefix_block_hashes, type=pa.list_(pa.uint64())
                ),
                "block_tokens": pa.array(chunk.block_tokens, type=pa.int32()),
                "session_id": pa.array(chunk.session_id, type=pa.string()),
            }
        )
        self._chunk = _new_chunk()
        if self._spill_path is None:
            self._batches.append(batch)
            return
        if self._spill is None:
            self._spill = pq.ParquetWriter(str(self._spill_path), batch.schema)
        # write_batch would buffer batches into row groups of up to 1Mi rows.
        # write_table writes each chunk as its own row group, so memory stays
        # bounded while writing and when the spill file is read back.
        table = pa.Table.from_batches([batch])
        self._spill.write_table(table, row_group_size=batch.num_rows)

    def finish(
        self,
        metadata: dict[str, str],
        emit: Callable[[dict[str, str]], Callable[[pa.RecordBatch], None]],
    ) -> ImportReport:
        """Order, rebase and check the rows, then write them.

        `emit(metadata)` is called once, with `metadata` completed by the
        trace start and the skipped rows, and returns the function that
        takes each canonical batch in order.

        Raises TraceFormatError for a source without valid rows and, unless
        skipping bad rows, for a duplicate request id.
        """
        self._flush_chunk()
        if self._spill is not None:
            self._spill.close()
        if self._rows == 0:
            self._raise_no_rows()
        self._check_span()
        if self._reordered:
            logger.warning(
                "%s: %d rows arrive earlier than a row before them (first at row "
                "%d); sorting by arrival time, ties keep file order",
                self.path,
                self._reordered,
                self._first_reordered_row,
            )

        with self._connect() as connection:
            duplicate_rows = self._find_duplicates(connection)
            origin = self._earliest_time if self._absolute_time else 0
            assert origin is not None
            full_metadata = self._complete_metadata(metadata, origin)
            write = emit(full_metadata)
            written = 0
            for batch in self._ordered_batches(connection):
                canonical = self._to_canonical(batch, origin, duplicate_rows)
                written += canonical.num_rows
                write(canonical)

        return ImportReport(
            source=self.path,
            records=self.records,
            rows_written=written,
            reordered_rows=self._reordered,
            skipped=tuple(sorted(self._skipped.values(), key=lambda e: e.first_row)),
        )

    def _check_span(self) -> None:
        """Raise TraceFormatError when rebased times would overflow int64 ns."""
        latest, earliest = self._latest_time, self._earliest_time
        if not self._absolute_time or latest is None or earliest is None:
            return
        if latest - earliest > MAX_INT64:
            raise TraceFormatError(
                self.path,
                f"times span from {format_utc_ns(int(earliest))} to "
                f"{format_utc_ns(int(latest))}, more than 2**63 ns (about 292 "
                "years); check the time unit",
            )

    def _raise_no_rows(self) -> None:
        if self.records == 0:
            raise TraceFormatError(self.path, self.empty_message)
        reasons = "; ".join(entry.describe() for entry in self._skipped.values())
        raise TraceFormatError(
            self.path, f"no valid rows: all {self.records} were skipped ({reasons})"
        )

    def _connect(self) -> duckdb.DuckDBPyConnection:
        connection = connect(self._work_dir)
        if self._spill_path is not None:
            source = quote_literal(str(self._spill_path))
            connection.execute(
                f"CREATE VIEW staged AS SELECT * FROM read_parquet({source})"
            )
        else:
            staged = pa.Table.from_batches(self._batches)
            connection.register("staged", staged)
        return connection

    def _find_duplicates(
        self, connection: duckdb.DuckDBPyConnection
    ) -> np.ndarray | None:
        """Return the source rows of repeated ids (all but the first of each)."""
        if not self._ids_from_source:
            return None
        query = """
            SELECT source_row, request_id,
                first_value(source_row) OVER (
                    PARTITION BY request_id ORDER BY source_row) AS first_row
            FROM staged
            QUALIFY row_number() OVER (
                PARTITION BY request_id ORDER BY source_row) > 1
            ORDER BY source_row
        """
        duplicates = connection.sql(query).fetchnumpy()
        rows = np.asarray(duplicates["source_row"], dtype=np.int64)
        if rows.size == 0:
            return None
        request_id = str(duplicates["request_id"][0])
        message = (
            f"duplicate request id {request_id!r}, first at row "
            f"{int(duplicates['first_row'][0])}"
        )
        error = FieldError("request_id", RowProblem.DUPLICATE_ID, message)
        self._count_skipped(error, int(rows[0]), rows=int(rows.size))
        self._rows -= int(rows.size)
        if self._rows == 0:
            self._raise_no_rows()
        return rows

    def _ordered_batches(
        self, connection: duckdb.DuckDBPyConnection
    ) -> Iterator[pa.RecordBatch]:
        if self._reordered:
            relation = connection.sql("SELECT * FROM staged ORDER BY time, source_row")
            yield from relation.to_arrow_reader(ROW_GROUP_ROWS)
        elif self._spill_path is not None:
            parquet_file = open_parquet_stream(self._spill_path)
            yield from parquet_file.iter_batches(batch_size=ROW_GROUP_ROWS)
        else:
            yield from self._batches

    def _to_canonical(
        self,
        batch: pa.RecordBatch,
        origin: float | int,
        duplicate_rows: np.ndarray | None,
    ) -> pa.RecordBatch:
        if duplicate_rows is not None:
            keep = ~np.isin(batch.column("source_row").to_numpy(), duplicate_rows)
            batch = batch.filter(pa.array(keep))
        time = batch.column("time")
        if self._absolute_time:
            offsets_ns = pc.subtract_checked(time, pa.scalar(origin, type=pa.int64()))
            arrival_ms = pc.divide(pc.cast(offsets_ns, pa.float64()), _NS_PER_MS)
        else:
            arrival_ms = time
        columns = {name: batch.column(name) for name in TRACE_SCHEMA.names[:1]}
        columns["arrival_ms"] = arrival_ms
        for name in TRACE_SCHEMA.names[2:]:
            columns[name] = batch.column(name)
        return pa.RecordBatch.from_pydict(columns).cast(TRACE_SCHEMA)

    def _complete_metadata(
        self, metadata: dict[str, str], origin: float | int
    ) -> dict[str, str]:
        completed = dict(metadata)
        if self._absolute_time:
            assert isinstance(origin, int)
            completed["trace_start"] = format_utc_ns(origin)
        if self._skipped:
            completed["skipped_rows"] = str(
                sum(entry.rows for entry in self._skipped.values())
            )
            completed["skipped_reasons"] = json.dumps(
                [
                    {
                        "field": entry.field,
                        "problem": entry.problem.value,
                        "rows": entry.rows,
                        "first_row": entry.first_row,
                    }
                    for entry in self._skipped.values()
                ]
            )
        if self._reordered:
            completed["reordered_rows"] = str(self._reordered)
        return completed
