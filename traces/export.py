"""Export of canonical traces to Mooncake JSON lines, CSV and JSON lines.

- mooncake: `timestamp` (arrival_ms), `input_length`, `output_length`,
  `hash_ids`. Request and session ids are not part of the format and are
  dropped; rows must have 512-token blocks or no hashes.
- csv: the canonical columns, hashes separated by spaces, an empty
  session_id for null.
- jsonl: one object per row with the canonical names, hashes as a list.

Times are written with Python's shortest round-trip float repr, so
importing an export gives back the same float64 arrival times. The csv
and jsonl exports import with `--format csv` or `--format jsonl` and no
column map.
"""

from __future__ import annotations

import csv
import enum
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from traces.errors import TraceError
from traces.formats import MOONCAKE_BLOCK_TOKENS
from traces.schema import TRACE_SCHEMA, iter_trace_batches

__all__ = ["ExportFormat", "export_trace"]

logger = logging.getLogger(__name__)

_EXPORT_BATCH_ROWS = 8192


class ExportFormat(enum.Enum):
    """Formats that `cmx trace export` writes."""

    MOONCAKE = "mooncake"
    CSV = "csv"
    JSONL = "jsonl"


def export_trace(
    source: str | Path, output: str | Path, export_format: ExportFormat
) -> int:
    """Write the trace file `source` to `output` in `export_format`.

    Returns the number of rows written. Raises TraceFormatError for an
    unreadable trace and TraceError for a row the format cannot express.
    """
    writers: dict[ExportFormat, Callable[[Iterator[dict[str, Any]], IO[str]], int]] = {
        ExportFormat.MOONCAKE: _write_mooncake,
        ExportFormat.CSV: _write_csv,
        ExportFormat.JSONL: _write_jsonl,
    }
    with Path(output).open("w", encoding="utf-8", newline="") as target:
        rows = writers[export_format](_rows(source), target)
    logger.info("exported %d requests to %s", rows, output)
    return rows


def _rows(source: str | Path) -> Iterator[dict[str, Any]]:
    # Small batches keep the Python objects of to_pylist few at a time.
    for batch in iter_trace_batches(source, batch_rows=_EXPORT_BATCH_ROWS):
        yield from pa.Table.from_batches([batch], schema=TRACE_SCHEMA).to_pylist()


def _write_mooncake(rows: Iterator[dict[str, Any]], target: IO[str]) -> int:
    count = 0
    for row in rows:
        count += 1
        hashes = row["prefix_block_hashes"]
        if hashes and row["block_tokens"] != MOONCAKE_BLOCK_TOKENS:
            raise TraceError(
                f"row {count} has blocks of {row['block_tokens']} tokens, but Mooncake "
                f"hash_ids are {MOONCAKE_BLOCK_TOKENS}-token blocks; export as csv "
                "or jsonl"
            )
        record = {
            "timestamp": _number(row["arrival_ms"]),
            "input_length": row["input_tokens"],
            "output_length": row["output_tokens"],
            "hash_ids": hashes,
        }
        target.write(json.dumps(record) + "\n")
    return count


def _write_csv(rows: Iterator[dict[str, Any]], target: IO[str]) -> int:
    writer = csv.writer(target, lineterminator="\n")
    writer.writerow(TRACE_SCHEMA.names)
    count = 0
    for row in rows:
        count += 1
        writer.writerow(
            [
                row["request_id"],
                repr(row["arrival_ms"]),
                row["input_tokens"],
                row["output_tokens"],
                " ".join(str(value) for value in row["prefix_block_hashes"]),
                row["block_tokens"],
                "" if row["session_id"] is None else row["session_id"],
            ]
        )
    return count


def _write_jsonl(rows: Iterator[dict[str, Any]], target: IO[str]) -> int:
    count = 0
    for row in rows:
        count += 1
        target.write(json.dumps(row) + "\n")
    return count


def _number(value: float) -> float | int:
    """Return an integral float as int, so that `0.0` is written as `0`."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value
