"""Cost models against hand-worked figures and the published calibration rows."""

from __future__ import annotations

import pytest

from emulator.calibration import (
    PREDICTED_DECODE,
    PUBLISHED_DECODE,
    PUBLISHED_PREFILL,
    PUBLISHED_PREFILL_BALANCED,
    DecodeLimit,
    bench_decode,
    bench_prefill,
    decode_tpot_ms,
    fit_calibration,
)
from emulator.costs import CostModel, PrefillChunk
from emulator.profiles import Precision, default_profiles

HBM = 1.6e12
UB = 196e9
ATTENTION_PARAMS = 187_105_280
EXPERT_PARAMS = 3 * 7168 * 2048
DENSE_FFN_PARAMS = 3 * 7168 * 18432
LM_HEAD_PARAMS = 129_280 * 7168


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
    profiles = default_profiles(
        prefill_efficiency=0.5, step_overhead_ms=0.0, expert_imbalance=2.0
    )
    costs = CostModel(profiles)
    expert_params = 58 * (8 + 1) * EXPERT_PARAMS
    dense_flops = 2 * (37e9 - expert_params) * 1000
    expert_flops = 2 * expert_params * 1000 * 2.0
    attention_flops = 128 * 61 * 320 * 1000**2
    dies = 32
    expected_s = ((dense_flops + expert_flops) / 752e12 + attention_flops / 376e12) / (
        dies * 0.5
    )
    assert costs.prefill_s([PrefillChunk(0, 1000)]) == pytest.approx(
        expected_s, rel=1e-12
    )


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
    # 4096 tokens x 70,272 BF16 bytes over 32 dies x 25 GB/s, plus 1.9 us.
    expected_s = 4096 * 70_272 / (32 * 25e9) + 1.9e-6
    assert costs.kv_transfer_s(4096) == pytest.approx(expected_s, rel=1e-12)
    assert costs.kv_transfer_s(0) == 0.0


def test_decode_step_single_sequence_by_hand() -> None:
    profiles = default_profiles(
        decode_efficiency=0.5,
        step_overhead_ms=0.0,
        mtp_draft_tokens=0,
        micro_batches=1,
        expert_imbalance=1.0,
    )
    step = CostModel(profiles).decode_step_for(1, 1000.0)

    # One token is far below every ridge point, so the weights' HBM reads
    # set the time, except the attention core, which is compute-bound:
    # 2 x 128 heads x (2 x 512 + 64) FLOPs per cached token at 376 TFLOPS x 0.5.
    core_s = 2 * 128 * 1088 * 1000 / (376e12 * 0.5)
    attention_per_layer_s = ATTENTION_PARAMS / HBM + core_s
    assert step.attention_s == pytest.approx(61 * attention_per_layer_s, rel=1e-12)
    expected_ffn_s = (58 * EXPERT_PARAMS + 3 * DENSE_FFN_PARAMS) / HBM
    assert step.ffn_s == pytest.approx(expected_ffn_s, rel=1e-12)
    # 9 expert slots x 7168 elements x (1 INT8 byte out + 2 BF16 bytes back)
    # over UB, after two cross-node latencies of 1.9 us.
    dispatch_combine_s = 9 * 7168 * 3 / UB + 2 * 1.9e-6
    assert step.dispatch_combine_s == pytest.approx(58 * dispatch_combine_s, rel=1e-12)
    assert step.lm_head_s == pytest.approx(LM_HEAD_PARAMS / HBM, rel=1e-12)
    assert step.mtp_s == 0.0
    assert step.overlap_saved_s == 0.0


def test_decode_step_grows_with_batch_and_context() -> None:
    costs = CostModel(default_profiles())
    small = costs.decode_step_s([4096] * 8)
    larger_batch = costs.decode_step_s([4096] * 16)
    longer_context = costs.decode_step_s([8192] * 8)
    assert larger_batch > small
    assert longer_context > small


def test_micro_batches_only_ever_save_time() -> None:
    one = CostModel(default_profiles(micro_batches=1))
    two = CostModel(default_profiles(micro_batches=2))
    for sequences in (1, 8, 48, 96):
        serial = one.decode_step_for(sequences, sequences * 4224.0)
        overlapped = two.decode_step_for(sequences, sequences * 4224.0)
        assert overlapped.total_s <= serial.total_s
        assert overlapped.overlap_saved_s >= 0.0


def test_imbalance_slows_expert_work() -> None:
    balanced = CostModel(default_profiles(expert_imbalance=1.0))
    skewed = CostModel(default_profiles(expert_imbalance=2.0))
    balanced_step = balanced.decode_step_for(48, 48 * 4224.0)
    skewed_step = skewed.decode_step_for(48, 48 * 4224.0)
    assert skewed_step.ffn_s > balanced_step.ffn_s
    assert skewed_step.dispatch_combine_s > balanced_step.dispatch_combine_s
    assert skewed_step.attention_s == balanced_step.attention_s


def test_kv_capacity_from_hbm_left_after_weights() -> None:
    costs = CostModel(default_profiles())
    weights = (
        ATTENTION_PARAMS * 62  # 61 layers and the MTP module
        + DENSE_FFN_PARAMS * 3
        + 2 * LM_HEAD_PARAMS  # embedding and LM head
        + EXPERT_PARAMS * 59  # one expert per die in 58 layers and MTP
    )  # INT8: one byte each
    assert costs.resident_weight_bytes_per_die() == weights
    expected = int((64e9 - weights - 4e9) // 70_272)
    assert costs.kv_capacity_tokens_per_die() == expected


def test_stored_calibration_is_the_fit() -> None:
    profiles = default_profiles()
    fit = fit_calibration(profiles)
    deployment = profiles.deployment
    assert deployment.prefill_efficiency == pytest.approx(
        fit.prefill_efficiency, abs=1e-5
    )
    assert deployment.expert_imbalance == pytest.approx(fit.expert_imbalance, abs=1e-5)
    assert deployment.decode_efficiency == pytest.approx(
        fit.decode_efficiency, abs=1e-5
    )


def test_bench_reproduces_fitted_rows() -> None:
    profiles = default_profiles()
    prefill = bench_prefill(profiles, 4096, 16384)
    assert prefill == pytest.approx(PUBLISHED_PREFILL.tokens_per_s_per_npu, rel=1e-3)
    balanced = default_profiles(expert_imbalance=1.0)
    assert bench_prefill(balanced, 4096, 16384) == pytest.approx(
        PUBLISHED_PREFILL_BALANCED.tokens_per_s_per_npu, rel=1e-3
    )

    decode = bench_decode(profiles, 4096, 256, 50.0)
    assert decode is not None
    assert decode.batch_per_npu == PUBLISHED_DECODE.batch_per_npu
    assert decode.limited_by == DecodeLimit.TPOT_SLO
    assert decode.tpot_ms == pytest.approx(PUBLISHED_DECODE.tpot_ms, rel=1e-3)
    assert decode.tokens_per_s_per_npu == pytest.approx(
        PUBLISHED_DECODE.tokens_per_s_per_npu, rel=1e-3
    )


def test_tighter_slo_gives_smaller_batch() -> None:
    profiles = default_profiles()
    results = [bench_decode(profiles, 4096, 256, slo) for slo in (50.0, 30.0, 15.0)]
    batches = [result.batch_per_npu for result in results if result is not None]
    assert len(batches) == 3
    assert batches == sorted(batches, reverse=True)
    assert len(set(batches)) == 3


def test_predicted_rows_keep_published_order() -> None:
    # Predictions, not fits: only the direction is asserted here; the errors
    # are printed by benchmarks/calibration_table.py.
    profiles = default_profiles()
    by_length = [
        decode_tpot_ms(profiles, 96, i, o)
        for i, o in ((1024, 1024), (2048, 256), (4096, 256))
    ]
    assert by_length == sorted(by_length)
    assert len(PREDICTED_DECODE) == 4


def test_bench_decode_stops_at_kv_memory() -> None:
    # 64 GB - 17.24 GB of weights - 30 GB reserved leaves 16.76 GB, which
    # fits two sequences of 101,000 tokens x 70,272 bytes (14.19 GB) per die.
    profiles = default_profiles(hbm_reserved_gb_per_die=30.0)
    result = bench_decode(profiles, 100_000, 1000, 10_000.0)
    assert result is not None
    assert result.limited_by == DecodeLimit.KV_MEMORY
    assert result.batch_per_npu == 4


def test_bf16_deployment_is_slower() -> None:
    int8 = CostModel(default_profiles())
    bf16 = CostModel(default_profiles(precision=Precision.BF16))
    assert bf16.decode_step_s([4096] * 48) > int8.decode_step_s([4096] * 48)
