"""Rate scaling, point figures, the saturation test and the Pareto front."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.errors import ConfigError
from emulator.planning.metrics import SaturationTest, SloTargets, point_metrics
from emulator.planning.pareto import pareto_front
from emulator.planning.scaling import RateScaling, scale_trace, window_trace
from tests.emulator.planning_helpers import uniform_trace
from traces.schema import read_trace


def results_table(
    arrival_ms: list[float],
    e2e_ms: list[float | None],
    *,
    status: list[str] | None = None,
    tokens: list[int] | None = None,
    ttft_ms: list[float | None] | None = None,
    tpot_ms: list[float | None] | None = None,
) -> pa.Table:
    count = len(arrival_ms)
    return pa.table(
        {
            "arrival_ms": pa.array(arrival_ms, pa.float64()),
            "status": status or ["ok"] * count,
            "output_tokens_received": pa.array(tokens or [2] * count, pa.int64()),
            "ttft_ms": pa.array(ttft_ms or [1.0] * count, pa.float64()),
            "tpot_ms": pa.array(tpot_ms or [1.0] * count, pa.float64()),
            "e2e_ms": pa.array(e2e_ms, pa.float64()),
            "queue_ms": pa.array([0.0] * count, pa.float64()),
        }
    )


def test_compress_divides_offsets(tmp_path: Path) -> None:
    trace = read_trace(uniform_trace(tmp_path / "t.parquet", requests=4))
    shifted = trace.set_column(1, "arrival_ms", pa.array([500.0, 2500, 4500, 6500]))

    scaled = scale_trace(shifted, 4.0, RateScaling.COMPRESS)

    assert scaled.column("arrival_ms").to_pylist() == [500.0, 1000.0, 1500.0, 2000.0]
    assert scaled.column("request_id").to_pylist() == ["r0", "r1", "r2", "r3"]


def test_replicate_two_and_a_half(tmp_path: Path) -> None:
    trace = read_trace(uniform_trace(tmp_path / "t.parquet", requests=40))

    scaled = scale_trace(trace, 2.5, RateScaling.REPLICATE, seed=3)

    ids = scaled.column("request_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert sum(i.endswith("/copy1") for i in ids) == 40
    partial = sum(i.endswith("/copy2") for i in ids)
    assert 0 < partial < 40
    assert scaled.num_rows == 80 + partial
    arrivals = scaled.column("arrival_ms").to_pylist()
    assert arrivals == sorted(arrivals)
    rows = {row["request_id"]: row for row in scaled.to_pylist()}
    assert rows["r5/copy1"]["arrival_ms"] == rows["r5"]["arrival_ms"]
    assert rows["r5/copy1"]["session_id"] == "s2/copy1"
    assert rows["r5"]["prefix_block_hashes"] == [5, 6]
    copy_hashes = rows["r5/copy1"]["prefix_block_hashes"]
    assert len(copy_hashes) == 2
    assert set(copy_hashes).isdisjoint({5, 6})


def test_replicate_by_one_is_identity(tmp_path: Path) -> None:
    trace = read_trace(uniform_trace(tmp_path / "t.parquet", requests=10))
    assert scale_trace(trace, 1.0, RateScaling.REPLICATE).equals(trace)


def test_replicate_copies_of_a_window(tmp_path: Path) -> None:
    trace = read_trace(uniform_trace(tmp_path / "t.parquet", requests=10))
    window = window_trace(trace, limit=6, duration_s=7.0)
    assert window.column("request_id").to_pylist() == ["r0", "r1", "r2", "r3"]

    scaled = scale_trace(window, 2.0, RateScaling.REPLICATE)

    hashes = scaled.column("prefix_block_hashes").to_pylist()
    assert hashes[0] == [0, 1]
    assert hashes[2] == [1, 2]
    assert len(hashes[1]) == 2


@pytest.mark.parametrize("factor", [0.0, -1.0, math.inf, math.nan])
def test_scale_rejects_bad_factor(tmp_path: Path, factor: float) -> None:
    trace = read_trace(uniform_trace(tmp_path / "t.parquet", requests=3))
    with pytest.raises(ConfigError, match="rate factor"):
        scale_trace(trace, factor, RateScaling.COMPRESS)


def hand_results() -> pa.Table:
    # r0 meets every limit and r1 has a slow TPOT. r2 has a slow TTFT and a
    # one-token output (no TPOT). r3 was rejected, so it ends at its arrival.
    return results_table(
        [0.0, 1000.0, 2000.0, 3000.0],
        [190.0, 1250.0, 500.0, None],
        status=["ok", "ok", "ok", "INVALID_ARGUMENT"],
        tokens=[10, 20, 1, 0],
        ttft_ms=[100.0, 300.0, 500.0, None],
        tpot_ms=[10.0, 50.0, None, None],
    )


def test_figures_of_hand_results() -> None:
    metrics = point_metrics(hand_results(), SloTargets(ttft_ms=400, tpot_ms=20))

    assert metrics.requests == 4
    assert metrics.ok == 3
    assert metrics.rejected == 1
    assert metrics.duration_s == 3.0
    assert metrics.offered_rps == pytest.approx(4 / 3)
    assert metrics.throughput_rps == 1.0
    assert metrics.output_tokens_per_s == pytest.approx(31 / 3)
    assert metrics.goodput_rps == pytest.approx(1 / 3)
    assert metrics.goodput_output_tokens_per_s == pytest.approx(10 / 3)
    assert metrics.slo_attainment == 0.25
    assert metrics.ttft_ms_p50 == 300.0
    assert metrics.ttft_ms_p90 == pytest.approx(460.0)
    assert metrics.ttft_ms_p99 == pytest.approx(496.0)
    assert metrics.tpot_ms_p50 == 30.0
    assert metrics.meets_slo is False


def test_missing_tpot_passes_its_limit() -> None:
    metrics = point_metrics(hand_results(), SloTargets(tpot_ms=20, attainment=0.5))
    assert metrics.slo_attainment == 0.5
    assert metrics.meets_slo is True


def test_e2e_limit_alone() -> None:
    metrics = point_metrics(hand_results(), SloTargets(e2e_ms=1000))
    assert metrics.slo_attainment == 0.5


def test_growing_backlog_is_saturated() -> None:
    results = results_table(
        [0.0, 1000.0, 2000.0, 3000.0, 4000.0], [400.0, 4000.0, 4000.0, 4000.0, 4000.0]
    )

    metrics = point_metrics(results, SloTargets(), SaturationTest(samples=4))

    # Backlog at 500, 1500 | 3500 ms: 0, 1 | 3, so growth = 3 / 0.5.
    assert metrics.backlog_growth == 6.0
    # Two arrivals after 2000 ms, no request ends in (2000, 4000].
    assert metrics.completion_ratio == 0.0
    assert metrics.saturated is True
    assert metrics.meets_slo is False


def test_stable_backlog_is_not_saturated() -> None:
    results = results_table([0.0, 1000.0, 2000.0, 3000.0, 4000.0], [400.0] * 5)

    metrics = point_metrics(results, SloTargets(), SaturationTest(samples=4))

    assert metrics.backlog_growth == 1.0
    assert metrics.completion_ratio == 1.0
    assert metrics.saturated is False
    assert metrics.meets_slo is True


def test_rising_rate_alone_is_not_saturated() -> None:
    # The rate rises in the second half: the backlog sampled in the first
    # half is 0 and in the last quarter above 0, but every request that
    # arrives after 2000 ms also ends by 4000 ms.
    arrivals = [0.0, 1000.0, 2000.0, 2500.0, 3000.0, 3250.0, 3500.0, 3750.0, 4000.0]
    results = results_table(arrivals, [200.0] * len(arrivals))
    metrics = point_metrics(results, SloTargets(), SaturationTest(samples=8))
    assert metrics.backlog_growth == math.inf
    assert metrics.completion_ratio == 1.0
    assert metrics.saturated is False


def test_empty_results_have_no_figures() -> None:
    metrics = point_metrics(results_table([], []), SloTargets(ttft_ms=1))
    assert metrics.requests == 0
    assert metrics.throughput_rps == 0.0
    assert metrics.ttft_ms_p99 is None
    assert metrics.meets_slo is False


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"ttft_ms": 0.0}, "ttft_ms SLO"),
        ({"e2e_ms": -5.0}, "e2e_ms SLO"),
        ({"attainment": 1.5}, "attainment"),
    ],
)
def test_slo_rejects_bad_values(settings_: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SloTargets(**settings_)


latencies = st.one_of(st.none(), st.floats(0.0, 1e5))


@st.composite
def random_results(draw: st.DrawFn) -> pa.Table:
    count = draw(st.integers(1, 40))
    arrivals = sorted(draw(st.lists(st.floats(0, 1e5), min_size=count, max_size=count)))
    ok = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    e2e = [draw(st.floats(0.0, 1e5)) if flag else None for flag in ok]
    return results_table(
        arrivals,
        e2e,
        status=["ok" if flag else "CANCELLED" for flag in ok],
        tokens=draw(st.lists(st.integers(0, 500), min_size=count, max_size=count)),
        ttft_ms=[draw(latencies) if flag else None for flag in ok],
        tpot_ms=[draw(latencies) if flag else None for flag in ok],
    )


@settings(max_examples=150, deadline=None)
@given(results=random_results(), ttft=st.floats(1.0, 1e5), tpot=st.floats(1.0, 1e3))
def test_goodput_never_exceeds_throughput(
    results: pa.Table, ttft: float, tpot: float
) -> None:
    metrics = point_metrics(results, SloTargets(ttft_ms=ttft, tpot_ms=tpot))

    assert metrics.goodput_rps <= metrics.throughput_rps
    assert metrics.goodput_output_tokens_per_s <= metrics.output_tokens_per_s
    assert 0.0 <= metrics.slo_attainment <= 1.0
    if metrics.saturated:
        assert not metrics.meets_slo


def test_pareto_front_by_hand() -> None:
    front = pareto_front([1.0, 2.0, 3.0, 2.0, 2.0], [1.0, 3.0, 2.0, 3.0, 2.5])
    assert front == [True, True, False, True, False]


def test_pareto_front_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        pareto_front([1.0], [])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=0, max_size=30)
)
def test_pareto_front_is_the_undominated_set(points: list[tuple[int, int]]) -> None:
    costs = [float(c) for c, _ in points]
    values = [float(v) for _, v in points]

    front = pareto_front(costs, values)

    for i, (cost, value) in enumerate(points):
        dominated = any(
            c <= cost and v >= value and (c, v) != (cost, value) for c, v in points
        )
        assert front[i] is (not dominated)


def test_metrics_use_numpy_linear_percentiles() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    results = results_table([0.0] * 6, [10.0] * 6, ttft_ms=values)
    metrics = point_metrics(results, SloTargets())
    assert metrics.ttft_ms_p90 == float(np.percentile(values, 90))
