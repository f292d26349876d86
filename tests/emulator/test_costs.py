"""Cost models against hand-worked figures and the published calibration rows."""

from __future__ import annotations

import dataclasses

import pytest

from emulator.calibration import (
    PUBLISHED_DECODE,
    PUBLISHED_PREFILL,
    bench_decode,
    bench_prefill,
    fit_efficiencies,
)
from emulator.costs import CostModel, PrefillChunk
from emulator.profiles import Precision, default_profiles


def test_kv_bytes_per_token_matches_mla_layout() -> None:
    model = default_profiles().model
    # (512 latent + 64 rope) x 61 layers x 2 bytes.
    assert model.kv_bytes_per_token(Precision.BF16) == 70_272
    assert model.kv_bytes_per_token(Precision.INT8) == 35_136


def test_attention_params_per_layer() -> None:
    model = default_profiles().model
    expected = (
        7168 * 1536  # query down-projection
        + 1536 * 128 * 192  # query up-projection
        + 7168 * 576  # key-value down-projection with rope key
        + 512 * 128 * 256  # key and value up-projections
        + 128 * 128 * 7168  # output projection
    )
    assert model.attention_params_per_layer == expected == 187_105_280


def test_prefill_time_by_hand() -> None:
    profiles = default_profiles(prefill_efficiency=0.5, step_overhead_ms=0.0)
    costs = CostModel(profiles)
    chunk = PrefillChunk(0, 1000)
    linear_flops = 2 * 37e9 * 1000
    attention_flops = 128 * 61 * 320 * 1000**2
    dies = 32
    expected_s = (linear_flops / 752e12 + attention_flops / 376e12) / (dies * 0.5)
    assert costs.prefill_s([chunk]) == pytest.approx(expected_s, rel=1e-12)


def test_chunked_prefill_costs_same_attention() -> None:
    profiles = default_profiles(step_overhead_ms=0.0)
    costs = CostModel(profiles)
    whole = costs.prefill_s([PrefillChunk(0, 8192)])
    halves = costs.prefill_s([PrefillChunk(0, 4096)]) + costs.prefill_s(
        [PrefillChunk(4096, 8192)]
    )
    assert halves == pytest.approx(whole, rel=1e-12)


def test_kv_transfer_by_hand() -> None:
    costs = CostModel(default_profiles())
    # 4096 tokens x 35,136 bytes over 32 dies x 25 GB/s, plus 1.9 us.
    expected_s = 4096 * 35_136 / (32 * 25e9) + 1.9e-6
    assert costs.kv_transfer_s(4096) == pytest.approx(expected_s, rel=1e-12)
    assert costs.kv_transfer_s(0) == 0.0


def test_decode_step_grows_with_batch_and_context() -> None:
    costs = CostModel(default_profiles())
    small = costs.decode_step_s([4096] * 8)
    larger_batch = costs.decode_step_s([4096] * 16)
    longer_context = costs.decode_step_s([8192] * 8)
    assert larger_batch > small
    assert longer_context > small


def test_stored_efficiencies_are_the_fit() -> None:
    profiles = default_profiles()
    prefill, decode = fit_efficiencies(profiles)
    assert profiles.deployment.prefill_efficiency == pytest.approx(prefill, abs=1e-5)
    assert profiles.deployment.decode_efficiency == pytest.approx(decode, abs=1e-5)


def test_bench_reproduces_published_rows() -> None:
    profiles = default_profiles()
    prefill = bench_prefill(profiles, 4096, 16384)
    assert prefill == pytest.approx(PUBLISHED_PREFILL.tokens_per_s_per_npu, rel=0.05)

    decode = bench_decode(profiles, 4096, 256, 50.0)
    assert decode is not None
    assert decode.batch_per_npu == PUBLISHED_DECODE.batch_per_npu
    assert decode.tpot_ms == pytest.approx(PUBLISHED_DECODE.tpot_ms, rel=0.05)
    assert decode.tokens_per_s_per_npu == pytest.approx(
        PUBLISHED_DECODE.tokens_per_s_per_npu, rel=0.05
    )


def test_tighter_slo_gives_smaller_batch() -> None:
    profiles = default_profiles()
    loose = bench_decode(profiles, 4096, 256, 50.0)
    tight = bench_decode(profiles, 4096, 256, 30.0)
    assert loose is not None and tight is not None
    assert tight.batch_per_npu < loose.batch_per_npu
    assert tight.tpot_ms <= 30.0


def test_bf16_deployment_is_slower() -> None:
    int8 = default_profiles()
    bf16 = dataclasses.replace(
        int8, deployment=dataclasses.replace(int8.deployment, precision=Precision.BF16)
    )
    assert CostModel(bf16).decode_step_s([4096] * 48) > CostModel(int8).decode_step_s(
        [4096] * 48
    )
