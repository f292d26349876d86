"""Per-request replay results: schema, latency formulas and a Parquet writer.

A results file has one row per request the replayer sent, in the order the
requests finished. Wall times are milliseconds of `time.perf_counter()` since
the run started. Emulated times come from the server's per-token `emulated_ms`
timestamps, which count from the request's arrival at the emulator.

| column                 | type           | meaning                                    |
| ---------------------- | -------------- | ------------------------------------------ |
| request_id             | string         | from the trace                             |
| arrival_ms             | float64        | trace arrival, ms from trace start         |
| scheduled_send_ms      | float64        | wall ms from run start the send was due    |
| actual_send_ms         | float64        | wall ms from run start the call started    |
| send_lag_ms            | float64        | actual_send_ms - scheduled_send_ms         |
| input_tokens           | int64          | prompt length, from the trace              |
| output_tokens          | int64          | output length requested, from the trace    |
| output_tokens_received | int64          | tokens received, also for failed streams   |
| status                 | string         | `ok` or the gRPC status name               |
| error                  | string, null   | status details; null when ok               |
| ttft_ms                | float64, null  | emulated; null when no token arrived       |
| tpot_ms                | float64, null  | emulated; null unless ok with >= 2 tokens  |
| e2e_ms                 | float64, null  | emulated; null unless ok                   |
| wall_ttft_ms           | float64, null  | send to first token; null when no token    |
| wall_e2e_ms            | float64        | send to end of stream, error included      |
| queue_ms               | float64, null  | emulated, from the summary; null unless ok |
| prefill_ms             | float64, null  | as queue_ms                                |
| kv_transfer_ms         | float64, null  | as queue_ms                                |
| cached_tokens          | int64, null    | as queue_ms                                |
| prefill_instance       | int64, null    | as queue_ms                                |
| decode_instance        | int64, null    | as queue_ms                                |
| faults                 | list<string>   | "ID:KIND" of injected faults that touched  |
|                        |                | the request; empty when none               |

The emulated latencies of a stream whose n tokens carry the timestamps
t_1 <= ... <= t_n are defined once, in `emulated_latencies`:

    ttft_ms = t_1
    tpot_ms = (t_n - t_1) / (n - 1)    for n >= 2; NULL for n == 1, never 0
    e2e_ms  = t_n

Flushing: a Parquet file is readable only once its footer is written at close
(DuckDB 2.0 reports "No magic bytes found at end of file" otherwise). So each
flush writes its rows as a complete Parquet file `part-NNNNNN.parquet` in the
directory `<output>.parts/`, and `close()` merges the parts into the output
file and removes them. A run killed before `close()` leaves every flushed row
readable in that directory (for example `cmx analyze RESULTS.parquet.parts`).
Every file carries the run configuration as JSON under
`cmx.results.run_config` and `cmx.results.schema_version` = "1".
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from replay.errors import ReplayError

__all__ = [
    "PARTS_SUFFIX",
    "RESULTS_SCHEMA",
    "SCHEMA_VERSION",
    "STATUS_OK",
    "EmulatedLatencies",
    "ResultRow",
    "ResultsWriter",
    "emulated_latencies",
    "parts_dir_for",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
STATUS_OK = "ok"
PARTS_SUFFIX = ".parts"
SCHEMA_VERSION_KEY = "cmx.results.schema_version"
RUN_CONFIG_KEY = "cmx.results.run_config"

_MERGED_ROW_GROUP_ROWS = 65536
_COMPRESSION = "zstd"

RESULTS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_ms", pa.float64(), nullable=False),
        pa.field("scheduled_send_ms", pa.float64(), nullable=False),
        pa.field("actual_send_ms", pa.float64(), nullable=False),
        pa.field("send_lag_ms", pa.float64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens_received", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("ttft_ms", pa.float64(), nullable=True),
        pa.field("tpot_ms", pa.float64(), nullable=True),
        pa.field("e2e_ms", pa.float64(), nullable=True),
        pa.field("wall_ttft_ms", pa.float64(), nullable=True),
        pa.field("wall_e2e_ms", pa.float64(), nullable=False),
        pa.field("queue_ms", pa.float64(), nullable=True),
        pa.field("prefill_ms", pa.float64(), nullable=True),
        pa.field("kv_transfer_ms", pa.float64(), nullable=True),
        pa.field("cached_tokens", pa.int64(), nullable=True),
        pa.field("prefill_instance", pa.int64(), nullable=True),
        pa.field("decode_instance", pa.int64(), nullable=True),
        pa.field("faults", pa.list_(pa.string()), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class EmulatedLatencies:
    """Emulated latencies of one stream, in milliseconds; None where undefined."""

    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None


def emulated_latencies(
    first_token_ms: float | None, last_token_ms: float | None, token_count: int
) -> EmulatedLatencies:
    """Compute TTFT, TPOT and end-to-end latency from token timestamps.

    `first_token_ms` and `last_token_ms` are the `emulated_ms` of the first and
    last token received and `token_count` is how many tokens arrived. TPOT is
    None for a one-token output, where it is undefined. Every value is None
    when no token arrived.
    """
    if token_count == 0 or first_token_ms is None or last_token_ms is None:
        return EmulatedLatencies(ttft_ms=None, tpot_ms=None, e2e_ms=None)

    tpot_ms = None
    if token_count >= 2:
        tpot_ms = (last_token_ms - first_token_ms) / (token_count - 1)
    return EmulatedLatencies(
        ttft_ms=first_token_ms, tpot_ms=tpot_ms, e2e_ms=last_token_ms
    )


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One request's result; fields are the columns of RESULTS_SCHEMA."""

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
    faults: tuple[str, ...] = ()


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

        self._schema = RESULTS_SCHEMA.with_metadata(
            {
                SCHEMA_VERSION_KEY: SCHEMA_VERSION,
                RUN_CONFIG_KEY: json.dumps(dict(run_config), sort_keys=True),
            }
        )
        self._flush_interval_s = flush_interval_s
        self._flush_rows = flush_rows
        self._clock = clock
        self._pending: list[ResultRow] = []
        self._part_paths: list[Path] = []
        self._rows_flushed = 0
        self._last_flush_at_s = clock()
        self._closed = False

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
        return self._rows_flushed + len(self._pending)

    def append(self, row: ResultRow) -> None:
        """Add one row, flushing the pending rows when a flush is due."""
        if self._closed:
            raise RuntimeError(f"results writer for {self._path} is closed")
        self._pending.append(row)
        self.flush_if_due()

    def flush_if_due(self) -> bool:
        """Flush when enough rows or time have accumulated; return whether it did."""
        if not self._pending:
            return False
        elapsed_s = self._clock() - self._last_flush_at_s
        if len(self._pending) < self._flush_rows and elapsed_s < self._flush_interval_s:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Write the pending rows as one complete part file, if there are any."""
        self._last_flush_at_s = self._clock()
        if not self._pending:
            return

        part_path = self._parts_dir / f"part-{len(self._part_paths):06d}.parquet"
        # Written under another name and renamed, so that a kill during the
        # write never leaves a broken file matching `*.parquet`.
        partial_path = part_path.with_name(part_path.name + ".partial")
        pq.write_table(
            _rows_to_table(self._pending, self._schema),
            partial_path,
            compression=_COMPRESSION,
        )
        os.replace(partial_path, part_path)

        self._part_paths.append(part_path)
        self._rows_flushed += len(self._pending)
        logger.debug("flushed %d rows to %s", len(self._pending), part_path)
        self._pending = []

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


def _rows_to_table(rows: list[ResultRow], schema: pa.Schema) -> pa.Table:
    columns = {name: [getattr(row, name) for row in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _write_row_groups(parquet_writer: pq.ParquetWriter, tables: list[pa.Table]) -> None:
    if tables:
        parquet_writer.write_table(
            pa.concat_tables(tables), row_group_size=_MERGED_ROW_GROUP_ROWS
        )
