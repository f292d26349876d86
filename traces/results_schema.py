"""Per-request results schema shared by `cmx replay` and `cmx simulate`.

A results file has one row per request. Wall times are milliseconds since
the run started. Emulated times come from the emulator's per-token
timestamps, which count from the request's arrival at the emulator.

| column                 | type           | meaning                                    |
| ---------------------- | -------------- | ------------------------------------------ |
| request_id             | string         | from the trace                             |
| arrival_ms             | float64        | trace arrival, ms from trace start         |
| scheduled_send_ms      | float64        | wall ms from run start the send was due    |
| actual_send_ms         | float64        | wall ms from run start the call started    |
| send_lag_ms            | float64        | actual_send_ms - scheduled_send_ms         |
| input_tokens           | int64          | prompt length, from the trace              |
| output_tokens          | int64          | output length requested, from the trace    |
| output_tokens_received | int64          | tokens received, also for failed streams   |
| status                 | string         | `ok` or the gRPC status name               |
| error                  | string, null   | status details; null when ok               |
| ttft_ms                | float64, null  | emulated; null when no token arrived       |
| tpot_ms                | float64, null  | emulated; null unless ok with >= 2 tokens  |
| e2e_ms                 | float64, null  | emulated; null unless ok                   |
| wall_ttft_ms           | float64, null  | send to first token; null when no token    |
| wall_e2e_ms            | float64        | send to end of stream, error included      |
| queue_ms               | float64, null  | emulated, from the summary; null unless ok |
| prefill_ms             | float64, null  | as queue_ms                                |
| kv_transfer_ms         | float64, null  | as queue_ms                                |
| cached_tokens          | int64, null    | as queue_ms                                |
| prefill_instance       | int64, null    | as queue_ms                                |
| decode_instance        | int64, null    | as queue_ms                                |
| itl_ms_p50             | float64, null  | emulated inter-token gaps; null for < 2    |
| itl_ms_p99             | float64, null  | tokens (see replay.metrics)                |
| itl_ms_max             | float64, null  | as itl_ms_p50                              |
| normalized_latency_ms  | float64, null  | e2e_ms / output_tokens_received            |
| concurrency_wait_ms    | float64, null  | wait for a slot under --max-concurrency    |
| measured               | bool, null     | false in the warm-up or cool-down          |
| slo_met                | bool, null     | meets every SLO given; null without SLOs   |
| cached_tokens_hbm      | int64, null    | cached_tokens found in the instance's HBM  |
| cached_tokens_pool     | int64, null    | cached_tokens loaded from the DRAM pool    |
| cache_load_ms          | float64, null  | emulated pool load time, in prefill_ms     |
| faults                 | list<string>   | "ID:KIND" of injected faults that touched  |
|                        |                | the request; empty when none               |

The columns from itl_ms_p50 on were added after schema version 1 first
shipped. They are nullable, and readers select columns by name, so files with
and without them share version "1". docs/metrics.md defines every metric.

The emulated latencies of a stream whose n tokens carry the timestamps
t_1 <= ... <= t_n are defined once, in `emulated_latencies`:

    ttft_ms = t_1
    tpot_ms = (t_n - t_1) / (n - 1)    for n >= 2; NULL for n == 1, never 0
    e2e_ms  = t_n

Every results file carries `cmx.results.schema_version` and the run
configuration as JSON under `cmx.results.run_config` in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "RESULTS_SCHEMA",
    "RUN_CONFIG_KEY",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_KEY",
    "STATUS_OK",
    "EmulatedLatencies",
    "emulated_latencies",
]

SCHEMA_VERSION = "1"
STATUS_OK = "ok"
SCHEMA_VERSION_KEY = "cmx.results.schema_version"
RUN_CONFIG_KEY = "cmx.results.run_config"


RESULTS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_ms", pa.float64(), nullable=False),
        pa.field("scheduled_send_ms", pa.float64(), nullable=False),
        pa.field("actual_send_ms", pa.float64(), nullable=False),
        pa.field("send_lag_ms", pa.float64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens_received", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("ttft_ms", pa.float64(), nullable=True),
        pa.field("tpot_ms", pa.float64(), nullable=True),
        pa.field("e2e_ms", pa.float64(), nullable=True),
        pa.field("wall_ttft_ms", pa.float64(), nullable=True),
        pa.field("wall_e2e_ms", pa.float64(), nullable=False),
        pa.field("queue_ms", pa.float64(), nullable=True),
        pa.field("prefill_ms", pa.float64(), nullable=True),
        pa.field("kv_transfer_ms", pa.float64(), nullable=True),
        pa.field("cached_tokens", pa.int64(), nullable=True),
        pa.field("prefill_instance", pa.int64(), nullable=True),
        pa.field("decode_instance", pa.int64(), nullable=True),
        pa.field("itl_ms_p50", pa.float64(), nullable=True),
        pa.field("itl_ms_p99", pa.float64(), nullable=True),
        pa.field("itl_ms_max", pa.float64(), nullable=True),
        pa.field("normalized_latency_ms", pa.float64(), nullable=True),
        pa.field("concurrency_wait_ms", pa.float64(), nullable=True),
        pa.field("measured", pa.bool_(), nullable=True),
        pa.field("slo_met", pa.bool_(), nullable=True),
        pa.field("cached_tokens_hbm", pa.int64(), nullable=True),
        pa.field("cached_tokens_pool", pa.int64(), nullable=True),
        pa.field("cache_load_ms", pa.float64(), nullable=True),
        pa.field("faults", pa.list_(pa.string()), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class EmulatedLatencies:
    """Emulated latencies of one stream, in milliseconds; None where undefined."""

    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None


def emulated_latencies(
    first_token_ms: float | None, last_token_ms: float | None, token_count: int
) -> EmulatedLatencies:
    """Compute TTFT, TPOT and end-to-end latency from token timestamps.

    `first_token_ms` and `last_token_ms` are the `emulated_ms` of the first and
    last token received and `token_count` is how many tokens arrived. TPOT is
    None for a one-token output, where it is undefined. Every value is None
    when no token arrived.
    """
    if token_count == 0 or first_token_ms is None or last_token_ms is None:
        return EmulatedLatencies(ttft_ms=None, tpot_ms=None, e2e_ms=None)

    tpot_ms = None
    if token_count >= 2:
        tpot_ms = (last_token_ms - first_token_ms) / (token_count - 1)
    return EmulatedLatencies(
        ttft_ms=first_token_ms, tpot_ms=tpot_ms, e2e_ms=last_token_ms
    )
