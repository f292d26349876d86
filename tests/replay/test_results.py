"""Tests of replay.results: latency formulas, schema and the flushing writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from replay.errors import ReplayError
from replay.results import (
    RESULTS_SCHEMA,
    ResultRow,
    ResultsWriter,
    emulated_latencies,
    parts_dir_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """Monotonic clock that only moves when a test sets `now_s`."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make_row(request_id: str, status: str = "ok") -> ResultRow:
    ok = status == "ok"
    return ResultRow(
        request_id=request_id,
        arrival_ms=1000.0,
        scheduled_send_ms=0.0,
        actual_send_ms=0.5,
        send_lag_ms=0.5,
        input_tokens=64,
        output_tokens=4,
        output_tokens_received=4 if ok else 0,
        status=status,
        error=None if ok else "admission queue full",
        ttft_ms=100.0 if ok else None,
        tpot_ms=20.0 if ok else None,
        e2e_ms=160.0 if ok else None,
        wall_ttft_ms=1.5 if ok else None,
        wall_e2e_ms=3.0,
        queue_ms=5.0 if ok else None,
        prefill_ms=30.0 if ok else None,
        kv_transfer_ms=2.5 if ok else None,
        cached_tokens=512 if ok else None,
        prefill_instance=1 if ok else None,
        decode_instance=3 if ok else None,
    )


def count_rows(pattern: str) -> int:
    connection = duckdb.connect()
    rows = connection.execute(
        "SELECT count(*) FROM read_parquet($path)", {"path": pattern}
    ).fetchall()
    connection.close()
    return int(rows[0][0])


def test_latencies_of_four_tokens() -> None:
    latencies = emulated_latencies(100.0, 160.0, 4)

    assert latencies.ttft_ms == 100.0
    assert latencies.tpot_ms == 20.0
    assert latencies.e2e_ms == 160.0


def test_latencies_of_one_token_null_tpot() -> None:
    latencies = emulated_latencies(42.0, 42.0, 1)

    assert latencies.ttft_ms == 42.0
    assert latencies.tpot_ms is None
    assert latencies.e2e_ms == 42.0


def test_latencies_of_no_tokens_all_null() -> None:
    latencies = emulated_latencies(None, None, 0)

    assert latencies.ttft_ms is None
    assert latencies.tpot_ms is None
    assert latencies.e2e_ms is None


def test_row_fields_match_schema_columns() -> None:
    assert list(ResultRow.__dataclass_fields__) == RESULTS_SCHEMA.names


def test_row_count_flush_is_readable_before_close(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    writer = ResultsWriter(output_path, {"speedup": 1.0}, flush_rows=2)

    writer.append(make_row("a"))
    assert list(writer.parts_dir.glob("*.parquet")) == []
    writer.append(make_row("b"))
    writer.append(make_row("c"))

    assert count_rows(str(writer.parts_dir / "*.parquet")) == 2
    assert writer.rows_written == 3
    assert not output_path.exists()
    writer.close()


def test_interval_flush_uses_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = ResultsWriter(
        tmp_path / "results.parquet", {}, flush_interval_s=2.0, clock=clock
    )
    writer.append(make_row("a"))
    clock.now_s = 1.9
    assert writer.flush_if_due() is False

    clock.now_s = 2.0
    assert writer.flush_if_due() is True
    assert count_rows(str(writer.parts_dir / "*.parquet")) == 1
    assert writer.flush_if_due() is False
    writer.close()


def test_close_merges_parts_in_append_order(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    with ResultsWriter(output_path, {"speedup": 2.5}, flush_rows=2) as writer:
        for request_id in ["a", "b", "c", "d", "e"]:
            writer.append(make_row(request_id, "ok" if request_id != "c" else "X"))

    table = pq.read_table(output_path)
    assert table.column("request_id").to_pylist() == ["a", "b", "c", "d", "e"]
    assert table.column("status").to_pylist() == ["ok", "ok", "X", "ok", "ok"]
    assert table.column("tpot_ms").to_pylist() == [20.0, 20.0, None, 20.0, 20.0]
    assert table.schema.equals(RESULTS_SCHEMA, check_metadata=False)
    assert not parts_dir_for(output_path).exists()
    assert list(tmp_path.iterdir()) == [output_path]


def test_metadata_has_version_and_run_config(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    run_config = {"speedup": 2.5, "target": "127.0.0.1:1", "limit": None}
    with ResultsWriter(output_path, run_config) as writer:
        writer.append(make_row("a"))

    metadata = pq.read_schema(output_path).metadata
    assert metadata[b"cmx.results.schema_version"] == b"1"
    assert json.loads(metadata[b"cmx.results.run_config"]) == run_config


def test_empty_run_writes_readable_file(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    with ResultsWriter(output_path, {}):
        pass

    assert count_rows(str(output_path)) == 0
    assert pq.read_schema(output_path).names == RESULTS_SCHEMA.names


def test_close_on_exception_still_writes(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    with pytest.raises(KeyError), ResultsWriter(output_path, {}) as writer:
        writer.append(make_row("a"))
        raise KeyError("boom")

    assert count_rows(str(output_path)) == 1


def test_leftover_parts_dir_is_rejected(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    parts_dir_for(output_path).mkdir()

    with pytest.raises(ReplayError, match="already exists"):
        ResultsWriter(output_path, {})


def test_missing_output_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="output directory .* not found"):
        ResultsWriter(tmp_path / "absent" / "results.parquet", {})


def test_append_after_close_raises(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path / "results.parquet", {})
    writer.close()

    with pytest.raises(RuntimeError, match="closed"):
        writer.append(make_row("a"))


KILLED_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from tests.replay.test_results import make_row
    from replay.results import ResultsWriter

    writer = ResultsWriter(sys.argv[1], {"speedup": 1.0}, flush_rows=3)
    for index in range(4):
        writer.append(make_row(f"r{index}"))
    print("flushed", flush=True)
    time.sleep(30)
    """
)


def test_sigkill_keeps_flushed_rows(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    writer_process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER_SCRIPT, str(output_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer_process.stdout is not None
        assert writer_process.stdout.readline().strip() == "flushed"
    finally:
        os.kill(writer_process.pid, signal.SIGKILL)
        writer_process.wait(timeout=10)
        writer_process.stdout.close()  # type: ignore[union-attr]

    # Three rows were flushed; the fourth was pending when the process died.
    assert count_rows(str(parts_dir_for(output_path) / "*.parquet")) == 3
    assert not output_path.exists()


def test_extra_metadata_is_stored_with_prefix(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    extra = {"trace": '{"sha256": "ab"}', "versions": '{"cmx": "1"}'}
    with ResultsWriter(output_path, {}, metadata=extra) as writer:
        writer.append(make_row("a"))

    metadata = pq.read_schema(output_path).metadata
    assert metadata[b"cmx.results.trace"] == b'{"sha256": "ab"}'
    assert metadata[b"cmx.results.versions"] == b'{"cmx": "1"}'
    assert metadata[b"cmx.results.schema_version"] == b"1"


def test_new_columns_default_to_null(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    with ResultsWriter(output_path, {}) as writer:
        writer.append(make_row("a"))

    row = pq.read_table(output_path).to_pylist()[0]
    for column in ("itl_ms_p50", "normalized_latency_ms", "measured", "slo_met"):
        assert row[column] is None


def test_flush_from_other_thread_keeps_every_row(tmp_path: Path) -> None:
    output_path = tmp_path / "results.parquet"
    writer = ResultsWriter(output_path, {})
    stop = threading.Event()

    def flush_repeatedly() -> None:
        while not stop.is_set():
            writer.flush()

    flusher = threading.Thread(target=flush_repeatedly)
    flusher.start()
    try:
        for index in range(3000):
            writer.append(make_row(f"r{index}"), flush=False)
    finally:
        stop.set()
        flusher.join()
    writer.close()

    ids = pq.read_table(output_path).column("request_id").to_pylist()
    assert ids == [f"r{index}" for index in range(3000)]
    assert writer.rows_written == 3000
