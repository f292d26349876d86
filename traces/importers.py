"""Importers that convert request traces into the canonical trace schema.

Formats (described in `traces.formats`): Mooncake JSON lines, Azure LLM
inference CSV (2023 and 2024), BurstGPT CSV, and generic CSV or JSON lines
with a column map.

Every importer validates each record and, at the first invalid one, raises
TraceFormatError naming the file, the 1-based row (the line for JSON lines,
the data row after the header for CSV) and the field. With
`ImportOptions.skip_bad_rows` it skips invalid records instead, and the
ImportReport and the file metadata (`skipped_rows`, `skipped_reasons`) count
them by field and problem. Nothing else is dropped or truncated.

Checked: missing or non-numeric fields, token counts that are not integers
>= 1, negative or non-finite times, invalid datetimes, hash lists that do not
fit the prompt length, duplicate request ids (generic formats), malformed
or truncated lines, invalid UTF-8, rows with more fields than the header, and
empty files. Rows whose time goes backwards are sorted by time (stable, so
ties keep file order) with a logged warning, or rejected with
`ImportOptions.strict`.

`import_trace_file` streams a source of any size to a trace file in bounded
memory; the other functions return the trace as an in-memory table.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from traces.formats import (
    AZURE_COLUMNS,
    BURSTGPT_COLUMNS,
    MOONCAKE_BLOCK_TOKENS,
    ColumnMap,
    ImportOptions,
    SourceFormat,
    TimeUnit,
    read_source,
    uses_absolute_time,
)
from traces.readers import ProgressCallback
from traces.schema import TRACE_SCHEMA, TraceWriter, write_trace
from traces.staging import ImportReport, SkippedRows, Staging

__all__ = [
    "AZURE_COLUMNS",
    "BURSTGPT_COLUMNS",
    "MOONCAKE_BLOCK_TOKENS",
    "ColumnMap",
    "ImportOptions",
    "ImportReport",
    "ImportedTrace",
    "SkippedRows",
    "SourceFormat",
    "TimeUnit",
    "import_azure",
    "import_burstgpt",
    "import_mooncake",
    "import_trace",
    "import_trace_file",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedTrace:
    """A trace converted to the canonical schema, ready to write.

    `table` has TRACE_SCHEMA's columns with rows sorted by `arrival_ms`.
    `metadata` is stored in the file under `cmx.trace.` by `write_trace`:
    `source_format`, `source_file` and, when the source has absolute times,
    `trace_start` (ISO-8601 UTC) and `time_zone`. `report` is None for a
    trace that was not imported (such as a generated one).
    """

    table: pa.Table
    metadata: Mapping[str, str]
    report: ImportReport | None = None

    @property
    def rows(self) -> int:
        """Number of requests in the trace."""
        return int(self.table.num_rows)

    def write(self, path: str | Path) -> None:
        """Write the trace as a canonical Parquet file at `path`."""
        write_trace(self.table, path, self.metadata)


def import_mooncake(
    path: str | Path, options: ImportOptions | None = None
) -> ImportedTrace:
    """Read a Mooncake JSON lines trace into memory.

    `timestamp` is kept as `arrival_ms`. `request_id` is the 0-based index
    of the record in the file. `block_tokens` is 512 and `session_id` is
    null. Raises TraceFormatError as described in the module docstring.
    """
    return import_trace(path, SourceFormat.MOONCAKE, options)


def import_azure(
    path: str | Path, options: ImportOptions | None = None
) -> ImportedTrace:
    """Read an Azure LLM inference CSV trace (2023 or 2024) into memory.

    `arrival_ms` is the time since the earliest `TIMESTAMP`, with the
    source's sub-millisecond digits kept. The earliest time is stored as
    `trace_start` metadata. `request_id` is the 0-based index of the data
    row. The source has no block hashes, so `prefix_block_hashes` is empty
    and `block_tokens` is 0. Raises TraceFormatError as described in the
    module docstring.
    """
    return import_trace(path, SourceFormat.AZURE, options)


def import_burstgpt(
    path: str | Path, options: ImportOptions | None = None
) -> ImportedTrace:
    """Read a BurstGPT CSV trace into memory.

    `arrival_ms` is `Timestamp` times 1000. `request_id` is the 0-based
    index of the data row. Raises TraceFormatError as described in the
    module docstring; a failed request (0 response tokens) is an invalid row.
    """
    return import_trace(path, SourceFormat.BURSTGPT, options)


def import_trace(
    path: str | Path,
    source_format: SourceFormat,
    options: ImportOptions | None = None,
) -> ImportedTrace:
    """Read a source trace of `source_format` into an in-memory table.

    Raises TraceFormatError as described in the module docstring.
    """
    options = options or ImportOptions()
    name = str(path)
    staging = _staging(name, source_format, options, work_dir=None)
    read_source(source_format, name, staging, options, progress=None)

    batches: list[pa.RecordBatch] = []
    stored: dict[str, str] = {}

    def emit(metadata: dict[str, str]) -> Callable[[pa.RecordBatch], None]:
        stored.update(metadata)
        return batches.append

    report = staging.finish(_metadata(name, source_format, options), emit)
    table = pa.Table.from_batches(batches, schema=TRACE_SCHEMA)
    _log_report(report)
    return ImportedTrace(table=table, metadata=stored, report=report)


def import_trace_file(
    path: str | Path,
    source_format: SourceFormat,
    output: str | Path,
    options: ImportOptions | None = None,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Convert a source trace to the trace file `output`, in bounded memory.

    Rows are spilled to a temporary folder beside `output`, removed at the
    end. `progress` is called with the number of source bytes read.
    Raises TraceFormatError as described in the module docstring; `output`
    may then hold a partial file, which the caller removes.
    """
    options = options or ImportOptions()
    name = str(path)
    output_path = Path(output)
    with tempfile.TemporaryDirectory(
        prefix=f".{output_path.name}.", dir=output_path.parent
    ) as work_dir:
        staging = _staging(name, source_format, options, work_dir=Path(work_dir))
        read_source(source_format, name, staging, options, progress)
        writers: list[TraceWriter] = []

        def emit(metadata: dict[str, str]) -> Callable[[pa.RecordBatch], None]:
            writers.append(TraceWriter(output_path, metadata))
            return writers[0].write

        try:
            report = staging.finish(_metadata(name, source_format, options), emit)
        finally:
            for writer in writers:
                writer.close()
    _log_report(report)
    return report


def _staging(
    name: str,
    source_format: SourceFormat,
    options: ImportOptions,
    work_dir: Path | None,
) -> Staging:
    generic = source_format in (SourceFormat.CSV, SourceFormat.JSONL)
    return Staging(
        name,
        absolute_time=uses_absolute_time(source_format, options),
        ids_from_source=generic,
        strict=options.strict,
        skip_bad_rows=options.skip_bad_rows,
        work_dir=work_dir,
    )


def _metadata(
    name: str, source_format: SourceFormat, options: ImportOptions
) -> dict[str, str]:
    metadata = {"source_format": source_format.value, "source_file": Path(name).name}
    if uses_absolute_time(source_format, options):
        metadata["time_zone"] = options.time_zone
    if source_format in (SourceFormat.CSV, SourceFormat.JSONL):
        columns = options.columns
        metadata["column_map"] = json.dumps(columns.to_pairs(), sort_keys=True)
        metadata["time_unit"] = columns.time_unit.value
    return metadata


def _log_report(report: ImportReport) -> None:
    for entry in report.skipped:
        logger.warning("%s: skipped %s", report.source, entry.describe())
    logger.info(
        "imported %d of %d requests from %s",
        report.rows_written,
        report.records,
        report.source,
    )
