"""Tests of replay.client against the scripted fake emulator."""

from __future__ import annotations

import asyncio

import grpc

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.client import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    Outcome,
    generate,
    open_channel,
)
from tests.replay.fake_emulator import (
    SUMMARY_CACHED_TOKENS,
    SUMMARY_DECODE_INSTANCE,
    SUMMARY_PREFILL_INSTANCE,
    SUMMARY_QUEUE_MS,
    ScriptedEmulator,
    StreamScript,
    serve_fake_emulator,
)


def _run_one(
    script: StreamScript, timeout_s: float | None = 5.0, cancel_after_s: float = 0.0
) -> Outcome:
    """Send one request that the fake replies to with `script`.

    A positive `cancel_after_s` cancels the calling task after that delay.
    """

    async def scenario() -> Outcome:
        servicer = ScriptedEmulator(default=script)
        async with serve_fake_emulator(servicer) as target:
            async with open_channel(target) as channel:
                stub = emulator_pb2_grpc.EmulatorStub(channel)
                request = emulator_pb2.GenerateRequest(
                    request_id="r1", input_tokens=8, output_tokens=4
                )
                task = asyncio.create_task(generate(stub, request, timeout_s))
                if cancel_after_s > 0:
                    await asyncio.sleep(cancel_after_s)
                    task.cancel()
                return await task

    return asyncio.run(scenario())


def test_four_tokens_give_hand_computed_latencies() -> None:
    outcome = _run_one(StreamScript(chunks=((100.0, 120.0), (140.0, 160.0))))

    assert outcome.status == "ok"
    assert outcome.error is None
    assert outcome.tokens_received == 4
    assert outcome.latencies.ttft_ms == 100.0
    assert outcome.latencies.tpot_ms == 20.0
    assert outcome.latencies.e2e_ms == 160.0


def test_ok_outcome_keeps_summary_and_wall_times() -> None:
    outcome = _run_one(StreamScript())

    assert outcome.summary is not None
    assert outcome.summary.emulated_queue_ms == SUMMARY_QUEUE_MS
    assert outcome.summary.cached_tokens == SUMMARY_CACHED_TOKENS
    assert outcome.summary.prefill_instance == SUMMARY_PREFILL_INSTANCE
    assert outcome.summary.decode_instance == SUMMARY_DECODE_INSTANCE
    assert outcome.first_token_at_s is not None
    assert outcome.sent_at_s < outcome.first_token_at_s <= outcome.finished_at_s


def test_one_token_output_has_null_tpot() -> None:
    outcome = _run_one(StreamScript(chunks=((37.5,),)))

    assert outcome.status == "ok"
    assert outcome.tokens_received == 1
    assert outcome.latencies.ttft_ms == 37.5
    assert outcome.latencies.tpot_ms is None
    assert outcome.latencies.e2e_ms == 37.5


def test_resource_exhausted_abort_becomes_status() -> None:
    script = StreamScript(
        chunks=(),
        abort_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        abort_details="admission queue full",
    )
    outcome = _run_one(script)

    assert outcome.status == "RESOURCE_EXHAUSTED"
    assert outcome.error == "admission queue full"
    assert outcome.tokens_received == 0
    assert outcome.first_token_at_s is None
    assert outcome.latencies.ttft_ms is None
    assert outcome.latencies.e2e_ms is None
    assert outcome.summary is None


def test_abort_midstream_keeps_tokens_received() -> None:
    script = StreamScript(
        chunks=((50.0, 70.0),),
        abort_code=grpc.StatusCode.UNAVAILABLE,
        abort_details="decode instance failed",
    )
    outcome = _run_one(script)

    assert outcome.status == "UNAVAILABLE"
    assert outcome.tokens_received == 2
    assert outcome.latencies.ttft_ms == 50.0
    assert outcome.latencies.tpot_ms is None
    assert outcome.latencies.e2e_ms is None
    assert outcome.summary is None


def test_stream_without_summary_is_data_loss() -> None:
    outcome = _run_one(StreamScript(chunks=((10.0,),), send_summary=False))

    assert outcome.status == "DATA_LOSS"
    assert outcome.error == "stream ended without a summary"
    assert outcome.tokens_received == 1
    assert outcome.summary is None


def test_deadline_exceeded_after_timeout() -> None:
    outcome = _run_one(StreamScript(chunks=((10.0,),), pause_s=5.0), timeout_s=0.2)

    assert outcome.status == "DEADLINE_EXCEEDED"
    assert outcome.tokens_received == 1
    assert outcome.finished_at_s - outcome.sent_at_s < 2.0


def test_cancelled_task_returns_cancelled_outcome() -> None:
    script = StreamScript(chunks=((10.0, 20.0, 30.0),), pause_s=5.0)
    outcome = _run_one(script, cancel_after_s=0.3)

    assert outcome.status == "CANCELLED"
    assert outcome.error == "cancelled by the replayer"
    assert outcome.tokens_received == 3
    assert outcome.latencies.ttft_ms == 10.0
    assert outcome.latencies.tpot_ms is None


def test_channel_options_raise_message_limits() -> None:
    assert MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    assert dict(CHANNEL_OPTIONS) == {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    }
