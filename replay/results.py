"""Per-request replay results: a Parquet writer that flushes as it goes.

The schema and the latency formulas are defined in `traces.results_schema`
(shared with `cmx simulate`) and re-exported here. A results file has one
row per request the replayer sent, in the order the requests finished.

Flushing: a Parquet file is readable only once its footer is written at close
(DuckDB 2.0 reports "No magic bytes found at end of file" otherwise). So each
flush writes its rows as a complete Parquet file `part-NNNNNN.parquet` in the
directory `<output>.parts/`, and `close()` merges the parts into the output
file and removes them. A run killed before `close()` leaves every flushed row
readable in that directory (for example `cmx analyze RESULTS.parquet.parts`).
Every file carries `cmx.results.schema_version` = "1", the run configuration
as JSON under `cmx.results.run_config`, and the writer's extra metadata
(the runner stores the trace checksum and software versions) under
`cmx.results.<key>`.

Thread safety: `append` and `flush` may run in different threads (the
replayer writes parts from a worker thread so that the event loop keeps its
schedule); one lock guards the pending rows.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from replay.errors import ReplayError
from traces.results_schema import (
    RESULTS_SCHEMA,
    RUN_CONFIG_KEY,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    STATUS_OK,
    EmulatedLatencies,
    emulated_latencies,
)

__all__ = [
    "ERROR_CANCELLED_BY_REPLAYER",
    "PARTS_SUFFIX",
    "RESULTS_SCHEMA",
    "SCHEMA_VERSION",
    "STATUS_CANCELLED",
    "STATUS_OK",
    "METADATA_PREFIX",
    "RUN_CONFIG_KEY",
    "SCHEMA_VERSION_KEY",
    "EmulatedLatencies",
    "ResultRow",
    "ResultsWriter",
    "emulated_latencies",
    "is_cancelled_by_replayer",
    "parts_dir_for",
]

logger = logging.getLogger(__name__)

PARTS_SUFFIX = ".parts"
METADATA_PREFIX = "cmx.results."

# Status and error of a row whose call the replayer cancelled itself, which
# it does only when a run stops early (Ctrl-C, or an error that ends the
# run). The summary counts these rows apart from the failures.
STATUS_CANCELLED = "CANCELLED"
ERROR_CANCELLED_BY_REPLAYER = "cancelled by the replayer"

_MERGED_ROW_GROUP_ROWS = 65536
_COMPRESSION = "zstd"


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One request's result; fields are the columns of RESULTS_SCHEMA.

    The fields with defaults are the nullable columns added after version 1
    first shipped, so that code written before them still builds rows.
    """

    request_id: str
    arrival_ms: float
    scheduled_send_ms: float
    actual_send_ms: float
    send_lag_ms: float
    input_tokens: int
    output_tokens: int
    output_tokens_received: int
    status: str
    error: str | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    wall_ttft_ms: float | None
    wall_e2e_ms: float
    queue_ms: float | None
    prefill_ms: float | None
    kv_transfer_ms: float | None
    cached_tokens: int | None
    prefill_instance: int | None
    decode_instance: int | None
    itl_ms_p50: float | None = None
    itl_ms_p99: float | None = None
    itl_ms_max: float | None = None
    normalized_latency_ms: float | None = None
    concurrency_wait_ms: float | None = None
    measured: bool | None = None
    slo_met: bool | None = None
    cached_tokens_hbm: int | None = None
    cached_tokens_pool: int | None = None
    cache_load_ms: float | None = None
    faults: tuple[str, ...] = ()


def is_cancelled_by_replayer(status: str, error: str | None) -> bool:
    """Return whether a row's status and error show that the replayer cancelled it."""
    return status == STATUS_CANCELLED and error == ERROR_CANCELLED_BY_REPLAYER


def parts_dir_for(path: str | Path) -> Path:
    """Return the directory that contains the flushed parts of results file `path`."""
    output_path = Path(path)
    return output_path.with_name(output_path.name + PARTS_SUFFIX)


class ResultsWriter:
    """Append result rows and flush them to Parquet as the run goes.

    Pending rows are flushed as one part file when `flush_rows` rows are
    pending or `flush_interval_s` seconds (of `clock`) have passed since the
    last flush, checked on every `append` and `flush_if_due` call, and at
    `close`. `close` (also on leaving a `with` block, with or without an
    exception) writes `path` through a temporary file and an atomic rename,
    then deletes the parts. The rows of `path` are in the order appended.

    `metadata` values are stored under `cmx.results.<key>` beside the run
    configuration.

    Raises ReplayError when the output directory does not exist, when `path`
    is a directory, or when a parts directory from an earlier run is in the
    way. Such a directory may contain the only copy of that run's rows, so
    the writer never overwrites it.
    """

    def __init__(
        self,
        path: str | Path,
        run_config: Mapping[str, object],
        *,
        metadata: Mapping[str, str] | None = None,
        flush_interval_s: float = 2.0,
        flush_rows: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, not {flush_interval_s}")
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, not {flush_rows}")

        self._path = Path(path)
        self._parts_dir = parts_dir_for(self._path)
        _check_output_path(self._path, self._parts_dir)

        stored = {
            METADATA_PREFIX + key: value for key, value in (metadata or {}).items()
        }
        stored[SCHEMA_VERSION_KEY] = SCHEMA_VERSION
        stored[RUN_CONFIG_KEY] = json.dumps(dict(run_config), sort_keys=True)
        self._schema = RESULTS_SCHEMA.with_metadata(stored)
        self._flush_interval_s = flush_interval_s
        self._flush_rows = flush_rows
        self._clock = clock
        self._pending: list[ResultRow] = []
        self._part_paths: list[Path] = []
        self._rows_flushed = 0
        self._last_flush_at_s = clock()
        self._closed = False
        # Guards _pending and _rows_flushed; _flush_lock makes flushes one at a time.
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()

        self._parts_dir.mkdir()
        logger.info("writing results to %s (parts in %s)", self._path, self._parts_dir)

    @property
    def path(self) -> Path:
        """Final results file, complete once `close` returns."""
        return self._path

    @property
    def parts_dir(self) -> Path:
        """Directory of flushed part files while the writer is open."""
        return self._parts_dir

    @property
    def rows_written(self) -> int:
        """Rows appended so far, flushed or pending."""
        with self._lock:
            return self._rows_flushed + len(self._pending)

    def append(self, row: ResultRow, *, flush: bool = True) -> None:
        """Add one row and, unless `flush` is false, flush when a flush is due.

        With `flush=False` the caller runs `flush_if_due` itself, for example
        from a worker thread.
        """
        if self._closed:
            raise RuntimeError(f"results writer for {self._path} is closed")
        with self._lock:
            self._pending.append(row)
        if flush:
            self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Flush when enough rows or time have accumulated; return whether it did."""
        with self._lock:
            pending = len(self._pending)
        if not pending:
            return False
        elapsed_s = self._clock() - self._last_flush_at_s
        if pending < self._flush_rows and elapsed_s < self._flush_interval_s:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Write the pending rows as one complete part file, if there are any."""
        with self._flush_lock:
            self._last_flush_at_s = self._clock()
            with self._lock:
                rows, self._pending = self._pending, []
            if rows:
                self._write_part(rows)

    def _write_part(self, rows: list[ResultRow]) -> None:
        part_path = self._parts_dir / f"part-{len(self._part_paths):06d}.parquet"
        # Written under another name and renamed, so that a kill during the
        # write never leaves a broken file matching `*.parquet`.
        partial_path = part_path.with_name(part_path.name + ".partial")
        pq.write_table(
            _rows_to_table(rows, self._schema), partial_path, compression=_COMPRESSION
        )
        os.replace(partial_path, part_path)

        self._part_paths.append(part_path)
        with self._lock:
            self._rows_flushed += len(rows)
        logger.debug("flushed %d rows to %s", len(rows), part_path)

    def close(self) -> None:
        """Flush, merge the parts into the results file and delete the parts."""
        if self._closed:
            return
        self.flush()
        self._merge_parts()
        for part_path in self._part_paths:
            part_path.unlink()
        self._parts_dir.rmdir()
        self._closed = True
        logger.info("wrote %d result rows to %s", self._rows_flushed, self._path)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _merge_parts(self) -> None:
        merging_path = self._path.with_name(self._path.name + ".partial")
        with pq.ParquetWriter(
            merging_path, self._schema, compression=_COMPRESSION
        ) as parquet_writer:
            batch: list[pa.Table] = []
            batch_rows = 0
            for part_path in self._part_paths:
                table = pq.read_table(part_path)
                batch.append(table)
                batch_rows += table.num_rows
                if batch_rows >= _MERGED_ROW_GROUP_ROWS:
                    _write_row_groups(parquet_writer, batch)
                    batch, batch_rows = [], 0
            _write_row_groups(parquet_writer, batch)
        os.replace(merging_path, self._path)


def _check_output_path(path: Path, parts_dir: Path) -> None:
    if not path.parent.is_dir():
        raise ReplayError(
            f"output directory {path.parent} not found; create it or choose "
            "another output path"
        )
    if path.is_dir():
        raise ReplayError(f"output path {path} is a directory; give a file name")
    if parts_dir.exists():
        raise ReplayError(
            f"{parts_dir} already exists, probably left by a run that was killed; "
            "it may hold that run's only results, so move or delete it first"
        )


# Rows converted to Arrow per slice. Conversion holds the GIL without a
# break (attrgetter, zip and pyarrow loop in C), about 2.5 us per row here,
# so a slice keeps the event loop's thread waiting for at most about 0.3 ms.
_CONVERT_SLICE_ROWS = 128


def _rows_to_table(rows: list[ResultRow], schema: pa.Schema) -> pa.Table:
    """Convert rows to a table slice by slice, letting other threads run between."""
    if not rows:
        return schema.empty_table()
    tables = []
    for start in range(0, len(rows), _CONVERT_SLICE_ROWS):
        if start:
            time.sleep(0)  # gives the GIL to a thread waiting for it
        tables.append(
            _slice_to_table(rows[start : start + _CONVERT_SLICE_ROWS], schema)
        )
    return pa.concat_tables(tables)


def _slice_to_table(rows: list[ResultRow], schema: pa.Schema) -> pa.Table:
    values = map(operator.attrgetter(*schema.names), rows)
    columns = zip(*values, strict=True)
    return pa.table(
        {
            name: list(column)
            for name, column in zip(schema.names, columns, strict=True)
        },
        schema=schema,
    )


def _write_row_groups(parquet_writer: pq.ParquetWriter, tables: list[pa.Table]) -> None:
    if tables:
        parquet_writer.write_table(
            pa.concat_tables(tables), row_group_size=_MERGED_ROW_GROUP_ROWS
        )
