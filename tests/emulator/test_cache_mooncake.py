"""Simulated prefix hits on the Mooncake trace against an independent count.

With an infinite cache, a request could reuse every leading block whose
whole prefix appeared in an earlier request. The test counts that from the
raw JSON lines with a trie of (parent, hash) pairs, which shares no code
with the emulator, and checks that the simulated hits never exceed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cmx.cli import main
from emulator.profiles import default_profiles
from emulator.simulate import SimulationConfig, SimulationSummary, simulate

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOONCAKE = DATA / "mooncake_conversation.jsonl"
BLOCK_TOKENS = 512
# Rows for the default suite; the slow test takes the whole trace.
FIRST_ROWS = 3000

pytestmark = pytest.mark.skipif(
    not MOONCAKE.is_file(), reason=f"Mooncake trace not found at {MOONCAKE}"
)


@dataclass(frozen=True)
class IdealReuse:
    """Reuse with an infinite cache that every request can read."""

    prompt_tokens: int
    cached_tokens: int
    hit_blocks: int
    full_blocks: int


def ideal_reuse(limit: int | None) -> IdealReuse:
    trie: dict[tuple[int, int], int] = {}
    prompt_tokens = cached_tokens = hit_blocks = full_blocks = 0
    with MOONCAKE.open() as lines:
        for row, line in enumerate(lines):
            if limit is not None and row >= limit:
                break
            request = json.loads(line)
            input_tokens = request["input_length"]
            node, leading, still_hit = 0, 0, True
            for block_hash in request["hash_ids"]:
                edge = (node, block_hash)
                if edge in trie and still_hit:
                    leading += 1
                else:
                    still_hit = False
                node = trie.setdefault(edge, len(trie) + 1)
            prompt_tokens += input_tokens
            cached_tokens += min(leading * BLOCK_TOKENS, input_tokens)
            hit_blocks += leading
            covered = min(len(request["hash_ids"]) * BLOCK_TOKENS, input_tokens)
            full_blocks += covered // BLOCK_TOKENS
    return IdealReuse(prompt_tokens, cached_tokens, hit_blocks, full_blocks)


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mooncake") / "mooncake.parquet"
    command = ["trace", "import", "--format", "mooncake", str(MOONCAKE)]
    assert main([*command, "-o", str(path)]) == 0
    return path


def run(
    trace: Path, output: Path, limit: int | None, **deployment: object
) -> SimulationSummary:
    config = SimulationConfig(trace, output, limit=limit, timeseries_interval_s=None)
    return simulate(config, default_profiles(**deployment), show_progress=False)


def check_against_ideal(summary: SimulationSummary, ideal: IdealReuse) -> float:
    """Assert the simulated hits fit under the ideal; return their share of it."""
    stats = summary.cache
    assert stats is not None
    assert summary.prompt_tokens == ideal.prompt_tokens
    assert stats.block_tokens == BLOCK_TOKENS
    assert stats.blocks_looked_up == ideal.full_blocks
    assert stats.hit_blocks <= ideal.hit_blocks
    cached = summary.cached_tokens_hbm + summary.cached_tokens_pool
    assert cached == stats.hit_blocks * BLOCK_TOKENS
    assert cached <= ideal.cached_tokens
    return cached / ideal.cached_tokens


def test_hits_stay_under_ideal_reuse(trace: Path, tmp_path: Path) -> None:
    ideal = ideal_reuse(FIRST_ROWS)
    output = tmp_path / "results.parquet"
    summary = run(trace, output, FIRST_ROWS)

    share_of_ideal = check_against_ideal(summary, ideal)
    print(
        f"ideal {ideal.cached_tokens / ideal.prompt_tokens:.2%} of prompt tokens, "
        f"simulated {summary.cached_token_share:.2%} ({share_of_ideal:.2%} of ideal)"
    )
    # The default cache is large enough to hold these rows' blocks, so only
    # requests whose prefix was still being prefilled miss it.
    assert share_of_ideal > 0.95

    results = pq.read_table(output)
    assert pc.sum(results.column("cached_tokens")).as_py() == (
        summary.cached_tokens_hbm + summary.cached_tokens_pool
    )
    assert pc.sum(results.column("cached_tokens_pool")).as_py() == (
        summary.cached_tokens_pool
    )


def test_small_cache_evicts_and_hits_less(trace: Path, tmp_path: Path) -> None:
    ideal = ideal_reuse(FIRST_ROWS)
    small = run(
        trace,
        tmp_path / "small.parquet",
        FIRST_ROWS,
        hbm_cache_gb_per_die=0.02,
        pool_capacity_gb=20.0,
    )
    share_of_ideal = check_against_ideal(small, ideal)
    assert small.cache is not None
    assert small.cache.hbm_evicted_blocks > 0
    assert small.cache.pool_evicted_blocks > 0
    print(f"small cache: {share_of_ideal:.2%} of ideal")
    assert share_of_ideal < 0.9


@pytest.mark.slow
def test_whole_trace_hits_stay_under_ideal(trace: Path, tmp_path: Path) -> None:
    ideal = ideal_reuse(None)
    summary = run(trace, tmp_path / "results.parquet", None)
    assert check_against_ideal(summary, ideal) > 0.95
