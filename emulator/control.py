"""The `cmx.v1.Control` service, and conversions between its messages and ours.

Configuration, time scale, faults, reset and metrics of a running emulator.
Bad values end the call with INVALID_ARGUMENT and a message naming the field
and the accepted range. The fault schedule file of `cmx serve
--fault-schedule` is the JSON form of `cmx.v1.FaultSchedule`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from cmx.v1 import control_pb2, control_pb2_grpc
from emulator.admission import AdmissionLimits
from emulator.errors import ConfigError, EmulatorError
from emulator.faults import (
    DropStreams,
    FailedInstance,
    FailedInstancePolicy,
    FaultEntry,
    FaultError,
    FaultIdInUse,
    FaultKind,
    FaultSpec,
    FaultState,
    NetworkLatency,
    Pool,
    SlowInstance,
)
from emulator.metrics import MetricsSnapshot, ServerStats, collect_metrics
from emulator.profiles import DeploymentConfig, Profiles
from emulator.runtime import PacedRuntime

__all__ = [
    "ControlService",
    "deployment_from_mapping",
    "deployment_to_struct",
    "fault_spec_from_proto",
    "fault_spec_to_proto",
    "fault_to_proto",
    "load_fault_schedule",
    "metrics_to_proto",
    "schedule_from_proto",
]

logger = logging.getLogger(__name__)

_POOLS: dict[int, Pool] = {
    control_pb2.POOL_PREFILL: Pool.PREFILL,
    control_pb2.POOL_DECODE: Pool.DECODE,
}
_POLICIES: dict[control_pb2.FailedInstancePolicy, FailedInstancePolicy] = {
    control_pb2.FAILED_INSTANCE_POLICY_REROUTE: FailedInstancePolicy.REROUTE,
    control_pb2.FAILED_INSTANCE_POLICY_FAIL: FailedInstancePolicy.FAIL,
}


# Deployment <-> google.protobuf.Struct.


def deployment_to_struct(deployment: DeploymentConfig) -> struct_pb2.Struct:
    """Return the deployment's fields by name, enums as their values."""
    struct = struct_pb2.Struct()
    for field in dataclasses.fields(deployment):
        value = getattr(deployment, field.name)
        struct[field.name] = value.value if isinstance(value, enum.Enum) else value
    return struct


def deployment_from_mapping(fields: Mapping[str, Any]) -> DeploymentConfig:
    """Build a deployment from field values; absent fields take defaults.

    JSON numbers arrive as floats, so integral floats are accepted for
    integer fields. Raises ConfigError naming an unknown field or a value of
    the wrong type, and the deployment's own range errors.
    """
    hints = typing.get_type_hints(DeploymentConfig)
    known = [field.name for field in dataclasses.fields(DeploymentConfig)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(
            f"deployment has unknown fields {unknown}; accepted: {', '.join(known)}"
        )
    values = {name: _coerce(name, value, hints[name]) for name, value in fields.items()}
    try:
        return DeploymentConfig(**values)
    except TypeError as error:
        raise ConfigError(f"deployment is invalid: {error}") from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"deployment {name} must not be null")
    for option in options:
        if option is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if option is float and isinstance(value, int | float):
            return float(value)
        if isinstance(option, type) and issubclass(option, enum.Enum):
            try:
                return option(value)
            except ValueError:
                accepted = [member.value for member in option]
                raise ConfigError(
                    f"deployment {name} must be one of {accepted}, got {value!r}"
                ) from None
        if isinstance(option, type) and isinstance(value, option):
            return value
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"deployment {name} must be {expected}, got {value!r}")


# Faults <-> messages.


def fault_spec_from_proto(message: control_pb2.FaultSpec) -> FaultSpec:
    """Convert a FaultSpec message; raises FaultError when its kind is missing."""
    kind_name = message.WhichOneof("kind")
    kind: FaultKind
    if kind_name == "slow_instance":
        slow = message.slow_instance
        kind = SlowInstance(
            pool=_pool(slow.pool, "slow_instance.pool"),
            instance=slow.instance,
            slowdown=slow.slowdown,
            die=slow.die if slow.HasField("die") else None,
        )
    elif kind_name == "failed_instance":
        failed = message.failed_instance
        kind = FailedInstance(
            pool=_pool(failed.pool, "failed_instance.pool"), instance=failed.instance
        )
    elif kind_name == "network_latency":
        kind = NetworkLatency(latency_ms=message.network_latency.latency_ms)
    elif kind_name == "drop_streams":
        drop = message.drop_streams
        kind = DropStreams(probability=drop.probability, after_tokens=drop.after_tokens)
    else:
        raise FaultError(
            "fault has no kind: set one of slow_instance, failed_instance, "
            "network_latency, drop_streams"
        )
    return FaultSpec(
        kind=kind,
        fault_id=message.fault_id,
        start_after_s=message.start_after_s,
        duration_s=message.duration_s,
    )


def _pool(value: int, field_name: str) -> Pool:
    if value not in _POOLS:
        raise FaultError(f"{field_name} must be POOL_PREFILL or POOL_DECODE")
    return _POOLS[value]


def _pool_to_proto(pool: Pool) -> control_pb2.Pool:
    return control_pb2.POOL_PREFILL if pool is Pool.PREFILL else control_pb2.POOL_DECODE


def fault_spec_to_proto(spec: FaultSpec) -> control_pb2.FaultSpec:
    message = control_pb2.FaultSpec(
        fault_id=spec.fault_id,
        start_after_s=spec.start_after_s,
        duration_s=spec.duration_s,
    )
    kind = spec.kind
    if isinstance(kind, SlowInstance):
        message.slow_instance.pool = _pool_to_proto(kind.pool)
        message.slow_instance.instance = kind.instance
        message.slow_instance.slowdown = kind.slowdown
        if kind.die is not None:
            message.slow_instance.die = kind.die
    elif isinstance(kind, FailedInstance):
        message.failed_instance.pool = _pool_to_proto(kind.pool)
        message.failed_instance.instance = kind.instance
    elif isinstance(kind, NetworkLatency):
        message.network_latency.latency_ms = kind.latency_ms
    else:
        message.drop_streams.probability = kind.probability
        message.drop_streams.after_tokens = kind.after_tokens
    return message


def fault_to_proto(entry: FaultEntry) -> control_pb2.Fault:
    message = control_pb2.Fault(
        spec=fault_spec_to_proto(entry.spec),
        state=(
            control_pb2.FAULT_STATE_ACTIVE
            if entry.state is FaultState.ACTIVE
            else control_pb2.FAULT_STATE_PENDING
        ),
        starts_at_s=entry.starts_at_s,
    )
    if entry.state is FaultState.ACTIVE and entry.spec.duration_s > 0:
        message.ends_at_s = entry.starts_at_s + entry.spec.duration_s
    return message


def schedule_from_proto(schedule: control_pb2.FaultSchedule) -> tuple[FaultSpec, ...]:
    """Convert a schedule; raises FaultError naming the bad entry by index."""
    specs = []
    for index, message in enumerate(schedule.faults):
        try:
            specs.append(fault_spec_from_proto(message))
        except FaultError as error:
            raise FaultError(f"faults[{index}]: {error}") from None
    return tuple(specs)


def load_fault_schedule(path: str | Path) -> tuple[FaultSpec, ...]:
    """Read a fault schedule file: the JSON form of `cmx.v1.FaultSchedule`.

    Raises ConfigError naming the file when it cannot be read or parsed, or
    when an entry has no kind. Ranges are checked against the deployment
    when the schedule is armed.
    """
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(
            f"cannot read fault schedule {path}: {error.strerror}"
        ) from None
    schedule = control_pb2.FaultSchedule()
    try:
        json_format.Parse(text, schedule)
    except json_format.ParseError as error:
        raise ConfigError(
            f"fault schedule {path} is not a valid cmx.v1.FaultSchedule in JSON: "
            f"{error}"
        ) from None
    try:
        return schedule_from_proto(schedule)
    except FaultError as error:
        raise ConfigError(f"fault schedule {path}: {error}") from None


# Metrics.


def metrics_to_proto(snapshot: MetricsSnapshot) -> control_pb2.Metrics:
    message = control_pb2.Metrics(
        emulated_now_s=snapshot.emulated_now_s,
        time_scale=snapshot.time_scale,
        active_requests=snapshot.active_requests,
        open_streams=snapshot.open_streams,
        kv_cache_tokens=snapshot.kv_cache_tokens,
        kv_cache_bytes=snapshot.kv_cache_bytes,
        prefix_cache_hit_rate=snapshot.prefix_cache_hit_rate,
        output_tokens_per_s=snapshot.output_tokens_per_s,
        emulated_output_tokens_per_s=snapshot.emulated_output_tokens_per_s,
        requests_by_status=dict(snapshot.requests_by_status),
        prompt_tokens_total=snapshot.prompt_tokens_total,
        cached_prompt_tokens_total=snapshot.cached_prompt_tokens_total,
        output_tokens_total=snapshot.output_tokens_total,
        active_faults=snapshot.active_faults,
    )
    for instance in snapshot.instances:
        message.instances.add(
            pool=_pool_to_proto(instance.pool),
            instance=instance.instance,
            queued_requests=instance.queued_requests,
            queued_tokens=instance.queued_tokens,
            batch_size=instance.batch_size,
            tokens_generated=instance.tokens_generated,
            kv_cache_tokens=instance.kv_cache_tokens,
            slowdown=instance.slowdown,
            available=instance.available,
        )
    return message


async def _reject(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> None:
    """Log a rejected control call and end it with `code`."""
    logger.info("control call rejected with %s: %s", code.name, details)
    await context.abort(code, details)


class ControlService(control_pb2_grpc.ControlServicer):
    """Implements `cmx.v1.Control` on a runtime and the stream counters."""

    def __init__(self, runtime: PacedRuntime, stats: ServerStats) -> None:
        self._runtime = runtime
        self._stats = stats

    async def GetConfig(  # noqa: N802 - names fixed by the generated servicer
        self, request: control_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.EmulatorConfig:
        return self._config()

    async def ReplaceConfig(  # noqa: N802
        self,
        request: control_pb2.ReplaceConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.EmulatorConfig:
        runtime = self._runtime
        try:
            admission = runtime.admission
            if request.HasField("admission"):
                admission = AdmissionLimits(
                    max_active_requests=request.admission.max_active_requests,
                    max_queued_prompt_tokens=request.admission.max_queued_prompt_tokens,
                )
            profiles = None
            if request.HasField("deployment"):
                fields = json_format.MessageToDict(request.deployment)
                profiles = Profiles(
                    runtime.profiles.hardware,
                    runtime.profiles.model,
                    deployment_from_mapping(fields),
                )
                runtime.reset(profiles)
                self._stats.reset()
        except EmulatorError as error:
            await _reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        runtime.admission = admission
        if request.failed_instance_policy in _POLICIES:
            runtime.failed_instance_policy = _POLICIES[request.failed_instance_policy]
        logger.info("configuration replaced: %s", self._config())
        return self._config()

    async def SetTimeScale(  # noqa: N802
        self,
        request: control_pb2.SetTimeScaleRequest,
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.EmulatorConfig:
        try:
            self._runtime.set_time_scale(request.time_scale)
        except ConfigError as error:
            await _reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        logger.info("time scale set to %g", request.time_scale)
        return self._config()

    async def InjectFault(  # noqa: N802
        self,
        request: control_pb2.InjectFaultRequest,
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.Fault:
        try:
            entry = self._runtime.inject_fault(fault_spec_from_proto(request.fault))
        except FaultIdInUse as error:
            await _reject(context, grpc.StatusCode.ALREADY_EXISTS, str(error))
        except FaultError as error:
            await _reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return fault_to_proto(entry)

    async def ClearFaults(  # noqa: N802
        self,
        request: control_pb2.ClearFaultsRequest,
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.ClearFaultsResponse:
        cleared = self._runtime.clear_faults(
            list(request.fault_ids), request.clear_schedule
        )
        unknown = sorted(set(request.fault_ids) - set(cleared))
        if unknown:
            await _reject(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no pending or active fault has id {', '.join(unknown)}; "
                f"cleared {', '.join(cleared) or 'none'}",
            )
        return control_pb2.ClearFaultsResponse(cleared_fault_ids=cleared)

    async def ListFaults(  # noqa: N802
        self, request: control_pb2.ListFaultsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListFaultsResponse:
        self._runtime.advance()
        return self._fault_list()

    async def LoadFaultSchedule(  # noqa: N802
        self,
        request: control_pb2.LoadFaultScheduleRequest,
        context: grpc.aio.ServicerContext,
    ) -> control_pb2.ListFaultsResponse:
        try:
            self._runtime.load_fault_schedule(schedule_from_proto(request.schedule))
        except FaultError as error:
            await _reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return self._fault_list()

    async def Reset(  # noqa: N802
        self, request: control_pb2.ResetRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ResetResponse:
        try:
            aborted = self._runtime.reset()
        except FaultError as error:
            await _reject(context, grpc.StatusCode.FAILED_PRECONDITION, str(error))
        self._stats.reset()
        return control_pb2.ResetResponse(aborted_streams=aborted)

    async def GetMetrics(  # noqa: N802
        self, request: control_pb2.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.Metrics:
        return metrics_to_proto(collect_metrics(self._runtime, self._stats))

    def _fault_list(self) -> control_pb2.ListFaultsResponse:
        faults = [fault_to_proto(entry) for entry in self._runtime.faults.entries()]
        return control_pb2.ListFaultsResponse(faults=faults)

    def _config(self) -> control_pb2.EmulatorConfig:
        runtime = self._runtime
        policy = {value: key for key, value in _POLICIES.items()}
        return control_pb2.EmulatorConfig(
            hardware_name=runtime.profiles.hardware.name,
            model_name=runtime.profiles.model.name,
            deployment=deployment_to_struct(runtime.profiles.deployment),
            time_scale=runtime.clock.time_scale,
            admission=control_pb2.AdmissionLimits(
                max_active_requests=runtime.admission.max_active_requests,
                max_queued_prompt_tokens=runtime.admission.max_queued_prompt_tokens,
            ),
            failed_instance_policy=policy[runtime.failed_instance_policy],
            fault_schedule=control_pb2.FaultSchedule(
                faults=[fault_spec_to_proto(s) for s in runtime.fault_schedule]
            ),
        )
