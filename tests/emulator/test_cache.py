"""Prefix cache tiers: block keys, LRU tail eviction, demotion and capacity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.cache import (
    BlockTier,
    CacheCapacity,
    CacheMatch,
    InvalidPrefix,
    PoolWritePolicy,
    PrefixCache,
    cache_block_keys,
    cache_capacity,
)
from emulator.costs import CostModel
from emulator.profiles import default_profiles


def chain(*names: str) -> list[int]:
    """Keys of a chain whose blocks are named by strings, root first."""
    return [hash(names[: index + 1]) for index in range(len(names))]


# cache_block_keys


def test_keys_equal_blocks_share_prefix() -> None:
    first = cache_block_keys([7, 8, 9], 512, 1536, 512)
    second = cache_block_keys([7, 8, 5], 512, 1536, 512)
    assert len(first) == 3
    assert first[:2] == second[:2]
    assert first[2] != second[2]


def test_keys_depend_on_whole_prefix() -> None:
    # The same hash at the same position after a different first block is
    # another block: its key chains every earlier hash.
    first = cache_block_keys([1, 2], 512, 1024, 512)
    second = cache_block_keys([3, 2], 512, 1024, 512)
    assert first[1] != second[1]


def test_smaller_cache_blocks_split_trace_blocks() -> None:
    # 512-token trace blocks, 128-token cache blocks, 1,000 prompt tokens:
    # hashes cover all 1,000, so 7 full cache blocks (896 tokens) exist.
    first = cache_block_keys([10, 11], 512, 1000, 128)
    second = cache_block_keys([10, 99], 512, 1000, 128)
    assert len(first) == 7
    # Cache blocks 0-3 lie in trace block 0, blocks 4-6 in trace block 1.
    assert first[:4] == second[:4]
    assert all(a != b for a, b in zip(first[4:], second[4:], strict=True))
    assert len(set(first)) == 7


def test_larger_cache_blocks_span_trace_blocks() -> None:
    # 128-token trace blocks, 512-token cache blocks: 5 hashes cover 640 of
    # 700 tokens, so one cache block, made of trace blocks 0-3.
    keys = cache_block_keys([1, 2, 3, 4, 5], 128, 700, 512)
    assert len(keys) == 1
    assert cache_block_keys([1, 2, 3, 4, 6], 128, 700, 512) == keys
    assert cache_block_keys([1, 2, 3, 9, 5], 128, 700, 512) != keys


def test_sizes_that_do_not_divide() -> None:
    # 300-token trace blocks and 200-token cache blocks over 900 tokens:
    # cache block 0 ends in trace block 0, blocks 1 and 2 in trace block 1
    # (tokens 399 and 599), block 3 in trace block 2 (token 799).
    keys = cache_block_keys([1, 2, 3], 300, 900, 200)
    other = cache_block_keys([1, 2, 4], 300, 900, 200)
    assert len(keys) == 4
    assert keys[:3] == other[:3]
    assert keys[3] != other[3]


def test_partial_last_trace_block() -> None:
    # A Mooncake row: 6,758 tokens in 14 blocks of 512, the last holding
    # 102 tokens, so 13 full cache blocks of 512 tokens.
    assert len(cache_block_keys(list(range(14)), 512, 6758, 512)) == 13
    # Hashes of only the first 3 blocks cover 1,536 tokens.
    assert len(cache_block_keys([0, 1, 2], 512, 6758, 128)) == 12


def test_no_hashes_no_keys() -> None:
    assert cache_block_keys([], 0, 4096, 512) == ()
    # Hashes covering less than one cache block give no cacheable block.
    assert cache_block_keys([1], 64, 64, 128) == ()


def test_prompt_shorter_than_hashes_is_invalid() -> None:
    with pytest.raises(InvalidPrefix, match="has 3 blocks of 512 tokens") as raised:
        cache_block_keys([1, 2, 3], 512, 1024, 512)
    assert "input_tokens 1024 fills only 2" in str(raised.value)
    with pytest.raises(InvalidPrefix, match="block_tokens must be at least 1"):
        cache_block_keys([1], 0, 1024, 512)


# BlockTier


def test_tier_evicts_chain_from_its_tail() -> None:
    tier = BlockTier(4, "hbm")
    a1, a2, a3 = chain("a", "a2", "a3")
    b2 = hash(("a", "b2"))
    assert tier.store_chain([a1, a2, a3]) == []
    # The tail is the least recently used block of its chain.
    assert tier.keys_oldest_first() == [a3, a2, a1]

    assert tier.store_chain([a1, b2]) == []
    assert tier.keys_oldest_first() == [a3, a2, b2, a1]

    c1, c2 = chain("c", "c2")
    evicted = tier.store_chain([c1, c2])
    # Chain a loses its tail first, then a2 once it has no child; a1 stays
    # because b2 still hangs from it.
    assert evicted == [(a3, a2), (a2, a1)]
    assert tier.keys_oldest_first() == [b2, a1, c2, c1]
    tier.check()


def test_tier_never_evicts_a_parent_before_its_child() -> None:
    tier = BlockTier(3, "hbm")
    a1, a2 = chain("a", "a2")
    tier.store_chain([a1, a2])
    # Refreshing the tail alone leaves its parent as the oldest block.
    tier.touch([a2])
    d1 = hash(("d",))
    tier.store_chain([d1])
    assert tier.keys_oldest_first() == [a1, a2, d1]

    e1 = hash(("e",))
    # a1 is the oldest but has a child, so the oldest leaf a2 goes.
    assert tier.store_chain([e1]) == [(a2, a1)]
    f1 = hash(("f",))
    assert tier.store_chain([f1]) == [(a1, None)]
    assert tier.keys_oldest_first() == [d1, e1, f1]
    tier.check()


def test_tier_keeps_leading_part_when_full() -> None:
    tier = BlockTier(3, "hbm")
    keys = chain("a", "b", "c", "d", "e")
    tier.store_chain(keys)
    assert len(tier) == 3
    assert tier.count_leading(keys) == 3
    assert set(tier.keys_oldest_first()) == set(keys[:3])
    tier.check()


def test_tier_with_no_capacity_holds_nothing() -> None:
    tier = BlockTier(0, "pool")
    assert tier.store_chain(chain("a", "b")) == []
    assert tier.add_blocks([(1, None)]) == 0
    assert len(tier) == 0


def test_tier_refresh_keeps_single_copy() -> None:
    tier = BlockTier(10, "pool")
    keys = chain("a", "b", "c")
    tier.store_chain(keys)
    tier.store_chain(keys)
    tier.add_blocks([(keys[1], keys[0])])
    assert len(tier) == 3
    tier.check()


def test_orphans_count_once_parent_arrives() -> None:
    # Demotion can bring a tail before its parent; the parent then counts
    # the child, so it cannot be evicted while the child is cached.
    tier = BlockTier(2, "pool")
    a1, a2 = chain("a", "a2")
    assert tier.add_blocks([(a2, a1)]) == 1
    assert tier.count_leading([a1, a2], 1) == 1
    tier.add_blocks([(a1, None)])
    tier.check()
    b1 = hash(("b",))
    tier.add_blocks([(b1, None)])
    # a2 is the oldest leaf; a1 must outlive it.
    assert tier.keys_oldest_first() == [a1, b1]
    tier.check()


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(min_value=0, max_value=12),
    chains=st.lists(
        st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=8),
        max_size=40,
    ),
)
def test_tier_stays_within_capacity_and_prefix_closed(
    capacity: int, chains: list[list[int]]
) -> None:
    tier = BlockTier(capacity, "hbm")
    for names in chains:
        keys = chain(*(str(name) for name in names))
        tier.store_chain(keys)
        tier.check()
        assert len(tier) <= capacity
        assert tier.count_leading(keys) == min(len(keys), capacity)
    # Every cached block's parent is cached: prefixes stay usable.
    cached = set(tier.keys_oldest_first())
    parents = tier._parents
    assert all(parents[key] is None or parents[key] in cached for key in cached)


# PrefixCache


def small_cache(
    hbm_blocks: int, pool_blocks: int, policy: PoolWritePolicy
) -> PrefixCache:
    capacity = CacheCapacity(
        block_tokens=512, hbm_blocks_per_instance=hbm_blocks, pool_blocks=pool_blocks
    )
    return PrefixCache(capacity, prefill_instances=2, write_policy=policy)


def test_eviction_demotes_to_pool() -> None:
    cache = small_cache(2, 10, PoolWritePolicy.ON_EVICTION)
    first = chain("k1", "k2")
    cache.store(0, first)
    assert len(cache.pool) == 0
    cache.store(0, chain("m1", "m2"))

    assert cache.match(0, first) == CacheMatch(hbm_blocks=0, pool_blocks=2)
    stats = cache.stats()
    assert stats.hbm_evicted_blocks == 2
    assert stats.demoted_blocks == 2
    assert stats.hbm_blocks_used == (2, 0)
    assert stats.pool_blocks_used == 2


def test_write_through_shares_with_other_instances() -> None:
    cache = small_cache(4, 10, PoolWritePolicy.WRITE_THROUGH)
    keys = chain("a", "b", "c")
    cache.store(0, keys)
    assert cache.match(0, keys) == CacheMatch(hbm_blocks=3, pool_blocks=0)
    assert cache.match(1, keys) == CacheMatch(hbm_blocks=0, pool_blocks=3)
    # Demoting blocks the pool already holds adds nothing.
    cache.store(0, chain("d", "e", "f"))
    assert cache.stats().demoted_blocks == 0
    assert len(cache.pool) == 6


def test_match_continues_in_pool_after_hbm() -> None:
    cache = small_cache(1, 10, PoolWritePolicy.WRITE_THROUGH)
    keys = chain("a", "b", "c")
    cache.store(0, keys)
    # HBM keeps only the root; the pool has the whole chain.
    assert cache.match(0, keys) == CacheMatch(hbm_blocks=1, pool_blocks=2)
    longer = [*keys, hash(("a", "b", "c", "d"))]
    assert cache.match(0, longer) == CacheMatch(hbm_blocks=1, pool_blocks=2)


def test_claim_counts_each_block_once() -> None:
    cache = small_cache(1, 10, PoolWritePolicy.WRITE_THROUGH)
    keys = chain("a", "b", "c", "d")
    cache.store(0, keys)
    found = cache.match(0, keys)
    cache.claim(0, keys, CacheMatch(found.hbm_blocks, 2), found.pool_blocks)

    stats = cache.stats()
    assert stats.lookups == 1
    assert stats.blocks_looked_up == 4
    assert stats.hbm_hit_blocks == 1
    assert stats.pool_hit_blocks == 2
    assert stats.pool_blocks_recomputed == 1
    assert stats.block_hit_rate == pytest.approx(0.75)


def test_pool_capacity_limits_pool() -> None:
    cache = small_cache(0, 3, PoolWritePolicy.WRITE_THROUGH)
    cache.store(0, chain("a", "b"))
    cache.store(1, chain("c", "d"))
    assert len(cache.pool) == 3
    assert cache.stats().pool_evicted_blocks == 1
    # The older chain lost its tail.
    assert cache.match(0, chain("a", "b")) == CacheMatch(0, 1)
    assert cache.match(0, chain("c", "d")) == CacheMatch(0, 2)
    cache.pool.check()


def test_capacity_from_settings_by_hand() -> None:
    profiles = default_profiles(hbm_cache_gb_per_die=1.0, pool_capacity_gb=10.0)
    capacity = cache_capacity(profiles)
    # A 512-token block holds 512 x 70,272 bytes = 35,979,264 bytes.
    # HBM: 1 GB on each of 32 dies; pool: 10 GB.
    assert capacity.block_tokens == 512
    assert capacity.hbm_blocks_per_instance == 32_000_000_000 // 35_979_264
    assert capacity.pool_blocks == 10_000_000_000 // 35_979_264


def test_default_capacity_from_hardware() -> None:
    profiles = default_profiles()
    capacity = cache_capacity(profiles)
    # Pool: 48 nodes of 1,024 GB.
    assert capacity.pool_blocks == 48 * 1024 * 10**9 // 35_979_264
    # HBM: what a prefill die keeps after its weights and 4 GB of buffers.
    weights = CostModel(profiles).prefill_resident_weight_bytes_per_die()
    free_per_die = 64e9 - weights - 4e9
    assert capacity.hbm_blocks_per_instance == int(free_per_die * 32 // 35_979_264)
    assert 10_000 < capacity.hbm_blocks_per_instance < 30_000
