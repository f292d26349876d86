"""Tests of replay.client against scripted fakes and, for TLS, the emulator."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from emulator.profiles import default_profiles
from emulator.server import ServerOptions, TlsFiles, start_emulator
from replay.client import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    NO_RETRY,
    AsyncEmulatorClient,
    CallInterrupted,
    EmulatorClient,
    Outcome,
    RetryPolicy,
    StartedCall,
    TlsConfig,
    generate,
    generate_sync,
    open_channel,
)
from replay.errors import ReplayError
from tests.certificates import make_certificates
from tests.replay.fake_emulator import (
    SUMMARY_CACHED_TOKENS,
    SUMMARY_DECODE_INSTANCE,
    SUMMARY_PREFILL_INSTANCE,
    SUMMARY_QUEUE_MS,
    ScriptedEmulator,
    StreamScript,
    serve_fake_emulator,
    serve_fake_emulator_in_thread,
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


def test_started_call_keeps_start_time() -> None:
    """A call started 50 ms before `generate` reads it keeps its start instant."""

    async def scenario() -> tuple[Outcome, float]:
        servicer = ScriptedEmulator(default=StreamScript(chunks=((100.0, 120.0),)))
        async with serve_fake_emulator(servicer) as target:
            async with open_channel(target) as channel:
                stub = emulator_pb2_grpc.EmulatorStub(channel)
                request = emulator_pb2.GenerateRequest(
                    request_id="r1", input_tokens=8, output_tokens=2
                )
                started = StartedCall(stub, request, 5.0)
                await asyncio.sleep(0.05)
                outcome = await generate(stub, request, 5.0, started=started)
                return outcome, started.sent_at_s

    outcome, sent_at_s = asyncio.run(scenario())

    assert outcome.status == "ok"
    assert outcome.sent_at_s == sent_at_s
    assert outcome.finished_at_s - outcome.sent_at_s >= 0.05
    assert outcome.tokens_received == 2


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


class SequencedEmulator(emulator_pb2_grpc.EmulatorServicer):
    """Fake that replies to the n-th call with `scripts[n]` (the last repeats).

    A script is (tokens before the end, abort code or None for a summary,
    trailing fault labels).
    """

    def __init__(self, scripts: list[tuple[int, grpc.StatusCode | None, str]]) -> None:
        self.scripts = scripts
        self.calls = 0

    async def Generate(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: emulator_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[emulator_pb2.GenerateResponse]:
        tokens, code, faults = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        if tokens:
            yield emulator_pb2.GenerateResponse(
                chunk=emulator_pb2.TokenChunk(
                    token_ids=list(range(tokens)),
                    emulated_ms=[10.0 * (i + 1) for i in range(tokens)],
                )
            )
        metadata = (("cmx-faults", faults),) if faults else ()
        if code is not None:
            await context.abort(code, f"scripted {code.name}", metadata)
        context.set_trailing_metadata(metadata)
        summary = emulator_pb2.GenerateSummary(output_tokens=tokens)
        summary.faults.extend(f for f in faults.split(",") if f)
        yield emulator_pb2.GenerateResponse(summary=summary)


def _run_sequence(
    scripts: list[tuple[int, grpc.StatusCode | None, str]],
    retry: RetryPolicy,
    timeout_s: float = 5.0,
) -> tuple[Outcome, int]:
    servicer = SequencedEmulator(scripts)

    async def scenario() -> Outcome:
        server = grpc.aio.server()
        emulator_pb2_grpc.add_EmulatorServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncEmulatorClient(f"127.0.0.1:{port}", retry=retry) as client:
                request = emulator_pb2.GenerateRequest(input_tokens=8, output_tokens=4)
                return await client.generate(request, timeout_s)
        finally:
            await server.stop(None)

    return asyncio.run(scenario()), servicer.calls


FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def test_unavailable_before_tokens_is_retried() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    outcome, calls = _run_sequence(
        [(0, unavailable, ""), (0, unavailable, ""), (4, None, "")], FAST_RETRY
    )
    assert calls == 3
    assert outcome.status == "ok"
    assert outcome.attempts == 3
    assert outcome.tokens_received == 4
    assert outcome.messages_received == 2
    assert outcome.sent_at_s < outcome.first_token_at_s  # type: ignore[operator]


def test_no_retry_after_tokens_arrived() -> None:
    outcome, calls = _run_sequence(
        [(2, grpc.StatusCode.UNAVAILABLE, "f3:drop_streams"), (4, None, "")],
        FAST_RETRY,
    )
    assert calls == 1
    assert outcome.status == "UNAVAILABLE"
    assert outcome.attempts == 1
    assert outcome.tokens_received == 2
    assert outcome.faults == ("f3:drop_streams",)


def test_retries_stop_at_max_attempts() -> None:
    outcome, calls = _run_sequence([(0, grpc.StatusCode.UNAVAILABLE, "")], FAST_RETRY)
    assert calls == 3
    assert outcome.status == "UNAVAILABLE"
    assert outcome.attempts == 3


def test_resource_exhausted_retried_only_when_asked() -> None:
    exhausted = [(0, grpc.StatusCode.RESOURCE_EXHAUSTED, ""), (4, None, "")]
    outcome, calls = _run_sequence(exhausted, FAST_RETRY)
    assert (outcome.status, calls) == ("RESOURCE_EXHAUSTED", 1)

    both = RetryPolicy(
        max_attempts=2,
        retry_on=frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"}),
        initial_backoff_s=0.01,
    )
    outcome, calls = _run_sequence(exhausted, both)
    assert (outcome.status, calls) == ("ok", 2)


def test_deadline_covers_every_attempt() -> None:
    patient = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05)
    outcome, calls = _run_sequence(
        [(0, grpc.StatusCode.UNAVAILABLE, "")], patient, timeout_s=0.5
    )
    assert 2 <= calls < 1000
    assert outcome.attempts == calls
    assert outcome.finished_at_s - outcome.sent_at_s < 2.0


def test_summary_faults_reach_outcome() -> None:
    outcome, _ = _run_sequence(
        [(4, None, "f1:slow_instance,f2:network_latency")], NO_RETRY
    )
    assert outcome.status == "ok"
    assert outcome.faults == ("f1:slow_instance", "f2:network_latency")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"retry_on": frozenset({"INVALID_ARGUMENT"})},
            "retrying INVALID_ARGUMENT is not safe",
        ),
        ({"max_attempts": 0}, "max_attempts must be at least 1, not 0"),
        ({"initial_backoff_s": 3.0}, "initial_backoff_s <= max_backoff_s"),
        ({"multiplier": 0.5}, "multiplier must be at least 1, not 0.5"),
    ],
)
def test_retry_policy_rejects_bad_values(
    fields: dict[str, object], expected: str
) -> None:
    with pytest.raises(ReplayError, match=re.escape(expected)):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_backoff_stays_under_ceiling() -> None:
    policy = RetryPolicy(
        max_attempts=10,
        initial_backoff_s=0.1,
        max_backoff_s=0.3,
        multiplier=2.0,
        seed=7,
    )
    waits = [policy.backoff_s(attempt) for attempt in range(1, 8)]
    ceilings = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert 0.0 <= wait <= ceiling


def test_sync_client_against_fake_emulator() -> None:
    servicer = ScriptedEmulator(default=StreamScript(chunks=((5.0, 9.0),)))
    with serve_fake_emulator_in_thread(servicer) as target:
        with EmulatorClient(target) as client:
            client.wait_ready(10)
            request = emulator_pb2.GenerateRequest(request_id="s1", input_tokens=3)
            outcome = client.generate(request, timeout_s=5)
    assert outcome.status == "ok"
    assert outcome.tokens_received == 2
    assert outcome.latencies.ttft_ms == 5.0
    assert outcome.latencies.tpot_ms == 4.0
    assert outcome.summary is not None
    assert outcome.summary.request_id == "s1"


def test_sync_client_reports_abort() -> None:
    script = StreamScript(
        chunks=((5.0,),),
        abort_code=grpc.StatusCode.UNAVAILABLE,
        abort_details="instance failed",
    )
    with serve_fake_emulator_in_thread(ScriptedEmulator(default=script)) as target:
        with EmulatorClient(target, retry=FAST_RETRY) as client:
            outcome = client.generate(emulator_pb2.GenerateRequest(), timeout_s=5)
    assert outcome.status == "UNAVAILABLE"
    assert outcome.error == "instance failed"
    assert outcome.tokens_received == 1
    assert outcome.attempts == 1  # a token had arrived, so no retry


def test_clients_over_tls_to_the_emulator(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    tls = TlsConfig(
        root_ca=certificates.ca_cert,
        client_cert=certificates.client_cert,
        client_key=certificates.client_key,
    )
    request = emulator_pb2.GenerateRequest(input_tokens=64, output_tokens=3)
    results: list[tuple[str, str]] = []

    async def scenario() -> None:
        options = ServerOptions(
            port=0,
            time_scale=50.0,
            tls=TlsFiles(
                cert_chain=certificates.server_cert,
                private_key=certificates.server_key,
                client_ca=certificates.ca_cert,
            ),
        )
        running = await start_emulator(default_profiles(), options)
        target = f"127.0.0.1:{running.port}"
        try:
            async with AsyncEmulatorClient(target, tls=tls) as client:
                await client.wait_ready(10)
                outcome = await client.generate(request, 10)
                results.append((outcome.status, await client.check_health()))

            def blocking() -> None:
                with EmulatorClient(target, tls=tls) as client:
                    outcome = client.generate(request, 10)
                    results.append((outcome.status, client.check_health()))

            await asyncio.to_thread(blocking)
        finally:
            await running.shutdown(0)

    asyncio.run(scenario())
    assert results == [("ok", "SERVING"), ("ok", "SERVING")]


def test_tls_config_needs_cert_and_key_together(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="client_cert and client_key"):
        TlsConfig(client_cert=tmp_path / "c.pem")
    with pytest.raises(ReplayError, match=r"cannot read TLS file .*missing\.pem"):
        TlsConfig(root_ca=tmp_path / "missing.pem").credentials()


def test_unreachable_target_is_replay_error() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with EmulatorClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(ReplayError, match=f"could not connect to 127.0.0.1:{port}"):
            client.wait_ready(0.3)


class _Interrupt(BaseException):
    """Stands for gevent's GreenletExit, which also derives from BaseException."""


class _InterruptedCall:
    """Blocking call that yields one chunk, then is interrupted by `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.cancelled = False

    def __iter__(self) -> Iterator[emulator_pb2.GenerateResponse]:
        chunk = emulator_pb2.TokenChunk(token_ids=[1, 2], emulated_ms=[7.0, 9.0])
        yield emulator_pb2.GenerateResponse(chunk=chunk)
        raise self.error

    def cancel(self) -> None:
        self.cancelled = True


class _StubOf:
    def __init__(self, call: _InterruptedCall) -> None:
        self.call = call

    def Generate(self, *_: object, **__: object) -> _InterruptedCall:  # noqa: N802
        return self.call


def test_interrupted_sync_call_keeps_outcome() -> None:
    call = _InterruptedCall(_Interrupt())
    stub = _StubOf(call)
    with pytest.raises(CallInterrupted) as raised:
        generate_sync(
            stub,  # type: ignore[arg-type]
            emulator_pb2.GenerateRequest(),
            5.0,
            interrupted_by=(_Interrupt,),
        )
    outcome = raised.value.outcome
    assert call.cancelled
    assert outcome.status == "CANCELLED"
    assert outcome.error == "the caller was interrupted"
    assert outcome.tokens_received == 2
    assert outcome.latencies.ttft_ms == 7.0
    assert isinstance(raised.value.__cause__, _Interrupt)


def test_other_interruption_is_raised_as_is() -> None:
    call = _InterruptedCall(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        generate_sync(_StubOf(call), emulator_pb2.GenerateRequest(), 5.0)  # type: ignore[arg-type]
    assert call.cancelled
