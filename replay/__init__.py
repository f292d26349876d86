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
from replay.results import (
    RESULTS_SCHEMA,
    ResultRow,
    ResultsWriter,
    emulated_latencies,
)
from replay.runner import ReplayConfig, ReplaySummary, replay, run_replay

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
    "TlsConfig",
    "emulated_latencies",
    "generate",
    "generate_sync",
    "open_channel",
    "replay",
    "run_replay",
]
