"""Canned analysis queries: named SQL over the `results` and `trace` views.

Every query groups by `run`, so one file gives one run's rows and a glob of
several runs gives each run's rows, ordered by run. Values come as bound
parameters (`$name`), never pasted into the SQL.

Definitions used by every query, the tests and the report:

- Percentiles are DuckDB's `quantile_cont`: for n sorted values
  x_0..x_{n-1} the q-quantile is x_h at h = q * (n - 1), interpolated
  linearly between x_floor(h) and x_ceil(h). This is numpy's default
  `linear` method (Hyndman and Fan type 7).
- Latencies are those of `ok` rows. NULL values are left out (a one-token
  output has no TPOT), so a metric with no values is NULL, never NaN or 0.
  A selection with no rows gives no rows.
- Measured rows: every query except `timeseries` and `send_lag` reads the
  `measured_results` view, which leaves out the rows whose `measured` column
  is false (warm-up and cool-down of a replay). Files without that column
  count every row. The time series shows all the load that was sent, and
  the send lag covers every send.
- Trace time: throughput divides by the run's wall window (first send to
  the last end of a stream) multiplied by the run's speed-up. Time series
  place each request at its trace arrival (seconds from the run's first
  arrival) and end it `e2e_ms` later (for a failed request, its wall
  duration times the speed-up). This matches trace time when the emulator's
  time scale equals the replay speed-up.
- Buckets are half-open, [lower, upper), from bound lists of lower edges
  that start at 0; the last bucket has no upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

__all__ = [
    "CANNED_QUERIES",
    "PERCENTILE_METRICS",
    "QUANTILES",
    "STATUS_OK",
    "CannedQuery",
    "ParamKind",
    "QueryParam",
    "get_query",
]

STATUS_OK = "ok"

# The summary's percentiles, as (column suffix, quantile).
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
PERCENTILE_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2e_ms")

# The percentiles query's columns, as (column name, quantile).
DETAIL_QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
)
# Latency columns described by the percentiles query, over ok rows.
DETAIL_METRICS: tuple[str, ...] = (
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "queue_ms",
    "prefill_ms",
    "kv_transfer_ms",
    "wall_ttft_ms",
    "wall_e2e_ms",
)


class ParamKind(Enum):
    """Type and range of a query parameter."""

    POSITIVE_FLOAT = "number > 0"
    OPTIONAL_POSITIVE_FLOAT = "number > 0, or 'none'"
    NONNEGATIVE_FLOAT = "number >= 0"
    POSITIVE_INT = "integer >= 1"
    INT_EDGES = "comma-separated increasing integers starting at 0"
    FLOAT_EDGES = "comma-separated increasing numbers starting at 0"


@dataclass(frozen=True)
class QueryParam:
    """A bound parameter of a canned query, with its default and meaning."""

    name: str
    kind: ParamKind
    default: object
    help: str


@dataclass(frozen=True)
class CannedQuery:
    """A named SQL query over the analysis views.

    `params` are the user-settable parameters; `fixed_params` are bound
    constants such as the `ok` status. `needs_trace` is true when the query
    reads the `trace` or `trace_reuse` view.
    """

    name: str
    description: str
    sql: str
    params: tuple[QueryParam, ...] = ()
    fixed_params: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({})
    )
    needs_trace: bool = False


def _quantile_columns(
    list_column: str, quantiles: Sequence[tuple[str, float]], template: str
) -> str:
    """Select each element of a quantile list as a column named by `template`."""
    return ",\n    ".join(
        f"{list_column}[{index}] AS {template.format(label=label)}"
        for index, (label, _) in enumerate(quantiles, start=1)
    )


# The run's wall window: first send to the last end of a stream, any status.
_RUN_WINDOW_CTE = """
run_window AS (
    SELECT
        run,
        any_value(speedup) AS speedup,
        (max(actual_send_ms + wall_e2e_ms) - min(actual_send_ms)) / 1000.0
            AS wall_s
    FROM measured_results
    GROUP BY run
)"""

SUMMARY_SQL = f"""
WITH per_run AS (
    SELECT
        run,
        any_value(speedup) AS speedup,
        count(*) AS requests,
        count(*) FILTER (WHERE status = $ok) AS ok,
        count(*) FILTER (WHERE status <> $ok) AS failed,
        (max(actual_send_ms + wall_e2e_ms) - min(actual_send_ms)) / 1000.0
            AS duration_s,
        coalesce(sum(output_tokens_received) FILTER (WHERE status = $ok), 0)
            AS ok_output_tokens,
        sum(cached_tokens) FILTER (WHERE status = $ok) AS cached_tokens,
        sum(input_tokens) FILTER (WHERE status = $ok AND cached_tokens IS NOT NULL)
            AS cache_input_tokens,
        quantile_cont(ttft_ms, $quantiles) FILTER (WHERE status = $ok) AS ttft_q,
        quantile_cont(tpot_ms, $quantiles) FILTER (WHERE status = $ok) AS tpot_q,
        quantile_cont(e2e_ms, $quantiles) FILTER (WHERE status = $ok) AS e2e_q
    FROM measured_results
    GROUP BY run
)
SELECT
    run,
    speedup,
    requests,
    ok,
    failed,
    duration_s,
    ok / nullif(duration_s, 0) / speedup AS requests_per_s,
    ok_output_tokens / nullif(duration_s, 0) / speedup AS output_tokens_per_s,
    ok / nullif(duration_s, 0) AS wall_requests_per_s,
    cached_tokens / nullif(cache_input_tokens, 0) AS cache_hit_rate,
    {_quantile_columns("ttft_q", QUANTILES, "ttft_ms_{label}")},
    {_quantile_columns("tpot_q", QUANTILES, "tpot_ms_{label}")},
    {_quantile_columns("e2e_q", QUANTILES, "e2e_ms_{label}")}
FROM per_run
ORDER BY run
"""


def _percentiles_sql() -> str:
    selects = []
    for position, metric in enumerate(DETAIL_METRICS):
        selects.append(
            f"""
    SELECT
        run,
        {position} AS position,
        '{metric}' AS metric,
        count({metric}) AS samples,
        avg({metric}) AS mean,
        min({metric}) AS min,
        quantile_cont({metric}, $quantiles) AS q,
        max({metric}) AS max
    FROM measured_results
    WHERE status = $ok
    GROUP BY run"""
        )
    union = "\n    UNION ALL".join(selects)
    return f"""
WITH described AS ({union}
)
SELECT
    run,
    metric,
    samples,
    mean,
    min,
    {_quantile_columns("q", DETAIL_QUANTILES, "{label}")},
    max
FROM described
ORDER BY run, position
"""


PERCENTILES_SQL = _percentiles_sql()

TIMESERIES_SQL = """
WITH spans AS (
    SELECT
        run,
        status,
        output_tokens_received AS tokens,
        ttft_ms,
        tpot_ms,
        (arrival_ms - min(arrival_ms) OVER (PARTITION BY run)) / 1000.0 AS start_s,
        coalesce(e2e_ms, wall_e2e_ms * speedup, 0.0) / 1000.0 AS duration_s
    FROM results
    WHERE arrival_ms IS NOT NULL
),
timed AS (
    SELECT
        *,
        start_s + duration_s AS end_s,
        start_s + ttft_ms / 1000.0 AS first_token_s
    FROM spans
),
grid AS (
    SELECT
        run,
        unnest(range(0, greatest(
            CAST(ceil(max(end_s) / $window_s) AS BIGINT),
            CAST(floor(max(start_s) / $window_s) AS BIGINT) + 1
        ))) AS window_index
    FROM timed
    GROUP BY run
),
burst_basis AS (
    -- Mean arrivals per window over the windows from first to last arrival.
    SELECT
        run,
        count(*) / (floor(max(start_s) / $window_s) + 1) AS mean_arrivals
    FROM timed
    GROUP BY run
),
arrivals AS (
    SELECT
        run,
        CAST(floor(start_s / $window_s) AS BIGINT) AS window_index,
        count(*) AS arrivals,
        count(*) FILTER (WHERE status = $ok) AS ok,
        count(*) FILTER (WHERE status <> $ok) AS failed,
        quantile_cont(ttft_ms, [0.5, 0.99]) FILTER (WHERE status = $ok) AS ttft_q,
        quantile_cont(tpot_ms, [0.5, 0.99]) FILTER (WHERE status = $ok) AS tpot_q
    FROM timed
    GROUP BY ALL
),
pieces AS (
    SELECT
        *,
        unnest(range(
            CAST(floor(start_s / $window_s) AS BIGINT),
            CAST(floor(end_s / $window_s) AS BIGINT) + 1
        )) AS window_index
    FROM timed
),
window_shares AS (
    SELECT
        run,
        window_index,
        status = $ok AND tokens >= 1 AND first_token_s IS NOT NULL AS streams,
        tokens,
        first_token_s,
        end_s,
        greatest(0.0,
            least(end_s, (window_index + 1) * $window_s)
            - greatest(start_s, window_index * $window_s)
        ) AS busy_s,
        greatest(0.0,
            least(end_s, (window_index + 1) * $window_s)
            - greatest(first_token_s, window_index * $window_s)
        ) AS streaming_s,
        floor(first_token_s / $window_s) = window_index AS contains_first_token
    FROM pieces
),
occupancy AS (
    -- The first token counts where it falls; the other tokens - 1 spread
    -- evenly over (first token, end], or all at the first token if that
    -- interval is empty.
    SELECT
        run,
        window_index,
        sum(busy_s) AS busy_s,
        sum(CASE WHEN streams THEN
            CASE WHEN contains_first_token THEN 1 ELSE 0 END
            + CASE
                WHEN end_s > first_token_s
                    THEN (tokens - 1) * streaming_s / (end_s - first_token_s)
                WHEN contains_first_token THEN tokens - 1
                ELSE 0
            END
        ELSE 0 END) AS tokens
    FROM window_shares
    GROUP BY run, window_index
)
SELECT
    g.run,
    g.window_index * $window_s AS window_start_s,
    coalesce(a.arrivals, 0) AS arrivals,
    coalesce(a.arrivals, 0) / $window_s AS requests_per_s,
    coalesce(a.ok, 0) AS ok,
    coalesce(a.failed, 0) AS failed,
    coalesce(o.busy_s, 0.0) / $window_s AS in_flight,
    coalesce(o.tokens, 0.0) / $window_s AS output_tokens_per_s,
    a.ttft_q[1] AS ttft_p50_ms,
    a.ttft_q[2] AS ttft_p99_ms,
    a.tpot_q[1] AS tpot_p50_ms,
    a.tpot_q[2] AS tpot_p99_ms,
    coalesce(a.arrivals, 0) > 0
        AND a.arrivals >= $burst_factor * b.mean_arrivals AS is_burst
FROM grid AS g
JOIN burst_basis AS b USING (run)
LEFT JOIN arrivals AS a USING (run, window_index)
LEFT JOIN occupancy AS o USING (run, window_index)
ORDER BY g.run, g.window_index
"""


def _buckets_cte(name: str, edges_param: str, sql_type: str) -> str:
    return f"""
{name} AS (
    SELECT
        edge AS lower,
        lead(edge) OVER (ORDER BY edge) AS upper,
        '[' || edge || ', ' || coalesce(CAST(lead(edge) OVER (ORDER BY edge)
            AS VARCHAR), 'inf') || ')' AS label
    FROM (SELECT unnest(CAST(${edges_param} AS {sql_type}[])) AS edge)
)"""


def _in_bucket(value: str, bucket: str) -> str:
    return (
        f"{value} >= {bucket}.lower "
        f"AND ({bucket}.upper IS NULL OR {value} < {bucket}.upper)"
    )


SLO_SQL = f"""
WITH {_RUN_WINDOW_CTE.strip()},
{_buckets_cte("input_buckets", "input_edges", "BIGINT").strip()},
{_buckets_cte("output_buckets", "output_edges", "BIGINT").strip()},
classified AS (
    SELECT
        r.run,
        i.lower AS input_lower,
        coalesce(i.label, 'unknown') AS input_bucket,
        o.lower AS output_lower,
        coalesce(o.label, 'unknown') AS output_bucket,
        r.status = $ok AS ok,
        r.status = $ok
            AND (CAST($ttft_slo_ms AS DOUBLE) IS NULL
                OR r.ttft_ms <= CAST($ttft_slo_ms AS DOUBLE))
            AND (CAST($tpot_slo_ms AS DOUBLE) IS NULL OR r.tpot_ms IS NULL
                OR r.tpot_ms <= CAST($tpot_slo_ms AS DOUBLE)) AS met
    FROM measured_results AS r
    LEFT JOIN input_buckets AS i ON {_in_bucket("r.input_tokens", "i")}
    LEFT JOIN output_buckets AS o ON {_in_bucket("r.output_tokens", "o")}
)
SELECT
    c.run,
    CASE WHEN grouping(c.input_bucket) = 1 THEN 'all' ELSE c.input_bucket END
        AS input_bucket,
    CASE WHEN grouping(c.output_bucket) = 1 THEN 'all' ELSE c.output_bucket END
        AS output_bucket,
    count(*) AS requests,
    count(*) FILTER (WHERE c.ok) AS ok,
    count(*) FILTER (WHERE c.met) AS slo_met,
    count(*) FILTER (WHERE c.met) / count(*) AS attainment,
    count(*) FILTER (WHERE c.met) / nullif(any_value(w.wall_s * w.speedup), 0)
        AS goodput_per_s
FROM classified AS c
JOIN run_window AS w USING (run)
GROUP BY GROUPING SETS (
    (c.run, c.input_lower, c.input_bucket, c.output_lower, c.output_bucket),
    (c.run, c.input_lower, c.input_bucket),
    (c.run, c.output_lower, c.output_bucket),
    (c.run)
)
ORDER BY
    c.run,
    grouping(c.input_bucket),
    c.input_lower NULLS LAST,
    grouping(c.output_bucket),
    c.output_lower NULLS LAST
"""

CACHE_SQL = f"""
WITH {_buckets_cte("reuse_buckets", "reuse_edges", "DOUBLE").strip()},
joined AS (
    SELECT
        r.run,
        r.ttft_ms,
        r.input_tokens,
        r.cached_tokens,
        t.reused_tokens,
        b.lower AS reuse_lower,
        coalesce(b.label, 'unknown') AS reuse_bucket
    FROM measured_results AS r
    JOIN trace_reuse AS t USING (run, request_id)
    LEFT JOIN reuse_buckets AS b ON {_in_bucket("t.reuse_ratio", "b")}
    WHERE r.status = $ok
)
SELECT
    run,
    CASE WHEN grouping(reuse_bucket) = 1 THEN 'all' ELSE reuse_bucket END
        AS reuse_bucket,
    count(*) AS requests,
    CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
    CAST(sum(reused_tokens) AS BIGINT) AS reusable_tokens,
    CAST(sum(cached_tokens) AS BIGINT) AS cached_tokens,
    sum(reused_tokens) / nullif(sum(input_tokens), 0) AS ideal_reuse,
    sum(cached_tokens)
        / nullif(sum(input_tokens) FILTER (WHERE cached_tokens IS NOT NULL), 0)
        AS hit_rate,
    sum(cached_tokens)
        / nullif(sum(reused_tokens) FILTER (WHERE cached_tokens IS NOT NULL), 0)
        AS captured_share,
    quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
    quantile_cont(ttft_ms, 0.99) AS ttft_p99_ms
FROM joined
GROUP BY GROUPING SETS ((run, reuse_lower, reuse_bucket), (run))
ORDER BY run, grouping(reuse_bucket), reuse_lower NULLS LAST
"""

TURNS_SQL = """
WITH joined AS (
    SELECT
        r.run,
        r.status,
        r.input_tokens,
        r.cached_tokens,
        r.ttft_ms,
        r.tpot_ms,
        r.e2e_ms,
        CASE
            WHEN t.request_id IS NULL THEN NULL
            WHEN t.session_turn IS NULL THEN NULL
            ELSE least(t.session_turn, $max_turn)
        END AS turn_order,
        CASE
            WHEN t.request_id IS NULL THEN 'not in trace'
            WHEN t.session_turn IS NULL THEN 'no session'
            WHEN t.session_turn >= $max_turn THEN CAST($max_turn AS VARCHAR) || '+'
            ELSE CAST(t.session_turn AS VARCHAR)
        END AS turn
    FROM measured_results AS r
    LEFT JOIN trace AS t USING (run, request_id)
)
SELECT
    run,
    turn,
    count(*) AS requests,
    count(*) FILTER (WHERE status = $ok) AS ok,
    avg(input_tokens) AS mean_input_tokens,
    sum(cached_tokens) FILTER (WHERE status = $ok)
        / nullif(sum(input_tokens) FILTER (
            WHERE status = $ok AND cached_tokens IS NOT NULL), 0) AS hit_rate,
    quantile_cont(ttft_ms, 0.5) FILTER (WHERE status = $ok) AS ttft_p50_ms,
    quantile_cont(ttft_ms, 0.99) FILTER (WHERE status = $ok) AS ttft_p99_ms,
    quantile_cont(tpot_ms, 0.5) FILTER (WHERE status = $ok) AS tpot_p50_ms,
    quantile_cont(e2e_ms, 0.5) FILTER (WHERE status = $ok) AS e2e_p50_ms
FROM joined
GROUP BY run, turn_order, turn
ORDER BY run, turn_order NULLS LAST, turn
"""

INSTANCES_SQL = """
WITH ok_rows AS (
    SELECT * FROM measured_results WHERE status = $ok
),
placed AS (
    SELECT
        run, 'prefill' AS role, prefill_instance AS instance, input_tokens,
        output_tokens_received, queue_ms, ttft_ms, tpot_ms
    FROM ok_rows
    WHERE prefill_instance IS NOT NULL
    UNION ALL
    SELECT
        run, 'decode' AS role, decode_instance AS instance, input_tokens,
        output_tokens_received, queue_ms, ttft_ms, tpot_ms
    FROM ok_rows
    WHERE decode_instance IS NOT NULL
)
SELECT
    run,
    role,
    instance,
    count(*) AS requests,
    count(*) / sum(count(*)) OVER (PARTITION BY run, role) AS share,
    CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
    CAST(sum(output_tokens_received) AS BIGINT) AS output_tokens,
    avg(queue_ms) AS mean_queue_ms,
    quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
    quantile_cont(ttft_ms, 0.99) AS ttft_p99_ms,
    quantile_cont(tpot_ms, 0.5) AS tpot_p50_ms
FROM placed
GROUP BY run, role, instance
ORDER BY run, role = 'decode', instance
"""

SEND_LAG_SQL = f"""
WITH lags AS (
    SELECT
        run,
        count(send_lag_ms) AS requests,
        avg(send_lag_ms) AS mean_ms,
        quantile_cont(send_lag_ms, $quantiles) AS q,
        max(send_lag_ms) AS max_ms,
        count(*) FILTER (WHERE send_lag_ms > $late_ms) AS late
    FROM results
    GROUP BY run
)
SELECT
    run,
    requests,
    mean_ms,
    {_quantile_columns("q", QUANTILES, "{label}_ms")},
    max_ms,
    late,
    late / nullif(requests, 0) AS late_share
FROM lags
ORDER BY run
"""

_SLO_PARAMS = (
    QueryParam(
        "ttft_slo_ms",
        ParamKind.OPTIONAL_POSITIVE_FLOAT,
        None,
        "TTFT SLO in ms; 'none' leaves TTFT unchecked",
    ),
    QueryParam(
        "tpot_slo_ms",
        ParamKind.OPTIONAL_POSITIVE_FLOAT,
        50.0,
        "TPOT SLO in ms (the CloudMatrix384 paper's decode SLO); 'none' leaves "
        "TPOT unchecked",
    ),
)

_OK: Mapping[str, object] = MappingProxyType({"ok": STATUS_OK})


def _with_ok(**extra: object) -> Mapping[str, object]:
    return MappingProxyType({"ok": STATUS_OK, **extra})


CANNED_QUERIES: tuple[CannedQuery, ...] = (
    CannedQuery(
        name="summary",
        description=(
            "requests, failures, throughput in trace time, cache hit rate and "
            "TTFT/TPOT/E2E p50, p90 and p99 per run"
        ),
        sql=SUMMARY_SQL,
        fixed_params=_with_ok(quantiles=[q for _, q in QUANTILES]),
    ),
    CannedQuery(
        name="percentiles",
        description=(
            "count, mean, min, p50, p90, p95, p99, p99.9 and max of every "
            "latency column over ok rows"
        ),
        sql=PERCENTILES_SQL,
        fixed_params=_with_ok(quantiles=[q for _, q in DETAIL_QUANTILES]),
    ),
    CannedQuery(
        name="timeseries",
        description=(
            "per trace-time window: arrival rate, failures, time-averaged "
            "requests in flight, output tokens/s, TTFT and TPOT p50/p99 of the "
            "window's arrivals, and whether the window is a burst"
        ),
        sql=TIMESERIES_SQL,
        params=(
            QueryParam(
                "window_s",
                ParamKind.POSITIVE_FLOAT,
                10.0,
                "window length, seconds of trace time",
            ),
            QueryParam(
                "burst_factor",
                ParamKind.POSITIVE_FLOAT,
                2.0,
                "a window is a burst when its arrivals reach this multiple of "
                "the run's mean arrivals per window",
            ),
        ),
        fixed_params=_OK,
    ),
    CannedQuery(
        name="slo",
        description=(
            "SLO attainment (share of all requests that are ok and meet the "
            "SLOs) and goodput (such requests per second of trace time) by "
            "prompt-length and output-length bucket, with 'all' rows"
        ),
        sql=SLO_SQL,
        params=(
            *_SLO_PARAMS,
            QueryParam(
                "input_edges",
                ParamKind.INT_EDGES,
                (0, 1024, 4096, 16384, 65536),
                "lower edges of the prompt-length buckets, tokens",
            ),
            QueryParam(
                "output_edges",
                ParamKind.INT_EDGES,
                (0, 128, 512, 2048),
                "lower edges of the output-length buckets, tokens",
            ),
        ),
        fixed_params=_OK,
    ),
    CannedQuery(
        name="cache",
        description=(
            "prefix cache hit rate (cached / prompt tokens) of ok requests "
            "against the ideal reuse of their prompts in the trace, by reuse "
            "bucket, with TTFT p50/p99"
        ),
        sql=CACHE_SQL,
        params=(
            QueryParam(
                "reuse_edges",
                ParamKind.FLOAT_EDGES,
                (0.0, 0.25, 0.5, 0.75),
                "lower edges of the ideal-reuse buckets, fractions of the prompt",
            ),
        ),
        fixed_params=_OK,
        needs_trace=True,
    ),
    CannedQuery(
        name="turns",
        description=(
            "latency and cache hit rate by turn within a session (from the "
            "trace), the last turn bucket holding all later turns"
        ),
        sql=TURNS_SQL,
        params=(
            QueryParam(
                "max_turn",
                ParamKind.POSITIVE_INT,
                8,
                "turns from this one up are one bucket",
            ),
        ),
        fixed_params=_OK,
        needs_trace=True,
    ),
    CannedQuery(
        name="instances",
        description=(
            "load per prefill and decode instance: ok requests, share, tokens, "
            "mean queueing, TTFT and TPOT percentiles"
        ),
        sql=INSTANCES_SQL,
        fixed_params=_OK,
    ),
    CannedQuery(
        name="send_lag",
        description=(
            "how late the replayer sent requests: mean, p50, p90, p99 and max "
            "of send_lag_ms, and the count and share later than late_ms"
        ),
        sql=SEND_LAG_SQL,
        params=(
            QueryParam(
                "late_ms", ParamKind.NONNEGATIVE_FLOAT, 10.0, "lag counted as late, ms"
            ),
        ),
        fixed_params=MappingProxyType({"quantiles": [q for _, q in QUANTILES]}),
    ),
)

_BY_NAME: Mapping[str, CannedQuery] = MappingProxyType(
    {query.name: query for query in CANNED_QUERIES}
)


def get_query(name: str) -> CannedQuery:
    """Return the canned query called `name`.

    Raises KeyError, whose message lists the known names, for another name.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise KeyError(f"unknown query {name!r}; known queries: {known}") from None
