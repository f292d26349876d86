"""The gRPC server over loopback: streams, validation, health, reflection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from emulator.profiles import default_profiles
from emulator.server import PacedRuntime, ServerOptions, build_server

Scenario = Callable[[grpc.aio.Channel, PacedRuntime], Awaitable[None]]


def run_against_server(scenario: Scenario, time_scale: float = 50.0) -> None:
    async def main() -> None:
        options = ServerOptions(port=0, time_scale=time_scale)
        server, port, runtime = await build_server(default_profiles(), options)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.wait_for(scenario(channel, runtime), timeout=60)
        finally:
            await server.stop(0)
            await runtime.stop()

    asyncio.run(main())


def test_stream_carries_every_token_with_times() -> None:
    responses: list[emulator_pb2.GenerateResponse] = []

    async def scenario(channel: grpc.aio.Channel, _: PacedRuntime) -> None:
        stub = emulator_pb2_grpc.EmulatorStub(channel)
        request = emulator_pb2.GenerateRequest(
            request_id="req-1", input_tokens=3000, output_tokens=40
        )
        async for response in stub.Generate(request):
            responses.append(response)

    run_against_server(scenario)

    chunks = [r.chunk for r in responses if r.HasField("chunk")]
    summaries = [r.summary for r in responses if r.HasField("summary")]
    assert len(summaries) == 1
    assert responses[-1].HasField("summary")

    times_ms = [t for chunk in chunks for t in chunk.emulated_ms]
    first_indexes = [chunk.first_index for chunk in chunks]
    sizes = [len(chunk.token_ids) for chunk in chunks]
    assert len(times_ms) == 40
    assert first_indexes == [sum(sizes[:i]) for i in range(len(sizes))]
    assert times_ms == sorted(times_ms)

    summary = summaries[0]
    assert summary.request_id == "req-1"
    assert summary.output_tokens == 40
    assert summary.emulated_ttft_ms == pytest.approx(times_ms[0])
    assert summary.emulated_e2e_ms == pytest.approx(times_ms[-1])
    assert summary.emulated_tpot_ms == pytest.approx((times_ms[-1] - times_ms[0]) / 39)
    assert summary.emulated_prefill_ms > 0
    assert summary.emulated_kv_transfer_ms > 0


def test_one_token_output_has_no_tpot() -> None:
    summaries: list[emulator_pb2.GenerateSummary] = []

    async def scenario(channel: grpc.aio.Channel, _: PacedRuntime) -> None:
        stub = emulator_pb2_grpc.EmulatorStub(channel)
        request = emulator_pb2.GenerateRequest(input_tokens=10, output_tokens=1)
        async for response in stub.Generate(request):
            if response.HasField("summary"):
                summaries.append(response.summary)

    run_against_server(scenario)
    assert len(summaries) == 1
    assert not summaries[0].HasField("emulated_tpot_ms")
    assert summaries[0].request_id  # made by the server when empty


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"input_tokens": 0, "output_tokens": 5}, "input_tokens must be at least 1"),
        ({"input_tokens": -3, "output_tokens": 5}, "got -3"),
        ({"input_tokens": 5, "output_tokens": 0}, "output_tokens must be at least 1"),
        (
            {"input_tokens": 131_000, "output_tokens": 1000},
            "at most 131072",
        ),
        (
            {"input_tokens": 600, "output_tokens": 5, "prefix_block_hashes": [1]},
            "block_tokens must be at least 1",
        ),
        (
            {
                "input_tokens": 600,
                "output_tokens": 5,
                "prefix_block_hashes": [1, 2, 3],
                "block_tokens": 512,
            },
            "fills only 2",
        ),
    ],
)
def test_invalid_request_is_rejected(fields: dict[str, object], expected: str) -> None:
    errors: list[grpc.aio.AioRpcError] = []

    async def scenario(channel: grpc.aio.Channel, _: PacedRuntime) -> None:
        stub = emulator_pb2_grpc.EmulatorStub(channel)
        try:
            async for _ in stub.Generate(emulator_pb2.GenerateRequest(**fields)):
                pass
        except grpc.aio.AioRpcError as error:
            errors.append(error)

    run_against_server(scenario)
    assert len(errors) == 1
    assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (errors[0].details() or "")


def test_health_and_reflection() -> None:
    statuses: list[int] = []
    services: list[str] = []

    async def scenario(channel: grpc.aio.Channel, _: PacedRuntime) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="cmx.v1.Emulator")
        )
        statuses.append(reply.status)

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request])):
            services.extend(s.name for s in response.list_services_response.service)

    run_against_server(scenario)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING]
    assert "cmx.v1.Emulator" in services
    assert "grpc.health.v1.Health" in services


def test_cancelled_stream_frees_the_request() -> None:
    active_after: list[int] = []

    async def scenario(channel: grpc.aio.Channel, runtime: PacedRuntime) -> None:
        stub = emulator_pb2_grpc.EmulatorStub(channel)
        call = stub.Generate(
            emulator_pb2.GenerateRequest(input_tokens=2000, output_tokens=5000)
        )
        async for response in call:
            if response.HasField("chunk"):
                break
        call.cancel()
        for _ in range(100):  # bounded wait for the server to see the cancel
            if runtime.supernode.active_requests == 0:
                break
            await asyncio.sleep(0.02)
        active_after.append(runtime.supernode.active_requests)

    run_against_server(scenario, time_scale=1.0)
    assert active_after == [0]
