"""The supernode model in virtual time, with hand-worked timings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.core import EventQueue
from emulator.costs import CostModel, PrefillChunk
from emulator.engine import (
    NoInstanceAvailable,
    RequestRecord,
    RequestSpec,
    RequestTooLarge,
    Supernode,
)
from emulator.profiles import Profiles, default_profiles


class Recorder:
    """Sink keeping every token time and the finished record."""

    def __init__(self) -> None:
        self.times_s: list[float] = []
        self.indexes: list[int] = []
        self.finished: RequestRecord | None = None

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        self.indexes.extend(range(first_index, first_index + len(emulated_at_s)))
        self.times_s.extend(emulated_at_s)

    def on_finish(self, record: RequestRecord) -> None:
        self.finished = record


def make_supernode(profiles: Profiles) -> tuple[Supernode, EventQueue]:
    events = EventQueue()
    return Supernode(profiles, events, np.random.default_rng(0)), events


def test_single_request_ttft_is_prefill_plus_transfer() -> None:
    profiles = default_profiles()
    supernode, events = make_supernode(profiles)
    costs = CostModel(profiles)
    sink = Recorder()

    supernode.submit(RequestSpec("r0", input_tokens=4096, output_tokens=1), sink)
    events.run()

    expected_s = costs.prefill_s([PrefillChunk(0, 4096)]) + costs.kv_transfer_s(4096)
    assert sink.times_s == [pytest.approx(expected_s, rel=1e-12)]
    assert sink.finished is not None
    assert sink.finished.decode_instance == -1  # one token needs no decode


def test_decode_without_mtp_steps_once_per_token() -> None:
    profiles = default_profiles(mtp_draft_tokens=0)
    supernode, events = make_supernode(profiles)
    costs = CostModel(profiles)
    sink = Recorder()

    supernode.submit(RequestSpec("r0", input_tokens=1000, output_tokens=4), sink)
    events.run()

    first_s = costs.prefill_s([PrefillChunk(0, 1000)]) + costs.kv_transfer_s(1000)
    # Step k runs with context 1000 + k tokens (the first token is made by prefill).
    expected = [first_s]
    for context in (1001, 1002, 1003):
        expected.append(expected[-1] + costs.decode_step_s([context]))
    assert sink.times_s == pytest.approx(expected, rel=1e-12)
    assert sink.indexes == [0, 1, 2, 3]


def test_mtp_full_acceptance_doubles_tokens_per_step() -> None:
    profiles = default_profiles(mtp_draft_tokens=1, mtp_acceptance=1.0)
    supernode, events = make_supernode(profiles)
    sink = Recorder()

    supernode.submit(RequestSpec("r0", input_tokens=100, output_tokens=9), sink)
    events.run()

    # 1 token from prefill, then 4 steps of 2 tokens each.
    assert len(sink.times_s) == 9
    assert supernode.decode[0].steps == 4
    assert sink.times_s[1] == sink.times_s[2]


def test_long_prompt_is_chunked_across_iterations() -> None:
    profiles = default_profiles(prefill_batch_tokens=1000, prefill_instances=1)
    supernode, events = make_supernode(profiles)
    costs = CostModel(profiles)
    sink = Recorder()

    supernode.submit(RequestSpec("r0", input_tokens=2500, output_tokens=1), sink)
    events.run()

    chunks = [PrefillChunk(0, 1000), PrefillChunk(1000, 2000), PrefillChunk(2000, 2500)]
    prefill_s = sum(costs.prefill_s([chunk]) for chunk in chunks)
    assert sink.times_s[0] == pytest.approx(
        prefill_s + costs.kv_transfer_s(2500), rel=1e-12
    )


def test_requests_share_prefill_iteration_fifo() -> None:
    profiles = default_profiles(prefill_instances=1, prefill_batch_tokens=3000)
    supernode, events = make_supernode(profiles)
    costs = CostModel(profiles)
    sinks = [Recorder() for _ in range(3)]

    for index, sink in enumerate(sinks):
        supernode.submit(RequestSpec(f"r{index}", 2000, 1), sink)
    events.run()

    # The idle instance starts r0 alone. The next iteration takes r1 whole and
    # the first 1000 tokens of r2; the last one takes the rest of r2.
    first = costs.prefill_s([PrefillChunk(0, 2000)])
    second = costs.prefill_s([PrefillChunk(0, 2000), PrefillChunk(0, 1000)])
    third = costs.prefill_s([PrefillChunk(1000, 2000)])
    transfer = costs.kv_transfer_s(2000)
    assert sinks[0].times_s[0] == pytest.approx(first + transfer, rel=1e-12)
    assert sinks[1].times_s[0] == pytest.approx(first + second + transfer, rel=1e-9)
    assert sinks[2].times_s[0] == pytest.approx(
        first + second + third + transfer, rel=1e-9
    )


def test_router_picks_least_queued_prefill_instance() -> None:
    profiles = default_profiles(prefill_instances=2)
    supernode, _ = make_supernode(profiles)
    first = supernode.submit(RequestSpec("a", 8000, 1), Recorder())
    second = supernode.submit(RequestSpec("b", 100, 1), Recorder())
    third = supernode.submit(RequestSpec("c", 100, 1), Recorder())
    assert (first.prefill_instance, second.prefill_instance) == (0, 1)
    assert third.prefill_instance == 1


def test_cancel_stops_tokens_and_frees_batch() -> None:
    profiles = default_profiles(mtp_draft_tokens=0)
    supernode, events = make_supernode(profiles)
    sink = Recorder()
    record = supernode.submit(RequestSpec("r0", 1000, 100), sink)

    events.run_until(1.0)
    produced = len(sink.times_s)
    supernode.cancel(record)
    events.run()

    assert 0 < produced < 100
    assert len(sink.times_s) == produced
    assert supernode.active_requests == 0
    assert supernode.decode[0].batch_size == 0


class Ledger:
    """Observer checking every decode step against the instance's limits."""

    def __init__(self, kv_blocks_total: int) -> None:
        self.kv_blocks_total = kv_blocks_total
        self.ended_at_s: list[float] = []
        self.tokens = 0
        self.max_kv_blocks_used = 0

    def on_prefill_iteration(
        self, instance: int, ended_at_s: float, duration_s: float, tokens: int
    ) -> None:
        self.ended_at_s.append(ended_at_s)

    def on_decode_step(
        self,
        instance: int,
        ended_at_s: float,
        duration_s: float,
        batch_size: int,
        tokens: int,
        kv_blocks_used: int,
    ) -> None:
        self.ended_at_s.append(ended_at_s)
        self.tokens += tokens
        self.max_kv_blocks_used = max(self.max_kv_blocks_used, kv_blocks_used)


def small_decode(blocks_per_die: int, max_batch_per_npu: int) -> Profiles:
    """A 32-NPU decode instance whose dies hold `blocks_per_die` KV blocks.

    The HBM reserve is sized so that a die has room for only that many
    blocks, which makes KV memory bind with few requests.
    """
    overrides = {
        "decode_npus_per_instance": 32,
        "max_batch_per_npu": max_batch_per_npu,
        "kv_block_tokens": 512,
    }
    weights = CostModel(default_profiles(**overrides)).resident_weight_bytes_per_die()
    kv_bytes = (blocks_per_die + 0.5) * 512 * 70_272
    reserved_gb = (64e9 - weights - kv_bytes) / 1e9
    return default_profiles(**overrides, hbm_reserved_gb_per_die=reserved_gb)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=5),
            st.integers(min_value=1, max_value=1400),
            st.integers(min_value=1, max_value=60),
        ),
        min_size=1,
        max_size=120,
    ),
    st.booleans(),
)
def test_tokens_conserved_and_causal(
    requests: list[tuple[float, int, int]], stream_tokens: bool
) -> None:
    profiles = small_decode(blocks_per_die=3, max_batch_per_npu=1)
    events = EventQueue()
    supernode = Supernode(
        profiles, events, np.random.default_rng(0), stream_tokens=stream_tokens
    )
    ledger = Ledger(supernode.decode[0].kv_blocks_total)
    supernode.observers.append(ledger)
    sinks: list[tuple[float, int, Recorder]] = []

    for arrival_s, input_tokens, output_tokens in sorted(requests):
        events.run_until(arrival_s)
        sink = Recorder()
        supernode.submit(RequestSpec("r", input_tokens, output_tokens), sink)
        sinks.append((arrival_s, output_tokens, sink))
    events.run()

    for arrival_s, output_tokens, sink in sinks:
        record = sink.finished
        assert record is not None
        assert record.tokens_out == output_tokens
        assert record.first_token_s is not None and record.last_token_s is not None
        assert record.first_token_s > arrival_s
        assert record.last_token_s >= record.first_token_s
        if stream_tokens:
            assert sink.indexes == list(range(output_tokens))
            assert sink.times_s == sorted(sink.times_s)
    decode = supernode.decode[0]
    assert ledger.tokens == sum(out - 1 for _, out, _ in sinks)
    assert ledger.ended_at_s == sorted(ledger.ended_at_s)
    assert ledger.max_kv_blocks_used <= decode.kv_blocks_total
    assert supernode.active_requests == 0
    assert decode.batch_size == 0
    assert decode.kv_blocks_used == 0
    assert decode.peak_batch_size <= decode.capacity


def test_streaming_does_not_change_timings() -> None:
    def run(stream_tokens: bool) -> list[tuple[float | None, float | None, int]]:
        profiles = small_decode(blocks_per_die=3, max_batch_per_npu=2)
        events = EventQueue()
        supernode = Supernode(
            profiles, events, np.random.default_rng(3), stream_tokens=stream_tokens
        )
        sinks = []
        for index in range(40):
            events.run_until(index * 0.05)
            sink = Recorder()
            supernode.submit(RequestSpec(f"r{index}", 1000 + index, 50), sink)
            sinks.append(sink)
        events.run()
        records = [sink.finished for sink in sinks]
        return [
            (r.first_token_s, r.last_token_s, r.tokens_out)
            for r in records
            if r is not None
        ]

    assert run(True) == run(False)


def test_kv_memory_holds_back_admission() -> None:
    profiles = small_decode(blocks_per_die=3, max_batch_per_npu=8)
    supernode, events = make_supernode(profiles)
    decode = supernode.decode[0]
    assert (decode.kv_blocks_per_die, decode.kv_blocks_total) == (3, 192)
    # 1516 + 20 tokens reserve 3 blocks of 512, so 64 sequences fill the
    # instance although the batch limit allows 256.
    for index in range(100):
        supernode.submit(RequestSpec(f"r{index}", 1516, 20), Recorder())

    peak_waiting = 0
    while (next_at_s := events.next_at_s()) is not None:
        events.run_until(next_at_s)
        peak_waiting = max(peak_waiting, decode.waiting_requests)
        assert decode.kv_blocks_used <= decode.kv_blocks_total
    assert decode.peak_batch_size == 64
    assert peak_waiting >= 1
    assert supernode.active_requests == 0
    assert decode.kv_blocks_used == 0


def test_request_larger_than_a_die_is_rejected() -> None:
    profiles = small_decode(blocks_per_die=3, max_batch_per_npu=8)
    supernode, _ = make_supernode(profiles)
    with pytest.raises(RequestTooLarge, match="needs 4 KV blocks"):
        supernode.submit(RequestSpec("big", 1537, 20), Recorder())


def test_tpot_slo_caps_the_batch() -> None:
    slo_ms = 20.0
    profiles = default_profiles(tpot_slo_ms=slo_ms, max_batch_per_npu=512)
    supernode, events = make_supernode(profiles)
    for index in range(400):
        supernode.submit(RequestSpec(f"r{index}", 4096, 30), Recorder())
    events.run()

    decode = supernode.decode[0]
    costs = supernode.costs
    # The largest admitted batch still meets the SLO at its admission context,
    # within 5% for the context that grows during decode.
    peak = decode.peak_batch_size
    per_die = -(-peak // costs.decode_dies_per_instance)
    step_s = costs.decode_step_for(per_die, per_die * 4097.0).total_s
    assert 1 < peak < 400
    assert step_s / costs.expected_tokens_per_step <= slo_ms / 1e3 * 1.05


def test_slowdown_multiplies_prefill_time() -> None:
    profiles = default_profiles(prefill_instances=1)
    supernode, events = make_supernode(profiles)
    costs = CostModel(profiles)
    supernode.prefill[0].slowdown = 3.0
    sink = Recorder()

    supernode.submit(RequestSpec("r0", 4096, 1), sink)
    events.run()

    prefill_s = costs.prefill_s([PrefillChunk(0, 4096)])
    expected_s = 3.0 * prefill_s + costs.kv_transfer_s(4096)
    assert sink.times_s == [pytest.approx(expected_s, rel=1e-12)]


def test_router_skips_unavailable_instances() -> None:
    profiles = default_profiles(prefill_instances=2)
    supernode, _ = make_supernode(profiles)
    supernode.prefill[0].available = False
    record = supernode.submit(RequestSpec("a", 100, 1), Recorder())
    assert record.prefill_instance == 1

    supernode.prefill[1].available = False
    with pytest.raises(NoInstanceAvailable, match="no prefill instance"):
        supernode.submit(RequestSpec("b", 100, 1), Recorder())


def test_metrics_snapshot_counts_load() -> None:
    profiles = default_profiles(prefill_instances=1, mtp_draft_tokens=0)
    supernode, events = make_supernode(profiles)
    supernode.submit(RequestSpec("a", 1000, 3), Recorder())
    supernode.submit(RequestSpec("b", 2000, 3), Recorder())

    before = supernode.metrics()
    assert before.active_requests == 2
    assert before.prefill_queued_requests == (2,)
    assert before.prefill_queued_tokens == (3000,)

    events.run()
    after = supernode.metrics()
    assert after.active_requests == 0
    assert after.prefill_queued_tokens == (0,)
    assert after.decode_batch_sizes == (0,)
    # Prefill makes each request's first token; decode makes the other two.
    assert after.decode_tokens_generated == (4,)
