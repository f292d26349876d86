"""gRPC server around the supernode model, paced against the wall clock.

`build_server` makes a grpc.aio server with the `cmx.v1.Emulator` service,
standard health checking and server reflection, binds it and returns it with
its port; `run_server` serves until SIGINT or SIGTERM and stops gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from emulator.core import EventQueue, PacedClock
from emulator.engine import NoInstanceAvailable, RequestRecord, RequestSpec, Supernode
from emulator.profiles import Profiles

__all__ = [
    "EmulatorService",
    "PacedRuntime",
    "ServerOptions",
    "build_server",
    "run_server",
]

logger = logging.getLogger(__name__)

SERVICE_NAME = "cmx.v1.Emulator"
# Long prompts sent with explicit hashes or token ids exceed gRPC's 4 MiB
# default; 64 MiB holds about 8M 8-byte hashes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    """Network and pacing settings of `cmx serve`."""

    host: str = "127.0.0.1"
    port: int = 50051
    time_scale: float = 1.0
    # Minimum wall time between two chunks of one stream, so that fast token
    # rates are coalesced into fewer, larger messages.
    chunk_interval_s: float = 0.01
    grace_s: float = 5.0


class _StreamSink:
    """Token sink that queues the model's output for one gRPC stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, Sequence[float]] | RequestRecord] = (
            asyncio.Queue()
        )

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        self.queue.put_nowait((first_index, emulated_at_s))

    def on_finish(self, record: RequestRecord) -> None:
        self.queue.put_nowait(record)


class PacedRuntime:
    """Runs the event queue so that emulated time tracks the scaled wall clock.

    One asyncio task sleeps until the wall time of the next event, then runs
    every event due. Events carry their exact emulated due time, so token
    timestamps stay exact even when the task wakes late.
    """

    def __init__(self, profiles: Profiles, time_scale: float, seed: int) -> None:
        self.profiles = profiles
        self.clock = PacedClock(time_scale)
        self.events = EventQueue()
        self.supernode = Supernode(profiles, self.events, np.random.default_rng(seed))
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def submit(self, spec: RequestSpec) -> tuple[RequestRecord, _StreamSink]:
        """Accept a request at the current emulated time."""
        self.events.run_until(self.clock.now_s())
        sink = _StreamSink()
        record = self.supernode.submit(spec, sink)
        self._wakeup.set()
        return record, sink

    def cancel(self, record: RequestRecord) -> None:
        self.events.run_until(self.clock.now_s())
        self.supernode.cancel(record)

    async def _run(self) -> None:
        while True:
            next_at_s = self.events.next_at_s()
            timeout_s = (
                None if next_at_s is None else self.clock.wall_delay_s(next_at_s)
            )
            self._wakeup.clear()
            if timeout_s is None or timeout_s > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout_s)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)  # let streams run between due events
            self.events.run_until(self.clock.now_s())


class EmulatorService(emulator_pb2_grpc.EmulatorServicer):
    """Implements `cmx.v1.Emulator` on a `PacedRuntime`."""

    def __init__(self, runtime: PacedRuntime, options: ServerOptions) -> None:
        self._runtime = runtime
        self._options = options

    async def Generate(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: emulator_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[emulator_pb2.GenerateResponse]:
        problem = validate_request(request, self._runtime.profiles)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

        spec = RequestSpec(
            request_id=request.request_id or uuid.uuid4().hex,
            input_tokens=request.input_tokens,
            output_tokens=request.output_tokens,
            prefix_block_hashes=tuple(request.prefix_block_hashes),
            block_tokens=request.block_tokens,
            session_id=request.session_id,
        )
        try:
            record, sink = self._runtime.submit(spec)
        except NoInstanceAvailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        try:
            async for response in self._stream(record, sink):
                yield response
        finally:
            if not record.finished:
                logger.debug("request %s cancelled by the client", spec.request_id)
                self._runtime.cancel(record)

    async def _stream(
        self, record: RequestRecord, sink: _StreamSink
    ) -> AsyncIterator[emulator_pb2.GenerateResponse]:
        arrival_s = record.arrival_s
        vocab_size = self._runtime.profiles.model.vocab_size
        last_sent_at = 0.0
        while True:
            items = [await sink.queue.get()]
            if last_sent_at:
                pause_s = self._options.chunk_interval_s - (
                    time.perf_counter() - last_sent_at
                )
                if pause_s > 0:
                    await asyncio.sleep(pause_s)
            while not sink.queue.empty():
                items.append(sink.queue.get_nowait())

            finished = None
            chunk = emulator_pb2.TokenChunk()
            for item in items:
                if isinstance(item, RequestRecord):
                    finished = item
                    continue
                first_index, times_s = item
                if not chunk.token_ids:
                    chunk.first_index = first_index
                for offset, at_s in enumerate(times_s):
                    chunk.token_ids.append(_token_id(first_index + offset, vocab_size))
                    chunk.emulated_ms.append((at_s - arrival_s) * 1e3)
            if chunk.token_ids:
                yield emulator_pb2.GenerateResponse(chunk=chunk)
                last_sent_at = time.perf_counter()
            if finished is not None:
                yield emulator_pb2.GenerateResponse(summary=_summary(finished))
                return


def validate_request(
    request: emulator_pb2.GenerateRequest, profiles: Profiles
) -> str | None:
    """Return why `request` is invalid, naming the field and accepted range."""
    window = profiles.model.max_context_tokens
    if request.input_tokens < 1:
        return f"input_tokens must be at least 1, got {request.input_tokens}"
    if request.output_tokens < 1:
        return f"output_tokens must be at least 1, got {request.output_tokens}"
    if request.input_tokens + request.output_tokens > window:
        return (
            f"input_tokens + output_tokens must be at most {window} "
            f"({profiles.model.name} context window), got "
            f"{request.input_tokens + request.output_tokens}"
        )
    hashes = len(request.prefix_block_hashes)
    if hashes and request.block_tokens < 1:
        return "block_tokens must be at least 1 when prefix_block_hashes are given"
    if hashes:
        blocks = math.ceil(request.input_tokens / request.block_tokens)
        if hashes > blocks:
            return (
                f"prefix_block_hashes has {hashes} blocks of {request.block_tokens} "
                f"tokens but input_tokens {request.input_tokens} fills only {blocks}"
            )
    return None


def _token_id(index: int, vocab_size: int) -> int:
    # Synthetic but deterministic ids, spread over the vocabulary.
    return (1000 + index * 7919) % vocab_size


def _summary(record: RequestRecord) -> emulator_pb2.GenerateSummary:
    arrival_s = record.arrival_s
    first_s = record.first_token_s if record.first_token_s is not None else arrival_s
    last_s = record.last_token_s if record.last_token_s is not None else arrival_s
    summary = emulator_pb2.GenerateSummary(
        request_id=record.spec.request_id,
        output_tokens=record.tokens_out,
        emulated_ttft_ms=(first_s - arrival_s) * 1e3,
        emulated_e2e_ms=(last_s - arrival_s) * 1e3,
        emulated_queue_ms=record.queue_s * 1e3,
        emulated_prefill_ms=record.prefill_s * 1e3,
        emulated_kv_transfer_ms=record.kv_transfer_s * 1e3,
        cached_tokens=record.cached_tokens,
        prefill_instance=max(record.prefill_instance, 0),
        decode_instance=max(record.decode_instance, 0),
        emulated_arrival_ms=arrival_s * 1e3,
        cached_tokens_hbm=record.cached_tokens_hbm,
        cached_tokens_pool=record.cached_tokens_pool,
        emulated_cache_load_ms=record.cache_load_s * 1e3,
    )
    if record.tokens_out > 1:
        summary.emulated_tpot_ms = (last_s - first_s) * 1e3 / (record.tokens_out - 1)
    return summary


async def build_server(
    profiles: Profiles, options: ServerOptions, seed: int = 0
) -> tuple[grpc.aio.Server, int, PacedRuntime]:
    """Create, bind and start the server; return it, its port and its runtime.

    Raises OSError when the address cannot be bound.
    """
    runtime = PacedRuntime(profiles, options.time_scale, seed)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    emulator_pb2_grpc.add_EmulatorServicer_to_server(
        EmulatorService(runtime, options), server
    )

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )

    address = _format_address(options.host, options.port)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    runtime.start()
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, port, runtime


async def run_server(profiles: Profiles, options: ServerOptions, seed: int = 0) -> None:
    """Serve until SIGINT or SIGTERM, then stop within `options.grace_s`."""
    server, port, runtime = await build_server(profiles, options, seed)
    # The port line is read by scripts and tests that start with port 0.
    print(
        f"cmx serve: listening on {_format_address(options.host, port)} "
        f"(time scale {options.time_scale:g})",
        flush=True,
    )
    logger.info("serving %s deployment %s", profiles.hardware.name, profiles.deployment)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    logger.info("stopping: letting streams finish for up to %.1f s", options.grace_s)
    await server.stop(options.grace_s)
    await runtime.stop()
    print("cmx serve: stopped", flush=True)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
