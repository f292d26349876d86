"""The canned queries on small results files, against hand-worked values.

Percentiles are checked against numpy's default (linear) method, the
definition the queries state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.traces_analysis.results_files import write_results, write_trace_rows
from traces.analysis import Analysis, AnalysisError
from traces.queries import CANNED_QUERIES


def run_query(
    results: Path, name: str, trace: Path | None = None, **params: object
) -> list[dict[str, Any]]:
    with Analysis(results, trace_path=trace) as analysis:
        return analysis.run_query(name, params).to_rows()


def assert_no_nan(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), f"{key} = {value} in {row}"


# --- percentiles ------------------------------------------------------------

LATENCY_ROWS: list[dict[str, Any]] = [
    {"ttft_ms": 100.0, "tpot_ms": 20.0, "e2e_ms": 160.0, "queue_ms": 1.0},
    {"ttft_ms": 150.0, "tpot_ms": 30.0, "e2e_ms": 360.0, "queue_ms": 2.0},
    {"ttft_ms": 90.0, "tpot_ms": None, "e2e_ms": 90.0, "queue_ms": 4.0},
    {"ttft_ms": 400.0, "tpot_ms": 10.0, "e2e_ms": 550.0, "queue_ms": 8.0},
    {"status": "UNAVAILABLE", "ttft_ms": 999.0},
]


def test_percentiles_match_numpy(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", LATENCY_ROWS)
    rows = {row["metric"]: row for row in run_query(path, "percentiles")}

    for metric in ["ttft_ms", "tpot_ms", "e2e_ms", "queue_ms"]:
        values = [
            row[metric]
            for row in LATENCY_ROWS
            if row.get("status", "ok") == "ok" and row[metric] is not None
        ]
        described = rows[metric]
        assert described["samples"] == len(values)
        assert described["mean"] == pytest.approx(np.mean(values))
        assert described["min"] == min(values)
        assert described["max"] == max(values)
        for label, percent in [("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)]:
            expected = float(np.percentile(values, percent))
            assert described[label] == pytest.approx(expected), (metric, label)
        assert described["p999"] == pytest.approx(np.percentile(values, 99.9))


def test_percentiles_hand_values(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", LATENCY_ROWS)
    rows = {row["metric"]: row for row in run_query(path, "percentiles")}

    # TTFT of ok rows sorted: 90, 100, 150, 400; h = 0.5 * 3 = 1.5.
    assert rows["ttft_ms"]["p50"] == pytest.approx(125.0)
    # h = 0.9 * 3 = 2.7: 150 + 0.7 * 250.
    assert rows["ttft_ms"]["p90"] == pytest.approx(325.0)
    # The failed row's 999 ms is not an ok latency.
    assert rows["ttft_ms"]["max"] == 400.0
    # TPOT skips the NULL of the one-token output: 10, 20, 30.
    assert rows["tpot_ms"]["samples"] == 3
    assert rows["tpot_ms"]["p50"] == pytest.approx(20.0)


def test_percentiles_null_column_has_zero_samples(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", LATENCY_ROWS)
    rows = {row["metric"]: row for row in run_query(path, "percentiles")}

    # prefill_ms is NULL in every row: no values, so NULL statistics.
    assert rows["prefill_ms"]["samples"] == 0
    assert rows["prefill_ms"]["mean"] is None
    assert rows["prefill_ms"]["p50"] is None
    assert rows["prefill_ms"]["max"] is None


def test_percentiles_single_row(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", [LATENCY_ROWS[2]])
    rows = {row["metric"]: row for row in run_query(path, "percentiles")}

    assert rows["ttft_ms"]["samples"] == 1
    assert rows["ttft_ms"]["p50"] == 90.0
    assert rows["ttft_ms"]["p999"] == 90.0
    assert rows["tpot_ms"]["samples"] == 0
    assert rows["tpot_ms"]["p99"] is None


# --- time series ------------------------------------------------------------

# Worked by hand with 10 s windows (trace seconds from the first arrival):
#   A arrives at 0, first token at 1 s, ends at 5 s, 5 tokens.
#   B arrives at 8 s, first token at 9 s, ends at 22 s, 7 tokens.
#   C arrives at 12 s and fails after 3 s of wall time, no tokens.
#   D arrives at 25 s, its one token at 25.5 s.
TIMESERIES_ROWS: list[dict[str, Any]] = [
    {"arrival_ms": 0.0, "ttft_ms": 1000.0, "tpot_ms": 1000.0, "e2e_ms": 5000.0,
     "output_tokens_received": 5},
    {"arrival_ms": 8000.0, "ttft_ms": 1000.0, "tpot_ms": 13000.0 / 6,
     "e2e_ms": 14000.0, "output_tokens_received": 7},
    {"arrival_ms": 12000.0, "status": "UNAVAILABLE", "wall_e2e_ms": 3000.0,
     "output_tokens_received": 0},
    {"arrival_ms": 25000.0, "ttft_ms": 500.0, "e2e_ms": 500.0,
     "output_tokens_received": 1},
]  # fmt: skip


def test_timeseries_windows(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", TIMESERIES_ROWS)
    rows = run_query(path, "timeseries", window_s=10)

    assert [row["window_start_s"] for row in rows] == [0.0, 10.0, 20.0]
    assert [row["arrivals"] for row in rows] == [2, 1, 1]
    assert [row["requests_per_s"] for row in rows] == [0.2, 0.1, 0.1]
    assert [row["ok"] for row in rows] == [2, 0, 1]
    assert [row["failed"] for row in rows] == [0, 1, 0]


def test_timeseries_in_flight(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", TIMESERIES_ROWS)
    rows = run_query(path, "timeseries", window_s=10)

    # Window 0: A for 5 s, B for 2 s. Window 1: B for 10 s, C for 3 s.
    # Window 2: B for 2 s, D for 0.5 s.
    in_flight = [row["in_flight"] for row in rows]
    assert in_flight == pytest.approx([0.7, 1.3, 0.25])


def test_timeseries_tokens_spread(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", TIMESERIES_ROWS)
    rows = run_query(path, "timeseries", window_s=10)

    # A: all 5 tokens in window 0. B: first token in window 0, the other 6
    # spread over (9 s, 22 s]: 1/13 in window 0, 10/13 in 1, 2/13 in 2.
    # D: its token in window 2.
    expected = [(5 + 1 + 6 / 13) / 10, (60 / 13) / 10, (12 / 13 + 1) / 10]
    tokens_per_s = [row["output_tokens_per_s"] for row in rows]
    assert tokens_per_s == pytest.approx(expected)
    assert sum(tokens_per_s) * 10 == pytest.approx(13.0)


def test_timeseries_latency_by_arrival_window(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", TIMESERIES_ROWS)
    rows = run_query(path, "timeseries", window_s=10)

    assert rows[0]["ttft_p50_ms"] == 1000.0
    tpot_values = [1000.0, 13000.0 / 6]
    assert rows[0]["tpot_p50_ms"] == pytest.approx(np.percentile(tpot_values, 50))
    assert rows[0]["tpot_p99_ms"] == pytest.approx(np.percentile(tpot_values, 99))
    # Window 1 has only the failed request: no latency.
    assert rows[1]["ttft_p50_ms"] is None
    assert rows[2]["ttft_p99_ms"] == 500.0
    assert rows[2]["tpot_p50_ms"] is None


def test_timeseries_bursts(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", TIMESERIES_ROWS)

    # 4 arrivals over 3 windows: a mean of 4/3 per window.
    default = run_query(path, "timeseries", window_s=10)
    assert [row["is_burst"] for row in default] == [False, False, False]
    # A factor of 1.5 puts the bar at 2 arrivals, which window 0 reaches.
    lower = run_query(path, "timeseries", window_s=10, burst_factor=1.5)
    assert [row["is_burst"] for row in lower] == [True, False, False]


def test_timeseries_failed_span_in_trace_time(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", TIMESERIES_ROWS, speedup=2.0)
    rows = run_query(path, "timeseries", window_s=10)

    # At speed-up 2, C's 3 s of wall time are 6 s of trace time.
    assert rows[1]["in_flight"] == pytest.approx((10 + 6) / 10)


def test_timeseries_single_row(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", [TIMESERIES_ROWS[3]])
    rows = run_query(path, "timeseries", window_s=10)

    assert len(rows) == 1
    assert rows[0]["arrivals"] == 1
    assert rows[0]["output_tokens_per_s"] == pytest.approx(0.1)
    assert rows[0]["in_flight"] == pytest.approx(0.05)
    assert rows[0]["is_burst"] is False


# --- SLO attainment ---------------------------------------------------------

# Buckets: prompt [0, 100) and [100, inf); output [0, 10) and [10, inf).
# SLOs: TTFT 200 ms, TPOT 50 ms. The run's wall window is 10 s.
SLO_ROWS: list[dict[str, Any]] = [
    # Met.
    {"input_tokens": 50, "output_tokens": 5, "ttft_ms": 100.0, "tpot_ms": 40.0},
    # TTFT too long.
    {"input_tokens": 50, "output_tokens": 20, "ttft_ms": 300.0, "tpot_ms": 40.0},
    # TPOT too long.
    {"input_tokens": 150, "output_tokens": 5, "ttft_ms": 100.0, "tpot_ms": 60.0},
    # Met: a one-token output has no TPOT to check.
    {"input_tokens": 150, "output_tokens": 20, "ttft_ms": 150.0, "tpot_ms": None,
     "wall_e2e_ms": 10000.0},
    # Failed requests never meet the SLO.
    {"input_tokens": 150, "output_tokens": 20, "status": "DEADLINE_EXCEEDED"},
]  # fmt: skip
SLO_PARAMS: dict[str, Any] = {
    "ttft_slo_ms": 200,
    "tpot_slo_ms": 50,
    "input_edges": "0,100",
    "output_edges": [0, 10],
}


def slo_by_bucket(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["input_bucket"], row["output_bucket"]): row for row in rows}


def test_slo_attainment_by_bucket(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", SLO_ROWS)
    rows = run_query(path, "slo", **SLO_PARAMS)
    by_bucket = slo_by_bucket(rows)

    expected = {
        ("[0, 100)", "[0, 10)"): (1, 1, 1.0),
        ("[0, 100)", "[10, inf)"): (1, 0, 0.0),
        ("[0, 100)", "all"): (2, 1, 0.5),
        ("[100, inf)", "[0, 10)"): (1, 0, 0.0),
        ("[100, inf)", "[10, inf)"): (2, 1, 0.5),
        ("[100, inf)", "all"): (3, 1, 1 / 3),
        ("all", "[0, 10)"): (2, 1, 0.5),
        ("all", "[10, inf)"): (3, 1, 1 / 3),
        ("all", "all"): (5, 2, 0.4),
    }
    assert set(by_bucket) == set(expected)
    for bucket, (requests, met, attainment) in expected.items():
        row = by_bucket[bucket]
        assert row["requests"] == requests, bucket
        assert row["slo_met"] == met, bucket
        assert row["attainment"] == pytest.approx(attainment), bucket


def test_slo_goodput_and_order(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", SLO_ROWS)
    rows = run_query(path, "slo", **SLO_PARAMS)

    overall = rows[-1]
    assert (overall["input_bucket"], overall["output_bucket"]) == ("all", "all")
    assert overall["ok"] == 4
    # 2 requests met the SLOs in a 10 s window.
    assert overall["goodput_per_s"] == pytest.approx(0.2)
    assert [(row["input_bucket"], row["output_bucket"]) for row in rows[:3]] == [
        ("[0, 100)", "[0, 10)"),
        ("[0, 100)", "[10, inf)"),
        ("[0, 100)", "all"),
    ]


def test_slo_unchecked_when_none(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", SLO_ROWS)
    no_ttft = {**SLO_PARAMS, "ttft_slo_ms": "none"}
    no_slo = {**SLO_PARAMS, "ttft_slo_ms": None, "tpot_slo_ms": None}

    # Without the TTFT SLO the second row meets it too.
    assert (
        slo_by_bucket(run_query(path, "slo", **no_ttft))[("all", "all")]["slo_met"] == 3
    )
    # Without any SLO every ok request counts.
    assert (
        slo_by_bucket(run_query(path, "slo", **no_slo))[("all", "all")]["slo_met"] == 4
    )


def test_slo_goodput_in_trace_time(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", SLO_ROWS, speedup=4.0)
    rows = run_query(path, "slo", **SLO_PARAMS)

    # The 10 s wall window covers 40 s of trace.
    assert rows[-1]["goodput_per_s"] == pytest.approx(2 / 40)


def test_slo_bad_edges_rejected(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", SLO_ROWS)

    with pytest.raises(AnalysisError, match="input_edges = '100,0' is invalid"):
        run_query(path, "slo", input_edges="100,0")
    with pytest.raises(AnalysisError, match="starting at 0"):
        run_query(path, "slo", output_edges="5,10")
    with pytest.raises(AnalysisError, match="tpot_slo_ms = '-1' is invalid"):
        run_query(path, "slo", tpot_slo_ms="-1")


# --- cache hits against ideal reuse ----------------------------------------

# Blocks of 4 tokens. t3 and t4 arrive together; t3 comes first in the file.
CACHE_TRACE: list[dict[str, Any]] = [
    {"request_id": "t1", "arrival_ms": 0.0, "input_tokens": 8,
     "prefix_block_hashes": [1, 2], "block_tokens": 4, "session_id": "s1"},
    {"request_id": "t2", "arrival_ms": 10.0, "input_tokens": 10,
     "prefix_block_hashes": [1, 2, 3], "block_tokens": 4, "session_id": "s1"},
    {"request_id": "t3", "arrival_ms": 20.0, "input_tokens": 6,
     "prefix_block_hashes": [1, 5], "block_tokens": 4, "session_id": "s2"},
    {"request_id": "t4", "arrival_ms": 20.0, "input_tokens": 8,
     "prefix_block_hashes": [5, 6], "block_tokens": 4, "session_id": "s1"},
    {"request_id": "t5", "arrival_ms": 30.0, "input_tokens": 3},
]  # fmt: skip
# Ideal reuse, in tokens: t1 reuses nothing. t2 reuses blocks 1 and 2 (8
# tokens), and its new block 3 covers the last 2 tokens. t3 reuses block 1
# (4 of 6), t4 reuses block 5 from t3 (4 of 8), and t5 has no hashes.
IDEAL_REUSED_TOKENS = {"t1": 0, "t2": 8, "t3": 4, "t4": 4, "t5": 0}
CACHE_RESULTS: list[dict[str, Any]] = [
    {"request_id": "t1", "input_tokens": 8, "cached_tokens": 0, "ttft_ms": 10.0},
    {"request_id": "t2", "input_tokens": 10, "cached_tokens": 8, "ttft_ms": 20.0},
    {"request_id": "t3", "input_tokens": 6, "cached_tokens": 0, "ttft_ms": 30.0},
    {"request_id": "t4", "input_tokens": 8, "cached_tokens": 4, "ttft_ms": 40.0},
    {"request_id": "t5", "input_tokens": 3, "cached_tokens": None, "ttft_ms": 50.0},
]


@pytest.fixture
def cache_files(tmp_path: Path) -> tuple[Path, Path]:
    trace = write_trace_rows(tmp_path / "trace.parquet", CACHE_TRACE)
    results = write_results(
        tmp_path / "results.parquet", CACHE_RESULTS, trace_path=str(trace)
    )
    return results, trace


def test_trace_reuse_view(cache_files: tuple[Path, Path]) -> None:
    results, _ = cache_files
    with Analysis(results) as analysis:
        rows = analysis.run_sql(
            "SELECT request_id, reused_tokens, reuse_ratio, prefix_blocks "
            "FROM trace_reuse ORDER BY request_id"
        ).to_rows()

    assert {row["request_id"]: row["reused_tokens"] for row in rows} == (
        IDEAL_REUSED_TOKENS
    )
    ratios = [row["reuse_ratio"] for row in rows]
    assert ratios == pytest.approx([0.0, 0.8, 4 / 6, 0.5, 0.0])
    assert [row["prefix_blocks"] for row in rows] == [2, 3, 2, 2, 0]


def test_cache_by_reuse_bucket(cache_files: tuple[Path, Path]) -> None:
    results, _ = cache_files
    rows = run_query(results, "cache", reuse_edges="0,0.5")
    by_bucket = {row["reuse_bucket"]: row for row in rows}

    low, high, overall = by_bucket["[0.0, 0.5)"], by_bucket["[0.5, inf)"], rows[-1]
    # t1 and t5: no reuse; t5's unknown cached tokens leave the hit rate.
    assert (low["requests"], low["input_tokens"], low["reusable_tokens"]) == (2, 11, 0)
    assert low["hit_rate"] == 0.0
    assert low["captured_share"] is None
    # t2, t3 and t4: 16 of 24 tokens reusable, 12 cached.
    assert (high["requests"], high["input_tokens"], high["cached_tokens"]) == (
        3,
        24,
        12,
    )
    assert high["ideal_reuse"] == pytest.approx(16 / 24)
    assert high["hit_rate"] == pytest.approx(0.5)
    assert high["captured_share"] == pytest.approx(0.75)
    assert overall["reuse_bucket"] == "all"
    assert overall["ideal_reuse"] == pytest.approx(16 / 35)
    assert overall["hit_rate"] == pytest.approx(12 / 32)
    assert overall["ttft_p50_ms"] == pytest.approx(30.0)
    assert overall["ttft_p99_ms"] == pytest.approx(
        np.percentile([10, 20, 30, 40, 50], 99)
    )


def test_cache_needs_trace(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", CACHE_RESULTS)

    with pytest.raises(AnalysisError, match="query 'cache' needs the trace"):
        run_query(path, "cache")


def test_cache_trace_given_explicitly(cache_files: tuple[Path, Path]) -> None:
    _, trace = cache_files
    results = write_results(trace.parent / "other.parquet", CACHE_RESULTS)

    rows = run_query(results, "cache", trace=trace, reuse_edges="0")
    assert rows[0]["reusable_tokens"] == 16


# --- turns ------------------------------------------------------------------


def test_turns_by_session_order(cache_files: tuple[Path, Path], tmp_path: Path) -> None:
    _, trace = cache_files
    extra = {"request_id": "x9", "input_tokens": 7, "ttft_ms": 60.0}
    results = write_results(tmp_path / "turns.parquet", [*CACHE_RESULTS, extra])

    rows = run_query(results, "turns", trace=trace, max_turn=3)
    by_turn = {row["turn"]: row for row in rows}

    # s1: t1, t2, t4 are turns 1, 2, 3; s2: t3 is turn 1; t5 has no session.
    assert [row["turn"] for row in rows] == [
        "1", "2", "3+", "no session", "not in trace"
    ]  # fmt: skip
    assert by_turn["1"]["requests"] == 2
    assert by_turn["1"]["ttft_p50_ms"] == pytest.approx(20.0)
    assert by_turn["1"]["mean_input_tokens"] == pytest.approx(7.0)
    assert by_turn["2"]["hit_rate"] == pytest.approx(0.8)
    assert by_turn["3+"]["hit_rate"] == pytest.approx(0.5)
    assert by_turn["no session"]["hit_rate"] is None
    assert by_turn["not in trace"]["requests"] == 1


# --- instances and send lag -------------------------------------------------

INSTANCE_ROWS: list[dict[str, Any]] = [
    {"prefill_instance": 0, "decode_instance": 0, "input_tokens": 100,
     "output_tokens_received": 10, "queue_ms": 2.0, "ttft_ms": 10.0},
    {"prefill_instance": 0, "decode_instance": 1, "input_tokens": 300,
     "output_tokens_received": 30, "queue_ms": 4.0, "ttft_ms": 30.0},
    {"prefill_instance": 1, "decode_instance": 1, "input_tokens": 200,
     "output_tokens_received": 20, "queue_ms": 9.0, "ttft_ms": 20.0},
    {"status": "CANCELLED", "prefill_instance": None, "decode_instance": None},
]  # fmt: skip


def test_instances_load(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet", INSTANCE_ROWS)
    rows = run_query(path, "instances")

    keys = [(row["role"], row["instance"]) for row in rows]
    assert keys == [("prefill", 0), ("prefill", 1), ("decode", 0), ("decode", 1)]
    prefill_0, prefill_1, decode_0, decode_1 = rows
    assert prefill_0["requests"] == 2
    assert prefill_0["share"] == pytest.approx(2 / 3)
    assert prefill_0["input_tokens"] == 400
    assert prefill_0["mean_queue_ms"] == pytest.approx(3.0)
    assert prefill_0["ttft_p50_ms"] == pytest.approx(20.0)
    assert prefill_1["share"] == pytest.approx(1 / 3)
    assert decode_0["output_tokens"] == 10
    assert decode_1["output_tokens"] == 50
    assert decode_1["ttft_p99_ms"] == pytest.approx(np.percentile([30, 20], 99))


def test_send_lag(tmp_path: Path) -> None:
    lags = [0.0, 5.0, 20.0, 40.0]
    path = write_results(tmp_path / "r.parquet", [{"send_lag_ms": lag} for lag in lags])
    (row,) = run_query(path, "send_lag", late_ms=10)

    assert row["requests"] == 4
    assert row["mean_ms"] == pytest.approx(16.25)
    assert row["p50_ms"] == pytest.approx(12.5)
    assert row["p90_ms"] == pytest.approx(34.0)
    assert row["p99_ms"] == pytest.approx(39.4)
    assert row["max_ms"] == 40.0
    assert row["late"] == 2
    assert row["late_share"] == 0.5


# --- every query: empty files, single rows, NULLs ---------------------------


@pytest.mark.parametrize("query", [query.name for query in CANNED_QUERIES])
def test_empty_file_gives_no_rows(
    tmp_path: Path, cache_files: tuple[Path, Path], query: str
) -> None:
    _, trace = cache_files
    path = write_results(tmp_path / "empty.parquet", [])

    assert run_query(path, query, trace=trace) == []


@pytest.mark.parametrize("query", [query.name for query in CANNED_QUERIES])
def test_single_row_defined_without_nan(
    tmp_path: Path, cache_files: tuple[Path, Path], query: str
) -> None:
    _, trace = cache_files
    row = {**CACHE_RESULTS[0], "prefill_instance": 0, "decode_instance": 0}
    path = write_results(tmp_path / "one.parquet", [row])

    rows = run_query(path, query, trace=trace)
    assert rows
    assert_no_nan(rows)


@pytest.mark.parametrize("query", [query.name for query in CANNED_QUERIES])
def test_all_null_latencies_without_nan(
    tmp_path: Path, cache_files: tuple[Path, Path], query: str
) -> None:
    _, trace = cache_files
    failed = [
        {"request_id": "t1", "status": "UNAVAILABLE", "output_tokens_received": 0},
        {"request_id": "t2", "status": "CANCELLED", "output_tokens_received": 0},
    ]
    path = write_results(tmp_path / "failed.parquet", failed)

    rows = run_query(path, query, trace=trace)
    assert_no_nan(rows)


# --- warm-up and cool-down rows ---------------------------------------------

# A replay with a warm-up marks its first rows measured = false.
MEASURED_ROWS: list[dict[str, Any]] = [
    {"arrival_ms": 0.0, "ttft_ms": 5000.0, "e2e_ms": 5000.0, "send_lag_ms": 50.0},
    {"arrival_ms": 1000.0, "ttft_ms": 100.0, "e2e_ms": 200.0, "send_lag_ms": 1.0},
    {"arrival_ms": 2000.0, "ttft_ms": 300.0, "e2e_ms": 400.0, "send_lag_ms": 3.0},
]
MEASURED_FLAGS = pa.array([False, True, True])


def test_unmeasured_rows_left_out(tmp_path: Path) -> None:
    path = write_results(
        tmp_path / "r.parquet", MEASURED_ROWS, extra={"measured": MEASURED_FLAGS}
    )

    (summary,) = run_query(path, "summary")
    assert summary["requests"] == 2
    assert summary["ttft_ms_p50"] == pytest.approx(200.0)
    slo_all = run_query(path, "slo", ttft_slo_ms=1000)[-1]
    assert (slo_all["requests"], slo_all["slo_met"]) == (2, 2)


def test_unmeasured_rows_kept_in_load(tmp_path: Path) -> None:
    path = write_results(
        tmp_path / "r.parquet", MEASURED_ROWS, extra={"measured": MEASURED_FLAGS}
    )

    windows = run_query(path, "timeseries", window_s=10)
    (send_lag,) = run_query(path, "send_lag")

    assert windows[0]["arrivals"] == 3
    assert send_lag["requests"] == 3
    assert send_lag["max_ms"] == 50.0


def test_files_without_measured_count_all(tmp_path: Path) -> None:
    write_results(
        tmp_path / "a.parquet",
        MEASURED_ROWS,
        extra={"measured": MEASURED_FLAGS},
        run_id="r",
    )
    older = tmp_path / "b.parquet"
    write_results(older, MEASURED_ROWS, drop=["measured"], run_id="r")

    (summary,) = run_query(tmp_path, "summary")

    assert summary["requests"] == 5
