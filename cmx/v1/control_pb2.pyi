from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailedInstancePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILED_INSTANCE_POLICY_UNSPECIFIED: _ClassVar[FailedInstancePolicy]
    FAILED_INSTANCE_POLICY_REROUTE: _ClassVar[FailedInstancePolicy]
    FAILED_INSTANCE_POLICY_FAIL: _ClassVar[FailedInstancePolicy]

class Pool(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOL_UNSPECIFIED: _ClassVar[Pool]
    POOL_PREFILL: _ClassVar[Pool]
    POOL_DECODE: _ClassVar[Pool]

class FaultState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAULT_STATE_UNSPECIFIED: _ClassVar[FaultState]
    FAULT_STATE_PENDING: _ClassVar[FaultState]
    FAULT_STATE_ACTIVE: _ClassVar[FaultState]
FAILED_INSTANCE_POLICY_UNSPECIFIED: FailedInstancePolicy
FAILED_INSTANCE_POLICY_REROUTE: FailedInstancePolicy
FAILED_INSTANCE_POLICY_FAIL: FailedInstancePolicy
POOL_UNSPECIFIED: Pool
POOL_PREFILL: Pool
POOL_DECODE: Pool
FAULT_STATE_UNSPECIFIED: FaultState
FAULT_STATE_PENDING: FaultState
FAULT_STATE_ACTIVE: FaultState

class AdmissionLimits(_message.Message):
    __slots__ = ("max_active_requests", "max_queued_prompt_tokens")
    MAX_ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_active_requests: int
    max_queued_prompt_tokens: int
    def __init__(self, max_active_requests: _Optional[int] = ..., max_queued_prompt_tokens: _Optional[int] = ...) -> None: ...

class EmulatorConfig(_message.Message):
    __slots__ = ("hardware_name", "model_name", "deployment", "time_scale", "admission", "failed_instance_policy", "fault_schedule")
    HARDWARE_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    FAILED_INSTANCE_POLICY_FIELD_NUMBER: _ClassVar[int]
    FAULT_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    hardware_name: str
    model_name: str
    deployment: _struct_pb2.Struct
    time_scale: float
    admission: AdmissionLimits
    failed_instance_policy: FailedInstancePolicy
    fault_schedule: FaultSchedule
    def __init__(self, hardware_name: _Optional[str] = ..., model_name: _Optional[str] = ..., deployment: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., time_scale: _Optional[float] = ..., admission: _Optional[_Union[AdmissionLimits, _Mapping]] = ..., failed_instance_policy: _Optional[_Union[FailedInstancePolicy, str]] = ..., fault_schedule: _Optional[_Union[FaultSchedule, _Mapping]] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplaceConfigRequest(_message.Message):
    __slots__ = ("deployment", "admission", "failed_instance_policy")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_FIELD_NUMBER: _ClassVar[int]
    FAILED_INSTANCE_POLICY_FIELD_NUMBER: _ClassVar[int]
    deployment: _struct_pb2.Struct
    admission: AdmissionLimits
    failed_instance_policy: FailedInstancePolicy
    def __init__(self, deployment: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., admission: _Optional[_Union[AdmissionLimits, _Mapping]] = ..., failed_instance_policy: _Optional[_Union[FailedInstancePolicy, str]] = ...) -> None: ...

class SetTimeScaleRequest(_message.Message):
    __slots__ = ("time_scale",)
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    time_scale: float
    def __init__(self, time_scale: _Optional[float] = ...) -> None: ...

class SlowInstance(_message.Message):
    __slots__ = ("pool", "instance", "slowdown", "die")
    POOL_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SLOWDOWN_FIELD_NUMBER: _ClassVar[int]
    DIE_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    instance: int
    slowdown: float
    die: int
    def __init__(self, pool: _Optional[_Union[Pool, str]] = ..., instance: _Optional[int] = ..., slowdown: _Optional[float] = ..., die: _Optional[int] = ...) -> None: ...

class FailedInstance(_message.Message):
    __slots__ = ("pool", "instance")
    POOL_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    instance: int
    def __init__(self, pool: _Optional[_Union[Pool, str]] = ..., instance: _Optional[int] = ...) -> None: ...

class NetworkLatency(_message.Message):
    __slots__ = ("latency_ms",)
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    latency_ms: float
    def __init__(self, latency_ms: _Optional[float] = ...) -> None: ...

class DropStreams(_message.Message):
    __slots__ = ("probability", "after_tokens")
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    AFTER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    probability: float
    after_tokens: int
    def __init__(self, probability: _Optional[float] = ..., after_tokens: _Optional[int] = ...) -> None: ...

class FaultSpec(_message.Message):
    __slots__ = ("fault_id", "start_after_s", "duration_s", "slow_instance", "failed_instance", "network_latency", "drop_streams")
    FAULT_ID_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SLOW_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    FAILED_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_LATENCY_FIELD_NUMBER: _ClassVar[int]
    DROP_STREAMS_FIELD_NUMBER: _ClassVar[int]
    fault_id: str
    start_after_s: float
    duration_s: float
    slow_instance: SlowInstance
    failed_instance: FailedInstance
    network_latency: NetworkLatency
    drop_streams: DropStreams
    def __init__(self, fault_id: _Optional[str] = ..., start_after_s: _Optional[float] = ..., duration_s: _Optional[float] = ..., slow_instance: _Optional[_Union[SlowInstance, _Mapping]] = ..., failed_instance: _Optional[_Union[FailedInstance, _Mapping]] = ..., network_latency: _Optional[_Union[NetworkLatency, _Mapping]] = ..., drop_streams: _Optional[_Union[DropStreams, _Mapping]] = ...) -> None: ...

class FaultSchedule(_message.Message):
    __slots__ = ("faults",)
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[FaultSpec]
    def __init__(self, faults: _Optional[_Iterable[_Union[FaultSpec, _Mapping]]] = ...) -> None: ...

class Fault(_message.Message):
    __slots__ = ("spec", "state", "starts_at_s", "ends_at_s")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_S_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_S_FIELD_NUMBER: _ClassVar[int]
    spec: FaultSpec
    state: FaultState
    starts_at_s: float
    ends_at_s: float
    def __init__(self, spec: _Optional[_Union[FaultSpec, _Mapping]] = ..., state: _Optional[_Union[FaultState, str]] = ..., starts_at_s: _Optional[float] = ..., ends_at_s: _Optional[float] = ...) -> None: ...

class InjectFaultRequest(_message.Message):
    __slots__ = ("fault",)
    FAULT_FIELD_NUMBER: _ClassVar[int]
    fault: FaultSpec
    def __init__(self, fault: _Optional[_Union[FaultSpec, _Mapping]] = ...) -> None: ...

class ClearFaultsRequest(_message.Message):
    __slots__ = ("fault_ids", "clear_schedule")
    FAULT_IDS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    fault_ids: _containers.RepeatedScalarFieldContainer[str]
    clear_schedule: bool
    def __init__(self, fault_ids: _Optional[_Iterable[str]] = ..., clear_schedule: _Optional[bool] = ...) -> None: ...

class ClearFaultsResponse(_message.Message):
    __slots__ = ("cleared_fault_ids",)
    CLEARED_FAULT_IDS_FIELD_NUMBER: _ClassVar[int]
    cleared_fault_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cleared_fault_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListFaultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFaultsResponse(_message.Message):
    __slots__ = ("faults",)
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[Fault]
    def __init__(self, faults: _Optional[_Iterable[_Union[Fault, _Mapping]]] = ...) -> None: ...

class LoadFaultScheduleRequest(_message.Message):
    __slots__ = ("schedule",)
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    schedule: FaultSchedule
    def __init__(self, schedule: _Optional[_Union[FaultSchedule, _Mapping]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("aborted_streams",)
    ABORTED_STREAMS_FIELD_NUMBER: _ClassVar[int]
    aborted_streams: int
    def __init__(self, aborted_streams: _Optional[int] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceMetrics(_message.Message):
    __slots__ = ("pool", "instance", "queued_requests", "queued_tokens", "batch_size", "tokens_generated", "kv_cache_tokens", "slowdown", "available")
    POOL_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SLOWDOWN_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    pool: Pool
    instance: int
    queued_requests: int
    queued_tokens: int
    batch_size: int
    tokens_generated: int
    kv_cache_tokens: int
    slowdown: float
    available: bool
    def __init__(self, pool: _Optional[_Union[Pool, str]] = ..., instance: _Optional[int] = ..., queued_requests: _Optional[int] = ..., queued_tokens: _Optional[int] = ..., batch_size: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., kv_cache_tokens: _Optional[int] = ..., slowdown: _Optional[float] = ..., available: _Optional[bool] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("emulated_now_s", "time_scale", "active_requests", "open_streams", "instances", "kv_cache_tokens", "kv_cache_bytes", "prefix_cache_hit_rate", "output_tokens_per_s", "emulated_output_tokens_per_s", "requests_by_status", "prompt_tokens_total", "cached_prompt_tokens_total", "output_tokens_total", "active_faults")
    class RequestsByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EMULATED_NOW_S_FIELD_NUMBER: _ClassVar[int]
    TIME_SCALE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    EMULATED_OUTPUT_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    emulated_now_s: float
    time_scale: float
    active_requests: int
    open_streams: int
    instances: _containers.RepeatedCompositeFieldContainer[InstanceMetrics]
    kv_cache_tokens: int
    kv_cache_bytes: int
    prefix_cache_hit_rate: float
    output_tokens_per_s: float
    emulated_output_tokens_per_s: float
    requests_by_status: _containers.ScalarMap[str, int]
    prompt_tokens_total: int
    cached_prompt_tokens_total: int
    output_tokens_total: int
    active_faults: int
    def __init__(self, emulated_now_s: _Optional[float] = ..., time_scale: _Optional[float] = ..., active_requests: _Optional[int] = ..., open_streams: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[InstanceMetrics, _Mapping]]] = ..., kv_cache_tokens: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., prefix_cache_hit_rate: _Optional[float] = ..., output_tokens_per_s: _Optional[float] = ..., emulated_output_tokens_per_s: _Optional[float] = ..., requests_by_status: _Optional[_Mapping[str, int]] = ..., prompt_tokens_total: _Optional[int] = ..., cached_prompt_tokens_total: _Optional[int] = ..., output_tokens_total: _Optional[int] = ..., active_faults: _Optional[int] = ...) -> None: ...
