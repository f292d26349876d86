"""Tests of trace statistics computed by DuckDB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from traces.errors import TraceFormatError
from traces.generator import GeneratorParams, generate_trace
from traces.schema import write_trace
from traces.stats import TokenQuantiles, describe_trace


def _write_rows(
    path: Path,
    arrival_ms: list[float],
    input_tokens: list[int],
    output_tokens: list[int],
) -> Path:
    count = len(arrival_ms)
    table = pa.table(
        {
            "request_id": [str(index) for index in range(count)],
            "arrival_ms": pa.array(arrival_ms, type=pa.float64()),
            "input_tokens": pa.array(input_tokens, type=pa.int64()),
            "output_tokens": pa.array(output_tokens, type=pa.int64()),
            "prefix_block_hashes": pa.array([[]] * count, type=pa.list_(pa.uint64())),
            "block_tokens": pa.array([0] * count, type=pa.int32()),
            "session_id": pa.nulls(count, type=pa.string()),
        }
    )
    write_trace(table, path)
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
    assert stats.input_tokens == TokenQuantiles(p50=7.0, p90=7.0, p99=7.0, max=7)


def test_empty_trace(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "empty.parquet", [], [], [])

    stats = describe_trace(path)

    assert stats.rows == 0
    assert stats.duration_s is None
    assert stats.mean_rate_per_s is None
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
