"""Cost models: how long prefill, decode steps and KV transfers take.

Every formula works from the profiles (FLOPs, bytes, bandwidths, latencies)
and three fitted numbers: the fraction of peak compute that the kernels reach
in prefill and in decode, and the expert load imbalance. A fourth fitted
number, the DRAM pool's effective read rate, prices prefix cache loads.
Nothing is fitted per row, so figures for other prompt lengths, batch sizes,
SLOs and reuse ratios are predictions.

Units: times in seconds, sizes in bytes, rates in operations or bytes per
second, token counts and positions in tokens.

An operation that reads `bytes` from HBM and does `flops` of work on a die
takes the roofline time

    roofline(bytes, flops, peak) = max(bytes / HBM bandwidth, flops / (peak x u))

where u is the phase's fitted efficiency: it is memory-bound when few tokens
share the weights it reads and compute-bound otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from emulator.profiles import Precision, Profiles

__all__ = ["CostModel", "DecodeStepCost", "PrefillChunk"]

_GB = 1e9
# Bytes of one hidden-state element in the combine message: expert outputs
# come back in BF16 even when dispatch sends INT8.
_COMBINE_ELEMENT_BYTES = 2


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt positions [start_token, end_token) of one request in one iteration."""

    start_token: int
    end_token: int

    @property
    def tokens(self) -> int:
        return self.end_token - self.start_token


@dataclass(frozen=True)
class DecodeStepCost:
    """Breakdown of one decode step on the busiest die, in seconds.

    The parts are summed over layers as if run one after the other.
    `overlap_saved_s` is the time that two micro-batches hide, because one
    micro-batch's dispatch and combine run during the other's compute.
    """

    attention_s: float
    ffn_s: float
    dispatch_combine_s: float
    lm_head_s: float
    mtp_s: float
    overhead_s: float
    overlap_saved_s: float

    @property
    def total_s(self) -> float:
        return (
            self.attention_s
            + self.ffn_s
            + self.dispatch_combine_s
            + self.lm_head_s
            + self.mtp_s
            + self.overhead_s
            - self.overlap_saved_s
        )


@dataclass(frozen=True)
class _LayerCost:
    """One decoder layer on the busiest die, in seconds."""

    attention_s: float
    ffn_s: float
    dispatch_combine_s: float

    @property
    def compute_s(self) -> float:
        return self.attention_s + self.ffn_s


class CostModel:
    """Latency formulas for one deployment of one model on one supernode."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        hardware = profiles.hardware
        model = profiles.model
        deployment = profiles.deployment
        self._weight_bytes = deployment.precision.bytes_per_element
        self._kv_bytes_per_token = model.kv_bytes_per_token(
            deployment.kv_cache_precision
        )
        self._prefill_dies = (
            deployment.prefill_npus_per_instance * hardware.dies_per_npu
        )
        self._decode_dies = deployment.decode_npus_per_instance * hardware.dies_per_npu
        self._hbm_bytes_per_s = hardware.hbm_bandwidth_gb_per_s * _GB
        self._ub_bytes_per_s = hardware.ub_bandwidth_gb_per_s * _GB
        self._rdma_bytes_per_s = hardware.rdma_gbit_per_s_per_die * _GB / 8
        self._matmul_flops = hardware.peak_flops_per_die(deployment.precision)
        # Attention scores, softmax and the LM head stay in BF16.
        self._bf16_flops = hardware.peak_flops_per_die(Precision.BF16)
        self._pool_bytes_per_s = (
            deployment.prefill_npus_per_instance
            * deployment.pool_read_gb_per_s_per_npu
            * _GB
        )
        self._pool_latency_s = hardware.ub_latency_inter_node_us / 1e6
        self._expert_slots = model.experts_per_token + model.num_shared_experts
        self._ep_latency_s = (
            self._fabric_latency_s(deployment.decode_npus_per_instance)
            + deployment.ep_operator_overhead_us / 1e6
        )
        # Per query token and cached token, absorbed MLA multiplies the
        # query with the latent and rope key (kv_lora_rank + rope dims) and
        # the attention weights with the latent (kv_lora_rank), per head.
        self._attention_core_flops = (
            2.0
            * model.num_attention_heads
            * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
        )

    @property
    def decode_dies_per_instance(self) -> int:
        return self._decode_dies

    @property
    def tokens_per_decode_step(self) -> int:
        """Tokens each sequence processes per step: one plus the MTP drafts."""
        return 1 + self.profiles.deployment.mtp_draft_tokens

    @property
    def expected_tokens_per_step(self) -> float:
        """Mean tokens a sequence gains per step: 1 + drafts x acceptance."""
        deployment = self.profiles.deployment
        return 1.0 + deployment.mtp_draft_tokens * deployment.mtp_acceptance

    def prefill_s(self, chunks: Sequence[PrefillChunk]) -> float:
        """Time of one prefill iteration of an instance over `chunks`.

        time = (F_dense / P_matmul + F_expert x imbalance / P_matmul
                + F_attention / P_bf16) / (dies x u) + overhead

        Every activated weight does one multiply-add per token, so
        F_dense + F_expert = 2 x activated_params per token, of which
        F_expert = 2 x MoE layers x (top_k + shared) x expert weights runs on
        the expert dies and waits for the busiest one. F_attention is causal
        attention over earlier positions: for query position i, QK^T and PV
        cost 2 x heads x (qk_head_dim + v_head_dim) x i per layer, which
        summed over [start, end) gives heads x layers x (qk_head_dim +
        v_head_dim) x (end^2 - start^2). u is the fitted prefill efficiency.
        """
        if not chunks:
            return 0.0
        # NOTE: no floor for reading the weights (about 24 ms per iteration
        # for a prefill die of the default deployment), so iterations of a
        # few hundred tokens, common after a prefix cache hit, are too fast.
        model = self.profiles.model
        deployment = self.profiles.deployment
        tokens = sum(chunk.tokens for chunk in chunks)
        expert_params = model.num_moe_layers * self._expert_slots * model.expert_params
        dense_flops = 2.0 * (model.activated_params - expert_params) * tokens
        expert_flops = 2.0 * expert_params * tokens * deployment.expert_imbalance

        head_dims = model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim
        squares = sum(
            float(chunk.end_token) ** 2 - float(chunk.start_token) ** 2
            for chunk in chunks
        )
        attention_flops = (
            model.num_attention_heads * model.num_layers * head_dims * squares
        )

        busy_s = (dense_flops + expert_flops) / self._matmul_flops
        busy_s += attention_flops / self._bf16_flops
        compute_s = busy_s / (self._prefill_dies * deployment.prefill_efficiency)
        return compute_s + deployment.step_overhead_ms / 1e3

    def decode_step(self, context_tokens: Sequence[int]) -> DecodeStepCost:
        """Cost of one decode step for these sequences on the busiest die.

        `context_tokens` lists each sequence's current context length on
        that die; see `decode_step_for`.
        """
        return self.decode_step_for(len(context_tokens), float(sum(context_tokens)))

    def decode_step_s(self, context_tokens: Sequence[int]) -> float:
        """Total time of one decode step; see `decode_step_for`."""
        return self.decode_step(context_tokens).total_s

    def decode_step_for(self, sequences: float, context_sum: float) -> DecodeStepCost:
        """Cost of one decode step with `sequences` on the busiest die.

        `context_sum` is their summed context length in tokens. Dies run
        attention data-parallel and each keeps its share of the experts, so
        every MoE layer waits for the busiest attention die and then for the
        busiest expert die. With n sequences and d MTP drafts a die processes
        T = n x (1 + d) tokens per step. Per layer:

        - attention: roofline of the MLA weights (2 x weights x T FLOPs) plus
          roofline of the cached latents (context_sum x KV bytes per token
          per layer read; 2 x heads x (2 x kv_lora_rank + rope_dim) FLOPs per
          query and cached token, in BF16);
        - FFN: in dense layers the roofline of the dense FFN; in MoE layers
          the roofline of the die's experts, which receive
          T x (top_k + shared) x imbalance tokens;
        - dispatch and combine over UB, two operators per MoE layer: each
          moves the busiest die's tokens, T x (top_k + shared) x imbalance
          hidden states (precision bytes out, BF16 back), at the UB bandwidth
          after one fabric latency (across nodes when the instance spans
          several) plus the deployment's `ep_operator_overhead_us`;
        - with two micro-batches each MoE layer takes
          min(serial, max(2 x compute(T/2), 2 x dispatch_combine(T/2))):
          compute, weight reads included, runs once per micro-batch on the
          shared cores, and only the communication of one micro-batch hides
          behind the other's compute.

        Once per step come the LM head (roofline in BF16), the MTP module
        (per draft, one MoE layer and the LM head on n tokens) and the fixed
        overhead.
        """
        model = self.profiles.model
        deployment = self.profiles.deployment
        if sequences <= 0:
            return DecodeStepCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        per_sequence = self.tokens_per_decode_step
        moe = self._moe_layer(sequences, context_sum, per_sequence)
        dense = self._dense_layer(sequences, context_sum, per_sequence)
        moe_layers = model.num_moe_layers
        overlapped_s = self._overlapped_moe_layer_s(
            sequences, context_sum, per_sequence
        )
        serial_s = moe.compute_s + moe.dispatch_combine_s
        saved_per_layer_s = max(0.0, serial_s - overlapped_s)

        tokens = sequences * per_sequence
        lm_head_s = self._lm_head_s(tokens)
        mtp_s = 0.0
        drafts = deployment.mtp_draft_tokens
        if drafts and model.mtp_modules:
            draft = self._moe_layer(sequences, context_sum, 1)
            mtp_layer_s = draft.compute_s + draft.dispatch_combine_s
            mtp_s = drafts * (mtp_layer_s + self._lm_head_s(sequences))

        return DecodeStepCost(
            attention_s=moe.attention_s * moe_layers
            + dense.attention_s * model.num_dense_layers,
            ffn_s=moe.ffn_s * moe_layers + dense.ffn_s * model.num_dense_layers,
            dispatch_combine_s=moe.dispatch_combine_s * moe_layers,
            lm_head_s=lm_head_s,
            mtp_s=mtp_s,
            overhead_s=deployment.step_overhead_ms / 1e3,
            overlap_saved_s=saved_per_layer_s * moe_layers,
        )

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes of one token over all layers, in the cache precision."""
        return self._kv_bytes_per_token

    def recompute_s(self, start_token: int, end_token: int) -> float:
        """Compute time that prefilling positions [start, end) adds to an iteration.

        This is `prefill_s` of that one chunk without the per-iteration
        overhead, so it is what a cache hit on those positions saves.
        """
        if end_token <= start_token:
            return 0.0
        overhead_s = self.profiles.deployment.step_overhead_ms / 1e3
        return self.prefill_s([PrefillChunk(start_token, end_token)]) - overhead_s

    def pool_load_s(self, tokens: int) -> float:
        """Time for a prefill instance to read `tokens` of cached KV from the pool.

        Every NPU of the instance reads its share from the DRAM pool over UB
        at `pool_read_gb_per_s_per_npu`: bytes / (NPUs x rate) plus one
        cross-node UB latency.
        """
        if tokens <= 0:
            return 0.0
        kv_bytes = tokens * self._kv_bytes_per_token
        return kv_bytes / self._pool_bytes_per_s + self._pool_latency_s

    def pool_load_is_cheaper(self, start_token: int, end_token: int) -> bool:
        """Whether loading positions [start, end) from the pool beats recomputing.

        Loading costs bytes over the pool's read rate. Recomputing costs the
        FLOPs of those positions, attention over everything before them
        included, so long prefixes favour loading even at low read rates.
        """
        tokens = end_token - start_token
        return self.pool_load_s(tokens) < self.recompute_s(start_token, end_token)

    def pool_breakeven_gb_per_s_per_npu(
        self, start_token: int, end_token: int
    ) -> float:
        """Pool read rate per NPU above which loading [start, end) beats recomputing.

        Returns infinity when even the UB latency alone exceeds the
        recompute time.
        """
        recompute_s = self.recompute_s(start_token, end_token)
        if recompute_s <= self._pool_latency_s:
            return math.inf
        kv_bytes = (end_token - start_token) * self._kv_bytes_per_token
        npus = self.profiles.deployment.prefill_npus_per_instance
        return kv_bytes / (recompute_s - self._pool_latency_s) / npus / _GB

    def kv_transfer_s(self, tokens: int) -> float:
        """Time to move `tokens` of KV cache from prefill to decode over RDMA.

        Every die of the prefill instance sends its share in parallel on its
        own RDMA port: bytes / (dies x port rate) + one cross-node latency.
        """
        if tokens <= 0:
            return 0.0
        kv_bytes = tokens * self._kv_bytes_per_token
        rate = self._prefill_dies * self._rdma_bytes_per_s
        latency_s = self.profiles.hardware.ub_latency_inter_node_us / 1e6
        return kv_bytes / rate + latency_s

    def max_batch_per_die(self) -> int:
        """Sequences one decode die may hold, from the per-NPU limit."""
        per_npu = self.profiles.deployment.max_batch_per_npu
        return max(1, per_npu // self.profiles.hardware.dies_per_npu)

    def resident_weight_bytes_per_die(self) -> float:
        """Weights one decode die keeps in HBM.

        Every die runs attention, the dense layers, the embedding and the LM
        head for its own sequences, so it keeps all of them, plus its share
        of the experts in every MoE layer and in the MTP module.
        """
        return self._resident_weight_bytes(self._experts_per_die())

    def prefill_resident_weight_bytes_per_die(self) -> float:
        """Weights one prefill die keeps in HBM, counted as for a decode die."""
        model = self.profiles.model
        experts = model.num_routed_experts + model.num_shared_experts
        return self._resident_weight_bytes(
            max(1, math.ceil(experts / self._prefill_dies))
        )

    def _resident_weight_bytes(self, experts_per_die: int) -> float:
        model = self.profiles.model
        layers = model.num_layers + model.mtp_modules
        moe_layers = model.num_moe_layers + model.mtp_modules
        params = (
            model.attention_params_per_layer * layers
            + model.dense_ffn_params * model.num_dense_layers
            + 2 * model.vocab_size * model.hidden_size
            + model.expert_params * moe_layers * experts_per_die
        )
        return float(params * self._weight_bytes)

    def kv_capacity_tokens_per_die(self) -> int:
        """Tokens of KV cache that fit in one decode die's HBM.

        HBM less the resident weights and the reserved buffers, divided by
        the KV bytes per token; 0 when the weights alone do not fit.
        """
        hardware = self.profiles.hardware
        reserved = self.profiles.deployment.hbm_reserved_gb_per_die * _GB
        free = hardware.hbm_bytes_per_die - self.resident_weight_bytes_per_die()
        return max(0, int((free - reserved) // self._kv_bytes_per_token))

    def _moe_layer(
        self, sequences: float, context_sum: float, per_sequence: int
    ) -> _LayerCost:
        model = self.profiles.model
        tokens = sequences * per_sequence
        expert_tokens = (
            tokens * self._expert_slots * self.profiles.deployment.expert_imbalance
        )
        expert_s = self._decode_roofline_s(
            self._experts_per_die() * model.expert_params * self._weight_bytes,
            2.0 * model.expert_params * expert_tokens,
            self._matmul_flops,
        )
        return _LayerCost(
            attention_s=self._attention_s(tokens, context_sum, per_sequence),
            ffn_s=expert_s,
            dispatch_combine_s=self._dispatch_combine_s(expert_tokens),
        )

    def _dense_layer(
        self, sequences: float, context_sum: float, per_sequence: int
    ) -> _LayerCost:
        model = self.profiles.model
        tokens = sequences * per_sequence
        ffn_s = self._decode_roofline_s(
            model.dense_ffn_params * self._weight_bytes,
            2.0 * model.dense_ffn_params * tokens,
            self._matmul_flops,
        )
        return _LayerCost(
            attention_s=self._attention_s(tokens, context_sum, per_sequence),
            ffn_s=ffn_s,
            dispatch_combine_s=0.0,
        )

    def _overlapped_moe_layer_s(
        self, sequences: float, context_sum: float, per_sequence: int
    ) -> float:
        if self.profiles.deployment.micro_batches < 2:
            return math.inf
        half = self._moe_layer(sequences / 2, context_sum / 2, per_sequence)
        return max(2 * half.compute_s, 2 * half.dispatch_combine_s)

    def _attention_s(
        self, tokens: float, context_sum: float, per_sequence: int
    ) -> float:
        model = self.profiles.model
        weights = model.attention_params_per_layer
        projections_s = self._decode_roofline_s(
            weights * self._weight_bytes, 2.0 * weights * tokens, self._matmul_flops
        )
        kv_bytes = context_sum * self._kv_bytes_per_token / model.num_layers
        core_flops = self._attention_core_flops * context_sum * per_sequence
        core_s = self._decode_roofline_s(kv_bytes, core_flops, self._bf16_flops)
        return projections_s + core_s

    def _lm_head_s(self, tokens: float) -> float:
        model = self.profiles.model
        params = model.vocab_size * model.hidden_size
        return self._decode_roofline_s(
            params * self._weight_bytes, 2.0 * params * tokens, self._bf16_flops
        )

    def _dispatch_combine_s(self, expert_tokens: float) -> float:
        if self._decode_dies < 2 or expert_tokens <= 0:
            return 0.0
        hidden = self.profiles.model.hidden_size
        dispatch_bytes = expert_tokens * hidden * self._weight_bytes
        combine_bytes = expert_tokens * hidden * _COMBINE_ELEMENT_BYTES
        moved_s = (dispatch_bytes + combine_bytes) / self._ub_bytes_per_s
        return 2 * self._ep_latency_s + moved_s

    def _decode_roofline_s(
        self, read_bytes: float, flops: float, peak_flops: float
    ) -> float:
        efficiency = self.profiles.deployment.decode_efficiency
        return max(
            read_bytes / self._hbm_bytes_per_s, flops / (peak_flops * efficiency)
        )

    def _fabric_latency_s(self, npus: int) -> float:
        hardware = self.profiles.hardware
        if npus > hardware.npus_per_node:
            return hardware.ub_latency_inter_node_us / 1e6
        return hardware.ub_latency_intra_node_us / 1e6

    def _experts_per_die(self) -> int:
        """Experts whose weights one decode die keeps in HBM (1 under EP320)."""
        model = self.profiles.model
        experts = model.num_routed_experts + model.num_shared_experts
        return max(1, math.ceil(experts / self._decode_dies))
