"""The whole path over loopback: trace -> `cmx serve` -> `cmx replay` -> analyze."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from cmx.cli import main
from cmx.demo import start_server

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MOONCAKE = DATA / "mooncake_conversation.jsonl"


def replay_rows(results: Path) -> tuple[int, int, int]:
    """Return (rows, ok rows, distinct request ids) of a results file."""
    connection = duckdb.connect()
    row = connection.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'ok'), "
        "count(DISTINCT request_id) FROM read_parquet(?)",
        [str(results)],
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def analyze_json(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, object]:
    capsys.readouterr()
    assert main(["analyze", str(results), "--json"]) == 0
    summary: dict[str, object] = json.loads(capsys.readouterr().out)
    return summary


def test_generated_trace_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.parquet"
    results = tmp_path / "results.parquet"
    generate = ["trace", "gen", "-o", str(trace), "--requests", "40", "--rate", "8"]
    assert main([*generate, "--seed", "7"]) == 0

    with start_server(tmp_path / "server.log", time_scale=10.0) as target:
        replay = ["replay", str(trace), "--target", target, "--speedup", "10"]
        assert main([*replay, "-o", str(results)]) == 0

    assert replay_rows(results) == (40, 40, 40)
    summary = analyze_json(results, capsys)
    assert summary["requests"] == 40
    assert summary["failed"] == 0
    ttft_p50 = summary["ttft_ms_p50"]
    assert isinstance(ttft_p50, float) and ttft_p50 > 0


def test_limit_replays_exact_count(tmp_path: Path) -> None:
    trace = tmp_path / "trace.parquet"
    results = tmp_path / "results.parquet"
    assert main(["trace", "gen", "-o", str(trace), "--requests", "30"]) == 0

    with start_server(tmp_path / "server.log", time_scale=20.0) as target:
        replay = ["replay", str(trace), "--target", target, "--speedup", "20"]
        assert main([*replay, "--limit", "12", "-o", str(results)]) == 0

    assert replay_rows(results) == (12, 12, 12)


def mooncake_window(
    tmp_path: Path, minutes: float, capsys: pytest.CaptureFixture[str]
) -> dict[str, object]:
    if not MOONCAKE.is_file():
        pytest.skip(f"real trace not found at {MOONCAKE} (../shared/data is absent)")
    trace = tmp_path / "mooncake.parquet"
    results = tmp_path / "results.parquet"
    imported = ["trace", "import", "--format", "mooncake", str(MOONCAKE)]
    assert main([*imported, "-o", str(trace)]) == 0
    window_s = minutes * 60

    connection = duckdb.connect()
    expected = connection.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE arrival_ms < ?",
        [str(trace), window_s * 1000],
    ).fetchone()
    assert expected is not None

    with start_server(tmp_path / "server.log", time_scale=10.0) as target:
        replay = ["replay", str(trace), "--target", target, "--speedup", "10"]
        window = ["--duration-s", str(window_s), "-o", str(results)]
        assert main([*replay, *window]) == 0

    count = int(expected[0])
    assert replay_rows(results) == (count, count, count)
    return analyze_json(results, capsys)


def test_mooncake_two_minutes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = mooncake_window(tmp_path, 2.0, capsys)
    assert summary["failed"] == 0


@pytest.mark.slow
def test_mooncake_ten_minutes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = mooncake_window(tmp_path, 10.0, capsys)
    assert summary["failed"] == 0
    print(json.dumps(summary, indent=2))
