"""Per-request metrics of a replay beyond TTFT, TPOT and end-to-end latency.

docs/metrics.md defines every metric of a results file with worked examples.
This module computes the ones that need more than a token count and the
first and last timestamps, which `replay.results.emulated_latencies` uses.

For a stream whose n tokens carry the emulated timestamps t_1 ... t_n, in
milliseconds since the request arrived at the emulator:

    inter-token gaps     g_k = t_(k+1) - t_k for k = 1 ... n-1, taken from the
                         per-token timestamps, so the gaps between tokens of
                         one chunk count as well as those between chunks
    itl_ms_p50/p99/max   percentiles and maximum of the gaps of one request;
                         NULL for n < 2
    normalized_latency_ms  e2e_ms / n, ms per output token; NULL unless ok

Percentiles interpolate linearly between ranks: for sorted x_0 ... x_(m-1)
the q-quantile is x at h = q (m - 1), between x_floor(h) and x_ceil(h), as
numpy's default method and DuckDB's `quantile_cont` do.

A service-level objective (SLO) bounds one metric column from above. A
request meets a set of SLOs when its status is ok and every bounded value is
at most its limit. TPOT and the inter-token metrics are undefined for a
one-token output; such a NULL meets its SLO, since there is no gap to exceed
it. Any other NULL (no token at all) misses.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from replay.errors import ReplayError

__all__ = [
    "NO_GAPS",
    "InterTokenStats",
    "Slo",
    "SloMetric",
    "TokenGaps",
    "check_unique_slos",
    "meets_slos",
    "normalized_latency_ms",
    "parse_slo",
]

logger = logging.getLogger(__name__)


class SloMetric(str, Enum):
    """Result columns that an SLO may bound, all in milliseconds."""

    TTFT_MS = "ttft_ms"
    TPOT_MS = "tpot_ms"
    ITL_MS_P99 = "itl_ms_p99"
    ITL_MS_MAX = "itl_ms_max"
    E2E_MS = "e2e_ms"
    NORMALIZED_LATENCY_MS = "normalized_latency_ms"
    WALL_TTFT_MS = "wall_ttft_ms"
    WALL_E2E_MS = "wall_e2e_ms"


# Metrics that are undefined, not missing, when the output has one token.
_GAP_METRICS = frozenset(
    {SloMetric.TPOT_MS, SloMetric.ITL_MS_P99, SloMetric.ITL_MS_MAX}
)


@dataclass(frozen=True, slots=True)
class Slo:
    """Upper bound `limit_ms` on one metric column."""

    metric: SloMetric
    limit_ms: float

    def __str__(self) -> str:
        return f"{self.metric.value}<={self.limit_ms:g}"


@dataclass(frozen=True, slots=True)
class InterTokenStats:
    """Inter-token gap statistics of one request, in emulated ms."""

    itl_ms_p50: float | None
    itl_ms_p99: float | None
    itl_ms_max: float | None


NO_GAPS = InterTokenStats(itl_ms_p50=None, itl_ms_p99=None, itl_ms_max=None)


# Below this many gaps, sorting in Python is faster than numpy's call overhead
# (about 0.1 ms per np.quantile call, measured on the 2-core development VM).
_NUMPY_FROM_GAPS = 256


def _interpolated_quantile(ordered: Sequence[float], fraction: float) -> float:
    """Return the quantile of ascending `ordered`, as numpy's linear method."""
    rank = fraction * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (rank - below) * (ordered[above] - ordered[below])


class TokenGaps:
    """Gaps between consecutive token timestamps of one stream, as they arrive.

    Gaps are kept as 8-byte floats, so a stream of n tokens costs about 8 n
    bytes until `stats` is read and the object dropped.
    """

    __slots__ = ("_gaps_ms", "_last_token_ms", "token_count")

    def __init__(self) -> None:
        self._gaps_ms = array("d")
        self._last_token_ms: float | None = None
        self.token_count = 0

    def add_chunk(self, emulated_ms: Iterable[float]) -> None:
        """Record the timestamps of one chunk, in order; an empty chunk adds none."""
        for token_ms in emulated_ms:
            if self._last_token_ms is not None:
                self._gaps_ms.append(token_ms - self._last_token_ms)
            self._last_token_ms = token_ms
            self.token_count += 1

    @property
    def gaps_ms(self) -> tuple[float, ...]:
        """Gaps recorded so far, in stream order."""
        return tuple(self._gaps_ms)

    def stats(self) -> InterTokenStats:
        """Return p50, p99 and maximum of the gaps; all None below 2 tokens."""
        if not self._gaps_ms:
            return NO_GAPS
        if len(self._gaps_ms) > _NUMPY_FROM_GAPS:
            gaps = np.frombuffer(self._gaps_ms, dtype=np.float64)
            p50, p99 = np.quantile(gaps, [0.5, 0.99])
            return InterTokenStats(float(p50), float(p99), float(gaps.max()))
        ordered = sorted(self._gaps_ms)
        return InterTokenStats(
            itl_ms_p50=_interpolated_quantile(ordered, 0.5),
            itl_ms_p99=_interpolated_quantile(ordered, 0.99),
            itl_ms_max=ordered[-1],
        )


def normalized_latency_ms(e2e_ms: float | None, output_tokens: int) -> float | None:
    """Return end-to-end latency per output token, or None when undefined."""
    if e2e_ms is None or output_tokens < 1:
        return None
    return e2e_ms / output_tokens


def parse_slo(text: str) -> Slo:
    """Parse "METRIC=LIMIT_MS", such as "ttft_ms=2000", into an Slo.

    Raises ReplayError naming the text and the accepted metrics when the
    metric is unknown or the limit is not a number > 0.
    """
    name, separator, limit_text = text.partition("=")
    accepted = ", ".join(metric.value for metric in SloMetric)
    if not separator:
        raise ReplayError(
            f"SLO {text!r} is not METRIC=LIMIT_MS; for example ttft_ms=2000 "
            f"(metrics: {accepted})"
        )
    try:
        metric = SloMetric(name.strip())
    except ValueError:
        raise ReplayError(
            f"SLO metric {name.strip()!r} in {text!r} is unknown; use one of {accepted}"
        ) from None
    try:
        limit_ms = float(limit_text)
    except ValueError:
        limit_ms = math.nan
    if not (math.isfinite(limit_ms) and limit_ms > 0):
        raise ReplayError(
            f"SLO limit {limit_text.strip()!r} in {text!r} is not a number of "
            "milliseconds > 0"
        )
    return Slo(metric=metric, limit_ms=limit_ms)


def check_unique_slos(slos: Sequence[Slo]) -> None:
    """Raise ReplayError when two SLOs bound the same metric."""
    seen: set[SloMetric] = set()
    for slo in slos:
        if slo.metric in seen:
            raise ReplayError(
                f"SLO metric {slo.metric.value} is given twice; give each metric once"
            )
        seen.add(slo.metric)


def meets_slos(
    values: dict[str, object], slos: Sequence[Slo], status_ok: bool
) -> bool | None:
    """Return whether one request meets every SLO, or None when none is given.

    `values` maps column names to the request's values and must contain
    `output_tokens_received` and every bounded metric.
    """
    if not slos:
        return None
    if not status_ok:
        return False

    for slo in slos:
        value = values[slo.metric.value]
        if value is None:
            one_token = values["output_tokens_received"] == 1
            if slo.metric in _GAP_METRICS and one_token:
                continue
            return False
        assert isinstance(value, float | int)
        if value > slo.limit_ms:
            return False
    return True
