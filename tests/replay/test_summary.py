"""Tests of replay.summary on hand-made results files."""

from __future__ import annotations

from pathlib import Path

import pytest

from replay.metrics import Slo, SloMetric
from replay.results import ERROR_CANCELLED_BY_REPLAYER, ResultRow, ResultsWriter
from replay.summary import RunMetrics, StatusCount, format_summary, summarize_results

SLOS = (Slo(SloMetric.TTFT_MS, 120.0),)


def row(
    request_id: str,
    *,
    status: str = "ok",
    error: str | None = None,
    send_ms: float,
    lag_ms: float,
    wall_e2e_ms: float,
    tokens: int,
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    measured: bool = True,
    slo_met: bool | None = None,
    wait_ms: float | None = None,
) -> ResultRow:
    return ResultRow(
        request_id=request_id,
        arrival_ms=send_ms,
        scheduled_send_ms=send_ms - lag_ms,
        actual_send_ms=send_ms,
        send_lag_ms=lag_ms,
        input_tokens=64,
        output_tokens=tokens,
        output_tokens_received=tokens,
        status=status,
        error=error,
        ttft_ms=ttft_ms,
        tpot_ms=tpot_ms,
        e2e_ms=None,
        wall_ttft_ms=None,
        wall_e2e_ms=wall_e2e_ms,
        queue_ms=None,
        prefill_ms=None,
        kv_transfer_ms=None,
        cached_tokens=None,
        prefill_instance=None,
        decode_instance=None,
        concurrency_wait_ms=wait_ms,
        measured=measured,
        slo_met=slo_met,
    )


# r4 was sent in the warm-up, so only its send lag counts.
ROWS = [
    row("r0", send_ms=10, lag_ms=1, wall_e2e_ms=500, tokens=4, ttft_ms=100,
        tpot_ms=20, slo_met=True),
    row("r1", send_ms=20, lag_ms=2, wall_e2e_ms=700, tokens=8, ttft_ms=150,
        tpot_ms=30, slo_met=False),
    row("r2", send_ms=35, lag_ms=3, wall_e2e_ms=400, tokens=1, ttft_ms=90,
        slo_met=True),
    row("r3", status="RESOURCE_EXHAUSTED", send_ms=60, lag_ms=4, wall_e2e_ms=5,
        tokens=0, slo_met=False),
    row("r4", send_ms=5, lag_ms=10, wall_e2e_ms=9000, tokens=100, ttft_ms=1,
        measured=False, slo_met=True),
]  # fmt: skip
# First measured send 10 ms; last measured end 20 + 700 = 720 ms.
WINDOW_S = 0.71


def summarize(
    tmp_path: Path,
    rows: list[ResultRow],
    slos: tuple[Slo, ...] = SLOS,
    threshold_ms: float = 10.0,
) -> RunMetrics:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "results.parquet"
    with ResultsWriter(path, {"speedup": 2.0}) as writer:
        for result in rows:
            writer.append(result)
    return summarize_results(path, 2.0, slos, threshold_ms)


def test_send_lag_covers_every_row(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, ROWS)

    # Lags 1, 2, 3, 4, 10: p99 at rank 3.96 is 4 + 0.96 * 6.
    assert metrics.send_lag_ms_p50 == 3.0
    assert metrics.send_lag_ms_p99 == pytest.approx(9.76)
    assert metrics.send_lag_ms_max == 10.0
    assert metrics.sender_lag_ms_p99 == pytest.approx(9.76)
    assert metrics.concurrency_wait_ms_max is None


def test_counts_and_window(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, ROWS)

    assert metrics.requests == 5
    assert metrics.failed == 1
    assert metrics.measured == 4
    assert metrics.measured_ok == 3
    assert metrics.window_s == pytest.approx(WINDOW_S)


def test_throughput_counts_measured_ok_rows(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, ROWS)

    assert metrics.requests_per_s == pytest.approx(3 / WINDOW_S)
    assert metrics.output_tokens_per_s == pytest.approx(13 / WINDOW_S)
    assert metrics.requests_per_trace_s == pytest.approx(3 / WINDOW_S / 2.0)


def test_goodput_counts_measured_rows_meeting_slos(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, ROWS)

    assert metrics.measured_good == 2
    assert metrics.goodput_per_s == pytest.approx(2 / WINDOW_S)
    assert metrics.slo_attainment == 0.5
    assert metrics.slos == ("ttft_ms<=120",)


def test_goodput_is_null_without_slos(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, ROWS, slos=())

    assert metrics.measured_good is None
    assert metrics.goodput_per_s is None
    assert metrics.slo_attainment is None


def test_latency_percentiles_of_measured_ok_rows(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, ROWS)

    # TTFT 90, 100, 150; TPOT 20, 30 (r2 has one token, so no TPOT).
    assert metrics.ttft_ms_p50 == 100.0
    assert metrics.ttft_ms_p99 == pytest.approx(149.0)
    assert metrics.tpot_ms_p50 == 25.0
    assert metrics.tpot_ms_p99 == pytest.approx(29.9)


def test_kept_up_compares_sender_p99(tmp_path: Path) -> None:
    assert summarize(tmp_path / "a", ROWS, threshold_ms=10.0).kept_up is True
    assert summarize(tmp_path / "b", ROWS, threshold_ms=5.0).kept_up is False


def test_concurrency_wait_is_not_sender_lag(tmp_path: Path) -> None:
    rows = [
        row("a", send_ms=1, lag_ms=5.0, wall_e2e_ms=1, tokens=1, wait_ms=4.5),
        row("b", send_ms=2, lag_ms=105.0, wall_e2e_ms=1, tokens=1, wait_ms=100.0),
        row("c", send_ms=3, lag_ms=0.5, wall_e2e_ms=1, tokens=1, wait_ms=0.2),
    ]
    metrics = summarize(tmp_path, rows, threshold_ms=5.0)

    # Sender lags 0.5, 5 and 0.3: p99 at rank 1.98 is 0.5 + 0.98 * 4.5.
    assert metrics.concurrency_wait_ms_max == 100.0
    assert metrics.sender_lag_ms_p50 == pytest.approx(0.5)
    assert metrics.sender_lag_ms_p99 == pytest.approx(4.91)
    assert metrics.sender_lag_ms_max == pytest.approx(5.0)
    assert metrics.kept_up is True


def test_empty_results_give_nulls(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, [])

    assert metrics.requests == 0
    assert metrics.cancelled == 0
    assert metrics.statuses == ()
    assert format_summary(metrics)[0] == "send lag (ms): p50 n/a, p99 n/a, max n/a"
    assert metrics.send_lag_ms_p50 is None
    assert metrics.window_s is None
    assert metrics.requests_per_s is None
    assert metrics.kept_up is True


def test_format_summary_lines(tmp_path: Path) -> None:
    lines = format_summary(summarize(tmp_path, ROWS, threshold_ms=5.0))

    assert lines[0] == "statuses: ok 4, RESOURCE_EXHAUSTED 1"
    assert lines[1] == (
        "WARNING: 1 of 5 requests failed; throughput and latency count only ok "
        "requests, and the status and error columns of the results say why each "
        "one failed"
    )
    assert lines[2] == "send lag (ms): p50 3.000, p99 9.760, max 10.0"
    assert lines[3].startswith("WARNING: the sender's own p99 lag of 9.8 ms exceeds")
    assert lines[4] == "measured: 4 requests (3 ok) over 0.710 s of wall time"
    assert lines[6] == (
        "goodput: 2.817 requests/s (wall), 50.0% of measured requests meet ttft_ms<=120"
    )


def failure_rows() -> list[ResultRow]:
    """Two ok rows, four UNAVAILABLE, two DEADLINE_EXCEEDED and three CANCELLED."""
    refused = "failed to connect to all addresses; last error: Connection refused"
    statuses_and_errors = [
        ("ok", None),
        ("ok", None),
        ("UNAVAILABLE", refused),
        ("UNAVAILABLE", "decode instance failed"),
        ("UNAVAILABLE", refused),
        ("UNAVAILABLE", refused),
        # A tie between two texts goes to the first in sort order.
        ("DEADLINE_EXCEEDED", "Deadline Exceeded"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded after retry"),
        ("CANCELLED", ERROR_CANCELLED_BY_REPLAYER),
        ("CANCELLED", ERROR_CANCELLED_BY_REPLAYER),
        # CANCELLED sent by the server is a failure, not a user's stop.
        ("CANCELLED", "cancelled by the server"),
    ]
    return [
        row(f"r{index:02d}", status=status, error=error, send_ms=index, lag_ms=0.5,
            wall_e2e_ms=10, tokens=1, ttft_ms=5.0 if status == "ok" else None)
        for index, (status, error) in enumerate(statuses_and_errors)
    ]  # fmt: skip


def test_statuses_count_rows_and_errors(tmp_path: Path) -> None:
    metrics = summarize(tmp_path, failure_rows())

    assert metrics.requests == 11
    assert metrics.failed == 7
    assert metrics.cancelled == 2
    assert metrics.statuses == (
        StatusCount("ok", 2, None, 0),
        StatusCount(
            "UNAVAILABLE",
            4,
            "failed to connect to all addresses; last error: Connection refused",
            3,
        ),
        StatusCount("DEADLINE_EXCEEDED", 2, "Deadline Exceeded", 1),
        StatusCount("CANCELLED", 1, "cancelled by the server", 1),
    )


def test_status_lines_show_errors_and_cancels(tmp_path: Path) -> None:
    lines = format_summary(summarize(tmp_path, failure_rows()))

    assert lines[:5] == [
        "statuses: ok 2, UNAVAILABLE 4, DEADLINE_EXCEEDED 2, CANCELLED 1, "
        "2 cancelled by Ctrl-C",
        "  UNAVAILABLE, most common error (3 of 4): failed to connect to all "
        "addresses; last error: Connection refused",
        "  DEADLINE_EXCEEDED, most common error (1 of 2): Deadline Exceeded",
        "  CANCELLED, most common error (1 of 1): cancelled by the server",
        "WARNING: 7 of 11 requests failed; throughput and latency count only ok "
        "requests, and the status and error columns of the results say why each "
        "one failed",
    ]


def test_long_error_is_shortened(tmp_path: Path) -> None:
    error = "Tls handshake failed\n  " + "x" * 300
    rows = [row("r0", status="UNAVAILABLE", error=error, send_ms=1, lag_ms=0.5,
                wall_e2e_ms=1, tokens=0)]  # fmt: skip
    metrics = summarize(tmp_path, rows)

    shortened = metrics.statuses[0].most_common_error
    assert shortened == "Tls handshake failed " + "x" * 136 + "..."
    assert len(shortened) == 160


def test_cancelled_only_run_has_no_warning(tmp_path: Path) -> None:
    rows = [row(f"r{index}", status="CANCELLED", error=ERROR_CANCELLED_BY_REPLAYER,
                send_ms=1, lag_ms=0.5, wall_e2e_ms=1, tokens=0)
            for index in range(3)]  # fmt: skip
    metrics = summarize(tmp_path, rows)
    lines = format_summary(metrics)

    assert metrics.failed == 0
    assert metrics.cancelled == 3
    assert metrics.statuses == ()
    assert lines[0] == "statuses: 3 cancelled by Ctrl-C"
    assert lines[1].startswith("send lag (ms): ")


def test_json_lists_statuses(tmp_path: Path) -> None:
    printed = summarize(tmp_path, failure_rows()).to_dict()

    assert printed["failed"] == 7
    assert printed["cancelled"] == 2
    assert printed["statuses"][1] == {
        "status": "UNAVAILABLE",
        "requests": 4,
        "most_common_error": (
            "failed to connect to all addresses; last error: Connection refused"
        ),
        "most_common_error_requests": 3,
    }
