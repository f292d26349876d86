"""The cmx.v1.Control service over loopback, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from cmx.v1 import control_pb2, control_pb2_grpc
from emulator.control import deployment_from_mapping, deployment_to_struct
from emulator.errors import ConfigError
from emulator.profiles import DeploymentConfig, Precision
from emulator.server import RunningEmulator
from tests.emulator.harness import (
    StreamResult,
    control_stub,
    generate,
    metrics,
    run_scenario,
)


def test_get_config_reports_defaults() -> None:
    configs: list[control_pb2.EmulatorConfig] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        configs.append(
            await control_stub(channel).GetConfig(control_pb2.GetConfigRequest())
        )

    run_scenario(scenario, time_scale=4.0)
    config = configs[0]
    assert config.hardware_name == "CloudMatrix384"
    assert config.model_name == "DeepSeek-R1"
    assert config.time_scale == 4.0
    assert config.deployment["prefill_instances"] == 6
    assert config.deployment["decode_npus_per_instance"] == 160
    assert config.deployment["precision"] == "int8"
    assert config.admission.max_active_requests == 32_768
    assert config.admission.max_queued_prompt_tokens == 16_777_216
    assert config.failed_instance_policy == control_pb2.FAILED_INSTANCE_POLICY_REROUTE


def test_replace_deployment_rebuilds_the_model() -> None:
    open_stream: list[StreamResult] = []
    configs: list[control_pb2.EmulatorConfig] = []
    snapshots: list[control_pb2.Metrics] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        task = asyncio.create_task(
            generate(channel, input_tokens=1000, output_tokens=20_000)
        )
        await asyncio.sleep(0.3)
        deployment = struct_pb2.Struct()
        deployment.update({"prefill_instances": 2, "decode_instances": 2})
        configs.append(
            await control.ReplaceConfig(
                control_pb2.ReplaceConfigRequest(deployment=deployment)
            )
        )
        open_stream.append(await task)
        snapshots.append(await metrics(channel))

    run_scenario(scenario, time_scale=1.0)
    assert open_stream[0].code == grpc.StatusCode.ABORTED
    assert "reset through its control service" in open_stream[0].details
    assert configs[0].deployment["prefill_instances"] == 2
    assert configs[0].deployment["decode_instances"] == 2
    # Fields not given take their defaults.
    assert configs[0].deployment["decode_npus_per_instance"] == 160
    pools = [instance.pool for instance in snapshots[0].instances]
    assert pools == [control_pb2.POOL_PREFILL] * 2 + [control_pb2.POOL_DECODE] * 2
    # Counters restart with the model; the aborted stream ended after that.
    assert snapshots[0].requests_by_status == {"ABORTED": 1}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prefill_instancez": 2}, "unknown fields ['prefill_instancez']"),
        ({"prefill_instances": 0}, "prefill_instances must be at least 1, got 0"),
        ({"prefill_instances": 2.5}, "prefill_instances must be int, got 2.5"),
        ({"precision": "fp4"}, "precision must be one of ['bf16', 'int8']"),
        (
            {"decode_instances": 3},
            "deployment uses 576 NPUs but CloudMatrix384 has 384",
        ),
    ],
)
def test_replace_config_rejects_bad_deployment(
    fields: dict[str, object], expected: str
) -> None:
    errors: list[grpc.aio.AioRpcError] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        deployment = struct_pb2.Struct()
        deployment.update(fields)
        try:
            await control_stub(channel).ReplaceConfig(
                control_pb2.ReplaceConfigRequest(deployment=deployment)
            )
        except grpc.aio.AioRpcError as error:
            errors.append(error)

    run_scenario(scenario)
    assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in (errors[0].details() or "")


def test_replace_admission_keeps_streams() -> None:
    results: list[StreamResult] = []
    configs: list[control_pb2.EmulatorConfig] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        task = asyncio.create_task(
            generate(channel, input_tokens=500, output_tokens=50)
        )
        configs.append(
            await control_stub(channel).ReplaceConfig(
                control_pb2.ReplaceConfigRequest(
                    admission=control_pb2.AdmissionLimits(
                        max_active_requests=1, max_queued_prompt_tokens=1000
                    ),
                    failed_instance_policy=control_pb2.FAILED_INSTANCE_POLICY_FAIL,
                )
            )
        )
        results.append(await task)
        results.append(await generate(channel, input_tokens=2000, output_tokens=1))

    run_scenario(scenario)
    assert results[0].code == grpc.StatusCode.OK
    assert configs[0].admission.max_active_requests == 1
    assert configs[0].failed_instance_policy == control_pb2.FAILED_INSTANCE_POLICY_FAIL
    assert results[1].code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_set_time_scale_keeps_emulated_time_continuous() -> None:
    times: list[float] = []
    errors: list[grpc.aio.AioRpcError] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        control = control_stub(channel)
        await asyncio.sleep(0.2)
        times.append((await metrics(channel)).emulated_now_s)
        reply = await control.SetTimeScale(
            control_pb2.SetTimeScaleRequest(time_scale=1000.0)
        )
        times.append(reply.time_scale)
        await asyncio.sleep(0.2)
        times.append((await metrics(channel)).emulated_now_s)
        try:
            await control.SetTimeScale(control_pb2.SetTimeScaleRequest(time_scale=0))
        except grpc.aio.AioRpcError as error:
            errors.append(error)

    run_scenario(scenario, time_scale=1.0)
    before_s, scale, after_s = times
    assert 0.2 <= before_s < 1.0  # 0.2 wall seconds at scale 1, plus start-up
    assert scale == 1000.0
    assert after_s >= before_s + 200  # at least 0.2 wall seconds at scale 1000
    assert errors[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "time_scale must be a positive finite number, got 0.0" in (
        errors[0].details() or ""
    )


def test_reset_aborts_streams_and_restarts_time() -> None:
    results: list[StreamResult] = []
    resets: list[control_pb2.ResetResponse] = []
    snapshots: list[control_pb2.Metrics] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        results.append(await generate(channel, input_tokens=100, output_tokens=3))
        task = asyncio.create_task(
            generate(channel, input_tokens=1000, output_tokens=50_000)
        )
        await asyncio.sleep(0.5)
        snapshots.append(await metrics(channel))
        resets.append(await control_stub(channel).Reset(control_pb2.ResetRequest()))
        results.append(await task)
        snapshots.append(await metrics(channel))

    run_scenario(scenario, time_scale=10.0)
    assert resets[0].aborted_streams == 1
    assert results[1].code == grpc.StatusCode.ABORTED
    before, after = snapshots
    assert before.requests_by_status == {"OK": 1}
    assert before.output_tokens_total > 3
    assert after.emulated_now_s < before.emulated_now_s
    assert after.active_requests == 0
    # Only tokens sent after the reset count: those the aborted stream still
    # had queued when it ended.
    assert after.output_tokens_total < len(results[1].token_times_ms)
    assert after.requests_by_status == {"ABORTED": 1}


def test_metrics_count_a_finished_request() -> None:
    snapshots: list[control_pb2.Metrics] = []

    async def scenario(channel: grpc.aio.Channel, _: RunningEmulator) -> None:
        await generate(channel, input_tokens=700, output_tokens=9)
        await generate(channel, input_tokens=0, output_tokens=9)  # invalid
        snapshots.append(await metrics(channel))

    run_scenario(scenario)
    snapshot = snapshots[0]
    assert snapshot.requests_by_status == {"OK": 1, "INVALID_ARGUMENT": 1}
    assert snapshot.prompt_tokens_total == 700
    assert snapshot.output_tokens_total == 9
    assert snapshot.cached_prompt_tokens_total == 0
    assert snapshot.prefix_cache_hit_rate == 0.0
    assert snapshot.active_requests == 0
    assert snapshot.open_streams == 0
    assert len(snapshot.instances) == 7
    decode = snapshot.instances[6]
    assert decode.pool == control_pb2.POOL_DECODE
    assert decode.tokens_generated == 8  # the first token comes from prefill
    assert decode.slowdown == 1.0
    assert decode.available


def test_prometheus_endpoint_serves_metrics() -> None:
    families: dict[str, list[tuple[dict[str, str], float]]] = {}

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        await generate(channel, input_tokens=300, output_tokens=4)
        assert running.metrics is not None
        url = f"http://127.0.0.1:{running.metrics.port}/metrics"
        text = await asyncio.to_thread(_fetch, url)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                families.setdefault(sample.name, []).append(
                    (sample.labels, sample.value)
                )

    run_scenario(scenario, metrics_port=0)
    assert families["cmx_active_requests"] == [({}, 0.0)]
    assert families["cmx_requests_total"] == [({"status": "OK"}, 1.0)]
    assert families["cmx_output_tokens_total"] == [({}, 4.0)]
    assert families["cmx_prompt_tokens_total"] == [({}, 300.0)]
    available = families["cmx_instance_available"]
    assert len(available) == 7
    assert ({"pool": "decode", "instance": "0"}, 1.0) in available
    assert families["cmx_time_scale"] == [({}, 50.0)]


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310
        body: bytes = response.read()
    return body.decode()


def test_control_on_its_own_port() -> None:
    codes: list[grpc.StatusCode] = []
    configs: list[control_pb2.EmulatorConfig] = []

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        assert running.control_port is not None
        assert running.control_port != running.port
        try:
            await control_stub(channel).GetConfig(control_pb2.GetConfigRequest())
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
        target = f"127.0.0.1:{running.control_port}"
        async with grpc.aio.insecure_channel(target) as control_channel:
            configs.append(
                await control_stub(control_channel).GetConfig(
                    control_pb2.GetConfigRequest()
                )
            )

    run_scenario(scenario, control_port=0)
    assert codes == [grpc.StatusCode.UNIMPLEMENTED]
    assert configs[0].model_name == "DeepSeek-R1"


def test_control_can_be_disabled() -> None:
    codes: list[grpc.StatusCode] = []

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        assert running.control_port is None
        try:
            await control_pb2_grpc.ControlStub(channel).Reset(
                control_pb2.ResetRequest()
            )
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())

    run_scenario(scenario, control_enabled=False)
    assert codes == [grpc.StatusCode.UNIMPLEMENTED]


@given(
    prefill_instances=st.integers(1, 8),
    decode_instances=st.integers(1, 1),
    mtp_acceptance=st.floats(0.0, 1.0),
    precision=st.sampled_from(list(Precision)),
    tpot_slo_ms=st.none() | st.floats(1.0, 1000.0),
)
def test_deployment_struct_round_trip(
    prefill_instances: int,
    decode_instances: int,
    mtp_acceptance: float,
    precision: Precision,
    tpot_slo_ms: float | None,
) -> None:
    from google.protobuf import json_format

    deployment = DeploymentConfig(
        prefill_instances=prefill_instances,
        decode_instances=decode_instances,
        mtp_acceptance=mtp_acceptance,
        precision=precision,
        tpot_slo_ms=tpot_slo_ms,
    )
    fields = json_format.MessageToDict(deployment_to_struct(deployment))
    assert deployment_from_mapping(fields) == deployment


def test_deployment_null_for_required_field() -> None:
    with pytest.raises(
        ConfigError, match="deployment prefill_instances must not be null"
    ):
        deployment_from_mapping({"prefill_instances": None})


def test_reflection_serves_control_like_grpcurl() -> None:
    """Call InjectFault from JSON with descriptors fetched by reflection only."""
    replies: list[dict[str, object]] = []

    def call_from_json(target: str) -> None:
        from google.protobuf import descriptor_pool, json_format, message_factory
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        with grpc.insecure_channel(target) as channel:
            pool = descriptor_pool.DescriptorPool(
                ProtoReflectionDescriptorDatabase(channel)
            )
            service = pool.FindServiceByName("cmx.v1.Control")
            method = service.FindMethodByName("InjectFault")
            request_class = message_factory.GetMessageClass(method.input_type)
            reply_class = message_factory.GetMessageClass(method.output_type)
            request = json_format.Parse(
                '{"fault": {"slow_instance": '
                '{"pool": "POOL_DECODE", "instance": 0, "slowdown": 2}}}',
                request_class(),
            )
            call = channel.unary_unary(
                "/cmx.v1.Control/InjectFault",
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=reply_class.FromString,
            )
            reply = call(request, timeout=10)
            replies.append(json_format.MessageToDict(reply))

    async def scenario(channel: grpc.aio.Channel, running: RunningEmulator) -> None:
        await asyncio.to_thread(call_from_json, f"127.0.0.1:{running.port}")

    run_scenario(scenario)
    assert float(replies[0].pop("startsAtS")) > 0  # type: ignore[arg-type]
    assert replies == [
        {
            "spec": {
                "faultId": "f1",
                "slowInstance": {"pool": "POOL_DECODE", "slowdown": 2.0},
            },
            "state": "FAULT_STATE_ACTIVE",
        }
    ]
