"""The prefix cache inside the supernode: hand-worked TTFTs, loads and settings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emulator.core import EventQueue
from emulator.costs import CostModel, PrefillChunk
from emulator.engine import InvalidPrefix, RequestRecord, RequestSpec, Supernode
from emulator.errors import ConfigError
from emulator.profiles import (
    PoolWritePolicy,
    Profiles,
    RoutingPolicy,
    default_profiles,
    deployment_from_mapping,
    load_hardware,
)
from emulator.simulate import SimulationConfig, simulate
from traces.schema import TRACE_SCHEMA, write_trace

KV_BYTES_PER_TOKEN = 70_272


class Finished:
    """Sink keeping the finished record."""

    def __init__(self) -> None:
        self.record: RequestRecord | None = None

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        pass

    def on_finish(self, record: RequestRecord) -> None:
        self.record = record


def run_one(
    supernode: Supernode, events: EventQueue, spec: RequestSpec
) -> RequestRecord:
    """Submit `spec` at the current time and run until it finishes."""
    sink = Finished()
    supernode.submit(spec, sink)
    events.run()
    assert sink.record is not None
    return sink.record


def ttft_s(record: RequestRecord) -> float:
    assert record.first_token_s is not None
    return record.first_token_s - record.arrival_s


def make(profiles: Profiles) -> tuple[Supernode, EventQueue]:
    events = EventQueue()
    return Supernode(profiles, events, np.random.default_rng(0)), events


FIRST = RequestSpec("first", 2048, 1, (1, 2, 3, 4), 512)
# Shares the first three 512-token blocks with FIRST.
SECOND = RequestSpec("second", 2048, 1, (1, 2, 3, 9), 512)


def test_hbm_hit_prefills_only_the_rest() -> None:
    profiles = default_profiles()
    supernode, events = make(profiles)
    costs = CostModel(profiles)
    first = run_one(supernode, events, FIRST)
    second = run_one(supernode, events, SECOND)

    assert first.cached_tokens == 0
    assert second.prefill_instance == first.prefill_instance
    assert second.cached_tokens == 1536
    assert second.cached_tokens_hbm == 1536
    assert second.cached_tokens_pool == 0
    assert second.cache_load_s == 0.0
    expected_s = costs.prefill_s([PrefillChunk(1536, 2048)]) + costs.kv_transfer_s(2048)
    assert ttft_s(second) == pytest.approx(expected_s, rel=1e-12)


def test_pool_hit_adds_load_time() -> None:
    profiles = default_profiles(hbm_cache_gb_per_die=0.0)
    supernode, events = make(profiles)
    costs = CostModel(profiles)
    run_one(supernode, events, FIRST)
    second = run_one(supernode, events, SECOND)

    assert second.cached_tokens_hbm == 0
    assert second.cached_tokens_pool == 1536
    # 1,536 tokens x 70,272 bytes over 16 NPUs at 1.09367 GB/s, plus 1.9 us.
    load_s = 1536 * KV_BYTES_PER_TOKEN / (16 * 1.09367e9) + 1.9e-6
    assert second.cache_load_s == pytest.approx(load_s, rel=1e-12)
    expected_s = (
        load_s + costs.prefill_s([PrefillChunk(1536, 2048)]) + costs.kv_transfer_s(2048)
    )
    assert ttft_s(second) == pytest.approx(expected_s, rel=1e-12)
    assert second.prefill_s == pytest.approx(
        load_s + costs.prefill_s([PrefillChunk(1536, 2048)]), rel=1e-12
    )


def test_last_prompt_token_is_always_prefilled() -> None:
    profiles = default_profiles()
    supernode, events = make(profiles)
    costs = CostModel(profiles)
    run_one(supernode, events, FIRST)
    again = run_one(supernode, events, RequestSpec("again", 2048, 1, (1, 2, 3, 4), 512))
    # Four blocks are cached, but the prompt's last block holds its last
    # token, so three are reused and 512 tokens prefilled.
    assert again.cached_tokens == 1536
    expected_s = costs.prefill_s([PrefillChunk(1536, 2048)]) + costs.kv_transfer_s(2048)
    assert ttft_s(again) == pytest.approx(expected_s, rel=1e-12)


def test_slow_pool_is_recomputed() -> None:
    profiles = default_profiles(
        hbm_cache_gb_per_die=0.0, pool_read_gb_per_s_per_npu=1e-4
    )
    supernode, events = make(profiles)
    costs = CostModel(profiles)
    run_one(supernode, events, FIRST)
    second = run_one(supernode, events, SECOND)

    assert not costs.pool_load_is_cheaper(0, 1536)
    assert second.cached_tokens == 0
    assert supernode.cache is not None
    stats = supernode.cache.stats()
    assert stats.pool_blocks_recomputed == 3
    assert stats.pool_hit_blocks == 0
    expected_s = costs.prefill_s([PrefillChunk(0, 2048)]) + costs.kv_transfer_s(2048)
    assert ttft_s(second) == pytest.approx(expected_s, rel=1e-12)


def test_caching_off_reuses_nothing() -> None:
    profiles = default_profiles(prefix_caching=False)
    supernode, events = make(profiles)
    run_one(supernode, events, FIRST)
    second = run_one(supernode, events, SECOND)
    assert supernode.cache is None
    assert second.cached_tokens == 0
    assert supernode.metrics().prefix_cache_hbm_blocks_used == ()


def test_metrics_and_stats_count_blocks() -> None:
    profiles = default_profiles()
    supernode, events = make(profiles)
    first = run_one(supernode, events, FIRST)
    run_one(supernode, events, SECOND)

    metrics = supernode.metrics()
    hbm = [0] * 6
    # FIRST's 4 blocks plus SECOND's own last block, all on one instance;
    # write-through copies the 5 distinct blocks to the pool.
    hbm[first.prefill_instance] = 5
    assert metrics.prefix_cache_hbm_blocks_used == tuple(hbm)
    assert metrics.prefix_cache_pool_blocks_used == 5
    assert supernode.cache is not None
    stats = supernode.cache.stats()
    assert stats.lookups == 2
    assert stats.blocks_looked_up == 8
    assert stats.hbm_hit_blocks == 3
    assert stats.block_hit_rate == pytest.approx(3 / 8)


@pytest.mark.parametrize("caching", [True, False])
def test_prefix_longer_than_prompt_is_rejected(caching: bool) -> None:
    supernode, _ = make(default_profiles(prefix_caching=caching))
    spec = RequestSpec("bad", 2048, 1, (1, 2, 3, 4, 5), 512)
    with pytest.raises(InvalidPrefix, match="input_tokens 2048 fills only 4"):
        supernode.submit(spec, Finished())
    assert supernode.active_requests == 0


# Costs of a load against a recompute.


def test_pool_load_by_hand() -> None:
    costs = CostModel(default_profiles(pool_read_gb_per_s_per_npu=2.0))
    assert costs.pool_load_s(0) == 0.0
    expected_s = 4096 * KV_BYTES_PER_TOKEN / (16 * 2.0e9) + 1.9e-6
    assert costs.pool_load_s(4096) == pytest.approx(expected_s, rel=1e-12)


def test_recompute_is_prefill_without_overhead() -> None:
    costs = CostModel(default_profiles())
    chunk_s = costs.prefill_s([PrefillChunk(1024, 4096)])
    assert costs.recompute_s(1024, 4096) == pytest.approx(chunk_s - 1e-3, rel=1e-12)
    assert costs.recompute_s(10, 10) == 0.0


def test_breakeven_rate_separates_load_from_recompute() -> None:
    profiles = default_profiles()
    rate = CostModel(profiles).pool_breakeven_gb_per_s_per_npu(0, 4096)
    faster = CostModel(default_profiles(pool_read_gb_per_s_per_npu=rate * 1.01))
    slower = CostModel(default_profiles(pool_read_gb_per_s_per_npu=rate * 0.99))
    assert faster.pool_load_is_cheaper(0, 4096)
    assert not slower.pool_load_is_cheaper(0, 4096)


def test_long_prefixes_favour_loading() -> None:
    # Recomputing a token costs more the later it sits, because attention
    # covers everything before it; loading costs the same per token.
    costs = CostModel(default_profiles())
    short = costs.pool_breakeven_gb_per_s_per_npu(0, 512)
    long = costs.pool_breakeven_gb_per_s_per_npu(0, 65536)
    late = costs.pool_breakeven_gb_per_s_per_npu(65536, 66048)
    assert short > long > late
    # The fitted read rate beats recomputing even the shortest prefix.
    assert costs.pool_load_is_cheaper(0, 512)


# Settings.


def test_cache_settings_parse() -> None:
    deployment = deployment_from_mapping(
        {
            "prefix_caching": False,
            "cache_block_tokens": 256,
            "hbm_cache_gb_per_die": 2,
            "pool_capacity_gb": None,
            "pool_write_policy": "on_eviction",
            "routing_policy": "round_robin",
        }
    )
    assert deployment.prefix_caching is False
    assert deployment.cache_block_tokens == 256
    assert deployment.hbm_cache_gb_per_die == 2.0
    assert deployment.pool_capacity_gb is None
    assert deployment.pool_write_policy is PoolWritePolicy.ON_EVICTION
    assert deployment.routing_policy is RoutingPolicy.ROUND_ROBIN


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prefix_caching": 1}, "prefix_caching must be true or false, got 1"),
        ({"cache_block_tokens": 0}, "cache_block_tokens must be at least 1, got 0"),
        ({"pool_capacity_gb": -1}, "pool_capacity_gb must be 0 or more, or null"),
        ({"hbm_cache_gb_per_die": "all"}, "hbm_cache_gb_per_die must be a number"),
        (
            {"pool_read_gb_per_s_per_npu": 0},
            "pool_read_gb_per_s_per_npu must be positive, got 0",
        ),
        (
            {"routing_policy": "nearest"},
            "routing_policy must be one of "
            "\\['cache_aware', 'least_loaded', 'round_robin'\\]",
        ),
        (
            {"pool_write_policy": None},
            "pool_write_policy must be one of \\['on_eviction', 'write_through'\\]",
        ),
    ],
)
def test_bad_cache_settings_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        deployment_from_mapping(fields, "test.json")


def test_hardware_file_without_dram_still_loads(tmp_path: Path) -> None:
    bundled = load_hardware()
    fields = {
        name: getattr(bundled, name)
        for name in bundled.__dataclass_fields__
        if name != "dram_gb_per_node"
    }
    path = tmp_path / "hardware.json"
    path.write_text(json.dumps(fields))
    hardware = load_hardware(path)
    assert hardware.dram_gb_per_node == 1024.0
    assert hardware.num_nodes == 48


# Simulation of a trace with hashes.


def test_simulate_names_row_of_bad_prefix(tmp_path: Path) -> None:
    trace = tmp_path / "trace.parquet"
    rows = [
        ("a", 0.0, 2048, 4, [1, 2, 3, 4]),
        ("b", 1.0, 1000, 4, [1, 2, 3]),
        ("c", 2000.0, 2048, 4, [1, 2, 3, 9]),
    ]
    table = pa.table(
        {
            "request_id": [row[0] for row in rows],
            "arrival_ms": [row[1] for row in rows],
            "input_tokens": [row[2] for row in rows],
            "output_tokens": [row[3] for row in rows],
            "prefix_block_hashes": [row[4] for row in rows],
            "block_tokens": [512 for _ in rows],
            "session_id": [None for _ in rows],
        },
        schema=TRACE_SCHEMA,
    )
    write_trace(table, trace)
    output = tmp_path / "results.parquet"
    summary = simulate(
        SimulationConfig(trace, output), default_profiles(), show_progress=False
    )

    results = {row["request_id"]: row for row in pq.read_table(output).to_pylist()}
    assert results["b"]["status"] == "INVALID_ARGUMENT"
    assert results["b"]["error"].startswith("trace row 2: prefix_block_hashes has 3")
    assert results["b"]["cached_tokens_hbm"] is None
    assert results["a"]["cached_tokens"] == 0
    assert results["a"]["cache_load_ms"] == 0.0
    assert results["c"]["cached_tokens"] == 1536
    assert results["c"]["cached_tokens_hbm"] == 1536
    assert results["c"]["cached_tokens_pool"] == 0
    assert summary.prompt_tokens == 4096
    assert summary.cached_token_share == pytest.approx(1536 / 4096)
