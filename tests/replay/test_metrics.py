"""Tests of replay.metrics: inter-token gaps, normalised latency and SLOs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replay.errors import ReplayError
from replay.metrics import (
    NO_GAPS,
    Slo,
    SloMetric,
    TokenGaps,
    check_unique_slos,
    meets_slos,
    normalized_latency_ms,
    parse_slo,
)
from replay.results import emulated_latencies


def gaps_of(*chunks: tuple[float, ...]) -> TokenGaps:
    gaps = TokenGaps()
    for chunk in chunks:
        gaps.add_chunk(chunk)
    return gaps


def test_gaps_include_those_inside_a_chunk() -> None:
    # Tokens at 100, 120 | (empty chunk) | 140, 175: gaps 20, 20 and 35.
    gaps = gaps_of((100.0, 120.0), (), (140.0, 175.0))

    assert gaps.gaps_ms == (20.0, 20.0, 35.0)
    assert gaps.token_count == 4


def test_gap_stats_interpolate_between_ranks() -> None:
    stats = gaps_of((100.0, 120.0), (), (140.0, 175.0)).stats()

    # Sorted 20, 20, 35. p50: rank 1 -> 20. p99: rank 1.98 -> 20 + 0.98 * 15.
    assert stats.itl_ms_p50 == 20.0
    assert stats.itl_ms_p99 == pytest.approx(34.7)
    assert stats.itl_ms_max == 35.0


def test_one_token_has_no_gaps() -> None:
    gaps = gaps_of((42.0,))

    assert gaps.gaps_ms == ()
    assert gaps.stats() == NO_GAPS


def test_empty_stream_has_no_gaps() -> None:
    gaps = gaps_of((), ())

    assert gaps.token_count == 0
    assert gaps.stats() == NO_GAPS


def test_one_gap_is_every_statistic() -> None:
    stats = gaps_of((10.0,), (25.0,)).stats()

    assert stats.itl_ms_p50 == 15.0
    assert stats.itl_ms_p99 == 15.0
    assert stats.itl_ms_max == 15.0


timestamps = st.lists(st.floats(0.0, 1e3), min_size=1, max_size=60).map(
    lambda steps: list(np.cumsum(steps))
)


@given(timestamps, st.lists(st.integers(1, 10), min_size=1, max_size=60))
def test_chunking_does_not_change_gaps(
    times_ms: list[float], chunk_sizes: list[int]
) -> None:
    one_by_one = gaps_of(*[(time_ms,) for time_ms in times_ms])
    chunks: list[tuple[float, ...]] = []
    position = 0
    for size in chunk_sizes * len(times_ms):
        if position >= len(times_ms):
            break
        chunks.append(tuple(times_ms[position : position + size]))
        position += size
    chunked = gaps_of(*chunks)

    assert chunked.gaps_ms == one_by_one.gaps_ms
    assert chunked.stats() == one_by_one.stats()


@given(timestamps)
def test_gaps_agree_with_tpot(times_ms: list[float]) -> None:
    gaps = gaps_of(tuple(times_ms))
    latencies = emulated_latencies(times_ms[0], times_ms[-1], len(times_ms))
    stats = gaps.stats()

    if len(times_ms) == 1:
        assert latencies.tpot_ms is None
        assert stats == NO_GAPS
        return
    # TPOT is the mean gap: the gaps add up to t_n - t_1.
    assert latencies.tpot_ms == pytest.approx(
        sum(gaps.gaps_ms) / len(gaps.gaps_ms), rel=1e-9, abs=1e-9
    )
    assert stats.itl_ms_p50 is not None
    assert stats.itl_ms_p99 is not None
    assert stats.itl_ms_max is not None
    assert stats.itl_ms_p50 <= stats.itl_ms_p99 <= stats.itl_ms_max


def test_normalized_latency_divides_by_tokens() -> None:
    assert normalized_latency_ms(160.0, 4) == 40.0
    assert normalized_latency_ms(42.0, 1) == 42.0


def test_normalized_latency_undefined_cases() -> None:
    assert normalized_latency_ms(None, 4) is None
    assert normalized_latency_ms(160.0, 0) is None


def test_parse_slo_reads_metric_and_limit() -> None:
    assert parse_slo("ttft_ms=2000") == Slo(SloMetric.TTFT_MS, 2000.0)
    assert parse_slo(" tpot_ms = 50.5") == Slo(SloMetric.TPOT_MS, 50.5)
    assert str(parse_slo("e2e_ms=1e4")) == "e2e_ms<=10000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_ms", "is not METRIC=LIMIT_MS"),
        ("ttft=20", "SLO metric 'ttft' in 'ttft=20' is unknown; use one of ttft_ms"),
        ("ttft_ms=fast", "SLO limit 'fast' in 'ttft_ms=fast' is not a number"),
        ("ttft_ms=0", "is not a number of milliseconds > 0"),
        ("ttft_ms=inf", "is not a number of milliseconds > 0"),
    ],
)
def test_parse_slo_rejects_bad_text(text: str, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        parse_slo(text)


def test_same_metric_twice_is_rejected() -> None:
    slos = [Slo(SloMetric.TTFT_MS, 1.0), Slo(SloMetric.TTFT_MS, 2.0)]

    with pytest.raises(ReplayError, match="ttft_ms is given twice"):
        check_unique_slos(slos)


TTFT_200 = Slo(SloMetric.TTFT_MS, 200.0)
TPOT_20 = Slo(SloMetric.TPOT_MS, 20.0)


def values(
    ttft_ms: float | None, tpot_ms: float | None, tokens: int
) -> dict[str, object]:
    return {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "output_tokens_received": tokens}


def test_no_slos_gives_null() -> None:
    assert meets_slos(values(100.0, 10.0, 4), (), status_ok=True) is None


def test_every_slo_must_hold() -> None:
    slos = (TTFT_200, TPOT_20)

    assert meets_slos(values(100.0, 10.0, 4), slos, status_ok=True) is True
    assert meets_slos(values(250.0, 10.0, 4), slos, status_ok=True) is False
    assert meets_slos(values(100.0, 25.0, 4), slos, status_ok=True) is False


def test_value_equal_to_limit_meets_slo() -> None:
    assert meets_slos(values(200.0, 20.0, 4), (TTFT_200, TPOT_20), True) is True


def test_failed_request_misses_slos() -> None:
    assert meets_slos(values(100.0, 10.0, 4), (TTFT_200,), status_ok=False) is False


def test_one_token_output_meets_tpot_slo() -> None:
    assert meets_slos(values(100.0, None, 1), (TTFT_200, TPOT_20), True) is True


def test_missing_ttft_misses_slo() -> None:
    assert meets_slos(values(None, None, 0), (TTFT_200,), status_ok=True) is False


def test_missing_tpot_with_tokens_misses_slo() -> None:
    # TPOT is NULL with two tokens only when the stream broke; that misses.
    assert meets_slos(values(100.0, None, 2), (TPOT_20,), status_ok=True) is False


def test_nan_limit_is_never_accepted() -> None:
    with pytest.raises(ReplayError):
        parse_slo(f"ttft_ms={math.nan}")


@given(st.lists(st.floats(0.0, 1e4), min_size=2, max_size=600))
def test_gap_stats_match_numpy(times_ms: list[float]) -> None:
    # Short streams are sorted in Python and long ones by numpy; both must
    # give numpy's linear-interpolation percentiles.
    gaps = gaps_of(tuple(times_ms))
    stats = gaps.stats()
    expected = np.quantile(np.array(gaps.gaps_ms), [0.5, 0.99])

    assert stats.itl_ms_p50 == pytest.approx(expected[0], rel=1e-12, abs=1e-9)
    assert stats.itl_ms_p99 == pytest.approx(expected[1], rel=1e-12, abs=1e-9)
    assert stats.itl_ms_max == max(gaps.gaps_ms)
