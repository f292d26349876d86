"""One Generate stream's request as the model serves it, across restarts.

A `RequestSession` is the server's side of one stream. It receives the
model's tokens through a sink per attempt, where a request restarted on
another instance after a failure is a new attempt. It keeps the timings the
summary needs and queues what the stream must send: token times, then the
end of the request or an abort with a gRPC status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from emulator.engine import RequestRecord, RequestSpec

__all__ = ["RequestSession", "SessionEnd", "StreamAbort", "StreamEnd", "StreamQueue"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """The request's last token was produced."""


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """The stream must end with this status instead of a summary."""

    code: grpc.StatusCode
    details: str


StreamEnd = SessionEnd | StreamAbort


class StreamQueue:
    """What the model produced for one stream and the stream has not sent yet.

    Token times gather in one list, and the end of the stream, once set,
    comes after all of them. The model adds from the event loop's thread at
    every decode step; the stream takes everything at once when it sends a
    chunk. A list rather than a queue of token batches, as a step adds one
    or two tokens per stream.
    """

    def __init__(self) -> None:
        self._times_s: list[float] = []
        self._end: StreamEnd | None = None
        self._waiter: asyncio.Future[None] | None = None

    def add_times(self, emulated_at_s: Sequence[float]) -> None:
        self._times_s.extend(emulated_at_s)
        self._wake()

    def set_end(self, end: StreamEnd) -> None:
        self._end = end
        self._wake()

    async def take_all(self) -> tuple[list[float], StreamEnd | None]:
        """Wait for a token or the end; return the token times and the end."""
        while not self._times_s and self._end is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take_nowait()

    def take_nowait(self) -> tuple[list[float], StreamEnd | None]:
        """Return the token times and the end queued so far, emptying the queue."""
        times_s, self._times_s = self._times_s, []
        end, self._end = self._end, None
        return times_s, end

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _AttemptSink:
    """Token sink of one attempt; ignored once a newer attempt has started."""

    def __init__(self, session: RequestSession, attempt: int, offset: int) -> None:
        self._session = session
        self._attempt = attempt
        self._offset = offset

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        if self._attempt == self._session.attempt_count:
            self._session.add_tokens(self._offset + first_index, emulated_at_s)

    def on_finish(self, record: RequestRecord) -> None:
        if self._attempt == self._session.attempt_count:
            self._session.finish()


class RequestSession:
    """A request from the stream's point of view, in emulated seconds.

    `spec` is the request as the client sent it. Each attempt is a record in
    the model. The first serves `spec`. A restart serves the prompt plus the
    tokens already produced as its prompt, and the rest of the output.
    """

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.items = StreamQueue()
        self.attempts: list[RequestRecord] = []
        self.tokens_emitted = 0
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.ended = False
        # Labels of the faults that touched the request, in first-seen order.
        self.fault_labels: dict[str, None] = {}
        # Stream faults chosen when the stream started.
        self.latency_wall_s = 0.0
        self.drop_after_tokens: int | None = None
        self.drop_label = ""

    @property
    def attempt_count(self) -> int:
        return len(self.attempts)

    @property
    def record(self) -> RequestRecord | None:
        """The current attempt's record, or None before admission."""
        return self.attempts[-1] if self.attempts else None

    @property
    def arrival_s(self) -> float:
        return self.attempts[0].arrival_s if self.attempts else 0.0

    @property
    def in_model(self) -> bool:
        """Whether the current attempt is still being served by the model."""
        record = self.record
        return record is not None and not (record.finished or record.cancelled)

    def next_attempt(self) -> tuple[RequestSpec, _AttemptSink]:
        """Return the spec and sink of the next attempt, which the model serves."""
        spec = self.spec
        if self.tokens_emitted:
            spec = RequestSpec(
                request_id=spec.request_id,
                input_tokens=spec.input_tokens + self.tokens_emitted,
                output_tokens=spec.output_tokens - self.tokens_emitted,
                prefix_block_hashes=spec.prefix_block_hashes,
                block_tokens=spec.block_tokens,
                session_id=spec.session_id,
            )
        sink = _AttemptSink(self, self.attempt_count + 1, self.tokens_emitted)
        return spec, sink

    def start_attempt(self, record: RequestRecord) -> None:
        self.attempts.append(record)

    def add_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        if self.ended or not emulated_at_s:
            return
        if self.first_token_s is None:
            self.first_token_s = emulated_at_s[0]
        self.last_token_s = emulated_at_s[-1]
        self.tokens_emitted = first_index + len(emulated_at_s)
        self.items.add_times(emulated_at_s)

    def finish(self) -> None:
        if not self.ended:
            self.ended = True
            self.items.set_end(SessionEnd())

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        """End the stream with `code`; the model's state is the caller's job."""
        if not self.ended:
            self.ended = True
            logger.debug("request %s aborted: %s", self.spec.request_id, details)
            self.items.set_end(StreamAbort(code, details))

    def add_fault(self, label: str) -> None:
        self.fault_labels[label] = None

    def summed_times_s(self) -> tuple[float, float, float]:
        """Return queueing, prefill and KV transfer time summed over attempts."""
        queue_s = sum(record.queue_s for record in self.attempts)
        prefill_s = sum(record.prefill_s for record in self.attempts)
        transfer_s = sum(record.kv_transfer_s for record in self.attempts)
        return queue_s, prefill_s, transfer_s
