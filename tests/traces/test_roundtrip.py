"""Property tests: importing an export, and exporting an import, change nothing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces.export import ExportFormat, export_trace
from traces.importers import SourceFormat, import_trace
from traces.schema import TRACE_SCHEMA, write_trace

IDS = st.from_regex(r"[A-Za-z0-9_:#./-]{1,12}", fullmatch=True)
TIMES_MS = st.floats(min_value=0.0, max_value=1e10, allow_nan=False)
HASH = st.integers(min_value=0, max_value=2**64 - 1)
# Each example writes into its own folder under tmp_path, so sharing the
# function-scoped fixture across examples is safe.
FIXTURE = [HealthCheck.function_scoped_fixture]


@st.composite
def canonical_rows(draw: st.DrawFn, mooncake: bool) -> list[dict[str, object]]:
    """Rows of a valid canonical trace, sorted by arrival."""
    count = draw(st.integers(1, 20))
    arrivals = sorted(draw(st.lists(TIMES_MS, min_size=count, max_size=count)))
    request_ids = draw(st.lists(IDS, min_size=count, max_size=count, unique=True))
    rows = []
    for index, arrival_ms in enumerate(arrivals):
        input_tokens = draw(st.integers(1, 10**6))
        block_tokens = 512 if mooncake else draw(st.integers(1, 4096))
        max_blocks = min(-(-input_tokens // block_tokens), 8)
        hashes = draw(st.lists(HASH, max_size=max_blocks))
        if not hashes and not mooncake:
            block_tokens = draw(st.sampled_from([0, block_tokens]))
        rows.append(
            {
                "request_id": str(index) if mooncake else request_ids[index],
                "arrival_ms": arrival_ms,
                "input_tokens": input_tokens,
                "output_tokens": draw(st.integers(1, 10**5)),
                "prefix_block_hashes": hashes,
                "block_tokens": block_tokens,
                "session_id": None if mooncake else draw(st.none() | IDS),
            }
        )
    return rows


def _round_trip(
    folder: Path,
    rows: list[dict[str, object]],
    export_format: ExportFormat,
    source_format: SourceFormat,
) -> pa.Table:
    example = Path(tempfile.mkdtemp(dir=folder))
    trace = example / "trace.parquet"
    exported = example / "exported.txt"
    write_trace(pa.Table.from_pylist(rows, schema=TRACE_SCHEMA), trace)
    export_trace(trace, exported, export_format)
    return import_trace(exported, source_format).table


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
@given(rows=canonical_rows(mooncake=True))
def test_mooncake_export_imports_back(
    tmp_path: Path, rows: list[dict[str, object]]
) -> None:
    table = _round_trip(tmp_path, rows, ExportFormat.MOONCAKE, SourceFormat.MOONCAKE)

    assert table.to_pylist() == rows


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
@given(rows=canonical_rows(mooncake=False))
def test_csv_export_imports_back(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    table = _round_trip(tmp_path, rows, ExportFormat.CSV, SourceFormat.CSV)

    assert table.to_pylist() == rows


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
@given(rows=canonical_rows(mooncake=False))
def test_jsonl_export_imports_back(
    tmp_path: Path, rows: list[dict[str, object]]
) -> None:
    table = _round_trip(tmp_path, rows, ExportFormat.JSONL, SourceFormat.JSONL)

    assert table.to_pylist() == rows


@st.composite
def mooncake_lines(draw: st.DrawFn) -> list[str]:
    """Sorted Mooncake JSON lines as json.dumps writes them."""
    count = draw(st.integers(1, 20))
    times = draw(
        st.lists(st.integers(0, 10**9) | TIMES_MS, min_size=count, max_size=count)
    )
    lines = []
    for timestamp in sorted(times):
        if isinstance(timestamp, float) and timestamp.is_integer():
            timestamp = int(timestamp)
        input_length = draw(st.integers(1, 10**6))
        max_blocks = min(-(-input_length // 512), 8)
        record = {
            "timestamp": timestamp,
            "input_length": input_length,
            "output_length": draw(st.integers(1, 10**5)),
            "hash_ids": draw(st.lists(HASH, max_size=max_blocks)),
        }
        lines.append(json.dumps(record))
    return lines


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
@given(lines=mooncake_lines())
def test_mooncake_import_exports_back(tmp_path: Path, lines: list[str]) -> None:
    example = Path(tempfile.mkdtemp(dir=tmp_path))
    source = example / "source.jsonl"
    trace = example / "trace.parquet"
    exported = example / "exported.jsonl"
    source.write_text("\n".join(lines) + "\n")

    import_trace(source, SourceFormat.MOONCAKE).write(trace)
    export_trace(trace, exported, ExportFormat.MOONCAKE)

    assert exported.read_text().splitlines() == lines
