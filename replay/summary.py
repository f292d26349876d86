"""The summary printed at the end of a replay, computed from its results file.

DuckDB reads the finished results file, so the summary needs no rows in
memory and uses the same definitions as any later query (docs/metrics.md):

- Send lag: `send_lag_ms` = actual - scheduled send, over every row sent.
  Under a concurrency cap it contains `concurrency_wait_ms`, the wait for a
  free slot. The rest, `send_lag_ms - concurrency_wait_ms`, is the sender's
  own lateness (`sender_lag_ms` here), and it decides whether the machine
  kept up.
- Measured rows: `measured` is true (outside warm-up and cool-down).
- Window: wall time from the first actual send of a measured row to the
  last end of a measured row's stream, whatever its status.
- Throughput: ok measured requests, and their output tokens received, per
  second of that window. Goodput counts only those with `slo_met`. Rates per
  second of trace time divide the wall rate by the speed-up.
- Percentiles interpolate linearly between ranks (`quantile_cont`).
- Failures: rows whose status is not ok, except the calls that the replayer
  cancelled itself after a stop request (Ctrl-C), which are counted as
  cancelled. Per status, the summary gives the row count and the most
  common error text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

from replay.metrics import Slo
from replay.results import (
    ERROR_CANCELLED_BY_REPLAYER,
    STATUS_CANCELLED,
    STATUS_OK,
)

__all__ = [
    "LATENCY_METRICS",
    "RunMetrics",
    "StatusCount",
    "format_summary",
    "summarize_results",
]

logger = logging.getLogger(__name__)

LATENCY_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2e_ms")

_MEASURED = "measured IS NOT FALSE"
_MEASURED_OK = f"{_MEASURED} AND status = $ok"
_SENDER_LAG = "send_lag_ms - coalesce(concurrency_wait_ms, 0)"
_CANCELLED_BY_REPLAYER = "(status = $cancelled AND error IS NOT DISTINCT FROM $stopped)"

SUMMARY_SQL = f"""
SELECT
    count(*) AS requests,
    count(*) FILTER (WHERE status <> $ok AND NOT {_CANCELLED_BY_REPLAYER}) AS failed,
    count(*) FILTER (WHERE {_CANCELLED_BY_REPLAYER}) AS cancelled,
    quantile_cont(send_lag_ms, $quantiles) AS send_lag_ms,
    max(send_lag_ms) AS send_lag_ms_max,
    quantile_cont({_SENDER_LAG}, $quantiles) AS sender_lag_ms,
    max({_SENDER_LAG}) AS sender_lag_ms_max,
    quantile_cont(concurrency_wait_ms, $quantiles) AS concurrency_wait_ms,
    max(concurrency_wait_ms) AS concurrency_wait_ms_max,
    count(*) FILTER (WHERE {_MEASURED}) AS measured,
    count(*) FILTER (WHERE {_MEASURED_OK}) AS measured_ok,
    count(*) FILTER (WHERE {_MEASURED} AND slo_met) AS measured_good,
    min(actual_send_ms) FILTER (WHERE {_MEASURED}) AS first_send_ms,
    max(actual_send_ms + wall_e2e_ms) FILTER (WHERE {_MEASURED}) AS last_end_ms,
    coalesce(sum(output_tokens_received) FILTER (WHERE {_MEASURED_OK}), 0)
        AS measured_ok_tokens,
    quantile_cont(ttft_ms, $quantiles) FILTER (WHERE {_MEASURED_OK}) AS ttft_ms,
    quantile_cont(tpot_ms, $quantiles) FILTER (WHERE {_MEASURED_OK}) AS tpot_ms,
    quantile_cont(e2e_ms, $quantiles) FILTER (WHERE {_MEASURED_OK}) AS e2e_ms
FROM read_parquet($path)
"""

# Rows per status, leaving out the calls cancelled by the replayer, with the
# most common error text of each status (ties go to the first text in sort
# order, so the summary is the same on every run).
STATUS_SQL = f"""
WITH per_error AS (
    SELECT status, error, count(*) AS requests
    FROM read_parquet($path)
    WHERE NOT {_CANCELLED_BY_REPLAYER}
    GROUP BY status, error
)
SELECT
    status,
    sum(requests)::BIGINT AS requests,
    first(error ORDER BY error IS NULL, requests DESC, error) AS most_common_error,
    first(requests ORDER BY error IS NULL, requests DESC, error)
        AS most_common_error_requests
FROM per_error
GROUP BY status
ORDER BY status = $ok DESC, requests DESC, status
"""

_QUANTILES = (0.5, 0.99)
# Maximum length of the error text kept per status, in characters.
_MAX_ERROR_CHARS = 160


@dataclass(frozen=True)
class StatusCount:
    """Rows with one status, and the most common error text among them.

    `most_common_error` has each run of whitespace made one space and is
    cut to at most 160 characters. It is None when no row of the status has
    an error text, as for ok rows.
    """

    status: str
    requests: int
    most_common_error: str | None
    most_common_error_requests: int


@dataclass(frozen=True)
class RunMetrics:
    """Summary figures of one replay; None where the set they cover is empty.

    Lags and latencies are in ms, `window_s` in wall seconds, rates per wall
    second unless named `*_per_trace_s`. `kept_up` is whether the sender's
    own p99 lag stayed within `lag_threshold_ms`. `failed` counts rows not
    ok, except the `cancelled` ones that the replayer cancelled after a stop
    request. `statuses` breaks down every other row by status, ok first,
    then by count.
    """

    requests: int
    failed: int
    cancelled: int
    statuses: tuple[StatusCount, ...]
    send_lag_ms_p50: float | None
    send_lag_ms_p99: float | None
    send_lag_ms_max: float | None
    sender_lag_ms_p50: float | None
    sender_lag_ms_p99: float | None
    sender_lag_ms_max: float | None
    concurrency_wait_ms_p50: float | None
    concurrency_wait_ms_p99: float | None
    concurrency_wait_ms_max: float | None
    measured: int
    measured_ok: int
    measured_good: int | None
    window_s: float | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    goodput_per_s: float | None
    slo_attainment: float | None
    speedup: float
    requests_per_trace_s: float | None
    ttft_ms_p50: float | None
    ttft_ms_p99: float | None
    tpot_ms_p50: float | None
    tpot_ms_p99: float | None
    e2e_ms_p50: float | None
    e2e_ms_p99: float | None
    slos: tuple[str, ...]
    lag_threshold_ms: float
    kept_up: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)


def summarize_results(
    results_path: Path, speedup: float, slos: Sequence[Slo], lag_threshold_ms: float
) -> RunMetrics:
    """Compute the run summary of a finished results file with DuckDB."""
    parameters = {
        "path": str(results_path),
        "ok": STATUS_OK,
        "cancelled": STATUS_CANCELLED,
        "stopped": ERROR_CANCELLED_BY_REPLAYER,
    }
    connection = duckdb.connect()
    try:
        cursor = connection.cursor()
        cursor.execute(SUMMARY_SQL, {**parameters, "quantiles": list(_QUANTILES)})
        names = [column[0] for column in cursor.description or []]
        values = dict(zip(names, cursor.fetchall()[0], strict=True))
        cursor = connection.cursor()
        cursor.execute(STATUS_SQL, parameters)
        statuses = tuple(_status_count(*row) for row in cursor.fetchall())
    finally:
        connection.close()
    return _build_metrics(values, statuses, speedup, slos, lag_threshold_ms)


def _status_count(
    status: str, requests: int, error: str | None, error_requests: int
) -> StatusCount:
    return StatusCount(
        status=status,
        requests=requests,
        most_common_error=None if error is None else _shorten(error),
        most_common_error_requests=0 if error is None else error_requests,
    )


def _shorten(text: str) -> str:
    """Put `text` on one line and cut it to `_MAX_ERROR_CHARS` with "..."."""
    flat = re.sub(r"\s+", " ", text).strip()
    if len(flat) <= _MAX_ERROR_CHARS:
        return flat
    return flat[: _MAX_ERROR_CHARS - 3].rstrip() + "..."


def _build_metrics(
    values: dict[str, Any],
    statuses: tuple[StatusCount, ...],
    speedup: float,
    slos: Sequence[Slo],
    threshold_ms: float,
) -> RunMetrics:
    window_s = None
    if values["first_send_ms"] is not None and values["last_end_ms"] is not None:
        window_s = (values["last_end_ms"] - values["first_send_ms"]) / 1000.0
    good = values["measured_good"] if slos else None
    attainment = None
    if good is not None and values["measured"]:
        attainment = good / values["measured"]
    requests_per_s = _rate(values["measured_ok"], window_s)
    requests_per_trace_s = None
    if requests_per_s is not None:
        requests_per_trace_s = requests_per_s / speedup
    sender_lag = _pair(values["sender_lag_ms"])

    return RunMetrics(
        requests=values["requests"],
        failed=values["failed"],
        cancelled=values["cancelled"],
        statuses=statuses,
        send_lag_ms_p50=_pair(values["send_lag_ms"])[0],
        send_lag_ms_p99=_pair(values["send_lag_ms"])[1],
        send_lag_ms_max=values["send_lag_ms_max"],
        sender_lag_ms_p50=sender_lag[0],
        sender_lag_ms_p99=sender_lag[1],
        sender_lag_ms_max=values["sender_lag_ms_max"],
        concurrency_wait_ms_p50=_pair(values["concurrency_wait_ms"])[0],
        concurrency_wait_ms_p99=_pair(values["concurrency_wait_ms"])[1],
        concurrency_wait_ms_max=values["concurrency_wait_ms_max"],
        measured=values["measured"],
        measured_ok=values["measured_ok"],
        measured_good=good,
        window_s=window_s,
        requests_per_s=requests_per_s,
        output_tokens_per_s=_rate(values["measured_ok_tokens"], window_s),
        goodput_per_s=None if good is None else _rate(good, window_s),
        slo_attainment=attainment,
        speedup=speedup,
        requests_per_trace_s=requests_per_trace_s,
        ttft_ms_p50=_pair(values["ttft_ms"])[0],
        ttft_ms_p99=_pair(values["ttft_ms"])[1],
        tpot_ms_p50=_pair(values["tpot_ms"])[0],
        tpot_ms_p99=_pair(values["tpot_ms"])[1],
        e2e_ms_p50=_pair(values["e2e_ms"])[0],
        e2e_ms_p99=_pair(values["e2e_ms"])[1],
        slos=tuple(str(slo) for slo in slos),
        lag_threshold_ms=threshold_ms,
        kept_up=sender_lag[1] is None or sender_lag[1] <= threshold_ms,
    )


def format_summary(metrics: RunMetrics) -> list[str]:
    """Return the summary as lines of text for a terminal."""
    lines = _status_lines(metrics)
    lag = _triple(
        metrics.send_lag_ms_p50, metrics.send_lag_ms_p99, metrics.send_lag_ms_max
    )
    lines.append(f"send lag (ms): {lag}")
    if metrics.concurrency_wait_ms_max is not None:
        lines.append(
            "  of which concurrency wait (ms): "
            + _triple(
                metrics.concurrency_wait_ms_p50,
                metrics.concurrency_wait_ms_p99,
                metrics.concurrency_wait_ms_max,
            )
        )
    if not metrics.kept_up:
        lines.append(
            f"WARNING: the sender's own p99 lag of {metrics.sender_lag_ms_p99:.1f} ms "
            f"exceeds {metrics.lag_threshold_ms:g} ms: this machine did not keep up "
            "with the schedule, so the target saw less load than the trace offers"
        )
    lines.append(
        f"measured: {metrics.measured} requests ({metrics.measured_ok} ok) over "
        f"{_number(metrics.window_s, 's')} of wall time"
    )
    lines.append(
        f"throughput: {_number(metrics.requests_per_s, 'requests/s')}, "
        f"{_number(metrics.output_tokens_per_s, 'output tokens/s')} (wall); "
        f"{_number(metrics.requests_per_trace_s, 'requests/s')} of trace time"
    )
    if metrics.slos:
        lines.append(
            f"goodput: {_number(metrics.goodput_per_s, 'requests/s')} (wall), "
            f"{_percent(metrics.slo_attainment)} of measured requests meet "
            + ", ".join(metrics.slos)
        )
    for metric in LATENCY_METRICS:
        p50 = getattr(metrics, f"{metric}_p50")
        p99 = getattr(metrics, f"{metric}_p99")
        lines.append(f"{metric}: p50 {_number(p50)}, p99 {_number(p99)}")
    return lines


def _status_lines(metrics: RunMetrics) -> list[str]:
    """Return the rows per status, the most common errors and a warning."""
    counts = [f"{entry.status} {entry.requests:,}" for entry in metrics.statuses]
    if metrics.cancelled:
        counts.append(f"{metrics.cancelled:,} cancelled by Ctrl-C")
    if not counts:
        return []
    lines = ["statuses: " + ", ".join(counts)]
    for entry in metrics.statuses:
        if entry.status == STATUS_OK or entry.most_common_error is None:
            continue
        lines.append(
            f"  {entry.status}, most common error ({entry.most_common_error_requests:,}"
            f" of {entry.requests:,}): {entry.most_common_error}"
        )
    if metrics.failed:
        lines.append(
            f"WARNING: {metrics.failed:,} of {metrics.requests:,} requests failed; "
            "throughput and latency count only ok requests, and the status and "
            "error columns of the results say why each one failed"
        )
    return lines


def _pair(values: list[float] | None) -> tuple[float | None, float | None]:
    if values is None:
        return None, None
    return values[0], values[1]


def _rate(count: int, window_s: float | None) -> float | None:
    if window_s is None or window_s <= 0:
        return None
    return count / window_s


def _triple(p50: float | None, p99: float | None, maximum: float | None) -> str:
    return f"p50 {_number(p50)}, p99 {_number(p99)}, max {_number(maximum)}"


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text} {unit}".rstrip()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
