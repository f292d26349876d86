"""A scripted fake emulator shared by the replay tests.

The fake serves `Emulator.Generate` on 127.0.0.1 with a port chosen by the OS.
Each reply follows a `StreamScript`: token chunks with hand-chosen emulated
timestamps, then an optional pause, abort and summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field

import grpc
import grpc.aio

from cmx.v1 import control_pb2, control_pb2_grpc, emulator_pb2, emulator_pb2_grpc

__all__ = [
    "FakeControl",
    "ScriptedEmulator",
    "StreamScript",
    "serve_fake_emulator",
    "serve_fake_emulator_in_thread",
]

# Values the fake puts in every summary, so tests can check they are copied.
SUMMARY_QUEUE_MS = 5.0
SUMMARY_PREFILL_MS = 30.0
SUMMARY_KV_TRANSFER_MS = 2.5
SUMMARY_CACHED_TOKENS = 512
SUMMARY_PREFILL_INSTANCE = 1
SUMMARY_DECODE_INSTANCE = 3


@dataclass(frozen=True)
class StreamScript:
    """Reply to one Generate call: `chunks` of emulated_ms, then the ending.

    After the chunks the fake sleeps `pause_s`, then aborts with `abort_code`
    if set, otherwise sends the summary if `send_summary` is true.
    """

    chunks: tuple[tuple[float, ...], ...] = ((100.0, 120.0), (140.0, 160.0))
    pause_s: float = 0.0
    abort_code: grpc.StatusCode | None = None
    abort_details: str = ""
    send_summary: bool = True


@dataclass
class ScriptedEmulator(emulator_pb2_grpc.EmulatorServicer):
    """Fake Emulator servicer replying by request id, or with `default`.

    Records every request and the `time.perf_counter()` instant it arrived.
    """

    scripts: Mapping[str, StreamScript] = field(default_factory=dict)
    default: StreamScript = field(default_factory=StreamScript)
    requests: list[emulator_pb2.GenerateRequest] = field(default_factory=list)
    arrived_at_s: dict[str, float] = field(default_factory=dict)

    async def Generate(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: emulator_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[emulator_pb2.GenerateResponse]:
        self.requests.append(request)
        self.arrived_at_s[request.request_id] = time.perf_counter()
        script = self.scripts.get(request.request_id, self.default)

        first_index = 0
        for emulated_ms in script.chunks:
            chunk = emulator_pb2.TokenChunk(
                first_index=first_index,
                token_ids=list(range(first_index, first_index + len(emulated_ms))),
                emulated_ms=list(emulated_ms),
            )
            yield emulator_pb2.GenerateResponse(chunk=chunk)
            first_index += len(emulated_ms)

        if script.pause_s > 0:
            await asyncio.sleep(script.pause_s)
        if script.abort_code is not None:
            await context.abort(script.abort_code, script.abort_details)
        if script.send_summary:
            yield emulator_pb2.GenerateResponse(
                summary=_summary(request.request_id, first_index)
            )


@dataclass
class FakeControl(control_pb2_grpc.ControlServicer):
    """Fake Control servicer whose GetConfig returns only `time_scale`."""

    time_scale: float = 1.0

    async def GetConfig(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: control_pb2.GetConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.EmulatorConfig:
        return control_pb2.EmulatorConfig(time_scale=self.time_scale)


def _summary(request_id: str, output_tokens: int) -> emulator_pb2.GenerateSummary:
    return emulator_pb2.GenerateSummary(
        request_id=request_id,
        output_tokens=output_tokens,
        emulated_queue_ms=SUMMARY_QUEUE_MS,
        emulated_prefill_ms=SUMMARY_PREFILL_MS,
        emulated_kv_transfer_ms=SUMMARY_KV_TRANSFER_MS,
        cached_tokens=SUMMARY_CACHED_TOKENS,
        prefill_instance=SUMMARY_PREFILL_INSTANCE,
        decode_instance=SUMMARY_DECODE_INSTANCE,
    )


@contextlib.asynccontextmanager
async def serve_fake_emulator(
    servicer: ScriptedEmulator, control: FakeControl | None = None
) -> AsyncIterator[str]:
    """Serve `servicer` on 127.0.0.1 and yield its "host:port" target.

    Without `control`, calls of the Control service get UNIMPLEMENTED.
    """
    server = grpc.aio.server()
    emulator_pb2_grpc.add_EmulatorServicer_to_server(servicer, server)
    if control is not None:
        control_pb2_grpc.add_ControlServicer_to_server(control, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@contextlib.contextmanager
def serve_fake_emulator_in_thread(servicer: ScriptedEmulator) -> Iterator[str]:
    """Serve `servicer` from its own event loop in a thread; yield its target.

    For code under test that runs its own event loop, such as `asyncio.run`.
    """
    started: queue.Queue[tuple[str, asyncio.Event]] = queue.Queue()
    loop = asyncio.new_event_loop()

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        async with serve_fake_emulator(servicer) as target:
            started.put((target, stop))
            await stop.wait()

    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve_until_stopped(),), daemon=True
    )
    thread.start()
    target, stop = started.get(timeout=10)
    try:
        yield target
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()
