"""Helpers shared by the server tests: an emulator on loopback, port 0."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from cmx.v1 import control_pb2, control_pb2_grpc, emulator_pb2, emulator_pb2_grpc
from emulator.profiles import Profiles, default_profiles
from emulator.server import RunningEmulator, ServerOptions, start_emulator

__all__ = [
    "StreamResult",
    "control_stub",
    "generate",
    "metrics",
    "run_scenario",
    "wait_until",
]

Scenario = Callable[[grpc.aio.Channel, RunningEmulator], Awaitable[None]]


def run_scenario(
    scenario: Scenario,
    *,
    time_scale: float = 50.0,
    profiles: Profiles | None = None,
    timeout_s: float = 60.0,
    **option_overrides: Any,
) -> None:
    """Start an emulator on 127.0.0.1 port 0, run `scenario`, shut it down."""

    async def main() -> None:
        options = replace(
            ServerOptions(port=0, time_scale=time_scale), **option_overrides
        )
        running = await start_emulator(profiles or default_profiles(), options)
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{running.port}"
            ) as channel:
                await asyncio.wait_for(scenario(channel, running), timeout=timeout_s)
        finally:
            await running.shutdown(0)

    asyncio.run(main())


def control_stub(channel: grpc.aio.Channel) -> control_pb2_grpc.ControlStub:
    return control_pb2_grpc.ControlStub(channel)


@dataclass
class StreamResult:
    """Everything one Generate call returned."""

    chunks: list[emulator_pb2.TokenChunk] = field(default_factory=list)
    summary: emulator_pb2.GenerateSummary | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def token_times_ms(self) -> list[float]:
        return [t for chunk in self.chunks for t in chunk.emulated_ms]

    @property
    def first_indexes(self) -> list[int]:
        return [chunk.first_index for chunk in self.chunks]


async def generate(
    channel: grpc.aio.Channel,
    timeout_s: float | None = None,
    stop_after_tokens: int | None = None,
    **fields: Any,
) -> StreamResult:
    """Run one Generate call to its end (or cancel it after some tokens)."""
    stub = emulator_pb2_grpc.EmulatorStub(channel)
    call = stub.Generate(emulator_pb2.GenerateRequest(**fields), timeout=timeout_s)
    result = StreamResult()
    try:
        async for response in call:
            if response.HasField("chunk"):
                result.chunks.append(response.chunk)
                received = len(result.token_times_ms)
                if stop_after_tokens is not None and received >= stop_after_tokens:
                    call.cancel()
                    result.code = grpc.StatusCode.CANCELLED
                    return result
            else:
                result.summary = response.summary
    except grpc.aio.AioRpcError as error:
        result.code = error.code()
        result.details = error.details() or ""
    metadata = await call.trailing_metadata()
    result.trailing_metadata = {key: str(value) for key, value in metadata or ()}
    return result


async def wait_until(
    condition: Callable[[], Awaitable[bool]], attempts: int = 200, pause_s: float = 0.02
) -> bool:
    """Poll `condition` up to `attempts` times; return whether it became true."""
    for _ in range(attempts):
        if await condition():
            return True
        await asyncio.sleep(pause_s)
    return False


async def metrics(channel: grpc.aio.Channel) -> control_pb2.Metrics:
    reply: control_pb2.Metrics = await control_stub(channel).GetMetrics(
        control_pb2.GetMetricsRequest()
    )
    return reply
