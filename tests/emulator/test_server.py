"""The gRPC server over loopback: streams, validation, admission, deadlines,
cancellation, health and reflection, using only the generated stubs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from emulator.admission import AdmissionLimits
from emulator.errors import EmulatorError
from emulator.server import RunningEmulator
from tests.emulator.harness import StreamResult, generate, metrics, run_scenario


def test_stream_carries_every_token_with_times() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(
            await generate(
                channel, request_id="req-1", input_tokens=3000, output_tokens=40
            )
        )

    run_scenario(scenario)

    result = results[0]
    assert result.code == grpc.StatusCode.OK
    times_ms = result.token_times_ms
    sizes = [len(chunk.token_ids) for chunk in result.chunks]
    assert len(times_ms) == 40
    assert result.first_indexes == [sum(sizes[:i]) for i in range(len(sizes))]
    assert times_ms == sorted(times_ms)

    summary = result.summary
    assert summary is not None
    assert summary.request_id == "req-1"
    assert summary.output_tokens == 40
    assert summary.emulated_ttft_ms == pytest.approx(times_ms[0])
    assert summary.emulated_e2e_ms == pytest.approx(times_ms[-1])
    assert summary.emulated_tpot_ms == pytest.approx((times_ms[-1] - times_ms[0]) / 39)
    assert summary.emulated_prefill_ms > 0
    assert summary.emulated_kv_transfer_ms > 0
    assert list(summary.faults) == []
    assert summary.restarts == 0
    assert result.trailing_metadata == {}


def test_one_token_output_has_no_tpot() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(await generate(channel, input_tokens=10, output_tokens=1))

    run_scenario(scenario)
    summary = results[0].summary
    assert summary is not None
    assert not summary.HasField("emulated_tpot_ms")
    assert summary.request_id  # made by the server when empty


def test_prompt_token_ids_set_the_prompt_length() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(
            await generate(channel, prompt_token_ids=[5] * 700, output_tokens=2)
        )
        results.append(await generate(channel, input_tokens=700, output_tokens=2))

    run_scenario(scenario)
    with_ids, with_count = (r.summary for r in results)
    assert with_ids is not None and with_count is not None
    assert with_ids.emulated_prefill_ms == pytest.approx(with_count.emulated_prefill_ms)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"input_tokens": 0, "output_tokens": 5}, "input_tokens must be at least 1"),
        ({"input_tokens": -3, "output_tokens": 5}, "got -3"),
        ({"input_tokens": 5, "output_tokens": 0}, "output_tokens must be at least 1"),
        ({"input_tokens": 5, "output_tokens": -1}, "got -1"),
        (
            {"input_tokens": 131_000, "output_tokens": 1000},
            "must be at most 131072 (DeepSeek-R1 context window), got 132000",
        ),
        (
            {"input_tokens": 600, "output_tokens": 5, "prefix_block_hashes": [1]},
            "block_tokens must be in 1..131072 when prefix_block_hashes are given",
        ),
        (
            {
                "input_tokens": 600,
                "output_tokens": 5,
                "prefix_block_hashes": [1],
                "block_tokens": 200_000,
            },
            "got 200000",
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
        (
            {
                "input_tokens": 2048,
                "output_tokens": 5,
                "prefix_block_hashes": [7, 8, 7],
                "block_tokens": 512,
            },
            "positions 0 and 2 both hold 7",
        ),
        (
            {"input_tokens": 3, "output_tokens": 5, "prompt_token_ids": [1, 2]},
            "input_tokens must be 0 or the count of prompt_token_ids (2), got 3",
        ),
        (
            {"output_tokens": 5, "prompt_token_ids": [1, 129_280, 2]},
            "below the vocabulary size 129280, got 129280 at position 1",
        ),
        (
            {"request_id": "r" * 257, "input_tokens": 5, "output_tokens": 5},
            "request_id must be at most 256 characters, got 257",
        ),
        (
            {"session_id": "a\nb", "input_tokens": 5, "output_tokens": 5},
            "session_id must contain only printable characters",
        ),
    ],
)
def test_invalid_request_is_rejected(fields: dict[str, object], expected: str) -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(await generate(channel, **fields))

    run_scenario(scenario)
    assert results[0].code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in results[0].details


def test_request_above_4_mib_reaches_validation() -> None:
    """A 6 MB request is not refused by gRPC's 4 MiB default size limit."""
    results: list[StreamResult] = []
    hashes = list(range(2**40, 2**40 + 800_000))  # about 6 MB of varints

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(
            await generate(
                channel,
                input_tokens=1000,
                output_tokens=1,
                prefix_block_hashes=hashes,
                block_tokens=1,
            )
        )

    run_scenario(scenario)
    assert results[0].code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prefix_block_hashes has 800000 blocks" in results[0].details


def test_full_admission_returns_resource_exhausted() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        first = asyncio.create_task(
            generate(channel, input_tokens=1000, output_tokens=400)
        )
        await asyncio.sleep(0.2)  # the first request is admitted by now
        results.append(await generate(channel, input_tokens=10, output_tokens=2))
        first.cancel()

    run_scenario(
        scenario, time_scale=1.0, admission=AdmissionLimits(max_active_requests=1)
    )
    assert results[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 requests are active and max_active_requests is 1" in results[0].details
    assert results[0].chunks == []


def test_queued_prompt_tokens_bound_admission() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(await generate(channel, input_tokens=5000, output_tokens=1))

    limits = AdmissionLimits(max_queued_prompt_tokens=4096)
    run_scenario(scenario, admission=limits)
    assert results[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "5000 more would pass max_queued_prompt_tokens 4096" in results[0].details


def test_health_and_reflection() -> None:
    statuses: list[int] = []
    services: list[str] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "cmx.v1.Emulator", "cmx.v1.Control"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            statuses.append(reply.status)

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request])):
            services.extend(s.name for s in response.list_services_response.service)

    run_scenario(scenario)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 3
    assert sorted(services) == [
        "cmx.v1.Control",
        "cmx.v1.Emulator",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]


def test_cancelled_stream_frees_the_request() -> None:
    during: list[tuple[int, int]] = []
    after: list[tuple[int, int, int, int]] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        stub = emulator_pb2_grpc.EmulatorStub(channel)
        call = stub.Generate(
            emulator_pb2.GenerateRequest(input_tokens=2000, output_tokens=5000)
        )
        async for response in call:
            if response.HasField("chunk"):
                break
        snapshot = await metrics(channel)
        during.append((snapshot.active_requests, snapshot.kv_cache_tokens))
        call.cancel()

        for _ in range(100):  # bounded wait for the server to see the cancel
            snapshot = await metrics(channel)
            if snapshot.open_streams == 0:
                break
            await asyncio.sleep(0.02)
        after.append(
            (
                snapshot.active_requests,
                snapshot.kv_cache_tokens,
                snapshot.kv_cache_bytes,
                snapshot.requests_by_status["CANCELLED"],
            )
        )

    run_scenario(scenario, time_scale=1.0)
    active, kv_tokens = during[0]
    assert active == 1
    assert kv_tokens >= 2001  # the prompt and at least the first token
    assert after == [(0, 0, 0, 1)]


def test_deadline_shorter_than_stream() -> None:
    results: list[StreamResult] = []
    after: list[tuple[int, int, int]] = []

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        results.append(
            await generate(
                channel, timeout_s=0.5, input_tokens=1000, output_tokens=5000
            )
        )
        for _ in range(100):
            snapshot = await metrics(channel)
            if snapshot.open_streams == 0:
                break
            await asyncio.sleep(0.02)
        after.append(
            (
                snapshot.active_requests,
                snapshot.kv_cache_tokens,
                snapshot.requests_by_status["DEADLINE_EXCEEDED"],
            )
        )

    run_scenario(scenario, time_scale=1.0)
    assert results[0].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0 < len(results[0].token_times_ms) < 5000
    assert results[0].summary is None
    assert after == [(0, 0, 1)]


def test_shutdown_drains_then_ends_streams() -> None:
    short: list[StreamResult] = []
    long: list[StreamResult] = []
    late: list[StreamResult] = []
    health_during_drain: list[int] = []
    cut: list[int] = []

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        long_task = asyncio.create_task(
            generate(channel, input_tokens=1000, output_tokens=20_000)
        )
        short_task = asyncio.create_task(
            generate(channel, input_tokens=100, output_tokens=2)
        )
        await asyncio.sleep(0.3)  # both streams are open
        shutdown = asyncio.create_task(running.shutdown(1.0))
        await asyncio.sleep(0.2)
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="cmx.v1.Emulator")
        )
        health_during_drain.append(reply.status)
        late.append(await generate(channel, input_tokens=10, output_tokens=1))
        short.append(await short_task)
        long.append(await long_task)
        cut.append(await shutdown)

    run_scenario(scenario, time_scale=1.0)
    assert health_during_drain == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert late[0].code == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in late[0].details
    assert short[0].code == grpc.StatusCode.OK
    assert long[0].code == grpc.StatusCode.UNAVAILABLE
    assert "did not finish within the 1 s grace period" in long[0].details
    assert len(long[0].token_times_ms) > 0
    assert cut == [1]


def test_generate_stub_only_client_sees_summary_last() -> None:
    responses: list[emulator_pb2.GenerateResponse] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        stub = emulator_pb2_grpc.EmulatorStub(channel)
        request = emulator_pb2.GenerateRequest(input_tokens=64, output_tokens=3)
        async for response in stub.Generate(request, timeout=30):
            responses.append(response)

    run_scenario(scenario)
    kinds = [response.WhichOneof("kind") for response in responses]
    assert kinds[-1] == "summary"
    assert set(kinds[:-1]) == {"chunk"}


def test_request_the_model_rejects_is_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    results: list[StreamResult] = []

    def reject(*_: object) -> None:
        raise EmulatorError("request needs 9 KV blocks but an instance has 8")

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        monkeypatch.setattr(running.runtime.supernode, "submit", reject)
        results.append(await generate(channel, input_tokens=10, output_tokens=2))

    run_scenario(scenario)
    assert results[0].code == grpc.StatusCode.INVALID_ARGUMENT
    assert results[0].details == "request needs 9 KV blocks but an instance has 8"
