"""Injected faults over loopback: slow and failed instances, network latency,
dropped streams, timing and the schedule file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from cmx.cli import main as cmx_main
from cmx.v1 import control_pb2
from emulator.control import (
    fault_spec_from_proto,
    fault_spec_to_proto,
    load_fault_schedule,
)
from emulator.errors import ConfigError
from emulator.faults import (
    DropStreams,
    FailedInstance,
    FailedInstancePolicy,
    FaultSpec,
    NetworkLatency,
    Pool,
    SlowInstance,
)
from emulator.server import RunningEmulator
from tests.emulator.harness import (
    StreamResult,
    control_stub,
    generate,
    metrics,
    run_scenario,
    wait_until,
)

PREFILL = control_pb2.POOL_PREFILL
DECODE = control_pb2.POOL_DECODE


def inject(**fault: object) -> control_pb2.InjectFaultRequest:
    return control_pb2.InjectFaultRequest(fault=control_pb2.FaultSpec(**fault))


def test_slow_decode_instance_multiplies_tpot() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        results.append(await generate(channel, input_tokens=2000, output_tokens=30))
        await control.Reset(control_pb2.ResetRequest())
        slow = control_pb2.SlowInstance(pool=DECODE, instance=0, slowdown=3.0, die=17)
        fault = await control.InjectFault(inject(slow_instance=slow))
        assert fault.spec.fault_id == "f1"
        assert fault.state == control_pb2.FAULT_STATE_ACTIVE
        results.append(await generate(channel, input_tokens=2000, output_tokens=30))

    run_scenario(scenario)
    base, slowed = (result.summary for result in results)
    assert base is not None and slowed is not None
    # Reset re-seeds the model, so both runs draw the same MTP acceptances.
    assert slowed.emulated_tpot_ms == pytest.approx(3 * base.emulated_tpot_ms)
    assert slowed.emulated_ttft_ms == pytest.approx(base.emulated_ttft_ms)
    assert list(base.faults) == []
    assert list(slowed.faults) == ["f1:slow_instance"]
    assert results[1].trailing_metadata == {"cmx-faults": "f1:slow_instance"}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            {
                "slow_instance": control_pb2.SlowInstance(
                    pool=DECODE, slowdown=2, die=320
                )
            },
            "slow_instance.die 320 is out of range: a decode instance has 320 dies",
        ),
        (
            {"slow_instance": control_pb2.SlowInstance(pool=PREFILL, slowdown=0.5)},
            "slow_instance.slowdown must be a finite number >= 1, got 0.5",
        ),
        (
            {"failed_instance": control_pb2.FailedInstance(pool=PREFILL, instance=6)},
            "instance 6 is out of range: the deployment has 6 prefill instances",
        ),
        (
            {"failed_instance": control_pb2.FailedInstance(instance=0)},
            "failed_instance.pool must be POOL_PREFILL or POOL_DECODE",
        ),
        (
            {"drop_streams": control_pb2.DropStreams(probability=1.5)},
            "drop_streams.probability must be in [0, 1], got 1.5",
        ),
        (
            {"network_latency": control_pb2.NetworkLatency(latency_ms=-1)},
            "network_latency.latency_ms must be a finite number >= 0, got -1.0",
        ),
        ({"duration_s": 5}, "fault has no kind"),
        (
            {
                "fault_id": "a,b",
                "drop_streams": control_pb2.DropStreams(probability=0.5),
            },
            "fault_id 'a,b' must be at most 64 characters without ',' or ':'",
        ),
    ],
)
def test_invalid_fault_is_rejected(fault: dict[str, object], expected: str) -> None:
    errors: list[grpc.aio.AioRpcError] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        try:
            await control_stub(channel).InjectFault(inject(**fault))
        except grpc.aio.AioRpcError as error:
            errors.append(error)

    run_scenario(scenario)
    assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (errors[0].details() or "")


def test_failed_prefill_instance_reroutes_requests() -> None:
    results: list[StreamResult] = []
    queued_before: list[int] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        task = asyncio.create_task(
            generate(channel, input_tokens=120_000, output_tokens=5)
        )

        async def on_prefill_0() -> bool:
            return (await metrics(channel)).instances[0].queued_requests == 1

        assert await wait_until(on_prefill_0)
        queued_before.append((await metrics(channel)).instances[0].queued_tokens)
        failed = control_pb2.FailedInstance(pool=PREFILL, instance=0)
        control = control_stub(channel)
        await control.InjectFault(inject(failed_instance=failed))
        # The prefill starts again from scratch; no need to watch it at 1x.
        await control.SetTimeScale(control_pb2.SetTimeScaleRequest(time_scale=100))
        results.append(await task)

    run_scenario(scenario, time_scale=1.0)
    result = results[0]
    summary = result.summary
    assert result.code == grpc.StatusCode.OK
    assert summary is not None
    assert summary.restarts == 1
    assert summary.prefill_instance == 1
    assert summary.output_tokens == 5
    assert list(summary.faults) == ["f1:failed_instance"]
    assert len(result.token_times_ms) == 5
    assert queued_before[0] > 0


def test_failed_decode_instance_fails_streams_by_policy() -> None:
    results: list[StreamResult] = []
    snapshots: list[control_pb2.Metrics] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        task = asyncio.create_task(
            generate(channel, input_tokens=1000, output_tokens=50_000)
        )

        async def decoding() -> bool:
            return (await metrics(channel)).instances[6].batch_size == 1

        assert await wait_until(decoding)
        failed = control_pb2.FailedInstance(pool=DECODE, instance=0)
        await control_stub(channel).InjectFault(inject(failed_instance=failed))
        results.append(await task)
        results.append(await generate(channel, input_tokens=10, output_tokens=2))
        snapshots.append(await metrics(channel))
        await control_stub(channel).ClearFaults(control_pb2.ClearFaultsRequest())
        results.append(await generate(channel, input_tokens=10, output_tokens=2))

    run_scenario(
        scenario, time_scale=10.0, failed_instance_policy=FailedInstancePolicy.FAIL
    )
    failed, refused, recovered = results
    assert failed.code == grpc.StatusCode.UNAVAILABLE
    assert "decode instance 0 failed (fault f1:failed_instance)" in failed.details
    assert "failed-instance policy: fail" in failed.details
    assert failed.trailing_metadata == {"cmx-faults": "f1:failed_instance"}
    assert len(failed.token_times_ms) > 0
    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert "no decode instance is available" in refused.details
    assert snapshots[0].active_requests == 0
    assert snapshots[0].kv_cache_tokens == 0
    assert not snapshots[0].instances[6].available
    assert recovered.code == grpc.StatusCode.OK


def test_failed_decode_instance_reroutes_midstream() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        deployment = struct_pb2.Struct()
        deployment.update({"decode_instances": 2, "decode_npus_per_instance": 80})
        await control_stub(channel).ReplaceConfig(
            control_pb2.ReplaceConfigRequest(deployment=deployment)
        )
        task = asyncio.create_task(
            generate(channel, input_tokens=1000, output_tokens=400)
        )

        async def decoding() -> bool:
            return (await metrics(channel)).instances[6].batch_size == 1

        assert await wait_until(decoding)
        failed = control_pb2.FailedInstance(pool=DECODE, instance=0)
        await control_stub(channel).InjectFault(inject(failed_instance=failed))
        results.append(await task)

    run_scenario(scenario, time_scale=5.0)
    result = results[0]
    summary = result.summary
    assert result.code == grpc.StatusCode.OK
    assert summary is not None
    assert summary.restarts == 1
    assert summary.decode_instance == 1
    assert summary.output_tokens == 400
    # The stream goes on from the next token: indexes stay contiguous.
    sizes = [len(chunk.token_ids) for chunk in result.chunks]
    assert result.first_indexes == [sum(sizes[:i]) for i in range(len(sizes))]
    assert sum(sizes) == 400
    times_ms = result.token_times_ms
    assert times_ms == sorted(times_ms)
    assert list(summary.faults) == ["f1:failed_instance"]


def test_network_latency_delays_each_way() -> None:
    results: list[tuple[float, StreamResult]] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        latency = control_pb2.NetworkLatency(latency_ms=2000.0)  # 0.2 s wall
        await control_stub(channel).InjectFault(inject(network_latency=latency))
        started = time.perf_counter()
        result = await generate(channel, input_tokens=10, output_tokens=1)
        results.append((time.perf_counter() - started, result))

    run_scenario(scenario, time_scale=10.0)
    wall_s, result = results[0]
    assert wall_s >= 0.4  # 0.2 s on the way in and 0.2 s on the way out
    assert result.code == grpc.StatusCode.OK
    assert result.summary is not None
    assert list(result.summary.faults) == ["f1:network_latency"]
    # The emulated timings are measured inside the emulator, without it.
    assert result.summary.emulated_e2e_ms < 2000.0


def test_dropped_stream_ends_after_tokens() -> None:
    results: list[StreamResult] = []
    snapshots: list[control_pb2.Metrics] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        drop = control_pb2.DropStreams(probability=1.0, after_tokens=5)
        await control_stub(channel).InjectFault(
            inject(fault_id="drops", drop_streams=drop)
        )
        results.append(await generate(channel, input_tokens=100, output_tokens=60))
        results.append(await generate(channel, input_tokens=100, output_tokens=3))
        snapshots.append(await metrics(channel))

    run_scenario(scenario)
    long, short = results
    assert long.code == grpc.StatusCode.UNAVAILABLE
    assert (
        long.details
        == "stream dropped after 5 tokens by injected fault drops:drop_streams"
    )
    assert len(long.token_times_ms) == 5
    assert long.summary is None
    assert long.trailing_metadata == {"cmx-faults": "drops:drop_streams"}
    # A shorter output is dropped before its summary.
    assert short.code == grpc.StatusCode.UNAVAILABLE
    assert len(short.token_times_ms) == 3
    assert snapshots[0].active_requests == 0
    assert snapshots[0].requests_by_status == {"UNAVAILABLE": 2}


def test_random_drop_point_is_inside_output() -> None:
    results: list[StreamResult] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        drop = control_pb2.DropStreams(probability=1.0)
        await control_stub(channel).InjectFault(inject(drop_streams=drop))
        for _ in range(5):
            results.append(await generate(channel, input_tokens=50, output_tokens=20))

    run_scenario(scenario)
    for result in results:
        assert result.code == grpc.StatusCode.UNAVAILABLE
        assert 0 <= len(result.token_times_ms) < 20


def test_fault_starts_and_ends_on_time() -> None:
    states: list[list[int]] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        slow = control_pb2.SlowInstance(pool=PREFILL, instance=2, slowdown=2.0)
        fault = await control.InjectFault(
            inject(start_after_s=2.0, duration_s=10.0, slow_instance=slow)
        )
        assert fault.state == control_pb2.FAULT_STATE_PENDING
        listed = await control.ListFaults(control_pb2.ListFaultsRequest())
        states.append([f.state for f in listed.faults])

        async def active() -> bool:
            listed = await control.ListFaults(control_pb2.ListFaultsRequest())
            return [f.state for f in listed.faults] == [control_pb2.FAULT_STATE_ACTIVE]

        assert await wait_until(active)
        states.append([control_pb2.FAULT_STATE_ACTIVE])
        assert (await metrics(channel)).instances[2].slowdown == 2.0

        async def ended() -> bool:
            listed = await control.ListFaults(control_pb2.ListFaultsRequest())
            return not listed.faults

        assert await wait_until(ended)
        states.append([])
        assert (await metrics(channel)).instances[2].slowdown == 1.0

    run_scenario(scenario, time_scale=20.0)
    assert states == [
        [control_pb2.FAULT_STATE_PENDING],
        [control_pb2.FAULT_STATE_ACTIVE],
        [],
    ]


def test_clear_faults_by_id_and_errors() -> None:
    codes: list[grpc.StatusCode] = []
    cleared: list[list[str]] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        drop = control_pb2.DropStreams(probability=0.5)
        await control.InjectFault(inject(fault_id="x", drop_streams=drop))
        try:
            await control.InjectFault(inject(fault_id="x", drop_streams=drop))
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
        try:
            await control.ClearFaults(control_pb2.ClearFaultsRequest(fault_ids=["y"]))
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
        reply = await control.ClearFaults(
            control_pb2.ClearFaultsRequest(fault_ids=["x"])
        )
        cleared.append(list(reply.cleared_fault_ids))

    run_scenario(scenario)
    assert codes == [grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND]
    assert cleared == [["x"]]


SCHEDULE = {
    "faults": [
        {
            "fault_id": "slow-decode",
            "start_after_s": 0,
            "slow_instance": {"pool": "POOL_DECODE", "instance": 0, "slowdown": 2},
        },
        {
            "fault_id": "outage",
            "start_after_s": 3600,
            "duration_s": 60,
            "failed_instance": {"pool": "POOL_PREFILL", "instance": 3},
        },
    ]
}


def test_schedule_file_is_armed_and_rearmed_on_reset(tmp_path: Path) -> None:
    path = tmp_path / "incident.json"
    path.write_text(json.dumps(SCHEDULE))
    listings: list[list[tuple[str, int, float]]] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        for _ in range(2):
            listed = await control.ListFaults(control_pb2.ListFaultsRequest())
            listings.append(
                [
                    (f.spec.fault_id, f.state, round(f.starts_at_s))
                    for f in listed.faults
                ]
            )
            await control.ClearFaults(control_pb2.ClearFaultsRequest())
            await control.Reset(control_pb2.ResetRequest())

    schedule = load_fault_schedule(path)
    run_scenario(scenario, fault_schedule=schedule)
    expected = [
        ("slow-decode", control_pb2.FAULT_STATE_ACTIVE, 0),
        ("outage", control_pb2.FAULT_STATE_PENDING, 3600),
    ]
    assert listings == [expected, expected]
    assert schedule[1] == FaultSpec(
        kind=FailedInstance(pool=Pool.PREFILL, instance=3),
        fault_id="outage",
        start_after_s=3600.0,
        duration_s=60.0,
    )


def test_load_fault_schedule_over_control() -> None:
    listings: list[list[str]] = []
    codes: list[grpc.StatusCode] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        schedule = control_pb2.FaultSchedule()
        from google.protobuf import json_format

        json_format.ParseDict(SCHEDULE, schedule)
        reply = await control.LoadFaultSchedule(
            control_pb2.LoadFaultScheduleRequest(schedule=schedule)
        )
        listings.append([f.spec.fault_id for f in reply.faults])
        config = await control.GetConfig(control_pb2.GetConfigRequest())
        listings.append([f.fault_id for f in config.fault_schedule.faults])
        try:  # "slow-decode" is active, so the same schedule again is refused
            await control.LoadFaultSchedule(
                control_pb2.LoadFaultScheduleRequest(schedule=schedule)
            )
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())

    run_scenario(scenario)
    assert listings == [["slow-decode", "outage"], ["slow-decode", "outage"]]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not a valid cmx.v1.FaultSchedule in JSON"),
        ('{"faults": [{"duration_s": 3}]}', "faults[0]: fault has no kind"),
        ('{"faults": [{"slow_instance": {"pool": "POOL_GPU"}}]}', "POOL_GPU"),
    ],
)
def test_bad_schedule_file_is_rejected(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="fault schedule") as raised:
        load_fault_schedule(path)
    assert expected in str(raised.value)
    assert str(path) in str(raised.value)


def test_serve_rejects_schedule_outside_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wrong.json"
    path.write_text(
        '{"faults": [{"failed_instance": {"pool": "POOL_DECODE", "instance": 4}}]}'
    )
    status = cmx_main(["serve", "--port", "0", "--fault-schedule", str(path)])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error == (
        f"cmx: error: fault schedule {path}: instance 4 is out of range: the "
        "deployment has 1 decode instances, numbered 0 to 0"
    )


fault_kinds = st.one_of(
    st.builds(
        SlowInstance,
        pool=st.sampled_from(list(Pool)),
        instance=st.integers(0, 5),
        slowdown=st.floats(1.0, 100.0),
        die=st.none() | st.integers(0, 31),
    ),
    st.builds(
        FailedInstance, pool=st.sampled_from(list(Pool)), instance=st.integers(0, 5)
    ),
    st.builds(NetworkLatency, latency_ms=st.floats(0.0, 1e4)),
    st.builds(
        DropStreams, probability=st.floats(0.0, 1.0), after_tokens=st.integers(0, 10**6)
    ),
)


@given(
    kind=fault_kinds,
    fault_id=st.text("abc-_0123456789", max_size=8),
    start_after_s=st.floats(0.0, 1e6),
    duration_s=st.floats(0.0, 1e6),
)
def test_fault_spec_proto_round_trip(
    kind: SlowInstance | FailedInstance | NetworkLatency | DropStreams,
    fault_id: str,
    start_after_s: float,
    duration_s: float,
) -> None:
    spec = FaultSpec(kind, fault_id, start_after_s, duration_s)
    assert fault_spec_from_proto(fault_spec_to_proto(spec)) == spec
