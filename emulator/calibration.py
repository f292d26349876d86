"""Published CloudMatrix384 figures, the fit to them, and the bench formulas.

Source of the figures: "Serving Large Language Models on Huawei
CloudMatrix384" (arXiv 2506.12708), DeepSeek-R1 in INT8 with the deployment
that `DeploymentConfig` defaults to. Two rows are fitted, one efficiency
each: prefill of 4K-token prompts at 5,655 tokens/s per NPU, and decode of
4K-token prompts with 256 output tokens at batch 96 per NPU and TPOT 49.4 ms.
Every other figure the model prints is a prediction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from emulator.costs import CostModel, PrefillChunk
from emulator.profiles import Profiles

__all__ = [
    "DecodeBench",
    "PUBLISHED_DECODE",
    "PUBLISHED_PREFILL",
    "bench_decode",
    "bench_prefill",
    "fit_efficiencies",
]


@dataclass(frozen=True)
class PublishedPrefill:
    input_tokens: int
    batch_tokens: int
    tokens_per_s_per_npu: float


@dataclass(frozen=True)
class PublishedDecode:
    input_tokens: int
    output_tokens: int
    tpot_slo_ms: float
    batch_per_npu: int
    tpot_ms: float
    tokens_per_s_per_npu: float


PUBLISHED_PREFILL = PublishedPrefill(
    input_tokens=4096, batch_tokens=16384, tokens_per_s_per_npu=5655.0
)
PUBLISHED_DECODE = PublishedDecode(
    input_tokens=4096,
    output_tokens=256,
    tpot_slo_ms=50.0,
    batch_per_npu=96,
    tpot_ms=49.4,
    tokens_per_s_per_npu=1943.0,
)


@dataclass(frozen=True)
class DecodeBench:
    """Largest batch meeting a TPOT SLO, with its TPOT and throughput."""

    batch_per_npu: int
    tpot_ms: float
    tokens_per_s_per_npu: float


def bench_prefill(profiles: Profiles, input_tokens: int, batch_tokens: int) -> float:
    """Prefill throughput in tokens/s per NPU for equal prompts in full batches.

    Each iteration holds `batch_tokens // input_tokens` prompts (at least one,
    chunked when a prompt is longer than the batch).
    """
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

    Sequences are at their mean context, input + output / 2. With MTP each
    step yields 1 + drafts x acceptance tokens on average.
    """
    costs = CostModel(profiles)
    deployment = profiles.deployment
    per_die = max(1, -(-batch_per_npu // profiles.hardware.dies_per_npu))
    mean_context = input_tokens + output_tokens // 2
    step_s = costs.decode_step_s([mean_context] * per_die)
    tokens_per_step = 1 + deployment.mtp_draft_tokens * deployment.mtp_acceptance
    return step_s * 1e3 / tokens_per_step


def bench_decode(
    profiles: Profiles, input_tokens: int, output_tokens: int, tpot_slo_ms: float
) -> DecodeBench | None:
    """Find the largest batch per NPU whose TPOT meets `tpot_slo_ms`.

    Batches are searched in whole sequences per die up to the deployment's
    `max_batch_per_npu`; returns None when even one sequence misses the SLO.
    """
    dies = profiles.hardware.dies_per_npu
    best: DecodeBench | None = None
    limit = profiles.deployment.max_batch_per_npu * 4
    for batch in range(dies, limit + 1, dies):
        tpot_ms = decode_tpot_ms(profiles, batch, input_tokens, output_tokens)
        if tpot_ms > tpot_slo_ms:
            break
        best = DecodeBench(batch, tpot_ms, batch / tpot_ms * 1e3)
    return best


def fit_efficiencies(profiles: Profiles) -> tuple[float, float]:
    """Return (prefill, decode) efficiencies that reproduce the published rows.

    Both cost models are linear in 1 / efficiency, so each fit is exact: run
    the model at efficiency 1, then solve time = fixed + compute / u for u.
    """
    unit = dataclasses.replace(
        profiles,
        deployment=dataclasses.replace(
            profiles.deployment, prefill_efficiency=1.0, decode_efficiency=1.0
        ),
    )
    costs = CostModel(unit)
    deployment = unit.deployment
    overhead_s = deployment.step_overhead_ms / 1e3

    row = PUBLISHED_PREFILL
    prompts = row.batch_tokens // row.input_tokens
    target_s = (
        row.batch_tokens
        / row.tokens_per_s_per_npu
        / deployment.prefill_npus_per_instance
    )
    compute_s = (
        costs.prefill_s([PrefillChunk(0, row.input_tokens)] * prompts) - overhead_s
    )
    prefill_efficiency = compute_s / (target_s - overhead_s)

    decode = PUBLISHED_DECODE
    per_die = decode.batch_per_npu // unit.hardware.dies_per_npu
    mean_context = decode.input_tokens + decode.output_tokens // 2
    step = costs.decode_step([mean_context] * per_die)
    tokens_per_step = 1 + deployment.mtp_draft_tokens * deployment.mtp_acceptance
    target_step_s = decode.tpot_ms / 1e3 * tokens_per_step
    fixed_s = step.total_s - step.compute_s
    decode_efficiency = step.compute_s / (target_step_s - fixed_s)
    return prefill_efficiency, decode_efficiency
