"""Cost models: how long prefill, decode steps and KV transfers take.

Every formula works from the profiles (FLOPs, bytes, bandwidths) and one
fitted efficiency per phase: the fraction of peak compute that the kernels
reach. Nothing is fitted per row, so figures for other prompt lengths, batch
sizes and SLOs are predictions.

Units: times in seconds, sizes in bytes, rates in operations or bytes per
second, token counts and positions in tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from emulator.profiles import Precision, Profiles

__all__ = ["CostModel", "DecodeStepCost", "PrefillChunk"]

_GB = 1e9


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
    """Breakdown of one decode step on the busiest die, in seconds."""

    weights_read_s: float
    kv_read_s: float
    compute_s: float
    dispatch_combine_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return (
            self.weights_read_s
            + self.kv_read_s
            + self.compute_s
            + self.dispatch_combine_s
            + self.overhead_s
        )


class CostModel:
    """Latency formulas for one deployment of one model on one supernode."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        hardware = profiles.hardware
        deployment = profiles.deployment
        self._precision = deployment.precision
        self._prefill_dies = (
            deployment.prefill_npus_per_instance * hardware.dies_per_npu
        )
        self._decode_dies = deployment.decode_npus_per_instance * hardware.dies_per_npu
        self._hbm_bytes_per_s = hardware.hbm_bandwidth_gb_per_s * _GB
        self._ub_bytes_per_s = hardware.ub_bandwidth_gb_per_s * _GB
        self._rdma_bytes_per_s = hardware.rdma_gbit_per_s_per_die * _GB / 8
        self._matmul_flops = hardware.peak_flops_per_die(self._precision)
        # Attention scores and softmax stay in BF16 in INT8 deployments.
        self._attention_flops = hardware.peak_flops_per_die(Precision.BF16)

    @property
    def decode_dies_per_instance(self) -> int:
        return self._decode_dies

    @property
    def tokens_per_decode_step(self) -> int:
        """Tokens each sequence processes per step: one plus the MTP drafts."""
        return 1 + self.profiles.deployment.mtp_draft_tokens

    def prefill_s(self, chunks: Sequence[PrefillChunk]) -> float:
        """Time of one prefill iteration of an instance over `chunks`.

        time = (F_linear / P_matmul + F_attention / P_bf16) / (dies x u) + overhead

        F_linear = 2 x activated_params per token: every activated weight does
        one multiply-add. F_attention is causal attention over earlier
        positions: for query position i, QK^T and PV cost
        2 x heads x (qk_head_dim + v_head_dim) x i per layer, which summed over
        [start, end) gives heads x layers x (qk_head_dim + v_head_dim)
        x (end^2 - start^2). u is the fitted prefill efficiency.
        """
        if not chunks:
            return 0.0
        model = self.profiles.model
        deployment = self.profiles.deployment
        tokens = sum(chunk.tokens for chunk in chunks)
        linear_flops = 2.0 * model.activated_params * tokens

        head_dims = model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim
        squares = sum(
            float(chunk.end_token) ** 2 - float(chunk.start_token) ** 2
            for chunk in chunks
        )
        attention_flops = (
            model.num_attention_heads * model.num_layers * head_dims * squares
        )

        busy_s = linear_flops / self._matmul_flops + attention_flops / (
            self._attention_flops
        )
        compute_s = busy_s / (self._prefill_dies * deployment.prefill_efficiency)
        return compute_s + deployment.step_overhead_ms / 1e3

    def decode_step(self, context_tokens: Sequence[int]) -> DecodeStepCost:
        """Cost of one decode step for the sequences on the busiest die.

        `context_tokens` lists each sequence's current context length on that
        die. Dies run attention data-parallel, so the busiest die sets the
        step time. The step is the sum of:

        - weights_read: the die's resident weights (MLA of every layer, dense
          FFNs, its share of experts, embedding and LM head) read from HBM;
        - kv_read: sum(context) x KV bytes per token read from HBM;
        - compute: per processed token, 2 x weights of attention, dense FFN
          and LM head, plus absorbed-MLA attention
          2 x heads x (2 x kv_lora_rank + rope_dim) x context per layer, in
          BF16; and the die's expert work: tokens routed to its experts
          (all tokens x top_k / experts per die x imbalance) x 2 x expert
          weights per MoE layer; divided by peak x fitted decode efficiency;
        - dispatch_combine: per MoE layer, sending each token's hidden state
          to top_k experts (precision bytes) and receiving their outputs
          (BF16) over UB, plus two cross-node UB latencies;
        - overhead: fixed scheduling and launch time per step.
        """
        model = self.profiles.model
        deployment = self.profiles.deployment
        element_bytes = self._precision.bytes_per_element
        tokens = len(context_tokens) * self.tokens_per_decode_step
        context_sum = float(sum(context_tokens))

        weights_read_s = self._resident_weight_bytes() / self._hbm_bytes_per_s
        kv_bytes = context_sum * model.kv_bytes_per_token(self._precision)
        kv_read_s = kv_bytes / self._hbm_bytes_per_s

        dense_params = (
            model.attention_params_per_layer * model.num_layers
            + model.dense_ffn_params * model.num_dense_layers
            + model.vocab_size * model.hidden_size
        )
        attention_core_per_context = (
            2.0
            * model.num_attention_heads
            * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
            * model.num_layers
        )
        attention_flops = (
            2.0 * dense_params * tokens
            + attention_core_per_context * context_sum * self.tokens_per_decode_step
        )
        expert_tokens = self._expert_tokens_per_die(tokens)
        expert_flops = 2.0 * model.expert_params * model.num_moe_layers * expert_tokens
        compute_s = (
            attention_flops / self._attention_flops + expert_flops / self._matmul_flops
        ) / deployment.decode_efficiency

        hidden = model.hidden_size
        dispatch_bytes = tokens * model.experts_per_token * hidden * element_bytes
        combine_bytes = tokens * model.experts_per_token * hidden * 2
        hardware = self.profiles.hardware
        per_layer_s = (
            dispatch_bytes + combine_bytes
        ) / self._ub_bytes_per_s + 2 * hardware.ub_latency_inter_node_us / 1e6
        dispatch_combine_s = per_layer_s * model.num_moe_layers if tokens else 0.0

        return DecodeStepCost(
            weights_read_s=weights_read_s,
            kv_read_s=kv_read_s,
            compute_s=compute_s,
            dispatch_combine_s=dispatch_combine_s,
            overhead_s=deployment.step_overhead_ms / 1e3,
        )

    def decode_step_s(self, context_tokens: Sequence[int]) -> float:
        """Total time of one decode step; see `decode_step`."""
        return self.decode_step(context_tokens).total_s

    def kv_transfer_s(self, tokens: int) -> float:
        """Time to move `tokens` of KV cache from prefill to decode over RDMA.

        Every die of the prefill instance sends its share in parallel on its
        own RDMA port: bytes / (dies x port rate) + one cross-node latency.
        """
        if tokens <= 0:
            return 0.0
        kv_bytes = tokens * self.profiles.model.kv_bytes_per_token(self._precision)
        rate = self._prefill_dies * self._rdma_bytes_per_s
        latency_s = self.profiles.hardware.ub_latency_inter_node_us / 1e6
        return kv_bytes / rate + latency_s

    def max_batch_per_die(self) -> int:
        """Sequences one decode die may hold, from the per-NPU limit."""
        per_npu = self.profiles.deployment.max_batch_per_npu
        return max(1, per_npu // self.profiles.hardware.dies_per_npu)

    def _experts_per_die(self) -> int:
        """Experts whose weights one decode die holds (1 under EP320)."""
        model = self.profiles.model
        experts = model.num_routed_experts + model.num_shared_experts
        return max(1, math.ceil(experts / self._decode_dies))

    def _expert_tokens_per_die(self, tokens_per_die: int) -> float:
        model = self.profiles.model
        all_tokens = tokens_per_die * self._decode_dies
        per_expert = all_tokens * model.experts_per_token / model.num_routed_experts
        imbalance = self.profiles.deployment.expert_imbalance
        return per_expert * self._experts_per_die() * imbalance

    def _resident_weight_bytes(self) -> float:
        model = self.profiles.model
        params = (
            model.attention_params_per_layer * model.num_layers
            + model.dense_ffn_params * model.num_dense_layers
            + 2 * model.vocab_size * model.hidden_size
            + model.expert_params * model.num_moe_layers * self._experts_per_die()
        )
        return float(params * self._precision.bytes_per_element)
