"""Tests of trace statistics computed by DuckDB, against hand-worked values
and independent computations on the real traces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traces.errors import TraceFormatError
from traces.generator import GeneratorParams, generate_trace
from traces.importers import SourceFormat, import_trace_file
from traces.schema import write_trace
from traces.stats import TokenQuantiles, describe_trace

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOONCAKE_FILE = DATA_DIR / "mooncake_conversation.jsonl"
AZURE_FILE = DATA_DIR / "azure_code_2023.csv"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real trace {path} is absent (it lives in ../shared/data)")
    return path


def _write_rows(
    path: Path,
    arrival_ms: list[float],
    input_tokens: list[int],
    output_tokens: list[int],
    hashes: list[list[int]] | None = None,
    block_tokens: list[int] | None = None,
    sessions: list[str | None] | None = None,
) -> Path:
    count = len(arrival_ms)
    table = pa.table(
        {
            "request_id": [str(index) for index in range(count)],
            "arrival_ms": pa.array(arrival_ms, type=pa.float64()),
            "input_tokens": pa.array(input_tokens, type=pa.int64()),
            "output_tokens": pa.array(output_tokens, type=pa.int64()),
            "prefix_block_hashes": pa.array(
                hashes or [[]] * count, type=pa.list_(pa.uint64())
            ),
            "block_tokens": pa.array(block_tokens or [0] * count, type=pa.int32()),
            "session_id": pa.array(sessions or [None] * count, type=pa.string()),
        }
    )
    write_trace(table, path, {"source_format": "test"})
    return path


def test_hand_worked_trace(tmp_path: Path) -> None:
    path = _write_rows(
        tmp_path / "four.parquet",
        arrival_ms=[0.0, 500.0, 1500.0, 2000.0],
        input_tokens=[10, 20, 30, 40],
        output_tokens=[1, 2, 3, 100],
    )

    stats = describe_trace(path)

    # Linear interpolation at rank (n - 1) * q: q=0.9 gives rank 2.7, so the
    # input p90 is 30 + 0.7 * (40 - 30) = 37 and the output p90 is
    # 3 + 0.7 * (100 - 3) = 70.9.
    assert stats.path == str(path)
    assert stats.rows == 4
    assert stats.duration_s == 2.0
    assert stats.mean_rate_per_s == 2.0
    assert stats.input_tokens is not None
    assert stats.input_tokens.p50 == 25.0
    assert stats.input_tokens.p90 == pytest.approx(37.0, abs=1e-9)
    assert stats.input_tokens.p99 == pytest.approx(39.7, abs=1e-9)
    assert stats.input_tokens.max == 40
    assert stats.output_tokens is not None
    assert stats.output_tokens.p50 == 2.5
    assert stats.output_tokens.p90 == pytest.approx(70.9, abs=1e-9)
    assert stats.output_tokens.p99 == pytest.approx(97.09, abs=1e-9)
    assert stats.output_tokens.max == 100
    assert stats.input_tokens_total == 100
    assert stats.output_tokens_total == 106
    assert stats.source_format == "test"


def test_hand_worked_burstiness(tmp_path: Path) -> None:
    path = _write_rows(
        tmp_path / "four.parquet",
        arrival_ms=[0.0, 500.0, 1500.0, 2000.0],
        input_tokens=[1, 1, 1, 1],
        output_tokens=[1, 1, 1, 1],
    )

    stats = describe_trace(path)

    # Gaps 500, 1000, 500 over their mean are 0.75, 1.5, 0.75, so the
    # population variance is (0.0625 + 0.25 + 0.0625) / 3 = 0.125. The
    # windows [0, 1) s, [1, 2) s and [2, 3) s hold 2, 1 and 1 arrivals.
    assert stats.interarrival_cv == pytest.approx(0.125**0.5, rel=1e-12)
    assert stats.peak_rate_per_s == 2


def test_hand_worked_reuse(tmp_path: Path) -> None:
    path = _write_rows(
        tmp_path / "reuse.parquet",
        arrival_ms=[0.0, 1.0, 2.0, 3.0, 4.0],
        input_tokens=[1000, 1200, 600, 600, 700],
        output_tokens=[1, 1, 1, 1, 1],
        hashes=[[1, 2], [1, 2, 3], [1, 2, 4], [5, 5], [5]],
        block_tokens=[512, 512, 256, 512, 512],
        sessions=["a", "a", None, "b", "b"],
    )

    stats = describe_trace(path)

    # Row 1 reuses blocks 1 and 2 of row 0: 512 + min(512, 1200 - 512) = 1024.
    # Row 2 uses 256-token blocks, which match no 512-token block: 0.
    # Row 3 repeats hash 5 within itself, which does not count: 0.
    # Row 4 reuses block 5 of row 3: min(512, 700) = 512.
    assert stats.prefix_reuse_ratio == pytest.approx(1536 / 4100, rel=1e-12)
    assert stats.sessions == 2
    assert stats.session_requests == 4
    assert stats.max_turns == 2


def test_partial_last_block_counts_its_tokens(tmp_path: Path) -> None:
    path = _write_rows(
        tmp_path / "partial.parquet",
        arrival_ms=[0.0, 1.0],
        input_tokens=[600, 600],
        output_tokens=[1, 1],
        hashes=[[7, 8], [7, 8]],
        block_tokens=[512, 512],
    )

    stats = describe_trace(path)

    # Row 1 reuses a full block (512) and a partial one (600 - 512 = 88).
    assert stats.prefix_reuse_ratio == pytest.approx(600 / 1200, rel=1e-12)


def test_reuse_can_be_skipped(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "one.parquet", [0.0, 1.0], [7, 8], [3, 4])

    stats = describe_trace(path, reuse=False)

    assert stats.prefix_reuse_ratio is None
    assert stats.rows == 2


def test_quantiles_match_numpy(tmp_path: Path) -> None:
    trace = generate_trace(GeneratorParams(requests=1000), 21)
    path = tmp_path / "generated.parquet"
    trace.write(path)
    input_tokens = trace.table.column("input_tokens").to_numpy()
    output_tokens = trace.table.column("output_tokens").to_numpy()

    stats = describe_trace(path)

    assert stats.input_tokens is not None
    assert stats.output_tokens is not None
    expected_input = np.percentile(input_tokens, [50, 90, 99])
    expected_output = np.percentile(output_tokens, [50, 90, 99])
    got_input = [stats.input_tokens.p50, stats.input_tokens.p90, stats.input_tokens.p99]
    got_output = [
        stats.output_tokens.p50,
        stats.output_tokens.p90,
        stats.output_tokens.p99,
    ]
    assert got_input == pytest.approx(expected_input.tolist(), rel=1e-12)
    assert got_output == pytest.approx(expected_output.tolist(), rel=1e-12)
    assert stats.input_tokens.max == int(input_tokens.max())
    assert stats.output_tokens.max == int(output_tokens.max())


def test_single_row_has_no_rate(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "one.parquet", [250.0], [7], [3])

    stats = describe_trace(path)

    assert stats.rows == 1
    assert stats.duration_s == 0.0
    assert stats.mean_rate_per_s is None
    assert stats.interarrival_cv is None
    assert stats.peak_rate_per_s == 1
    assert stats.prefix_reuse_ratio == 0.0
    assert stats.input_tokens == TokenQuantiles(p50=7.0, p90=7.0, p99=7.0, max=7)


def test_equal_arrivals_have_no_cv(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "ties.parquet", [5.0, 5.0, 5.0], [1, 1, 1], [1, 1, 1])

    stats = describe_trace(path)

    assert stats.interarrival_cv is None
    assert stats.peak_rate_per_s == 3
    assert stats.mean_rate_per_s is None


def test_empty_trace(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "empty.parquet", [], [], [])

    stats = describe_trace(path)

    assert stats.rows == 0
    assert stats.duration_s is None
    assert stats.mean_rate_per_s is None
    assert stats.interarrival_cv is None
    assert stats.peak_rate_per_s is None
    assert stats.prefix_reuse_ratio is None
    assert stats.sessions == 0
    assert stats.input_tokens is None
    assert stats.output_tokens is None


def test_missing_trace(tmp_path: Path) -> None:
    path = tmp_path / "absent.parquet"

    with pytest.raises(TraceFormatError) as raised:
        describe_trace(path)

    assert str(raised.value) == f"{path}: trace file not found"


def test_parquet_without_version(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), path)

    with pytest.raises(TraceFormatError) as raised:
        describe_trace(path)

    assert "no cmx.trace.schema_version" in str(raised.value)


def test_text_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.parquet"
    path.write_text("not parquet\n")

    with pytest.raises(TraceFormatError) as raised:
        describe_trace(path)

    assert "not a readable Parquet file" in str(raised.value)


def _independent_figures(
    arrival_ms: np.ndarray, input_tokens: np.ndarray
) -> dict[str, float]:
    order = np.argsort(arrival_ms, kind="stable")
    arrival_ms = arrival_ms[order]
    gaps = np.diff(arrival_ms)
    windows = np.floor((arrival_ms - arrival_ms[0]) / 1000.0).astype(np.int64)
    return {
        "duration_s": (arrival_ms[-1] - arrival_ms[0]) / 1000.0,
        "cv": float(gaps.std() / gaps.mean()),
        "peak": int(np.bincount(windows).max()),
        "p99": float(np.percentile(input_tokens, 99)),
    }


def test_mooncake_figures_match_independent(tmp_path: Path) -> None:
    source = _require(MOONCAKE_FILE)
    trace = tmp_path / "mooncake.parquet"
    import_trace_file(source, SourceFormat.MOONCAKE, trace)
    records = [json.loads(line) for line in source.read_text().splitlines()]
    arrival_ms = np.array([r["timestamp"] for r in records], dtype=np.float64)
    input_tokens = np.array([r["input_length"] for r in records], dtype=np.int64)
    seen: set[int] = set()
    reused = 0
    for record in records:
        for index, block_hash in enumerate(record["hash_ids"]):
            if block_hash in seen:
                reused += min(512, record["input_length"] - index * 512)
        seen.update(record["hash_ids"])
    expected = _independent_figures(arrival_ms, input_tokens)

    stats = describe_trace(trace)

    assert stats.rows == len(records) == 12031
    assert stats.duration_s == pytest.approx(expected["duration_s"], rel=1e-12)
    assert stats.interarrival_cv == pytest.approx(expected["cv"], rel=1e-9)
    assert stats.peak_rate_per_s == expected["peak"]
    assert stats.input_tokens is not None
    assert stats.input_tokens.p99 == pytest.approx(expected["p99"], rel=1e-12)
    assert stats.input_tokens_total == int(input_tokens.sum())
    assert stats.prefix_reuse_ratio == pytest.approx(
        reused / int(input_tokens.sum()), rel=1e-12
    )


def test_azure_figures_match_independent(tmp_path: Path) -> None:
    source = _require(AZURE_FILE)
    trace = tmp_path / "azure.parquet"
    import_trace_file(source, SourceFormat.AZURE, trace)
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    times = np.array(
        [np.datetime64(row["TIMESTAMP"].replace(" ", "T"), "ns") for row in rows]
    )
    arrival_ms = (times - times.min()).astype(np.int64) / 1e6
    input_tokens = np.array([int(row["ContextTokens"]) for row in rows])
    expected = _independent_figures(arrival_ms, input_tokens)

    stats = describe_trace(trace)

    assert stats.rows == len(rows) == 8819
    assert stats.duration_s == pytest.approx(expected["duration_s"], rel=1e-12)
    assert stats.interarrival_cv == pytest.approx(expected["cv"], rel=1e-9)
    assert stats.peak_rate_per_s == expected["peak"]
    assert stats.input_tokens is not None
    assert stats.input_tokens.p99 == pytest.approx(expected["p99"], rel=1e-12)
    assert stats.prefix_reuse_ratio == 0.0
    assert stats.sessions == 0
    assert stats.trace_start == "2023-11-16T18:17:03.979960000Z"
