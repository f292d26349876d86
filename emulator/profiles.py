"""Hardware, model and deployment profiles: frozen, typed, loaded from JSON.

A profile is data: a smaller supernode or another MoE model is a new JSON file
beside the defaults in `emulator/profiles/`, not new code. A deployment file
contains the `DeploymentConfig` fields to change. Every run saves the profiles
it used, serialised by `profiles_to_json`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from emulator.errors import ConfigError

__all__ = [
    "DeploymentConfig",
    "HardwareProfile",
    "ModelProfile",
    "PoolWritePolicy",
    "Precision",
    "Profiles",
    "RoutingPolicy",
    "default_profiles",
    "deployment_from_mapping",
    "load_deployment",
    "load_hardware",
    "load_model",
    "profiles_to_dict",
    "profiles_to_json",
]

_T = TypeVar("_T")
# Deployment fields whose default is null, meaning "derive from the profiles".
_NULLABLE_FIELDS = frozenset(
    {"tpot_slo_ms", "hbm_cache_gb_per_die", "pool_capacity_gb"}
)


class Precision(enum.Enum):
    """Numeric format of weights and activations in matrix multiplications."""

    BF16 = "bf16"
    INT8 = "int8"

    @property
    def bytes_per_element(self) -> int:
        return 2 if self is Precision.BF16 else 1


class RoutingPolicy(enum.Enum):
    """Policy by which the router picks a prefill instance for a new request."""

    # Least queued prefill work after subtracting the prompt tokens that the
    # instance's HBM already caches.
    CACHE_AWARE = "cache_aware"
    # Least queued prefill tokens, ignoring the cache.
    LEAST_LOADED = "least_loaded"
    # Each available instance in turn.
    ROUND_ROBIN = "round_robin"


class PoolWritePolicy(enum.Enum):
    """When prefix blocks reach the shared DRAM pool."""

    # Every block is copied to the pool when its request's prefill ends, so
    # all prefill instances can load it at once.
    WRITE_THROUGH = "write_through"
    # Blocks reach the pool only when a prefill instance's HBM evicts them.
    ON_EVICTION = "on_eviction"


@dataclass(frozen=True)
class HardwareProfile:
    """A supernode's dies, memory, compute and interconnect; figures per die."""

    name: str
    source: str
    num_npus: int
    dies_per_npu: int
    npus_per_node: int
    hbm_bytes_per_die: float
    hbm_bandwidth_gb_per_s: float
    bf16_tflops_per_die: float
    int8_tops_per_die: float
    ub_bandwidth_gb_per_s: float
    ub_latency_intra_node_us: float
    ub_latency_inter_node_us: float
    rdma_gbit_per_s_per_die: float
    # NOTE: estimate, not a published figure: CPU DRAM per node that the
    # disaggregated memory pool can use for cached KV blocks.
    dram_gb_per_node: float = 1024.0

    @property
    def num_dies(self) -> int:
        return self.num_npus * self.dies_per_npu

    @property
    def num_nodes(self) -> int:
        return math.ceil(self.num_npus / self.npus_per_node)

    def peak_flops_per_die(self, precision: Precision) -> float:
        """Peak dense operations per second of one die in `precision`."""
        if precision is Precision.INT8:
            return self.int8_tops_per_die * 1e12
        return self.bf16_tflops_per_die * 1e12


@dataclass(frozen=True)
class ModelProfile:
    """Architecture of a DeepSeek-style MoE model with MLA attention."""

    name: str
    source: str
    num_layers: int
    num_dense_layers: int
    hidden_size: int
    num_routed_experts: int
    num_shared_experts: int
    experts_per_token: int
    expert_width: int
    dense_ffn_width: int
    num_attention_heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    vocab_size: int
    total_params: float
    activated_params: float
    mtp_modules: int
    max_context_tokens: int

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers

    def kv_bytes_per_token(self, precision: Precision) -> int:
        """KV cache bytes of one token over all layers.

        MLA caches the compressed latent (kv_lora_rank) plus the decoupled
        rope key (qk_rope_head_dim) per layer: (512 + 64) x 61 x 2 = 70,272
        bytes in BF16 for DeepSeek-R1, half that in INT8.
        """
        per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        return per_layer * self.num_layers * precision.bytes_per_element

    @property
    def attention_params_per_layer(self) -> int:
        """Weights of one MLA block: query, key-value and output projections."""
        heads = self.num_attention_heads
        qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        q_down = self.hidden_size * self.q_lora_rank
        q_up = self.q_lora_rank * heads * qk_head_dim
        kv_down = self.hidden_size * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_up = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        output = heads * self.v_head_dim * self.hidden_size
        return q_down + q_up + kv_down + kv_up + output

    @property
    def expert_params(self) -> int:
        """Weights of one expert in one layer (gate, up and down projections)."""
        return 3 * self.hidden_size * self.expert_width

    @property
    def dense_ffn_params(self) -> int:
        """Weights of the feed-forward block of one dense layer."""
        return 3 * self.hidden_size * self.dense_ffn_width


@dataclass(frozen=True)
class DeploymentConfig:
    """How the model is laid out on the supernode and how it is scheduled.

    Defaults are the deployment of "Serving Large Language Models on Huawei
    CloudMatrix384" (arXiv 2506.12708): six prefill instances of 16 NPUs
    (EP32) and one decode instance of 160 NPUs (EP320, attention
    data-parallel on every die), INT8 weights and activations, MTP with one
    draft token accepted about 70% of the time, 96 sequences per NPU.

    `prefill_efficiency`, `expert_imbalance` and `decode_efficiency` are
    fitted by `emulator.calibration.fit_calibration` to the published rows;
    the other numbers are settings, sources or estimates named beside them.
    """

    prefill_instances: int = 6
    prefill_npus_per_instance: int = 16
    decode_instances: int = 1
    decode_npus_per_instance: int = 160
    precision: Precision = Precision.INT8
    # The MLA latent cache stays in BF16; the paper quantizes matrix
    # multiplications to INT8, not the KV cache.
    kv_cache_precision: Precision = Precision.BF16
    mtp_draft_tokens: int = 1
    mtp_acceptance: float = 0.7
    max_batch_per_npu: int = 96
    prefill_batch_tokens: int = 16384
    # Two micro-batches let one hide the other's EP dispatch and combine;
    # 1 turns the overlap off.
    micro_batches: int = 2
    # Tokens per KV cache block, the unit of decode memory accounting.
    kv_block_tokens: int = 128
    # NOTE: estimate, not a published figure: HBM per die kept for
    # activations and the dispatch and combine buffers.
    hbm_reserved_gb_per_die: float = 4.0
    # Load of the busiest expert die over the mean (1.0 = perfect balance).
    expert_imbalance: float = 1.37779
    # NOTE: estimate: scheduling, sampling and launch time per iteration.
    step_overhead_ms: float = 1.0
    # Fixed software time of each EP dispatch or combine operator beyond the
    # fabric latency; 0 models the UB fabric alone. Not fitted.
    ep_operator_overhead_us: float = 0.0
    # Fraction of peak compute reached, one per phase.
    prefill_efficiency: float = 0.42284
    decode_efficiency: float = 0.40138
    # When set, the decode scheduler admits a sequence only if the predicted
    # TPOT of the larger batch stays within it.
    tpot_slo_ms: float | None = None
    seed: int = 0
    # Prefix (context) caching: KV blocks of earlier prompts, kept in each
    # prefill instance's HBM and in the supernode's DRAM pool, are reused
    # instead of being prefilled again. See `emulator.cache`.
    prefix_caching: bool = True
    # Tokens per prefix cache block, the block size of the Mooncake traces.
    # Trace blocks of another size are mapped as
    # `emulator.cache.cache_block_keys` describes.
    cache_block_tokens: int = 512
    # HBM per prefill die for cached blocks; null means all the HBM left
    # after the weights and `hbm_reserved_gb_per_die`.
    hbm_cache_gb_per_die: float | None = None
    # DRAM pool for cached blocks over the whole supernode; null means the
    # hardware's `dram_gb_per_node` on every node.
    pool_capacity_gb: float | None = None
    pool_write_policy: PoolWritePolicy = PoolWritePolicy.WRITE_THROUGH
    # Effective rate at which one prefill NPU reads cached blocks from the
    # DRAM pool. Fitted by `emulator.calibration.fit_pool_read_rate` to the
    # published 2.28x prefill throughput at 90% prefix reuse. The UB line
    # rate (2 x 196 GB/s per NPU) is far higher.
    pool_read_gb_per_s_per_npu: float = 1.09367
    routing_policy: RoutingPolicy = RoutingPolicy.CACHE_AWARE

    def __post_init__(self) -> None:
        positive_ints = {
            "prefill_instances": self.prefill_instances,
            "prefill_npus_per_instance": self.prefill_npus_per_instance,
            "decode_instances": self.decode_instances,
            "decode_npus_per_instance": self.decode_npus_per_instance,
            "max_batch_per_npu": self.max_batch_per_npu,
            "prefill_batch_tokens": self.prefill_batch_tokens,
            "kv_block_tokens": self.kv_block_tokens,
            "cache_block_tokens": self.cache_block_tokens,
        }
        for name, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"deployment {name} must be at least 1, got {value}")
        if self.micro_batches not in (1, 2):
            raise ConfigError(
                f"deployment micro_batches must be 1 or 2, got {self.micro_batches}"
            )
        if self.mtp_draft_tokens < 0:
            raise ConfigError(
                f"deployment mtp_draft_tokens must be 0 or more, "
                f"got {self.mtp_draft_tokens}"
            )
        if not 0.0 <= self.mtp_acceptance <= 1.0:
            raise ConfigError(
                "deployment mtp_acceptance must be in [0, 1], "
                f"got {self.mtp_acceptance}"
            )
        for name in ("prefill_efficiency", "decode_efficiency"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"deployment {name} must be in (0, 1], got {value}")
        if self.expert_imbalance < 1.0:
            raise ConfigError(
                f"deployment expert_imbalance must be 1.0 or more, "
                f"got {self.expert_imbalance}"
            )
        for name in (
            "hbm_reserved_gb_per_die",
            "step_overhead_ms",
            "ep_operator_overhead_us",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"deployment {name} must be 0 or more, got {getattr(self, name)}"
                )
        if self.tpot_slo_ms is not None and not self.tpot_slo_ms > 0:
            raise ConfigError(
                f"deployment tpot_slo_ms must be positive or null, "
                f"got {self.tpot_slo_ms}"
            )
        for name in ("hbm_cache_gb_per_die", "pool_capacity_gb"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(
                    f"deployment {name} must be 0 or more, or null, got {value}"
                )
        if not self.pool_read_gb_per_s_per_npu > 0:
            raise ConfigError(
                "deployment pool_read_gb_per_s_per_npu must be positive, "
                f"got {self.pool_read_gb_per_s_per_npu}"
            )

    def npus_used(self) -> int:
        return (
            self.prefill_instances * self.prefill_npus_per_instance
            + self.decode_instances * self.decode_npus_per_instance
        )


@dataclass(frozen=True)
class Profiles:
    """The three inputs of the model, saved together with every run."""

    hardware: HardwareProfile
    model: ModelProfile
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)

    def __post_init__(self) -> None:
        available = self.hardware.num_npus
        if self.deployment.npus_used() > available:
            raise ConfigError(
                f"deployment uses {self.deployment.npus_used()} NPUs but "
                f"{self.hardware.name} has {available}"
            )


def load_hardware(path: str | Path | None = None) -> HardwareProfile:
    """Load a hardware profile; None loads the bundled CloudMatrix384."""
    return _load(HardwareProfile, path, "cloudmatrix384.json")


def load_model(path: str | Path | None = None) -> ModelProfile:
    """Load a model profile; None loads the bundled DeepSeek-R1."""
    return _load(ModelProfile, path, "deepseek_r1.json")


def load_deployment(path: str | Path | None = None) -> DeploymentConfig:
    """Load a deployment from JSON; None returns the paper's deployment.

    The file is one JSON object whose keys are `DeploymentConfig` fields;
    fields left out take their defaults. Raises ConfigError naming the file
    and field for unreadable JSON, unknown fields or values of the wrong type.
    """
    if path is None:
        return DeploymentConfig()
    where = str(path)
    fields = _read_json_object(Path(path), where)
    return deployment_from_mapping(fields, where)


def deployment_from_mapping(
    fields: Mapping[str, object], where: str = "deployment"
) -> DeploymentConfig:
    """Build a deployment from field values, as in a deployment file.

    Precisions and policies are given by name ("int8", "cache_aware"), the
    fields whose default is null may be null, and integral floats are
    accepted for integer fields. `where` names the source in error messages.
    """
    known = {f.name: f for f in dataclasses.fields(DeploymentConfig)}
    unknown = sorted(set(fields) - known.keys())
    if unknown:
        raise ConfigError(
            f"{where}: unknown deployment fields {unknown}; accepted: {sorted(known)}"
        )
    defaults = DeploymentConfig()
    values = {
        name: _coerce_field(name, value, getattr(defaults, name), where)
        for name, value in fields.items()
    }
    return DeploymentConfig(**values)  # type: ignore[arg-type]


def default_profiles(**deployment_overrides: Any) -> Profiles:
    """Return CloudMatrix384 with DeepSeek-R1 and the paper's deployment."""
    deployment = DeploymentConfig(**deployment_overrides)
    return Profiles(load_hardware(), load_model(), deployment)


def profiles_to_dict(profiles: Profiles) -> dict[str, Any]:
    """Return the profiles as plain JSON values, enums as their values."""

    def plain(value: object) -> object:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    result = plain(dataclasses.asdict(profiles))
    assert isinstance(result, dict)
    return result


def profiles_to_json(profiles: Profiles) -> str:
    """Serialise profiles to JSON, enums as their values."""
    return json.dumps(profiles_to_dict(profiles), sort_keys=True)


def _coerce_field(name: str, value: object, default: object, where: str) -> object:
    """Check one deployment value against the type of its default."""
    if name in _NULLABLE_FIELDS and value is None:
        return None
    if isinstance(default, enum.Enum):
        kind = type(default)
        names = sorted(member.value for member in kind)
        if isinstance(value, str) and value in names:
            return kind(value)
        raise ConfigError(f"{where}: {name} must be one of {names}, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int) and not isinstance(default, bool):
        if is_number and float(value).is_integer():  # type: ignore[arg-type]
            return int(value)  # type: ignore[call-overload]
        raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
    if is_number:
        return float(value)  # type: ignore[arg-type]
    raise ConfigError(f"{where}: {name} must be a number, got {value!r}")


def _read_json_object(path: Path, where: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {where}: {error.strerror}") from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{where} must hold a JSON object of fields")
    return fields


def _load(kind: type[_T], path: str | Path | None, bundled: str) -> _T:
    if path is None:
        text = resources.files("emulator").joinpath("profiles", bundled).read_text()
        where = f"bundled profile {bundled}"
    else:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise ConfigError(
                f"cannot read profile {where}: {error.strerror}"
            ) from None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"profile {where} is not valid JSON: {error}") from None

    all_fields = dataclasses.fields(kind)  # type: ignore[arg-type]
    expected = {f.name for f in all_fields}
    # Fields with a default were added after the first profiles were
    # written, so files without them still load.
    required = {f.name for f in all_fields if f.default is dataclasses.MISSING}
    missing = sorted(required - fields.keys())
    unknown = sorted(fields.keys() - expected)
    if missing or unknown:
        raise ConfigError(
            f"profile {where} does not match {kind.__name__}: "
            f"missing {missing or 'nothing'}, unknown {unknown or 'nothing'}"
        )
    return kind(**fields)
