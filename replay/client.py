"""A small typed client of `cmx.v1.Emulator`, for asyncio and for threads.

`AsyncEmulatorClient` (asyncio, used by the replayer) and `EmulatorClient`
(blocking, for threads and for gevent once `grpc.experimental.gevent.
init_gevent()` has run, as Locust needs) share one request path: open a
channel with raised message size limits and optional TLS, run a Generate
call to its end, and return an `Outcome`.

`generate` and `generate_sync` do not raise when a call ends with a gRPC
error status. They return an `Outcome` with the status name and details and
keep whatever tokens arrived before the failure, so that a load driver can
write a row for every request it sent.

Retries happen only where they are safe: when the call ended with a status
in `RetryPolicy.retry_on` (UNAVAILABLE by default) before any token arrived.
The client has then seen no output that a retry would repeat. Retries also
stay within the call's deadline, which covers every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import cast

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.errors import ReplayError
from replay.results import (
    ERROR_CANCELLED_BY_REPLAYER,
    STATUS_OK,
    EmulatedLatencies,
    emulated_latencies,
)

__all__ = [
    "CHANNEL_OPTIONS",
    "FAULTS_METADATA_KEY",
    "MAX_MESSAGE_BYTES",
    "NO_RETRY",
    "SAFE_TO_RETRY",
    "STATUS_CANCELLED",
    "STATUS_NO_SUMMARY",
    "AsyncEmulatorClient",
    "CallInterrupted",
    "ChunkObserver",
    "EmulatorClient",
    "Outcome",
    "RetryPolicy",
    "StartedCall",
    "TlsConfig",
    "check_tls_files",
    "generate",
    "generate_sync",
    "open_channel",
    "open_sync_channel",
    "tls_from_options",
]

logger = logging.getLogger(__name__)

# Far above any real message (a 1M-token prompt has about 2,000 prefix hashes,
# some 20 KB, or 1M token ids, at most 5 MB), so that the 4 MiB gRPC default
# is never the limit that fails.
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
# Trailing metadata key in which the emulator lists the faults of a stream.
FAULTS_METADATA_KEY = "cmx-faults"
# Statuses a retry may follow: the emulator sends them before it has served
# any of the request (admission, shutdown, no instance) or after the stream
# broke. A retry also needs that no token arrived.
SAFE_TO_RETRY = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """Result of one Generate call, with client wall times.

    Instants (`*_at_s`) are `time.perf_counter()` seconds; `sent_at_s` is
    the first attempt's. `latencies` follow
    `replay.results.emulated_latencies`, except that TPOT and end-to-end
    latency are None unless `status` is ok, because a failed stream's last
    token is not the end of its output. `summary` is None unless ok.
    `faults` are the "ID:KIND" labels of the injected faults that touched
    the request, from the summary or, for a failed stream, its trailing
    metadata. `messages_received` counts the last attempt's stream messages,
    chunks and summary.
    """

    status: str
    error: str | None
    tokens_received: int
    sent_at_s: float
    first_token_at_s: float | None
    finished_at_s: float
    latencies: EmulatedLatencies
    summary: emulator_pb2.GenerateSummary | None
    faults: tuple[str, ...] = ()
    attempts: int = 1
    messages_received: int = 0


class CallInterrupted(Exception):
    """A blocking call cancelled because its caller was interrupted.

    `outcome` has status CANCELLED and the tokens received before.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


@dataclass(frozen=True)
class TlsConfig:
    """PEM files for a TLS channel; a client certificate and key for mutual TLS.

    `root_ca` None trusts the system's roots. `server_name` overrides the
    name checked against the server's certificate.
    """

    root_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ReplayError(
                "TLS client_cert and client_key must be given together for "
                "mutual TLS, or both left out"
            )

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files; raises ReplayError naming one that cannot be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_optional(self.root_ca),
            private_key=_read_optional(self.client_key),
            certificate_chain=_read_optional(self.client_cert),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def describe(self) -> dict[str, str | None]:
        """Return the settings for a run's metadata: file names, never the key's."""
        return {
            "root_ca": None if self.root_ca is None else str(self.root_ca),
            "client_cert": None if self.client_cert is None else str(self.client_cert),
            "server_name": self.server_name,
        }


def tls_from_options(
    *,
    enabled: bool,
    root_ca: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    server_name: str | None,
    prefix: str = "--tls",
) -> TlsConfig | None:
    """Return the TLS settings of command-line options, or None for plaintext.

    Any value, or `enabled`, turns TLS on. Messages name the options as
    `{prefix}-ca`, `{prefix}-cert` and `{prefix}-key`. Raises ReplayError
    when only one of certificate and key is given or a file is missing.
    """
    values = (root_ca, client_cert, client_key, server_name)
    if not enabled and all(value is None for value in values):
        return None
    cert_option, key_option = f"{prefix}-cert", f"{prefix}-key"
    if (client_cert is None) != (client_key is None):
        given, missing = (cert_option, key_option)
        if client_cert is None:
            given, missing = missing, given
        raise ReplayError(
            f"{given} was given without {missing}. Give both (the client "
            "certificate and its private key) for mutual TLS, or neither"
        )
    tls = TlsConfig(
        root_ca=root_ca,
        client_cert=client_cert,
        client_key=client_key,
        server_name=server_name,
    )
    check_tls_files(tls, prefix)
    return tls


def check_tls_files(tls: TlsConfig, prefix: str = "--tls") -> None:
    """Raise ReplayError naming the option of a TLS file that is not a file."""
    for suffix, path in (
        ("-ca", tls.root_ca),
        ("-cert", tls.client_cert),
        ("-key", tls.client_key),
    ):
        if path is None or path.is_file():
            continue
        option = prefix + suffix
        if path.exists():
            raise ReplayError(f"{option} {path} is not a file; give a PEM file")
        raise ReplayError(f"{option} {path}: PEM file not found")


def _read_optional(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise ReplayError(f"cannot read TLS file {path}: {error.strerror}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed Generate call is sent again; the default never retries.

    An attempt is retried when it ended with a status in `retry_on` before
    any token arrived, fewer than `max_attempts` attempts were made, and the
    call's deadline leaves time. The wait before attempt n + 1 is drawn
    uniformly from 0 to min(`max_backoff_s`, `initial_backoff_s` x
    `multiplier` ** (n - 1)) ("full jitter"). Raises ReplayError for a
    status outside SAFE_TO_RETRY or an out-of-range number.
    """

    max_attempts: int = 1
    retry_on: frozenset[str] = frozenset({"UNAVAILABLE"})
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ReplayError(
                f"max_attempts must be at least 1, not {self.max_attempts}"
            )
        unsafe = sorted(set(self.retry_on) - SAFE_TO_RETRY)
        if unsafe:
            raise ReplayError(
                f"retrying {', '.join(unsafe)} is not safe for Generate; "
                f"retry_on accepts {', '.join(sorted(SAFE_TO_RETRY))}"
            )
        if not (0 <= self.initial_backoff_s <= self.max_backoff_s):
            raise ReplayError(
                "backoff must satisfy 0 <= initial_backoff_s <= max_backoff_s, not "
                f"{self.initial_backoff_s} and {self.max_backoff_s}"
            )
        if self.multiplier < 1:
            raise ReplayError(f"multiplier must be at least 1, not {self.multiplier}")
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def should_retry(self, outcome: Outcome, attempt: int) -> bool:
        """Return whether `outcome` of attempt number `attempt` (from 1) is retried."""
        return (
            attempt < self.max_attempts
            and outcome.status in self.retry_on
            and outcome.tokens_received == 0
        )

    def backoff_s(self, attempt: int) -> float:
        """Wait before the attempt after attempt number `attempt`."""
        ceiling_s = self.initial_backoff_s * self.multiplier ** (attempt - 1)
        return self._rng.uniform(0.0, min(self.max_backoff_s, ceiling_s))


NO_RETRY = RetryPolicy()


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


class _Attempt:
    """Tokens and summary received by one Generate attempt, for its Outcome."""

    def __init__(self, on_chunk: ChunkObserver | None = None) -> None:
        self.sent_at_s = time.perf_counter()
        self.timeline = _TokenTimeline()
        self.summary: emulator_pb2.GenerateSummary | None = None
        self.messages = 0
        self._on_chunk = on_chunk

    def receive(self, response: emulator_pb2.GenerateResponse) -> None:
        self.messages += 1
        kind = response.WhichOneof("kind")
        if kind == "chunk":
            emulated_ms = response.chunk.emulated_ms
            self.timeline.add_chunk(emulated_ms, time.perf_counter())
            if self._on_chunk is not None:
                self._on_chunk(emulated_ms)
        elif kind == "summary":
            self.summary = response.summary

    def outcome(
        self,
        status: str,
        error: str | None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
    ) -> Outcome:
        if status == STATUS_OK and self.summary is None:
            status, error = STATUS_NO_SUMMARY, "stream ended without a summary"
        timeline = self.timeline
        latencies = emulated_latencies(
            timeline.first_token_ms, timeline.last_token_ms, timeline.token_count
        )
        if status != STATUS_OK:
            latencies = EmulatedLatencies(
                ttft_ms=latencies.ttft_ms, tpot_ms=None, e2e_ms=None
            )
        summary = self.summary if status == STATUS_OK else None
        return Outcome(
            status=status,
            error=error,
            tokens_received=timeline.token_count,
            sent_at_s=self.sent_at_s,
            first_token_at_s=timeline.first_token_at_s,
            finished_at_s=time.perf_counter(),
            latencies=latencies,
            summary=summary,
            faults=_faults(summary, metadata),
            messages_received=self.messages,
        )


def _faults(
    summary: emulator_pb2.GenerateSummary | None,
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[str, ...]:
    if summary is not None and summary.faults:
        return tuple(summary.faults)
    for key, value in metadata or ():
        if key == FAULTS_METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            return tuple(label for label in text.split(",") if label)
    return ()


def open_channel(target: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    """Open an asyncio channel to `target` ("host:port"), plaintext unless `tls`."""
    # NOTE: every call of a run shares this one HTTP/2 connection. If the
    # server caps concurrent streams, calls above the cap wait inside gRPC,
    # and that wait shows in wall_ttft_ms instead of send_lag_ms. Spreading
    # calls over several channels would remove the cap.
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))
    options = [*CHANNEL_OPTIONS, *tls.channel_options()]
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)


def open_sync_channel(target: str, tls: TlsConfig | None = None) -> grpc.Channel:
    """Open a blocking channel to `target`, plaintext unless `tls`."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
    options = [*CHANNEL_OPTIONS, *tls.channel_options()]
    return grpc.secure_channel(target, tls.credentials(), options=options)


# Receives the `emulated_ms` of every token chunk of a call, as it arrives.
ChunkObserver = Callable[[Sequence[float]], None]


class StartedCall:
    """A Generate call started at once, for `generate` to read later.

    Creating it stamps the send instant and starts the call in the calling
    task. A caller that must send on time (the replayer) then does not wait
    one more turn of the event loop for a new task to start the call.
    `on_chunk` receives the timestamps of every token chunk, of this attempt
    and of any retry.
    """

    def __init__(
        self,
        stub: emulator_pb2_grpc.EmulatorStub,
        request: emulator_pb2.GenerateRequest,
        timeout_s: float | None,
        *,
        on_chunk: ChunkObserver | None = None,
    ) -> None:
        self.on_chunk = on_chunk
        self.attempt = _Attempt(on_chunk)
        self.call = stub.Generate(request, timeout=timeout_s)
        self.deadline_at_s = (
            None if timeout_s is None else self.attempt.sent_at_s + timeout_s
        )

    @property
    def sent_at_s(self) -> float:
        return self.attempt.sent_at_s

    def cancel(self) -> None:
        """Cancel the call; nothing happens once it has ended."""
        self.call.cancel()


async def generate(
    stub: emulator_pb2_grpc.EmulatorStub,
    request: emulator_pb2.GenerateRequest,
    timeout_s: float | None,
    *,
    retry: RetryPolicy = NO_RETRY,
    started: StartedCall | None = None,
) -> Outcome:
    """Run one Generate call to its end, retrying where safe; return its outcome.

    `timeout_s` is the call's deadline in seconds over all attempts (None
    for none); a call that passes it ends with DEADLINE_EXCEEDED. When the
    calling task is cancelled, the call is cancelled and the outcome has
    status CANCELLED instead of the CancelledError being raised, so that the
    tokens received so far are kept. `started` is the first attempt when the
    caller has already started it with the same arguments.
    """
    if started is None:
        started = StartedCall(stub, request, timeout_s)
    deadline_at_s = started.deadline_at_s
    first_sent_at_s = started.sent_at_s
    attempt = 1
    while True:
        outcome = await _read_attempt(request, started)
        wait_s = _retry_wait_s(retry, outcome, attempt, deadline_at_s)
        if wait_s is None:
            return _final(outcome, first_sent_at_s, attempt)
        logger.debug(
            "request %s: attempt %d ended %s, retrying in %.3f s",
            request.request_id,
            attempt,
            outcome.status,
            wait_s,
        )
        try:
            await asyncio.sleep(wait_s)
        except asyncio.CancelledError:
            return _final(outcome, first_sent_at_s, attempt)
        attempt += 1
        started = StartedCall(
            stub, request, _remaining_s(deadline_at_s), on_chunk=started.on_chunk
        )


async def _read_attempt(
    request: emulator_pb2.GenerateRequest, started: StartedCall
) -> Outcome:
    attempt, call = started.attempt, started.call
    try:
        # read() rather than `async for`, which adds a generator per message.
        while (response := await call.read()) is not grpc.aio.EOF:
            attempt.receive(cast(emulator_pb2.GenerateResponse, response))
    except grpc.aio.AioRpcError as error:
        logger.debug("request %s failed: %s", request.request_id, error.code().name)
        return attempt.outcome(
            error.code().name, error.details() or "", error.trailing_metadata()
        )
    except asyncio.CancelledError:
        call.cancel()
        logger.debug("request %s cancelled by the caller", request.request_id)
        return attempt.outcome(STATUS_CANCELLED, ERROR_CANCELLED_BY_REPLAYER)
    return attempt.outcome(STATUS_OK, None, await call.trailing_metadata())


def generate_sync(
    stub: emulator_pb2_grpc.EmulatorStub,
    request: emulator_pb2.GenerateRequest,
    timeout_s: float | None,
    *,
    retry: RetryPolicy = NO_RETRY,
    interrupted_by: tuple[type[BaseException], ...] = (),
) -> Outcome:
    """Blocking `generate` for a stub of a channel from `open_sync_channel`.

    An exception raised in the calling thread or greenlet while the stream
    runs cancels the call. One of the `interrupted_by` types (such as
    gevent's GreenletExit, for a Locust user that is stopped) then raises
    CallInterrupted with the outcome so far. Any other exception, such as
    KeyboardInterrupt, is raised again as it is.
    """
    deadline_at_s = None if timeout_s is None else time.perf_counter() + timeout_s
    first_sent_at_s: float | None = None
    attempt = 1
    while True:
        outcome = _attempt_sync(
            stub, request, _remaining_s(deadline_at_s), interrupted_by
        )
        first_sent_at_s = first_sent_at_s or outcome.sent_at_s
        wait_s = _retry_wait_s(retry, outcome, attempt, deadline_at_s)
        if wait_s is None:
            return _final(outcome, first_sent_at_s, attempt)
        time.sleep(wait_s)
        attempt += 1


def _attempt_sync(
    stub: emulator_pb2_grpc.EmulatorStub,
    request: emulator_pb2.GenerateRequest,
    timeout_s: float | None,
    interrupted_by: tuple[type[BaseException], ...],
) -> Outcome:
    attempt = _Attempt()
    call = stub.Generate(request, timeout=timeout_s)
    try:
        for response in call:
            attempt.receive(response)
    except grpc.RpcError as error:
        code = error.code()
        details = error.details()
        metadata = error.trailing_metadata()
        return attempt.outcome(code.name, details or "", metadata)
    except BaseException as error:
        call.cancel()
        if isinstance(error, interrupted_by):
            outcome = attempt.outcome(STATUS_CANCELLED, "the caller was interrupted")
            raise CallInterrupted(outcome) from error
        raise
    return attempt.outcome(STATUS_OK, None, call.trailing_metadata())


def _remaining_s(deadline_at_s: float | None) -> float | None:
    if deadline_at_s is None:
        return None
    return max(0.0, deadline_at_s - time.perf_counter())


def _retry_wait_s(
    retry: RetryPolicy, outcome: Outcome, attempt: int, deadline_at_s: float | None
) -> float | None:
    """Return the wait before the next attempt, or None to stop here."""
    if not retry.should_retry(outcome, attempt):
        return None
    wait_s = retry.backoff_s(attempt)
    if deadline_at_s is not None and time.perf_counter() + wait_s >= deadline_at_s:
        return None
    return wait_s


def _final(outcome: Outcome, first_sent_at_s: float, attempts: int) -> Outcome:
    if attempts == 1:
        return outcome
    return Outcome(
        status=outcome.status,
        error=outcome.error,
        tokens_received=outcome.tokens_received,
        sent_at_s=first_sent_at_s,
        first_token_at_s=outcome.first_token_at_s,
        finished_at_s=outcome.finished_at_s,
        latencies=outcome.latencies,
        summary=outcome.summary,
        faults=outcome.faults,
        attempts=attempts,
        messages_received=outcome.messages_received,
    )


class AsyncEmulatorClient:
    """An asyncio client of one emulator: a channel and its stubs.

    Use it as `async with AsyncEmulatorClient(target) as client:`; `retry`
    is the policy of every `generate` call.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | None = None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        self.target = target
        self.retry = retry
        self.channel = open_channel(target, tls)
        self._stub = emulator_pb2_grpc.EmulatorStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the channel is connected; raises ReplayError on timeout."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout_s)
        except asyncio.TimeoutError:
            raise ReplayError(_not_reachable(self.target, timeout_s)) from None

    async def generate(
        self, request: emulator_pb2.GenerateRequest, timeout_s: float | None = None
    ) -> Outcome:
        """Run one Generate call; see `replay.client.generate`."""
        return await generate(self._stub, request, timeout_s, retry=self.retry)

    async def check_health(
        self, service: str = "cmx.v1.Emulator", timeout_s: float = 5.0
    ) -> str:
        """Return the service's health status name, such as "SERVING".

        Raises grpc.aio.AioRpcError when the check itself fails. Health
        checks are read-only, so UNAVAILABLE is retried by the channel's
        own wait for readiness.
        """
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=timeout_s,
            wait_for_ready=True,
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncEmulatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class EmulatorClient:
    """A blocking client of one emulator, for threads and gevent greenlets."""

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | None = None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        self.target = target
        self.retry = retry
        self.channel = open_sync_channel(target, tls)
        self._stub = emulator_pb2_grpc.EmulatorStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the channel is connected; raises ReplayError on timeout."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise ReplayError(_not_reachable(self.target, timeout_s)) from None

    def generate(
        self, request: emulator_pb2.GenerateRequest, timeout_s: float | None = None
    ) -> Outcome:
        """Run one Generate call; see `replay.client.generate_sync`."""
        return generate_sync(self._stub, request, timeout_s, retry=self.retry)

    def check_health(
        self, service: str = "cmx.v1.Emulator", timeout_s: float = 5.0
    ) -> str:
        """Return the service's health status name, such as "SERVING"."""
        reply = self._health.Check(
            health_pb2.HealthCheckRequest(service=service),
            timeout=timeout_s,
            wait_for_ready=True,
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EmulatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _not_reachable(target: str, timeout_s: float) -> str:
    return (
        f"could not connect to {target} within {timeout_s:g} s; check that the "
        "emulator is running and listening at that address"
    )
