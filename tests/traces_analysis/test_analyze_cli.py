"""`cmx analyze` through the real entry point: formats, parameters, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cmx.cli import main
from tests.traces_analysis.results_files import write_results, write_trace_rows
from traces.queries import CANNED_QUERIES

ROWS = [
    {"request_id": "a", "ttft_ms": 100.0, "tpot_ms": 20.0, "e2e_ms": 300.0,
     "send_lag_ms": 1.0, "wall_e2e_ms": 1000.0},
    {"request_id": "b", "ttft_ms": 300.0, "tpot_ms": 40.0, "e2e_ms": 700.0,
     "actual_send_ms": 1000.0, "send_lag_ms": 3.0, "wall_e2e_ms": 1000.0},
]  # fmt: skip


@pytest.fixture
def results(tmp_path: Path) -> Path:
    trace = write_trace_rows(
        tmp_path / "trace.parquet",
        [
            {"request_id": "a", "arrival_ms": 0.0, "input_tokens": 100},
            {"request_id": "b", "arrival_ms": 5.0, "input_tokens": 100},
        ],
    )
    return write_results(tmp_path / "results.parquet", ROWS, trace_path=str(trace))


def analyze(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["analyze", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_default_summary_table(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = analyze([str(results)], capsys)

    assert status == 0
    assert err == ""
    assert out.startswith(f"summary: {results}\n")
    assert "ttft_ms_p50" in out
    assert "200.000" in out


def test_json_rows_per_run(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = analyze([str(results), "-q", "send_lag", "-f", "json"], capsys)

    assert status == 0
    rows = json.loads(out)
    assert len(rows) == 1
    assert rows[0]["run"] == "results"
    assert rows[0]["mean_ms"] == 2.0
    assert rows[0]["late"] == 0


def test_csv_with_params(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(results), "-q", "slo", "-p", "tpot_slo_ms=30", "-p", "input_edges=0"]
    status, out, _ = analyze([*argv, "-f", "csv"], capsys)

    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    overall = rows[-1]
    assert (overall["input_bucket"], overall["output_bucket"]) == ("all", "all")
    # TPOT 20 ms meets 30 ms, 40 ms does not.
    assert overall["slo_met"] == "1"
    assert overall["attainment"] == "0.5"


def test_parquet_output(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "windows.parquet"
    argv = [str(results), "-q", "timeseries", "-p", "window_s=1", "-f", "parquet"]
    status, _, err = analyze([*argv, "-o", str(output)], capsys)

    assert status == 0
    assert err == f"wrote 1 rows to {output}\n"
    table = pq.read_table(output)
    assert table.column("arrivals").to_pylist() == [2]
    assert table.schema.field("is_burst").type == "bool"


def test_parquet_needs_output(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = analyze([str(results), "-f", "parquet"], capsys)

    assert status == 2
    assert err == "cmx: error: --format parquet needs an output file (-o FILE)\n"


def test_ad_hoc_sql_with_trace(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = (
        "SELECT t.request_id, t.arrival_ms, r.ttft_ms FROM results r "
        "JOIN trace t USING (run, request_id) ORDER BY t.arrival_ms"
    )
    status, out, _ = analyze([str(results), "--sql", sql, "-f", "json"], capsys)

    assert status == 0
    assert json.loads(out) == [
        {"request_id": "a", "arrival_ms": 0.0, "ttft_ms": 100.0},
        {"request_id": "b", "arrival_ms": 5.0, "ttft_ms": 300.0},
    ]


def test_invalid_sql_one_line(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = analyze(
        [str(results), "--sql", "SELECT nope FROM results"], capsys
    )

    assert status == 2
    assert err.startswith("cmx: error: SQL failed: Binder Error")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "window_s"], "parameter 'window_s' is not NAME=VALUE"),
        (["-p", "colour=red"], "query 'summary' has no parameter 'colour'"),
        (["-q", "timeseries", "-p", "window_s=-5"], "window_s = '-5' is invalid"),
        (["--sql", "SELECT 1", "-p", "a=1"], "--param applies to canned queries"),
        (["-q", "slo", "--json"], "--json prints the summary only"),
    ],
)
def test_bad_options_one_line(
    results: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    status, _, err = analyze([str(results), *argv], capsys)

    assert status == 2
    assert message in err
    assert err.count("\n") == 1


def test_skipped_file_warned(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")

    status, _, err = analyze([str(results), str(broken), "-f", "json"], capsys)

    assert status == 0
    assert err.startswith(f"cmx: warning: skipped {broken}: cannot read as Parquet")


def test_no_readable_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")

    status, out, err = analyze([str(broken)], capsys)

    assert status == 2
    assert out == ""
    assert "no readable results file" in err


def test_json_shorthand_refuses_two_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_results(tmp_path / "a.parquet", ROWS)
    write_results(tmp_path / "b.parquet", ROWS)

    status, _, err = analyze([str(tmp_path), "--json"], capsys)

    assert status == 2
    assert "contains 2 runs (a, b)" in err


def test_list_queries(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = analyze(["--list-queries"], capsys)

    assert status == 0
    for query in CANNED_QUERIES:
        assert f"\n  {query.name}" in out
    assert "-p window_s=... window length, seconds of trace time (default" in out


def test_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = analyze([], capsys)

    assert status == 2
    assert "no results path given" in err
