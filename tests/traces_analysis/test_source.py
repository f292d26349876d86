"""Finding results files, labelling runs, skipping bad files, mixing schemas."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.traces_analysis.results_files import (
    results_metadata,
    write_results,
    write_trace_rows,
)
from traces.analysis import Analysis
from traces.errors import TraceFormatError
from traces.results_source import open_results

OK_ROW = {"ttft_ms": 10.0, "tpot_ms": 2.0, "e2e_ms": 30.0, "cached_tokens": 5}


def test_single_file_run_label(tmp_path: Path) -> None:
    source = open_results(write_results(tmp_path / "results.parquet", [OK_ROW]))

    assert source.runs == ("results",)
    assert source.skipped == ()
    assert source.warnings == ()


def test_parts_belong_to_their_results_file(tmp_path: Path) -> None:
    parts = tmp_path / "run1.parquet.parts"
    parts.mkdir()
    write_results(parts / "part-000000.parquet", [OK_ROW])
    write_results(parts / "part-000001.parquet", [OK_ROW, OK_ROW])

    from_dir = open_results(parts)
    from_glob = open_results(str(parts / "part-*.parquet"))

    assert from_dir.runs == ("run1",)
    assert from_glob.runs == ("run1",)
    assert len(from_dir.files) == 2


def test_runs_labelled_by_relative_path(tmp_path: Path) -> None:
    for name in ["a", "b"]:
        (tmp_path / name).mkdir()
        write_results(tmp_path / name / "results.parquet", [OK_ROW], speedup=2.0)

    source = open_results(str(tmp_path / "*" / "results.parquet"))

    assert source.runs == ("a/results", "b/results")
    assert source.speedup("a/results") == 2.0


def test_run_id_groups_worker_files(tmp_path: Path) -> None:
    write_results(tmp_path / "worker1.parquet", [OK_ROW], run_id="night")
    write_results(tmp_path / "worker2.parquet", [OK_ROW], run_id="night")

    with Analysis([tmp_path / "worker1.parquet", tmp_path / "worker2.parquet"]) as a:
        rows = a.run_query("summary").to_rows()

    assert [row["run"] for row in rows] == ["night"]
    assert rows[0]["requests"] == 2


def test_summary_row_per_run(tmp_path: Path) -> None:
    write_results(tmp_path / "fast.parquet", [OK_ROW] * 3, speedup=4.0)
    write_results(tmp_path / "slow.parquet", [OK_ROW], speedup=1.0)

    with Analysis(tmp_path) as analysis:
        rows = analysis.run_query("summary").to_rows()

    assert [(row["run"], row["requests"], row["speedup"]) for row in rows] == [
        ("fast", 3, 4.0),
        ("slow", 1, 1.0),
    ]


def test_unreadable_files_named_and_skipped(tmp_path: Path) -> None:
    write_results(tmp_path / "good.parquet", [OK_ROW, OK_ROW])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 truncated")
    pq.write_table(pa.table({"request_id": ["x"]}), tmp_path / "trace.parquet")

    with Analysis(tmp_path) as analysis:
        skipped = {
            Path(item.path).name: item.reason for item in analysis.source.skipped
        }
        rows = analysis.run_query("summary").to_rows()

    assert set(skipped) == {"broken.parquet", "trace.parquet"}
    assert "cannot read as Parquet" in skipped["broken.parquet"]
    assert "missing results columns: status" in skipped["trace.parquet"]
    assert rows[0]["requests"] == 2


def test_all_files_unreadable_lists_each(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_text("nope")
    pq.write_table(pa.table({"status": ["ok"]}), tmp_path / "b.parquet")

    with pytest.raises(TraceFormatError) as raised:
        open_results(tmp_path)
    message = str(raised.value)
    assert "no readable results file" in message
    assert "a.parquet: cannot read as Parquet" in message
    assert "b.parquet: missing results columns: request_id" in message


def test_incompatible_column_type_skipped(tmp_path: Path) -> None:
    write_results(tmp_path / "good.parquet", [OK_ROW])
    table = pa.table({"request_id": ["x"], "status": ["ok"], "ttft_ms": ["fast"]})
    pq.write_table(table, tmp_path / "odd.parquet")

    source = open_results(tmp_path)

    (skipped,) = source.skipped
    assert skipped.reason == (
        "column ttft_ms has type string; expected a type readable as DOUBLE"
    )


def test_bad_run_config_skipped(tmp_path: Path) -> None:
    write_results(tmp_path / "good.parquet", [OK_ROW])
    metadata = {b"cmx.results.run_config": b"[1, 2]"}
    write_results(tmp_path / "list.parquet", [OK_ROW], metadata=metadata)
    write_results(tmp_path / "zero.parquet", [OK_ROW], speedup=0.0)

    reasons = sorted(item.reason for item in open_results(tmp_path).skipped)

    assert reasons == [
        "cmx.results.run_config metadata is not a JSON object",
        "speedup 0.0 in the run config is not a number > 0",
    ]


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="results file not found"):
        open_results(tmp_path / "absent.parquet")
    with pytest.raises(TraceFormatError, match="no file matches this pattern"):
        open_results(str(tmp_path / "*.parquet"))
    with pytest.raises(TraceFormatError, match="directory contains no .parquet"):
        open_results(tmp_path)


def test_version_warnings(tmp_path: Path) -> None:
    write_results(tmp_path / "none.parquet", [OK_ROW], metadata={})
    newer = {b"cmx.results.schema_version": b"2"}
    write_results(tmp_path / "newer.parquet", [OK_ROW], metadata=newer)
    write_results(tmp_path / "current.parquet", [OK_ROW])

    warnings = sorted(open_results(tmp_path).warnings)

    assert len(warnings) == 2
    assert "newer.parquet: results schema version 2 is newer" in warnings[0]
    assert "none.parquet: no cmx.results.schema_version" in warnings[1]


def test_older_file_without_optional_columns(tmp_path: Path) -> None:
    # A file lacking the summary fields and instance ids, as an older or a
    # foreign writer might produce, next to a current one.
    dropped = ["queue_ms", "cached_tokens", "prefill_instance", "decode_instance"]
    write_results(tmp_path / "old.parquet", [OK_ROW], drop=dropped, run_id="r")
    write_results(tmp_path / "new.parquet", [OK_ROW], run_id="r")

    with Analysis(tmp_path) as analysis:
        rows = analysis.run_sql(
            "SELECT source_file, cached_tokens, queue_ms FROM results ORDER BY 1"
        ).to_rows()
        (summary,) = analysis.run_query("summary").to_rows()

    assert [row["cached_tokens"] for row in rows] == [5, None]
    # Only the row that reports cached tokens counts toward the hit rate.
    assert summary["cache_hit_rate"] == pytest.approx(5 / 100)


def test_newer_file_extra_columns_kept(tmp_path: Path) -> None:
    extra = {"worker_id": pa.array([7], pa.int32()), "fault": pa.array(["slow"])}
    write_results(tmp_path / "a.parquet", [OK_ROW], extra=extra, run_id="r")
    write_results(tmp_path / "b.parquet", [OK_ROW], run_id="r")

    with Analysis(tmp_path) as analysis:
        rows = analysis.run_sql(
            "SELECT worker_id, fault FROM results ORDER BY source_file"
        ).to_rows()

    assert rows == [
        {"worker_id": 7, "fault": "slow"},
        {"worker_id": None, "fault": None},
    ]


def test_integer_latency_column_cast(tmp_path: Path) -> None:
    table = pa.table(
        {
            "request_id": ["a", "b"],
            "status": ["ok", "ok"],
            "ttft_ms": pa.array([10, 30], pa.int32()),
            "input_tokens": pa.array([1.0, 2.0]),
        }
    )
    pq.write_table(
        table.replace_schema_metadata(results_metadata()), tmp_path / "r.parquet"
    )

    with Analysis(tmp_path / "r.parquet") as analysis:
        (summary,) = analysis.run_query("summary").to_rows()
        types = analysis.run_sql(
            "SELECT typeof(ttft_ms) AS ttft, typeof(input_tokens) AS tokens "
            "FROM results LIMIT 1"
        ).to_rows()

    assert summary["ttft_ms_p50"] == 20.0
    assert types == [{"ttft": "DOUBLE", "tokens": "BIGINT"}]


def test_trace_found_beside_results(tmp_path: Path) -> None:
    # The run config names the trace by a path relative to another directory.
    write_trace_rows(
        tmp_path / "trace.parquet",
        [{"request_id": "r0", "arrival_ms": 0.0, "input_tokens": 4}],
    )
    results = write_results(
        tmp_path / "results.parquet", [OK_ROW], trace_path="elsewhere/trace.parquet"
    )

    with Analysis(results) as analysis:
        assert analysis.traces.paths == {"results": str(tmp_path / "trace.parquet")}
        rows = analysis.run_sql(
            "SELECT r.request_id, t.input_tokens FROM results r "
            "JOIN trace t USING (run, request_id)"
        ).to_rows()

    assert rows == [{"request_id": "r0", "input_tokens": 4}]


def test_missing_trace_reported(tmp_path: Path) -> None:
    results = write_results(
        tmp_path / "results.parquet", [OK_ROW], trace_path="/nowhere/t.parquet"
    )

    with Analysis(results) as analysis:
        assert not analysis.traces.available
        assert analysis.traces.missing == {
            "results": "trace /nowhere/t.parquet not found; pass --trace"
        }
        assert analysis.run_sql("SELECT count(*) AS n FROM trace").to_rows() == [
            {"n": 0}
        ]
