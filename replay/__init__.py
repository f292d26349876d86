"""Load drivers for the emulator: the open-loop replayer and its result files.

This package uses `traces` and the generated gRPC stubs in `cmx.v1`, never the
emulator's internals.
"""

from replay.client import (
    AsyncEmulatorClient,
    EmulatorClient,
    Outcome,
    RetryPolicy,
    TlsConfig,
    generate,
    generate_sync,
    open_channel,
)
from replay.errors import ReplayError
from replay.metrics import Slo, SloMetric, TokenGaps, parse_slo
from replay.results import (
    RESULTS_SCHEMA,
    ResultRow,
    ResultsWriter,
    emulated_latencies,
)
from replay.runner import ReplayConfig, ReplaySummary, replay, run_replay
from replay.schedule import ScheduleWindow, TracePlan, plan_schedule
from replay.summary import RunMetrics, summarize_results

__all__ = [
    "RESULTS_SCHEMA",
    "AsyncEmulatorClient",
    "EmulatorClient",
    "Outcome",
    "ReplayConfig",
    "ReplayError",
    "ReplaySummary",
    "ResultRow",
    "ResultsWriter",
    "RetryPolicy",
    "RunMetrics",
    "ScheduleWindow",
    "Slo",
    "SloMetric",
    "TlsConfig",
    "TokenGaps",
    "TracePlan",
    "emulated_latencies",
    "generate",
    "generate_sync",
    "open_channel",
    "parse_slo",
    "plan_schedule",
    "replay",
    "run_replay",
    "summarize_results",
]
