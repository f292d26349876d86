from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "input_tokens", "output_tokens", "prefix_block_hashes", "block_tokens", "session_id", "prompt_token_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    input_tokens: int
    output_tokens: int
    prefix_block_hashes: _containers.RepeatedScalarFieldContainer[int]
    block_tokens: int
    session_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., prefix_block_hashes: _Optional[_Iterable[int]] = ..., block_tokens: _Optional[int] = ..., session_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("first_index", "token_ids", "emulated_ms")
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_MS_FIELD_NUMBER: _ClassVar[int]
    first_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    emulated_ms: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, first_index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., emulated_ms: _Optional[_Iterable[float]] = ...) -> None: ...

class GenerateSummary(_message.Message):
    __slots__ = ("request_id", "output_tokens", "emulated_ttft_ms", "emulated_tpot_ms", "emulated_e2e_ms", "emulated_queue_ms", "emulated_prefill_ms", "emulated_kv_transfer_ms", "cached_tokens", "prefill_instance", "decode_instance", "emulated_arrival_ms", "faults", "restarts", "cached_tokens_hbm", "cached_tokens_pool", "emulated_cache_load_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_E2E_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_KV_TRANSFER_MS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    DECODE_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    EMULATED_ARRIVAL_MS_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_HBM_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_POOL_FIELD_NUMBER: _ClassVar[int]
    EMULATED_CACHE_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    output_tokens: int
    emulated_ttft_ms: float
    emulated_tpot_ms: float
    emulated_e2e_ms: float
    emulated_queue_ms: float
    emulated_prefill_ms: float
    emulated_kv_transfer_ms: float
    cached_tokens: int
    prefill_instance: int
    decode_instance: int
    emulated_arrival_ms: float
    faults: _containers.RepeatedScalarFieldContainer[str]
    restarts: int
    cached_tokens_hbm: int
    cached_tokens_pool: int
    emulated_cache_load_ms: float
    def __init__(self, request_id: _Optional[str] = ..., output_tokens: _Optional[int] = ..., emulated_ttft_ms: _Optional[float] = ..., emulated_tpot_ms: _Optional[float] = ..., emulated_e2e_ms: _Optional[float] = ..., emulated_queue_ms: _Optional[float] = ..., emulated_prefill_ms: _Optional[float] = ..., emulated_kv_transfer_ms: _Optional[float] = ..., cached_tokens: _Optional[int] = ..., prefill_instance: _Optional[int] = ..., decode_instance: _Optional[int] = ..., emulated_arrival_ms: _Optional[float] = ..., faults: _Optional[_Iterable[str]] = ..., restarts: _Optional[int] = ..., cached_tokens_hbm: _Optional[int] = ..., cached_tokens_pool: _Optional[int] = ..., emulated_cache_load_ms: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("chunk", "summary")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    chunk: TokenChunk
    summary: GenerateSummary
    def __init__(self, chunk: _Optional[_Union[TokenChunk, _Mapping]] = ..., summary: _Optional[_Union[GenerateSummary, _Mapping]] = ...) -> None: ...
