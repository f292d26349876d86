"""Tests of traces.analysis and `cmx analyze` on hand-made results files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay.results import RESULTS_SCHEMA, ResultRow, ResultsWriter
from traces import analyze_cli
from traces.analysis import AnalysisError, summarize
from traces.errors import TraceFormatError

# Hand-made rows: (status, actual_send_ms, wall_e2e_ms, tokens, ttft, tpot, e2e).
# r3 is a one-token output (NULL TPOT); r4 and r5 failed and must not count.
ROWS: list[tuple[Any, ...]] = [
    ("ok", 10.0, 500.0, 4, 100.0, 20.0, 160.0),
    ("ok", 20.0, 700.0, 8, 150.0, 30.0, 360.0),
    ("ok", 35.0, 400.0, 1, 90.0, None, 90.0),
    ("ok", 50.0, 1950.0, 16, 400.0, 10.0, 550.0),
    ("RESOURCE_EXHAUSTED", 60.0, 5.0, 0, None, None, None),
    ("UNAVAILABLE", 80.0, 300.0, 2, 999.0, None, None),
]
# Wall window: first send 10 ms, last end 50 + 1950 = 2000 ms, so 1.99 s.
WINDOW_S = 1.99


def write_results(
    path: Path,
    rows: list[tuple[Any, ...]],
    metadata: dict[bytes, bytes] | None = None,
) -> Path:
    """Write `rows` with the results columns named in ROWS, others filled in."""
    count = len(rows)
    columns: dict[str, list[Any]] = {
        "request_id": [f"r{index}" for index in range(count)],
        "status": [row[0] for row in rows],
        "actual_send_ms": [row[1] for row in rows],
        "wall_e2e_ms": [row[2] for row in rows],
        "output_tokens_received": [row[3] for row in rows],
        "ttft_ms": [row[4] for row in rows],
        "tpot_ms": [row[5] for row in rows],
        "e2e_ms": [row[6] for row in rows],
    }
    table = pa.table(columns)
    if metadata is None:
        metadata = {
            b"cmx.results.schema_version": b"1",
            b"cmx.results.run_config": json.dumps({"speedup": 1.0}).encode(),
        }
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def version_and_speedup(speedup: float) -> dict[bytes, bytes]:
    return {
        b"cmx.results.schema_version": b"1",
        b"cmx.results.run_config": json.dumps({"speedup": speedup}).encode(),
    }


def ok_values(column: int) -> list[float]:
    return [row[column] for row in ROWS if row[0] == "ok" and row[column] is not None]


def test_counts_and_window(tmp_path: Path) -> None:
    summary = summarize(write_results(tmp_path / "r.parquet", ROWS))

    assert summary["requests"] == 6
    assert summary["ok"] == 4
    assert summary["failed"] == 2
    assert summary["speedup"] == 1.0
    assert summary["duration_s"] == pytest.approx(WINDOW_S)


def test_throughput_counts_ok_rows(tmp_path: Path) -> None:
    summary = summarize(write_results(tmp_path / "r.parquet", ROWS))

    assert summary["wall_requests_per_s"] == pytest.approx(4 / WINDOW_S)
    assert summary["requests_per_s"] == pytest.approx(4 / WINDOW_S)
    assert summary["output_tokens_per_s"] == pytest.approx(29 / WINDOW_S)


def test_speedup_scales_to_trace_time(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", ROWS, version_and_speedup(4.0))
    summary = summarize(path)

    assert summary["speedup"] == 4.0
    assert summary["wall_requests_per_s"] == pytest.approx(4 / WINDOW_S)
    # The 1.99 s wall window covers 4 * 1.99 s of trace time.
    assert summary["requests_per_s"] == pytest.approx(4 / (4 * WINDOW_S))
    assert summary["output_tokens_per_s"] == pytest.approx(29 / (4 * WINDOW_S))


@pytest.mark.parametrize(("metric", "column"), [("ttft_ms", 4), ("tpot_ms", 5)])
def test_percentiles_match_numpy(tmp_path: Path, metric: str, column: int) -> None:
    summary = summarize(write_results(tmp_path / "r.parquet", ROWS))
    values = ok_values(column)

    for label, percent in [("p50", 50), ("p90", 90), ("p99", 99)]:
        expected = float(np.percentile(values, percent))
        assert summary[f"{metric}_{label}"] == pytest.approx(expected)


def test_percentiles_hand_values(tmp_path: Path) -> None:
    summary = summarize(write_results(tmp_path / "r.parquet", ROWS))

    # TPOT of ok rows without NULL: 10, 20, 30; p50 is 20, p90 is 20 + 0.8 * 10.
    assert summary["tpot_ms_p50"] == pytest.approx(20.0)
    assert summary["tpot_ms_p90"] == pytest.approx(28.0)
    # E2E of ok rows: 90, 160, 360, 550; p50 is halfway between 160 and 360.
    assert summary["e2e_ms_p50"] == pytest.approx(260.0)


def test_single_row(tmp_path: Path) -> None:
    summary = summarize(write_results(tmp_path / "r.parquet", [ROWS[2]]))

    assert summary["requests"] == 1
    assert summary["duration_s"] == pytest.approx(0.4)
    assert summary["wall_requests_per_s"] == pytest.approx(2.5)
    assert summary["ttft_ms_p50"] == 90.0
    assert summary["ttft_ms_p99"] == 90.0
    assert summary["tpot_ms_p50"] is None
    assert summary["e2e_ms_p90"] == 90.0


def test_only_failed_rows_null_percentiles(tmp_path: Path) -> None:
    summary = summarize(write_results(tmp_path / "r.parquet", ROWS[4:]))

    assert summary["requests"] == 2
    assert summary["ok"] == 0
    assert summary["requests_per_s"] == 0.0
    assert summary["output_tokens_per_s"] == 0.0
    assert summary["ttft_ms_p50"] is None


def test_empty_file(tmp_path: Path) -> None:
    empty = pa.table(
        {
            name: pa.array([], RESULTS_SCHEMA.field(name).type)
            for name in RESULTS_SCHEMA.names
        }
    )
    path = tmp_path / "empty.parquet"
    pq.write_table(empty.replace_schema_metadata(version_and_speedup(2.0)), path)
    summary = summarize(path)

    assert summary["requests"] == 0
    assert summary["ok"] == 0
    assert summary["failed"] == 0
    assert summary["duration_s"] is None
    assert summary["requests_per_s"] is None
    assert summary["wall_requests_per_s"] is None
    for metric in ["ttft_ms", "tpot_ms", "e2e_ms"]:
        for label in ["p50", "p90", "p99"]:
            assert summary[f"{metric}_{label}"] is None


def test_directory_and_glob_of_parts(tmp_path: Path) -> None:
    parts_dir = tmp_path / "results.parquet.parts"
    parts_dir.mkdir()
    write_results(parts_dir / "part-000000.parquet", ROWS[:3])
    write_results(parts_dir / "part-000001.parquet", ROWS[3:])

    assert summarize(parts_dir)["requests"] == 6
    assert summarize(str(parts_dir / "part-*.parquet"))["ok"] == 4


def test_writer_output_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    with ResultsWriter(path, {"speedup": 3.0}, flush_rows=1) as writer:
        for index, row in enumerate(ROWS):
            writer.append(_result_row(index, row))
    summary = summarize(path)

    assert summary["requests"] == 6
    assert summary["speedup"] == 3.0
    assert summary["e2e_ms_p50"] == pytest.approx(260.0)


def _result_row(index: int, row: tuple[Any, ...]) -> ResultRow:
    status, send_ms, wall_e2e_ms, tokens, ttft_ms, tpot_ms, e2e_ms = row
    return ResultRow(
        request_id=f"r{index}", arrival_ms=send_ms, scheduled_send_ms=send_ms,
        actual_send_ms=send_ms, send_lag_ms=0.0, input_tokens=10, output_tokens=4,
        output_tokens_received=tokens, status=status,
        error=None if status == "ok" else status.lower(), ttft_ms=ttft_ms,
        tpot_ms=tpot_ms, e2e_ms=e2e_ms, wall_ttft_ms=None, wall_e2e_ms=wall_e2e_ms,
        queue_ms=None, prefill_ms=None, kv_transfer_ms=None, cached_tokens=None,
        prefill_instance=None, decode_instance=None,
    )  # fmt: skip


def test_missing_file_points_to_parts(tmp_path: Path) -> None:
    (tmp_path / "results.parquet.parts").mkdir()

    with pytest.raises(TraceFormatError, match="flushed rows are in"):
        summarize(tmp_path / "results.parquet")


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="results file not found"):
        summarize(tmp_path / "absent.parquet")


def test_not_parquet_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.parquet"
    path.write_text("not parquet\n")

    with pytest.raises(TraceFormatError, match="cannot read as Parquet"):
        summarize(path)


def test_missing_columns_raise(tmp_path: Path) -> None:
    path = tmp_path / "trace.parquet"
    pq.write_table(pa.table({"request_id": ["a"], "arrival_ms": [0.0]}), path)

    with pytest.raises(TraceFormatError, match="missing results columns: status"):
        summarize(path)


def test_newer_schema_version_read_by_name(tmp_path: Path) -> None:
    metadata = {b"cmx.results.schema_version": b"9"}
    path = write_results(tmp_path / "r.parquet", ROWS, metadata)

    summary = summarize(path)

    assert summary["requests"] == 6
    assert summary["speedup"] == 1.0


def test_two_runs_refused_by_summarize(tmp_path: Path) -> None:
    write_results(tmp_path / "a.parquet", ROWS[:2], version_and_speedup(1.0))
    write_results(tmp_path / "b.parquet", ROWS[2:], version_and_speedup(2.0))

    with pytest.raises(AnalysisError, match=r"contains 2 runs \(a, b\)"):
        summarize(tmp_path)


def test_one_run_id_with_two_speedups_raises(tmp_path: Path) -> None:
    for name, speedup in [("a", 1.0), ("b", 2.0)]:
        metadata = {
            b"cmx.results.schema_version": b"1",
            b"cmx.results.run_config": json.dumps(
                {"speedup": speedup, "run_id": "same"}
            ).encode(),
        }
        write_results(tmp_path / f"{name}.parquet", ROWS[:2], metadata)

    with pytest.raises(TraceFormatError, match=r"different speed-ups \(1, 2\)"):
        summarize(tmp_path)


def run_analyze(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cmx")
    analyze_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


def test_cli_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_results(tmp_path / "r.parquet", ROWS)

    assert run_analyze(["analyze", str(path), "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    assert json.loads(printed) == summarize(path)


def test_cli_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_results(tmp_path / "r.parquet", [ROWS[2]])

    assert run_analyze(["analyze", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ttft_ms_p50" in printed
    assert "90.000" in printed
    assert "wall_requests_per_s" in printed
