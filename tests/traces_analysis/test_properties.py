"""Laws the queries keep on any results: conservation and numpy percentiles."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.traces_analysis.results_files import write_results
from traces.analysis import Analysis

_MS = st.floats(min_value=0.0, max_value=60_000.0, allow_nan=False)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One request: ok with tokens and latencies, or failed with a wall time."""
    arrival_ms = draw(_MS)
    if draw(st.booleans()):
        tokens = draw(st.integers(min_value=1, max_value=500))
        ttft_ms = draw(st.floats(min_value=0.0, max_value=5_000.0))
        tpot_ms = (
            draw(st.floats(min_value=0.0, max_value=100.0)) if tokens > 1 else None
        )
        e2e_ms = ttft_ms + (tpot_ms or 0.0) * (tokens - 1)
        return {
            "arrival_ms": arrival_ms,
            "output_tokens_received": tokens,
            "ttft_ms": ttft_ms,
            "tpot_ms": tpot_ms,
            "e2e_ms": e2e_ms,
        }
    return {
        "arrival_ms": arrival_ms,
        "status": "UNAVAILABLE",
        "output_tokens_received": 0,
        "wall_e2e_ms": draw(st.floats(min_value=0.0, max_value=5_000.0)),
    }


def run(
    rows: list[dict[str, Any]], query: str, **params: object
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as directory:
        path = write_results(Path(directory) / "r.parquet", rows)
        with Analysis(path) as analysis:
            return analysis.run_query(query, params).to_rows()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(requests(), min_size=1, max_size=30),
    window_s=st.sampled_from([0.5, 1.0, 7.0, 30.0]),
)
def test_timeseries_conserves_requests_tokens_and_time(
    rows: list[dict[str, Any]], window_s: float
) -> None:
    windows = run(rows, "timeseries", window_s=window_s)

    assert sum(window["arrivals"] for window in windows) == len(rows)
    ok_tokens = sum(
        row["output_tokens_received"] for row in rows if "status" not in row
    )
    streamed = sum(window["output_tokens_per_s"] * window_s for window in windows)
    assert streamed == pytest.approx(ok_tokens, rel=1e-9, abs=1e-6)
    durations_s = sum(
        (row["e2e_ms"] if "status" not in row else row["wall_e2e_ms"]) / 1000
        for row in rows
    )
    busy_s = sum(window["in_flight"] * window_s for window in windows)
    assert busy_s == pytest.approx(durations_s, rel=1e-9, abs=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(requests(), min_size=1, max_size=40))
def test_summary_percentiles_equal_numpy(rows: list[dict[str, Any]]) -> None:
    (summary,) = run(rows, "summary")

    for metric in ["ttft_ms", "tpot_ms", "e2e_ms"]:
        values = [row[metric] for row in rows if row.get(metric) is not None]
        for label, percent in [("p50", 50), ("p90", 90), ("p99", 99)]:
            got = summary[f"{metric}_{label}"]
            if not values:
                assert got is None
            else:
                expected = float(np.percentile(values, percent))
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
