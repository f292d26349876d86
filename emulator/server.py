"""gRPC server around the supernode model, paced against the wall clock.

`start_emulator` builds and starts the `cmx.v1.Emulator` service with
standard health checking and server reflection. It adds the `cmx.v1.Control`
service (on the same port, its own port, or not at all) and, on request, a
Prometheus metrics endpoint. It returns a `RunningEmulator` whose `shutdown`
drains the streams. `run_server` serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cmx.v1 import control_pb2_grpc, emulator_pb2, emulator_pb2_grpc
from emulator.admission import AdmissionLimits
from emulator.binding import (
    BindError,
    Listener,
    bind_error,
    bind_grpc,
    format_address,
)
from emulator.control import ControlService
from emulator.engine import NoInstanceAvailable, RequestSpec
from emulator.errors import EmulatorError
from emulator.faults import FailedInstancePolicy, FaultSpec
from emulator.metrics import MetricsExporter, ServerStats, collect_metrics
from emulator.profiles import Profiles
from emulator.runtime import AdmissionRejected, PacedRuntime
from emulator.sessions import RequestSession, StreamAbort, StreamEnd
from emulator.tls import TlsFiles
from emulator.validation import prompt_tokens, validate_request

__all__ = [
    "BindError",
    "EmulatorService",
    "Listener",
    "PacedRuntime",
    "RunningEmulator",
    "ServerOptions",
    "TlsFiles",
    "build_server",
    "run_server",
    "start_emulator",
    "validate_request",
]

logger = logging.getLogger(__name__)

SERVICE_NAME = "cmx.v1.Emulator"
CONTROL_SERVICE_NAME = "cmx.v1.Control"
# Long prompts sent with explicit hashes or token ids exceed gRPC's 4 MiB
# default; 64 MiB fits about 8M 8-byte hashes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Trailing metadata key listing the faults that touched a stream.
FAULTS_METADATA_KEY = "cmx-faults"
# Wall time the final stop gives the aborts of the last streams to go out.
_ABORT_FLUSH_S = 1.0
_DRAIN_POLL_S = 0.05

_GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Without this, a second server on a busy port would share it silently.
    ("grpc.so_reuseport", 0),
)


@dataclass(frozen=True)
class ServerOptions:
    """Network, pacing and admission settings of `cmx serve`.

    `control_port` None serves the control service on `port`, and
    `control_enabled` False does not serve it. `metrics_port` None serves no
    Prometheus endpoint; 0 picks a free port, as for the gRPC ports.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    time_scale: float = 1.0
    # Minimum wall time between two chunks of one stream, so that fast token
    # rates are coalesced into fewer, larger messages.
    chunk_interval_s: float = 0.01
    grace_s: float = 5.0
    tls: TlsFiles | None = None
    control_enabled: bool = True
    control_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    failed_instance_policy: FailedInstancePolicy = FailedInstancePolicy.REROUTE
    fault_schedule: tuple[FaultSpec, ...] = ()


class EmulatorService(emulator_pb2_grpc.EmulatorServicer):
    """Implements `cmx.v1.Emulator` on a `PacedRuntime`."""

    def __init__(
        self, runtime: PacedRuntime, stats: ServerStats, options: ServerOptions
    ) -> None:
        self._runtime = runtime
        self._stats = stats
        self._options = options
        self.open_sessions: set[RequestSession] = set()
        self.draining = False

    async def Generate(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: emulator_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> None:
        # Writes with context.write rather than being an async generator,
        # which gRPC would drive through one more generator per message.
        problem = validate_request(request, self._runtime.profiles)
        if problem is None and self.draining:
            code, problem = grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN
        else:
            code = grpc.StatusCode.INVALID_ARGUMENT
        if problem is not None:
            logger.debug("request %s rejected: %s", request.request_id, problem)
            self._stats.requests_by_status[code.name] += 1
            await context.abort(code, problem)

        session = RequestSession(_spec_from(request))
        self.open_sessions.add(session)
        self._stats.open_streams += 1
        ended_with = grpc.StatusCode.CANCELLED
        try:
            abort = await self._admit(session)
            if abort is None:
                async for item in self._responses(session):
                    if isinstance(item, StreamAbort):
                        abort = item  # always the last item
                        continue
                    if item.HasField("summary") and session.fault_labels:
                        context.set_trailing_metadata(self._fault_metadata(session))
                    await context.write(item)
            if abort is not None:
                ended_with = abort.code
                logger.debug(
                    "request %s ended with %s: %s",
                    session.spec.request_id,
                    abort.code.name,
                    abort.details,
                )
                await context.abort(
                    abort.code, abort.details, self._fault_metadata(session)
                )
            ended_with = grpc.StatusCode.OK
        except asyncio.CancelledError:
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                ended_with = grpc.StatusCode.DEADLINE_EXCEEDED
            logger.debug(
                "request %s ended by the client: %s",
                session.spec.request_id,
                ended_with.name,
            )
            raise
        finally:
            self.open_sessions.discard(session)
            self._runtime.release(session)
            self._stats.open_streams -= 1
            self._stats.requests_by_status[ended_with.name] += 1

    async def _admit(self, session: RequestSession) -> StreamAbort | None:
        """Put the request into the model; return the abort that ends it instead."""
        runtime = self._runtime
        runtime.plan_stream(session)
        if session.latency_wall_s > 0:
            await asyncio.sleep(session.latency_wall_s)
        if self.draining and not session.ended:
            session.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        if session.ended:  # aborted while its request was on the way in
            _, end = session.items.take_nowait()
            if isinstance(end, StreamAbort):
                return end
        try:
            runtime.admit(session)
        except AdmissionRejected as error:
            return StreamAbort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except NoInstanceAvailable as error:
            return StreamAbort(grpc.StatusCode.UNAVAILABLE, str(error))
        except EmulatorError as error:
            # The model refuses a request it can never serve in this
            # deployment, such as one whose KV cache cannot fit.
            return StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return None

    def _responses(
        self, session: RequestSession
    ) -> AsyncIterator[emulator_pb2.GenerateResponse | StreamAbort]:
        messages = self._messages(session)
        if session.latency_wall_s > 0:
            messages = _delayed(messages, session.latency_wall_s)
        return messages

    async def _messages(
        self, session: RequestSession
    ) -> AsyncIterator[emulator_pb2.GenerateResponse | StreamAbort]:
        """Coalesce the session's tokens into chunks; end with a summary or abort."""
        vocab_size = self._runtime.profiles.model.vocab_size
        arrival_s = session.arrival_s
        last_sent_at = 0.0
        sent_tokens = 0
        while True:
            # Sleeping out the chunk interval before looking at the queue
            # wakes the stream once per chunk, not once per decode step.
            if last_sent_at:
                pause_s = self._options.chunk_interval_s - (
                    time.perf_counter() - last_sent_at
                )
                if pause_s > 0:
                    await asyncio.sleep(pause_s)
            times_s, end = await session.items.take_all()
            drop = _drop_now(session, sent_tokens, len(times_s), end)
            if drop is not None:
                del times_s[drop.keep_tokens :]
                end = drop.abort
            if times_s:
                yield emulator_pb2.GenerateResponse(
                    chunk=_chunk(sent_tokens, times_s, arrival_s, vocab_size)
                )
                sent_tokens += len(times_s)
                self._stats.add_output_tokens(len(times_s))
                last_sent_at = time.perf_counter()
            if isinstance(end, StreamAbort):
                yield end
                return
            if end is not None:
                yield emulator_pb2.GenerateResponse(summary=self._summary(session))
                return

    def _summary(self, session: RequestSession) -> emulator_pb2.GenerateSummary:
        record = session.record
        assert record is not None
        arrival_s = session.arrival_s
        first_s = session.first_token_s or arrival_s
        last_s = session.last_token_s or arrival_s
        queue_s, prefill_s, transfer_s = session.summed_times_s()
        self._stats.add_finished(session.spec.input_tokens, record.cached_tokens)
        summary = emulator_pb2.GenerateSummary(
            request_id=session.spec.request_id,
            output_tokens=session.tokens_emitted,
            emulated_ttft_ms=(first_s - arrival_s) * 1e3,
            emulated_e2e_ms=(last_s - arrival_s) * 1e3,
            emulated_queue_ms=queue_s * 1e3,
            emulated_prefill_ms=prefill_s * 1e3,
            emulated_kv_transfer_ms=transfer_s * 1e3,
            cached_tokens=record.cached_tokens,
            prefill_instance=max(record.prefill_instance, 0),
            decode_instance=max(record.decode_instance, 0),
            emulated_arrival_ms=arrival_s * 1e3,
            cached_tokens_hbm=record.cached_tokens_hbm,
            cached_tokens_pool=record.cached_tokens_pool,
            emulated_cache_load_ms=record.cache_load_s * 1e3,
            faults=self._runtime.fault_labels(session),
            restarts=session.attempt_count - 1,
        )
        if session.tokens_emitted > 1:
            summary.emulated_tpot_ms = (
                (last_s - first_s) * 1e3 / (session.tokens_emitted - 1)
            )
        return summary

    def _fault_metadata(self, session: RequestSession) -> tuple[tuple[str, str], ...]:
        labels = self._runtime.fault_labels(session)
        return ((FAULTS_METADATA_KEY, ",".join(labels)),) if labels else ()


_SHUTTING_DOWN = (
    "the server is shutting down; send the request to another server or "
    "retry when it is back"
)


def _spec_from(request: emulator_pb2.GenerateRequest) -> RequestSpec:
    return RequestSpec(
        request_id=request.request_id or uuid.uuid4().hex,
        input_tokens=prompt_tokens(request),
        output_tokens=request.output_tokens,
        prefix_block_hashes=tuple(request.prefix_block_hashes),
        block_tokens=request.block_tokens,
        session_id=request.session_id,
    )


def _chunk(
    first_index: int, times_s: list[float], arrival_s: float, vocab_size: int
) -> emulator_pb2.TokenChunk:
    """Build the chunk of tokens first_index, first_index + 1, ... made at times_s."""
    end_index = first_index + len(times_s)
    return emulator_pb2.TokenChunk(
        first_index=first_index,
        token_ids=[
            (_FIRST_TOKEN_ID + index * _TOKEN_ID_STRIDE) % vocab_size
            for index in range(first_index, end_index)
        ],
        emulated_ms=[(at_s - arrival_s) * 1e3 for at_s in times_s],
    )


# Synthetic but deterministic token ids, spread over the vocabulary: output
# token i gets (_FIRST_TOKEN_ID + i x _TOKEN_ID_STRIDE) mod the vocabulary size.
_FIRST_TOKEN_ID = 1000
_TOKEN_ID_STRIDE = 7919


@dataclass(frozen=True)
class _Drop:
    keep_tokens: int
    abort: StreamAbort


def _drop_now(
    session: RequestSession,
    sent_tokens: int,
    new_tokens: int,
    end: StreamEnd | None,
) -> _Drop | None:
    """Return how to cut the stream when its injected drop point is reached."""
    drop_after = session.drop_after_tokens
    if drop_after is None or isinstance(end, StreamAbort):
        return None
    if sent_tokens + new_tokens < drop_after and end is None:
        return None
    keep = max(0, min(new_tokens, drop_after - sent_tokens))
    details = (
        f"stream dropped after {sent_tokens + keep} tokens by injected fault "
        f"{session.drop_label}"
    )
    return _Drop(keep, StreamAbort(grpc.StatusCode.UNAVAILABLE, details))


async def _delayed(
    messages: AsyncIterator[emulator_pb2.GenerateResponse | StreamAbort],
    delay_s: float,
) -> AsyncIterator[emulator_pb2.GenerateResponse | StreamAbort]:
    """Yield each message `delay_s` after it was made, as a slower network would.

    A task keeps taking messages while earlier ones wait, so the delay does
    not add up along the stream.
    """
    line: asyncio.Queue[tuple[float, emulator_pb2.GenerateResponse | StreamAbort]]
    line = asyncio.Queue()
    done = object()

    async def pump() -> None:
        async for message in messages:
            line.put_nowait((time.perf_counter() + delay_s, message))

    task = asyncio.create_task(pump())
    task.add_done_callback(lambda _: line.put_nowait((0.0, done)))  # type: ignore[arg-type]
    try:
        while True:
            due_at, message = await line.get()
            if message is done:
                break
            wait_s = due_at - time.perf_counter()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            yield message
        await task  # raises what the pump raised
    finally:
        task.cancel()


@dataclass
class RunningEmulator:
    """A started emulator: its servers, ports and model."""

    server: grpc.aio.Server
    port: int
    runtime: PacedRuntime
    service: EmulatorService
    stats: ServerStats
    health: health.aio.HealthServicer
    control_server: grpc.aio.Server | None = None
    control_port: int | None = None
    metrics: MetricsExporter | None = None

    async def shutdown(self, grace_s: float) -> int:
        """Stop taking requests, drain open streams, then end the rest.

        Health checks turn NOT_SERVING and new calls get UNAVAILABLE at once.
        Streams get `grace_s` seconds to finish; those still open end with
        UNAVAILABLE naming the grace period. Returns how many were ended so.
        """
        await self.health.enter_graceful_shutdown()
        self.service.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.service.open_sessions and loop.time() < deadline:
            await asyncio.sleep(min(_DRAIN_POLL_S, max(0.0, deadline - loop.time())))

        cut = list(self.service.open_sessions)
        for session in cut:
            session.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the server is shutting down and the stream did not finish "
                f"within the {grace_s:g} s grace period",
            )
        if cut:
            logger.warning(
                "ended %d streams still open after the grace period", len(cut)
            )
        await self.server.stop(_ABORT_FLUSH_S)
        if self.control_server is not None:
            await self.control_server.stop(_ABORT_FLUSH_S)
        if self.metrics is not None:
            self.metrics.close()
        await self.runtime.stop()
        return len(cut)

    async def abandon(self) -> None:
        """Stop whatever a failed start left running, without draining."""
        await self.server.stop(None)
        if self.control_server is not None:
            await self.control_server.stop(None)
        if self.metrics is not None:
            self.metrics.close()
        await self.runtime.stop()


async def start_emulator(
    profiles: Profiles, options: ServerOptions, seed: int = 0
) -> RunningEmulator:
    """Create, bind and start the servers; return them with their ports.

    Raises BindError (an OSError) naming the listener whose address cannot
    be bound, TlsFileError when a TLS file is missing or unusable, and
    FaultError when the fault schedule does not fit the deployment. When
    any step fails, the servers started so far are stopped first.
    """
    runtime = PacedRuntime(
        profiles,
        options.time_scale,
        seed,
        admission=options.admission,
        failed_instance_policy=options.failed_instance_policy,
        fault_schedule=options.fault_schedule,
    )
    stats = ServerStats()
    credentials = options.tls.credentials() if options.tls is not None else None
    server = grpc.aio.server(options=list(_GRPC_OPTIONS))
    service = EmulatorService(runtime, stats, options)
    emulator_pb2_grpc.add_EmulatorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    services = [SERVICE_NAME]

    control_server = None
    if options.control_enabled:
        control = ControlService(runtime, stats)
        control_server = server
        if options.control_port is not None:
            control_server = grpc.aio.server(options=list(_GRPC_OPTIONS))
            _add_standard_services(
                control_server, health_servicer, [CONTROL_SERVICE_NAME]
            )
        control_pb2_grpc.add_ControlServicer_to_server(control, control_server)
        if control_server is server:
            services.append(CONTROL_SERVICE_NAME)
    _add_standard_services(server, health_servicer, services)

    running = RunningEmulator(server, 0, runtime, service, stats, health_servicer)
    if control_server is not None and control_server is not server:
        running.control_server = control_server
    try:
        await _bind_and_start(running, options, credentials)
    except BaseException:
        # Stopped here, on the running loop, because a started gRPC server
        # left for garbage collection after the loop closes prints a
        # traceback from its __del__.
        await running.abandon()
        raise
    return running


async def _bind_and_start(
    running: RunningEmulator,
    options: ServerOptions,
    credentials: grpc.ServerCredentials | None,
) -> None:
    """Bind every listener of `running`, then start the servers and model."""
    running.port = bind_grpc(
        running.server, Listener.EMULATOR, options.host, options.port, credentials
    )
    if running.control_server is not None:
        assert options.control_port is not None
        running.control_port = bind_grpc(
            running.control_server,
            Listener.CONTROL,
            options.host,
            options.control_port,
            credentials,
        )
    elif options.control_enabled:
        running.control_port = running.port

    running.runtime.start()
    await running.server.start()
    if running.control_server is not None:
        await running.control_server.start()
    for name in ("", SERVICE_NAME, CONTROL_SERVICE_NAME):
        await running.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    if options.metrics_port is not None:
        running.metrics = _start_metrics(running, options)


def _start_metrics(running: RunningEmulator, options: ServerOptions) -> MetricsExporter:
    host, port = options.metrics_host, options.metrics_port
    assert port is not None
    try:
        return MetricsExporter(
            host,
            port,
            asyncio.get_running_loop(),
            lambda: collect_metrics(running.runtime, running.stats),
        )
    except OSError as error:
        raise bind_error(Listener.METRICS, host, port, error) from None


def _add_standard_services(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    services: list[str],
) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [
        *services,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)


async def build_server(
    profiles: Profiles, options: ServerOptions, seed: int = 0
) -> tuple[grpc.aio.Server, int, PacedRuntime]:
    """Start an emulator; return its server, port and runtime.

    For callers that stop it with `server.stop` and `runtime.stop`, which
    suits options without a separate control port or a metrics endpoint.
    """
    running = await start_emulator(profiles, options, seed)
    return running.server, running.port, running.runtime


async def run_server(profiles: Profiles, options: ServerOptions, seed: int = 0) -> None:
    """Serve until SIGINT or SIGTERM, then drain within `options.grace_s`."""
    running = await start_emulator(profiles, options, seed)
    scheme = _transport_name(options.tls)
    # The first line is read by scripts and tests that start with port 0.
    print(
        f"cmx serve: listening on {format_address(options.host, running.port)} "
        f"(time scale {options.time_scale:g}, {scheme})",
        flush=True,
    )
    if running.control_server is not None and running.control_port is not None:
        address = format_address(options.host, running.control_port)
        print(f"cmx serve: control service on {address}", flush=True)
    if running.metrics is not None:
        address = format_address(options.metrics_host, running.metrics.port)
        print(f"cmx serve: Prometheus metrics on http://{address}/metrics", flush=True)
    logger.info("serving %s deployment %s", profiles.hardware.name, profiles.deployment)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    logger.info("stopping: letting streams finish for up to %.1f s", options.grace_s)
    cut = await running.shutdown(options.grace_s)
    print(
        f"cmx serve: stopped ({cut} streams ended after the grace period)", flush=True
    )


def _transport_name(tls: TlsFiles | None) -> str:
    """Name the transport for the start banner: plaintext, TLS or mutual TLS."""
    if tls is None:
        return "plaintext"
    return "mutual TLS" if tls.mutual else "TLS"
