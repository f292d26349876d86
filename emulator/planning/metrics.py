"""Figures of one load point: throughput, goodput, percentiles and saturation.

Every figure comes from the per-request results of one simulation (the
columns of `cmx simulate`'s results file), in trace time:

- the run's duration is from the first arrival to the last end of a request
  (`arrival_ms + e2e_ms`; a rejected request ends at its arrival);
- throughput is `ok` requests, and their output tokens, per second of it;
- a request meets the SLOs when its status is `ok` and each given limit
  holds: `ttft_ms`, `tpot_ms` (a one-token output has none and passes) and
  `e2e_ms`. Goodput counts those requests, so it never exceeds throughput;
- SLO attainment is the fraction of all requests, rejected ones included,
  that meet the SLOs;
- percentiles interpolate linearly between ranks (numpy's default and
  DuckDB's `quantile_cont`, as `cmx analyze`) over `ok` requests.

Saturation (queueing that grows without bound) is tested on the backlog: the
requests that have arrived and not yet ended. It is sampled at `samples`
evenly spaced instants over the arrival span [a_first, a_last], of length
T. A point is saturated when both of these hold:

- backlog growth >= `min_backlog_growth`, where backlog growth is the mean
  backlog over the last quarter of the span (t >= a_first + 3T/4) divided
  by the mean backlog over the first half (t < a_first + T/2). A stable
  system keeps it near 1; an overloaded one, whose backlog grows linearly
  from the start, tends to 3.5;
- completion ratio <= `max_completion_ratio`, where the completion ratio is
  the number of requests that ended in the second half of the span divided
  by the number that arrived in it. A stable system completes what arrives
  (ratio near 1); an overloaded one completes at its capacity, below the
  arrival rate.

Requiring both keeps a trace whose rate rises over time (backlog grows, but
everything completes) and a burst at the very end (few completions in the
window, but no growth before it) from being flagged.

NOTE: requests still in flight at the end of the span lower the completion
ratio of a stable system by about 2 x mean e2e / T, so the test needs an
arrival span much longer than the latencies: at T = 40 x mean e2e the
bias is 5%, as large as the default margin. A saturated point never
meets the SLOs, because its latencies depend on how long the run lasted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from emulator.errors import ConfigError
from traces.results_schema import STATUS_OK

__all__ = [
    "LATENCY_METRICS",
    "RESULT_COLUMNS",
    "PointMetrics",
    "SaturationTest",
    "SloTargets",
    "point_metrics",
]

# Columns of a results file that the figures need.
RESULT_COLUMNS: tuple[str, ...] = (
    "arrival_ms",
    "status",
    "output_tokens_received",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "queue_ms",
)
_QUANTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))
# Latency percentiles a point reports, e.g. "e2e_ms_p99".
LATENCY_METRICS: tuple[str, ...] = tuple(
    f"{metric}_{name}"
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms")
    for name, _ in _QUANTILES
)


@dataclass(frozen=True)
class SloTargets:
    """Latency limits in ms (None: no limit) and the attainment a point needs.

    A point meets the SLOs when it is not saturated and at least
    `attainment` of its requests meet every limit. Raises ConfigError for a
    limit that is not positive or an attainment outside (0, 1].
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    attainment: float = 0.99

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"{name} SLO must be a positive number of ms, got {value}"
                )
        if not 0 < self.attainment <= 1:
            raise ConfigError(
                f"SLO attainment must be in (0, 1], got {self.attainment}"
            )

    def describe(self) -> str:
        """Return the limits as text, e.g. 'ttft_ms <= 2000, 99% of requests'."""
        limits = [
            f"{name} <= {getattr(self, name):g}"
            for name in ("ttft_ms", "tpot_ms", "e2e_ms")
            if getattr(self, name) is not None
        ]
        if not limits:
            return "no latency limits (every ok request counts)"
        return f"{', '.join(limits)} for {self.attainment:.0%} of requests"


@dataclass(frozen=True)
class SaturationTest:
    """Thresholds of the saturation test described in the module docstring."""

    min_backlog_growth: float = 2.0
    max_completion_ratio: float = 0.95
    samples: int = 200

    def __post_init__(self) -> None:
        if not self.min_backlog_growth > 1:
            raise ConfigError(
                f"minimum backlog growth must be above 1, got {self.min_backlog_growth}"
            )
        if not 0 < self.max_completion_ratio < 1:
            raise ConfigError(
                f"maximum completion ratio must be in (0, 1), "
                f"got {self.max_completion_ratio}"
            )
        if self.samples < 4:
            raise ConfigError(
                f"saturation samples must be 4 or more, got {self.samples}"
            )


@dataclass(frozen=True)
class PointMetrics:
    """Figures of one simulated load point; rates per second of trace time.

    Percentile fields are None when no `ok` request has the value.
    """

    requests: int
    ok: int
    rejected: int
    offered_rps: float | None
    duration_s: float
    throughput_rps: float
    output_tokens_per_s: float
    goodput_rps: float
    goodput_output_tokens_per_s: float
    slo_attainment: float
    backlog_growth: float
    completion_ratio: float
    saturated: bool
    meets_slo: bool
    ttft_ms_p50: float | None
    ttft_ms_p90: float | None
    ttft_ms_p99: float | None
    tpot_ms_p50: float | None
    tpot_ms_p90: float | None
    tpot_ms_p99: float | None
    e2e_ms_p50: float | None
    e2e_ms_p90: float | None
    e2e_ms_p99: float | None
    queue_ms_p50: float | None
    queue_ms_p90: float | None
    queue_ms_p99: float | None

    def as_dict(self) -> dict[str, object]:
        """Return the fields by name, in declaration order."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def point_metrics(
    results: pa.Table,
    slo: SloTargets,
    saturation: SaturationTest | None = None,
) -> PointMetrics:
    """Compute the figures of one point from its per-request results.

    `results` has the RESULT_COLUMNS of a results file; rows may be in any
    order. An empty table gives zero rates and no percentiles.
    """
    saturation = saturation or SaturationTest()
    columns = _Columns.from_table(results)
    requests = len(columns.arrival_ms)
    ok_count = int(columns.ok.sum())
    end_ms = np.where(
        columns.ok, columns.arrival_ms + columns.e2e_ms, columns.arrival_ms
    )
    duration_s = 0.0
    if requests:
        duration_s = (float(end_ms.max()) - float(columns.arrival_ms.min())) / 1e3
    good = columns.ok & _within(columns.ttft_ms, slo.ttft_ms)
    good &= _within(columns.tpot_ms, slo.tpot_ms, missing_passes=True)
    good &= _within(columns.e2e_ms, slo.e2e_ms)

    growth, completion = _saturation_figures(columns.arrival_ms, end_ms, saturation)
    saturated = (
        growth >= saturation.min_backlog_growth
        and completion <= saturation.max_completion_ratio
    )
    attainment = float(good.sum()) / requests if requests else 0.0
    percentiles = _percentiles(columns)
    return PointMetrics(
        requests=requests,
        ok=ok_count,
        rejected=requests - ok_count,
        offered_rps=_offered_rps(columns.arrival_ms),
        duration_s=duration_s,
        throughput_rps=_per_s(ok_count, duration_s),
        output_tokens_per_s=_per_s(columns.tokens[columns.ok].sum(), duration_s),
        goodput_rps=_per_s(good.sum(), duration_s),
        goodput_output_tokens_per_s=_per_s(columns.tokens[good].sum(), duration_s),
        slo_attainment=attainment,
        backlog_growth=growth,
        completion_ratio=completion,
        saturated=saturated,
        meets_slo=requests > 0 and not saturated and attainment >= slo.attainment,
        **percentiles,
    )


@dataclass(frozen=True)
class _Columns:
    arrival_ms: npt.NDArray[np.float64]
    ok: npt.NDArray[np.bool_]
    tokens: npt.NDArray[np.int64]
    ttft_ms: npt.NDArray[np.float64]
    tpot_ms: npt.NDArray[np.float64]
    e2e_ms: npt.NDArray[np.float64]
    queue_ms: npt.NDArray[np.float64]

    @classmethod
    def from_table(cls, results: pa.Table) -> _Columns:
        def floats(name: str) -> npt.NDArray[np.float64]:
            column = results.column(name).to_numpy(zero_copy_only=False)
            return np.asarray(column, dtype=np.float64)

        status = np.asarray(results.column("status").to_pylist(), dtype=object)
        tokens = results.column("output_tokens_received").to_numpy()
        return cls(
            arrival_ms=floats("arrival_ms"),
            ok=status == STATUS_OK,
            tokens=np.asarray(tokens, dtype=np.int64),
            ttft_ms=floats("ttft_ms"),
            tpot_ms=floats("tpot_ms"),
            e2e_ms=floats("e2e_ms"),
            queue_ms=floats("queue_ms"),
        )


def _within(
    values: npt.NDArray[np.float64], limit: float | None, missing_passes: bool = False
) -> npt.NDArray[np.bool_]:
    if limit is None:
        return np.ones(len(values), dtype=bool)
    passed = values <= limit
    if missing_passes:
        passed |= np.isnan(values)
    return passed


def _per_s(count: float, duration_s: float) -> float:
    return float(count) / duration_s if duration_s > 0 else 0.0


def _offered_rps(arrival_ms: npt.NDArray[np.float64]) -> float | None:
    if len(arrival_ms) < 2:
        return None
    span_s = (float(arrival_ms.max()) - float(arrival_ms.min())) / 1e3
    return len(arrival_ms) / span_s if span_s > 0 else None


def _saturation_figures(
    arrival_ms: npt.NDArray[np.float64],
    end_ms: npt.NDArray[np.float64],
    test: SaturationTest,
) -> tuple[float, float]:
    """Return (backlog growth, completion ratio); (1, 1) without a span."""
    if len(arrival_ms) == 0:
        return 1.0, 1.0
    first_ms, last_ms = float(arrival_ms.min()), float(arrival_ms.max())
    span_ms = last_ms - first_ms
    if span_ms <= 0:
        return 1.0, 1.0
    arrivals = np.sort(arrival_ms)
    ends = np.sort(end_ms)

    instants = first_ms + span_ms * (np.arange(test.samples) + 0.5) / test.samples
    backlog = np.searchsorted(arrivals, instants, "right") - np.searchsorted(
        ends, instants, "right"
    )
    first_half = backlog[instants < first_ms + span_ms / 2].mean()
    last_quarter = backlog[instants >= first_ms + 3 * span_ms / 4].mean()
    if first_half > 0:
        growth = float(last_quarter / first_half)
    else:
        growth = math.inf if last_quarter > 0 else 1.0

    middle_ms = first_ms + span_ms / 2
    arrived = len(arrivals) - int(np.searchsorted(arrivals, middle_ms, "right"))
    ended = int(np.searchsorted(ends, last_ms, "right")) - int(
        np.searchsorted(ends, middle_ms, "right")
    )
    completion = ended / arrived if arrived else 1.0
    return growth, completion


def _percentiles(columns: _Columns) -> dict[str, float | None]:
    values: dict[str, float | None] = {}
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms"):
        column: npt.NDArray[np.float64] = getattr(columns, metric)
        present = column[columns.ok & ~np.isnan(column)]
        for name, quantile in _QUANTILES:
            key = f"{metric}_{name}"
            values[key] = (
                float(np.percentile(present, quantile)) if len(present) else None
            )
    return values
