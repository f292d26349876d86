"""Published CloudMatrix384 figures, the fit to them, and the bench formulas.

Source of the figures: "Serving Large Language Models on Huawei
CloudMatrix384" (arXiv 2506.12708), DeepSeek-R1 in INT8 with the deployment
that `DeploymentConfig` defaults to. Three rows are fitted, one number each:

- prefill of 4K-token prompts at 6,688 tokens/s per NPU with perfect expert
  load balance fixes the prefill efficiency;
- the same at 5,655 tokens/s per NPU with the default load balancer fixes
  the expert imbalance;
- decode of 4K-token prompts with 256 output tokens at batch 96 per NPU and
  TPOT 49.4 ms fixes the decode efficiency.

Every other figure the model prints is a prediction; `PREDICTED_DECODE`
lists the published decode rows it is checked against.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from emulator.costs import CostModel, PrefillChunk
from emulator.errors import ConfigError
from emulator.profiles import Profiles

__all__ = [
    "PREDICTED_DECODE",
    "PUBLISHED_DECODE",
    "PUBLISHED_PREFILL",
    "PUBLISHED_PREFILL_BALANCED",
    "CalibrationFit",
    "DecodeBench",
    "DecodeLimit",
    "PublishedDecode",
    "PublishedPrefill",
    "bench_decode",
    "bench_prefill",
    "decode_tpot_ms",
    "fit_calibration",
]

# Upper end of the batch search of `bench_decode`, per NPU.
DEFAULT_SEARCH_LIMIT_PER_NPU = 1024


@dataclass(frozen=True)
class PublishedPrefill:
    """A published prefill throughput row."""

    input_tokens: int
    batch_tokens: int
    tokens_per_s_per_npu: float
    perfect_expert_balance: bool


@dataclass(frozen=True)
class PublishedDecode:
    """A published decode row: the largest batch meeting a TPOT SLO."""

    input_tokens: int
    output_tokens: int
    tpot_slo_ms: float
    batch_per_npu: int
    tpot_ms: float
    tokens_per_s_per_npu: float


PUBLISHED_PREFILL = PublishedPrefill(
    input_tokens=4096,
    batch_tokens=16384,
    tokens_per_s_per_npu=5655.0,
    perfect_expert_balance=False,
)
PUBLISHED_PREFILL_BALANCED = dataclasses.replace(
    PUBLISHED_PREFILL, tokens_per_s_per_npu=6688.0, perfect_expert_balance=True
)
PUBLISHED_DECODE = PublishedDecode(
    input_tokens=4096,
    output_tokens=256,
    tpot_slo_ms=50.0,
    batch_per_npu=96,
    tpot_ms=49.4,
    tokens_per_s_per_npu=1943.0,
)
# Not fitted. The 15 ms row is in the paper's abstract (538 tokens/s per
# NPU); the rest of the table comes from a summary of the paper's decode
# table (hustzxd/EfficientPaper, notes/2025/CloudMatrix384/note.md).
PREDICTED_DECODE = (
    PublishedDecode(1024, 1024, 50.0, 128, 46.8, 2733.0),
    PublishedDecode(2048, 256, 50.0, 112, 47.4, 2360.0),
    PublishedDecode(4096, 256, 30.0, 24, 24.6, 974.0),
    PublishedDecode(4096, 256, 15.0, 8, 14.9, 538.0),
)


@dataclass(frozen=True)
class CalibrationFit:
    """The three fitted numbers of `DeploymentConfig`."""

    prefill_efficiency: float
    expert_imbalance: float
    decode_efficiency: float


class DecodeLimit:
    """What stopped the batch search of `bench_decode`."""

    TPOT_SLO = "tpot_slo"
    KV_MEMORY = "kv_memory"
    SEARCH_LIMIT = "search_limit"


@dataclass(frozen=True)
class DecodeBench:
    """Largest batch meeting a TPOT SLO, with its TPOT and throughput.

    `limited_by` is one of the `DecodeLimit` names: the TPOT SLO, the KV
    memory of a die, or the upper end of the search.
    """

    batch_per_npu: int
    tpot_ms: float
    tokens_per_s_per_npu: float
    limited_by: str


def bench_prefill(profiles: Profiles, input_tokens: int, batch_tokens: int) -> float:
    """Prefill throughput in tokens/s per NPU for equal prompts in full batches.

    Each iteration holds `batch_tokens // input_tokens` prompts (at least one,
    chunked when a prompt is longer than the batch).
    """
    _check_positive("input_tokens", input_tokens)
    _check_positive("batch_tokens", batch_tokens)
    costs = CostModel(profiles)
    npus = profiles.deployment.prefill_npus_per_instance
    if input_tokens <= batch_tokens:
        prompts = batch_tokens // input_tokens
        iteration_s = costs.prefill_s([PrefillChunk(0, input_tokens)] * prompts)
        return prompts * input_tokens / iteration_s / npus
    total_s = 0.0
    for start in range(0, input_tokens, batch_tokens):
        end = min(start + batch_tokens, input_tokens)
        total_s += costs.prefill_s([PrefillChunk(start, end)])
    return input_tokens / total_s / npus


def decode_tpot_ms(
    profiles: Profiles, batch_per_npu: int, input_tokens: int, output_tokens: int
) -> float:
    """Mean TPOT at a steady batch: step time / expected tokens per step.

    The NPU's sequences are spread over its dies, and each is at its mean
    context, input + output / 2. With MTP each step yields
    1 + drafts x acceptance tokens on average.
    """
    costs = CostModel(profiles)
    per_die = batch_per_npu / profiles.hardware.dies_per_npu
    mean_context = input_tokens + output_tokens / 2
    step = costs.decode_step_for(per_die, per_die * mean_context)
    return step.total_s * 1e3 / costs.expected_tokens_per_step


def bench_decode(
    profiles: Profiles,
    input_tokens: int,
    output_tokens: int,
    tpot_slo_ms: float,
    search_limit_per_npu: int = DEFAULT_SEARCH_LIMIT_PER_NPU,
) -> DecodeBench | None:
    """Find the largest batch per NPU whose TPOT meets `tpot_slo_ms`.

    Batches are searched in whole sequences per die, from one per die up to
    `search_limit_per_npu` or until the KV cache of every sequence at its
    full length no longer fits in a die. TPOT grows with the batch, so the
    search stops at the first batch that misses the SLO. Returns None when
    even one sequence per die misses it.
    """
    _check_positive("input_tokens", input_tokens)
    _check_positive("output_tokens", output_tokens)
    if not tpot_slo_ms > 0:
        raise ConfigError(f"TPOT SLO must be positive, got {tpot_slo_ms} ms")
    dies = profiles.hardware.dies_per_npu
    capacity = CostModel(profiles).kv_capacity_tokens_per_die()
    max_per_die_by_memory = capacity // (input_tokens + output_tokens)
    best: DecodeBench | None = None
    limited_by = DecodeLimit.SEARCH_LIMIT
    for batch in range(dies, search_limit_per_npu + 1, dies):
        if batch // dies > max_per_die_by_memory:
            limited_by = DecodeLimit.KV_MEMORY
            break
        tpot_ms = decode_tpot_ms(profiles, batch, input_tokens, output_tokens)
        if tpot_ms > tpot_slo_ms:
            limited_by = DecodeLimit.TPOT_SLO
            break
        best = DecodeBench(batch, tpot_ms, batch / tpot_ms * 1e3, limited_by)
    if best is None:
        return None
    return dataclasses.replace(best, limited_by=limited_by)


def fit_calibration(profiles: Profiles) -> CalibrationFit:
    """Return the efficiencies and imbalance that reproduce the published rows.

    The prefill time is linear in 1 / efficiency and in the imbalance, so
    both prefill fits are exact: the balanced row gives the efficiency at
    imbalance 1, then the default row gives the imbalance. The decode step
    has roofline maxima, so its efficiency is found by bisection on the TPOT
    of the published batch.
    """
    prefill_efficiency, imbalance = _fit_prefill(profiles)
    fitted = _with_deployment(
        profiles,
        prefill_efficiency=prefill_efficiency,
        expert_imbalance=imbalance,
    )
    decode_efficiency = _fit_decode_efficiency(fitted)
    return CalibrationFit(prefill_efficiency, imbalance, decode_efficiency)


def _fit_prefill(profiles: Profiles) -> tuple[float, float]:
    row = PUBLISHED_PREFILL_BALANCED
    overhead_s = profiles.deployment.step_overhead_ms / 1e3
    prompts = row.batch_tokens // row.input_tokens
    chunks = [PrefillChunk(0, row.input_tokens)] * prompts
    npus = profiles.deployment.prefill_npus_per_instance

    def target_s(tokens_per_s_per_npu: float) -> float:
        return row.batch_tokens / tokens_per_s_per_npu / npus

    # Compute time at efficiency 1, with and without an extra 1.0 of
    # imbalance: compute(imbalance) = base + imbalance x per_imbalance.
    unit = _with_deployment(profiles, prefill_efficiency=1.0, expert_imbalance=1.0)
    doubled = _with_deployment(profiles, prefill_efficiency=1.0, expert_imbalance=2.0)
    balanced_s = CostModel(unit).prefill_s(chunks) - overhead_s
    per_imbalance_s = CostModel(doubled).prefill_s(chunks) - overhead_s - balanced_s
    base_s = balanced_s - per_imbalance_s

    efficiency = balanced_s / (target_s(row.tokens_per_s_per_npu) - overhead_s)
    default_s = (target_s(PUBLISHED_PREFILL.tokens_per_s_per_npu) - overhead_s) * (
        efficiency
    )
    imbalance = (default_s - base_s) / per_imbalance_s
    return efficiency, imbalance


def _fit_decode_efficiency(profiles: Profiles) -> float:
    row = PUBLISHED_DECODE
    low, high = 1e-3, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        trial = _with_deployment(profiles, decode_efficiency=middle)
        tpot_ms = decode_tpot_ms(
            trial, row.batch_per_npu, row.input_tokens, row.output_tokens
        )
        if tpot_ms > row.tpot_ms:
            low = middle
        else:
            high = middle
    if math.isclose(high, 1.0):
        raise ConfigError(
            "decode cannot reach the published TPOT even at full efficiency"
        )
    return high


def _with_deployment(profiles: Profiles, **changes: float) -> Profiles:
    deployment = dataclasses.replace(profiles.deployment, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(profiles, deployment=deployment)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
