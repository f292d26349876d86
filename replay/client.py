"""gRPC client side of one replayed request: channel set-up and one Generate call.

`generate` does not raise when a call ends with a gRPC error status. It
returns an `Outcome` with the status name and details, and keeps whatever
tokens arrived before the failure, so that the replayer writes a row for
every request it sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.results import STATUS_OK, EmulatedLatencies, emulated_latencies

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "STATUS_CANCELLED",
    "STATUS_NO_SUMMARY",
    "Outcome",
    "generate",
    "open_channel",
]

logger = logging.getLogger(__name__)

# Far above any real message (a 1M-token prompt has about 2,000 prefix hashes,
# some 20 KB), so that the 4 MiB gRPC default is never the limit that fails.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

STATUS_CANCELLED = grpc.StatusCode.CANCELLED.name
# A stream that ends with status OK but without its summary message breaks the
# wire contract (every successful stream ends with one). It is recorded under
# DATA_LOSS, the gRPC code for unrecoverable loss of data.
STATUS_NO_SUMMARY = grpc.StatusCode.DATA_LOSS.name


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one Generate call, with client wall times.

    Instants (`*_at_s`) are `time.perf_counter()` seconds. `latencies` follow
    `replay.results.emulated_latencies`, except that TPOT and end-to-end
    latency are None unless `status` is ok, because a failed stream's last
    token is not the end of its output. `summary` is None unless ok.
    """

    status: str
    error: str | None
    tokens_received: int
    sent_at_s: float
    first_token_at_s: float | None
    finished_at_s: float
    latencies: EmulatedLatencies
    summary: emulator_pb2.GenerateSummary | None


class _TokenTimeline:
    """Running first/last timestamps and count of the tokens of one stream.

    Only these three numbers are kept, not every timestamp, so that thousands
    of concurrent long streams cost constant memory each.
    """

    def __init__(self) -> None:
        self.first_token_ms: float | None = None
        self.last_token_ms: float | None = None
        self.token_count = 0
        self.first_token_at_s: float | None = None

    def add_chunk(self, emulated_ms: Sequence[float], received_at_s: float) -> None:
        if not emulated_ms:
            return
        if self.first_token_ms is None:
            self.first_token_ms = emulated_ms[0]
            self.first_token_at_s = received_at_s
        self.last_token_ms = emulated_ms[-1]
        self.token_count += len(emulated_ms)


def open_channel(target: str) -> grpc.aio.Channel:
    """Open an insecure channel to `target` ("host:port") with raised size limits."""
    # NOTE: every call of a run shares this one HTTP/2 connection. If the
    # server caps concurrent streams, calls above the cap wait inside gRPC,
    # and that wait shows in wall_ttft_ms instead of send_lag_ms. Spreading
    # calls over several channels would remove the cap.
    return grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))


async def generate(
    stub: emulator_pb2_grpc.EmulatorStub,
    request: emulator_pb2.GenerateRequest,
    timeout_s: float | None,
) -> Outcome:
    """Run one Generate call to its end and return its outcome.

    `timeout_s` is the call's deadline in seconds (None for none); a call that
    passes it ends with DEADLINE_EXCEEDED. When the calling task is cancelled,
    the call is cancelled and the outcome has status CANCELLED instead of the
    CancelledError being raised, so that the tokens received so far are kept.
    """
    timeline = _TokenTimeline()
    summary: emulator_pb2.GenerateSummary | None = None
    sent_at_s = time.perf_counter()
    call = stub.Generate(request, timeout=timeout_s)

    try:
        async for response in call:
            kind = response.WhichOneof("kind")
            if kind == "chunk":
                timeline.add_chunk(response.chunk.emulated_ms, time.perf_counter())
            elif kind == "summary":
                summary = response.summary
    except grpc.aio.AioRpcError as error:
        logger.debug("request %s failed: %s", request.request_id, error.code().name)
        return _outcome(timeline, sent_at_s, error.code().name, error.details() or "")
    except asyncio.CancelledError:
        call.cancel()
        logger.debug("request %s cancelled by the replayer", request.request_id)
        return _outcome(
            timeline, sent_at_s, STATUS_CANCELLED, "cancelled by the replayer"
        )

    if summary is None:
        return _outcome(
            timeline, sent_at_s, STATUS_NO_SUMMARY, "stream ended without a summary"
        )
    return _outcome(timeline, sent_at_s, STATUS_OK, None, summary)


def _outcome(
    timeline: _TokenTimeline,
    sent_at_s: float,
    status: str,
    error: str | None,
    summary: emulator_pb2.GenerateSummary | None = None,
) -> Outcome:
    latencies = emulated_latencies(
        timeline.first_token_ms, timeline.last_token_ms, timeline.token_count
    )
    if status != STATUS_OK:
        latencies = EmulatedLatencies(
            ttft_ms=latencies.ttft_ms, tpot_ms=None, e2e_ms=None
        )
    return Outcome(
        status=status,
        error=error,
        tokens_received=timeline.token_count,
        sent_at_s=sent_at_s,
        first_token_at_s=timeline.first_token_at_s,
        finished_at_s=time.perf_counter(),
        latencies=latencies,
        summary=summary,
    )
