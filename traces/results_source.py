"""Results files for analysis: find them, read their footers, label their runs.

A results path is a Parquet file, a directory of them (such as the
`<output>.parts` directory a killed replay leaves behind) or a glob, and a
command may take several paths. Each matched file is inspected on its own,
from its footer only:

- A file that cannot be read as Parquet, or that lacks a required column
  (`request_id`, `status`), is skipped and named in `ResultsSource.skipped`
  with the reason, so that one bad file does not stop the analysis of the
  others. Only when every file is skipped is that an error.
- Columns are addressed by name. A known results column that a file lacks
  (a file written by an older version, or by another writer) reads as NULL
  of its type. Columns this module does not know (added by newer writers)
  are kept as they are, and files without them read NULL there.
- The schema version in `cmx.results.schema_version` is recorded. Files
  without one, or with a version newer than this module reads, are still
  read by column name, and `ResultsSource.warnings` lists them.

Runs: every file belongs to one run, labelled by `run_id` in the file's run
configuration (`cmx.results.run_config`, JSON) when present. Otherwise the
label comes from the file's path: the part files in `X.parquet.parts/`
belong to `X.parquet`, and the label is that path relative to the deepest
directory shared by all the runs, without `.parquet` (`results` for a single
run). A writer that splits one run across several files, such as one file
per load-generator worker, should store the same `run_id` in each.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType

import pyarrow as pa
import pyarrow.parquet as pq

from traces.errors import TraceFormatError
from traces.results_schema import RESULTS_SCHEMA

__all__ = [
    "DERIVED_COLUMNS",
    "PARTS_SUFFIX",
    "REQUIRED_COLUMNS",
    "RESULT_COLUMN_TYPES",
    "SCHEMA_VERSION",
    "ColumnKind",
    "ResultsFile",
    "ResultsSource",
    "SkippedFile",
    "column_kind",
    "open_results",
    "resolve_files",
]

logger = logging.getLogger(__name__)

# The newest results schema version this module was written against.
SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = b"cmx.results.schema_version"
RUN_CONFIG_KEY = b"cmx.results.run_config"
# Suffix of the directory where an unfinished replay keeps its flushed rows.
PARTS_SUFFIX = ".parts"
# Characters that make a path a glob pattern, as the glob module reads them.
_GLOB_CHARACTERS = "*?["

REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "status")

# Every column the canned queries read, with the DuckDB type it is read as.
# DuckDB type of each Arrow type that RESULTS_SCHEMA uses for these columns.
_DUCKDB_TYPES: Mapping[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
    pa.bool_(): "BOOLEAN",
}
# Columns every view has, NULL where a file lacks them; other columns pass
# through as they are. `measured` is false for a warm-up or cool-down row,
# which the summaries leave out.
_TYPED_COLUMNS: tuple[str, ...] = (
    "request_id",
    "arrival_ms",
    "scheduled_send_ms",
    "actual_send_ms",
    "send_lag_ms",
    "input_tokens",
    "output_tokens",
    "output_tokens_received",
    "status",
    "error",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "wall_ttft_ms",
    "wall_e2e_ms",
    "queue_ms",
    "prefill_ms",
    "kv_transfer_ms",
    "cached_tokens",
    "prefill_instance",
    "decode_instance",
    "measured",
)
RESULT_COLUMN_TYPES: Mapping[str, str] = MappingProxyType(
    {name: _DUCKDB_TYPES[RESULTS_SCHEMA.field(name).type] for name in _TYPED_COLUMNS}
)

# Columns the analysis adds to every row; a file that has one is skipped.
DERIVED_COLUMNS: tuple[str, ...] = ("run", "speedup", "source_file")


class ColumnKind(Enum):
    """Relation of a Parquet column's type to the DuckDB type it is read as."""

    EXACT = "exact"
    CAST = "cast"
    INCOMPATIBLE = "incompatible"


def column_kind(arrow_type: pa.DataType, duckdb_type: str) -> ColumnKind:
    """Classify `arrow_type` against `duckdb_type`.

    Integers and floats convert to each other with a cast, and so do large
    strings to strings. A column of Arrow's null type (every value NULL, as
    pyarrow writes it without a schema) casts to any type. Any other
    difference is incompatible.
    """
    if pa.types.is_null(arrow_type):
        return ColumnKind.CAST
    if duckdb_type == "BOOLEAN":
        is_boolean = pa.types.is_boolean(arrow_type)
        return ColumnKind.EXACT if is_boolean else ColumnKind.INCOMPATIBLE
    if duckdb_type == "VARCHAR":
        if pa.types.is_string(arrow_type):
            return ColumnKind.EXACT
        if pa.types.is_large_string(arrow_type):
            return ColumnKind.CAST
        return ColumnKind.INCOMPATIBLE

    exact = pa.float64() if duckdb_type == "DOUBLE" else pa.int64()
    if arrow_type == exact:
        return ColumnKind.EXACT
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return ColumnKind.CAST
    return ColumnKind.INCOMPATIBLE


@dataclass(frozen=True)
class ResultsFile:
    """One readable results file and the run it belongs to.

    `columns` maps each column name in the file to its Arrow type;
    `run_config` is the decoded `cmx.results.run_config` (empty when absent).
    """

    path: str
    run: str
    speedup: float
    schema_version: str | None
    columns: Mapping[str, pa.DataType]
    run_config: Mapping[str, object]


@dataclass(frozen=True)
class SkippedFile:
    """A matched file that could not be read as results, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ResultsSource:
    """The readable files behind a set of results paths, grouped into runs.

    `runs` contains the run labels, sorted. `warnings` lists the files read
    by column name only.
    """

    patterns: tuple[str, ...]
    files: tuple[ResultsFile, ...]
    runs: tuple[str, ...]
    skipped: tuple[SkippedFile, ...] = ()
    warnings: tuple[str, ...] = ()

    def files_of(self, run: str) -> tuple[ResultsFile, ...]:
        """Return the files of run `run`, in path order."""
        return tuple(item for item in self.files if item.run == run)

    def run_config(self, run: str) -> Mapping[str, object]:
        """Return the run configuration of `run` (that of its first file)."""
        files = self.files_of(run)
        return files[0].run_config if files else {}

    def speedup(self, run: str) -> float:
        """Return the speed-up of `run`, 1.0 for an unknown run."""
        files = self.files_of(run)
        return files[0].speedup if files else 1.0


def open_results(paths: str | Path | Sequence[str | Path]) -> ResultsSource:
    """Find and inspect the results files matched by `paths`.

    Raises TraceFormatError when a path matches no file, when no matched file
    is readable (the message names each file and why), or when the files of
    one run disagree on its speed-up.
    """
    patterns = _as_patterns(paths)
    file_paths = resolve_files(patterns)

    inspected: list[tuple[str, dict[str, pa.DataType], dict[bytes, bytes]]] = []
    skipped: list[SkippedFile] = []
    for file_path in file_paths:
        found = _inspect_file(file_path)
        if isinstance(found, SkippedFile):
            skipped.append(found)
            logger.info("skipping %s: %s", found.path, found.reason)
        else:
            inspected.append((file_path, *found))

    if not inspected:
        raise _no_readable_file(patterns, skipped)

    labels = _path_labels([file_path for file_path, _, _ in inspected])
    files: list[ResultsFile] = []
    warnings: list[str] = []
    for file_path, columns, metadata in inspected:
        built = _build_file(file_path, columns, metadata, labels[file_path])
        if isinstance(built, SkippedFile):
            skipped.append(built)
            continue
        files.append(built)
        warning = _version_warning(built)
        if warning is not None:
            warnings.append(warning)

    if not files:
        raise _no_readable_file(patterns, skipped)
    runs = tuple(sorted({item.run for item in files}))
    _check_speedups(files, runs)
    return ResultsSource(
        patterns=tuple(patterns),
        files=tuple(files),
        runs=runs,
        skipped=tuple(skipped),
        warnings=tuple(warnings),
    )


def resolve_files(patterns: Iterable[str]) -> list[str]:
    """Expand files, directories and globs into a sorted list of file paths.

    A directory stands for the `*.parquet` files directly inside it. Raises
    TraceFormatError for a path that matches nothing, pointing to the parts
    directory when a results file is missing because its run did not finish.
    """
    found: set[str] = set()
    for pattern in patterns:
        found.update(_resolve_one(pattern))
    return sorted(found)


def _no_readable_file(
    patterns: Sequence[str], skipped: Sequence[SkippedFile]
) -> TraceFormatError:
    reasons = "; ".join(f"{item.path}: {item.reason}" for item in skipped)
    return TraceFormatError(", ".join(patterns), f"no readable results file: {reasons}")


def _as_patterns(paths: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(paths, str | Path):
        return [str(paths)]
    if not paths:
        raise TraceFormatError("(none)", "no results path given")
    return [str(path) for path in paths]


def _resolve_one(pattern: str) -> list[str]:
    path = Path(pattern)
    if path.is_dir():
        matches = sorted(str(item) for item in path.glob("*.parquet"))
        if not matches:
            raise TraceFormatError(pattern, "directory contains no .parquet files")
        return matches
    if path.is_file():
        return [pattern]
    if any(char in pattern for char in _GLOB_CHARACTERS):
        matches = sorted(
            item for item in glob.glob(pattern, recursive=True) if Path(item).is_file()
        )
        if not matches:
            raise TraceFormatError(pattern, "no file matches this pattern")
        return matches

    message = "results file not found"
    parts_dir = path.with_name(path.name + PARTS_SUFFIX)
    if parts_dir.is_dir():
        message += (
            f"; the run did not finish, and its flushed rows are in {parts_dir} "
            "(pass that directory instead)"
        )
    raise TraceFormatError(pattern, message)


def _inspect_file(
    file_path: str,
) -> tuple[dict[str, pa.DataType], dict[bytes, bytes]] | SkippedFile:
    """Read the schema and key-value metadata of one file, or why it is skipped."""
    try:
        schema = pq.read_schema(file_path)
    except (OSError, pa.ArrowException) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return SkippedFile(file_path, f"cannot read as Parquet ({first_line})")

    columns = {item.name: item.type for item in schema}
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        return SkippedFile(
            file_path,
            f"missing results columns: {', '.join(missing)}; expected a file "
            "written by 'cmx replay' or 'cmx simulate'",
        )
    reserved = [name for name in DERIVED_COLUMNS if name in columns]
    if reserved:
        return SkippedFile(
            file_path,
            f"has column(s) {', '.join(reserved)}, which the analysis adds itself",
        )
    for name, arrow_type in columns.items():
        duckdb_type = RESULT_COLUMN_TYPES.get(name)
        if duckdb_type is None:
            continue
        if column_kind(arrow_type, duckdb_type) == ColumnKind.INCOMPATIBLE:
            return SkippedFile(
                file_path,
                f"column {name} has type {arrow_type}; expected a type "
                f"readable as {duckdb_type}",
            )
    return columns, dict(schema.metadata or {})


def _build_file(
    file_path: str,
    columns: dict[str, pa.DataType],
    metadata: dict[bytes, bytes],
    path_label: str,
) -> ResultsFile | SkippedFile:
    raw_version = metadata.get(SCHEMA_VERSION_KEY)
    version = None if raw_version is None else raw_version.decode(errors="replace")

    run_config: dict[str, object] = {}
    raw_config = metadata.get(RUN_CONFIG_KEY)
    if raw_config is not None:
        try:
            decoded = json.loads(raw_config)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            return SkippedFile(
                file_path, "cmx.results.run_config metadata is not a JSON object"
            )
        run_config = decoded

    speedup = run_config.get("speedup", 1.0)
    if speedup is None:
        speedup = 1.0
    if isinstance(speedup, bool) or not isinstance(speedup, int | float):
        return SkippedFile(
            file_path, f"speedup {speedup!r} in the run config is not a number > 0"
        )
    if not speedup > 0:
        return SkippedFile(
            file_path, f"speedup {speedup!r} in the run config is not a number > 0"
        )

    run_id = run_config.get("run_id")
    run = run_id if isinstance(run_id, str) and run_id else path_label
    return ResultsFile(
        path=file_path,
        run=run,
        speedup=float(speedup),
        schema_version=version,
        columns=MappingProxyType(columns),
        run_config=MappingProxyType(run_config),
    )


def _version_warning(results_file: ResultsFile) -> str | None:
    version = results_file.schema_version
    if version is None:
        return (
            f"{results_file.path}: no cmx.results.schema_version in the file "
            "metadata; reading its columns by name"
        )
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        return (
            f"{results_file.path}: results schema version {version} is newer than "
            f"this version of cmx reads ({SCHEMA_VERSION}); reading its columns "
            "by name"
        )
    return None


def _results_name(file_path: str) -> str:
    """Return the results file that `file_path` is, or is a flushed part of."""
    path = Path(os.path.abspath(file_path))
    parent = path.parent
    if parent.name.endswith(PARTS_SUFFIX) and len(parent.name) > len(PARTS_SUFFIX):
        return str(parent.with_name(parent.name[: -len(PARTS_SUFFIX)]))
    return str(path)


def _path_labels(file_paths: Sequence[str]) -> dict[str, str]:
    """Label each file by the results file it belongs to, as short as possible."""
    names = {file_path: _results_name(file_path) for file_path in file_paths}
    distinct = sorted(set(names.values()))
    if len(distinct) == 1:
        only = _strip_parquet(Path(distinct[0]).name)
        return dict.fromkeys(file_paths, only)

    common = os.path.commonpath([str(Path(name).parent) for name in distinct])
    return {
        file_path: _strip_parquet(os.path.relpath(name, common))
        for file_path, name in names.items()
    }


def _strip_parquet(name: str) -> str:
    return name[: -len(".parquet")] if name.endswith(".parquet") else name


def _check_speedups(files: Sequence[ResultsFile], runs: Sequence[str]) -> None:
    for run in runs:
        speedups = sorted({item.speedup for item in files if item.run == run})
        if len(speedups) > 1:
            listed = ", ".join(f"{speedup:g}" for speedup in speedups)
            raise TraceFormatError(
                run,
                f"the files of this run have different speed-ups ({listed}); "
                "give each run its own run_id or analyse the files separately",
            )
