"""Prefix (context) cache: HBM blocks per prefill instance and a shared DRAM pool.

A prompt's KV cache is cut into blocks of `cache_block_tokens`. A block is
identified by its position and by the trace's hashes of every trace block
up to the one containing the block's last token (`cache_block_keys`). Two
prompts therefore share a cache block only when the trace shows that all
their tokens up to the end of that block are equal. A trace's block size may differ from
the cache's in either direction. When the cache block is smaller, a trace
block splits into several cache blocks. When it is larger, a cache block
needs the hashes of every trace block it spans. Only cache blocks covered
entirely by hashed prompt tokens are cacheable, so reuse is never
overestimated.

Two tiers hold blocks: one `BlockTier` in the HBM of each prefill instance
and one in the DRAM pool that every instance reads over UB. A request reuses
the longest chain of leading blocks found in its instance's HBM, then
continues the chain in the pool. At least its last prompt token is always
prefilled, because prefill must produce the first output token.

Each tier is an LRU cache that evicts only blocks with no cached child in
that tier: the least recently used block among those is evicted first. A
chain therefore loses blocks from its tail, and every cached prefix stays
usable. A block evicted from HBM is demoted to the pool. With
`PoolWritePolicy.WRITE_THROUGH` every prefilled block is also copied to the
pool at once, so other instances can load it.

Accounting: a tier holds each key once and never more blocks than its
capacity; a request's hit is split between HBM and the pool, so no block is
counted twice. Blocks that a request claimed at the start of its prefill
count as its own working memory from then on, so later evictions cannot
take them away mid-prefill.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from emulator.costs import CostModel
from emulator.errors import EmulatorError
from emulator.profiles import PoolWritePolicy, Profiles

__all__ = [
    "BlockTier",
    "CacheCapacity",
    "CacheMatch",
    "CacheStats",
    "InvalidPrefix",
    "PoolWritePolicy",
    "PrefixCache",
    "cache_block_keys",
    "cache_capacity",
]

logger = logging.getLogger(__name__)

_GB = 1e9


class InvalidPrefix(EmulatorError):
    """A request's prefix block hashes do not fit its prompt."""


def cache_block_keys(
    prefix_block_hashes: Sequence[int],
    trace_block_tokens: int,
    input_tokens: int,
    cache_block_tokens: int,
) -> tuple[int, ...]:
    """Map a prompt's trace block hashes to the keys of its cacheable blocks.

    Trace block t covers prompt tokens [t x trace_block_tokens, (t + 1) x
    trace_block_tokens); the last one may be partial. Cache block j covers
    [j x cache_block_tokens, (j + 1) x cache_block_tokens) and exists only
    when hashed prompt tokens cover it entirely. Its key is a hash of j and
    of the chain of trace hashes 0 ... t_j, where t_j is the trace block that
    holds the cache block's last token. Equal keys therefore mean equal
    tokens from the start of the prompt to the end of the block.

    Raises InvalidPrefix when there are hashes but `trace_block_tokens` is
    below 1, or when the prompt is shorter than its hash list implies
    (more hashes than ceil(input_tokens / trace_block_tokens)).
    """
    if not prefix_block_hashes:
        return ()
    if trace_block_tokens < 1:
        raise InvalidPrefix(
            f"block_tokens must be at least 1 when prefix_block_hashes are "
            f"given, got {trace_block_tokens}"
        )
    hashes = len(prefix_block_hashes)
    blocks_in_prompt = math.ceil(input_tokens / trace_block_tokens)
    if hashes > blocks_in_prompt:
        raise InvalidPrefix(
            f"prefix_block_hashes has {hashes} blocks of {trace_block_tokens} "
            f"tokens but input_tokens {input_tokens} fills only {blocks_in_prompt}"
        )

    covered_tokens = min(hashes * trace_block_tokens, input_tokens)
    blocks = covered_tokens // cache_block_tokens
    if not blocks:
        return ()
    # chains[t] identifies trace blocks 0 ... t and everything before them.
    chain = hash(("cmx-prefix", trace_block_tokens))
    chains: list[int] = []
    last_trace_block = (blocks * cache_block_tokens - 1) // trace_block_tokens
    for block_hash in prefix_block_hashes[: last_trace_block + 1]:
        chain = hash((chain, block_hash))
        chains.append(chain)
    return tuple(
        hash(
            (
                chains[((block + 1) * cache_block_tokens - 1) // trace_block_tokens],
                block,
            )
        )
        for block in range(blocks)
    )


@dataclass(frozen=True)
class CacheMatch:
    """Leading blocks of a request found in HBM, then continued in the pool."""

    hbm_blocks: int
    pool_blocks: int

    @property
    def blocks(self) -> int:
        return self.hbm_blocks + self.pool_blocks


@dataclass(frozen=True)
class CacheCapacity:
    """Blocks that each tier holds."""

    block_tokens: int
    hbm_blocks_per_instance: int
    pool_blocks: int


def cache_capacity(profiles: Profiles) -> CacheCapacity:
    """Size both tiers from the profiles, in blocks of `cache_block_tokens`.

    HBM: `hbm_cache_gb_per_die` per prefill die, or by default all HBM that
    a prefill die has left after its weights and `hbm_reserved_gb_per_die`,
    times the instance's dies. Pool: `pool_capacity_gb`, or by default the
    hardware's `dram_gb_per_node` on every node. A block holds
    `cache_block_tokens` x the KV bytes per token.
    """
    hardware = profiles.hardware
    deployment = profiles.deployment
    costs = CostModel(profiles)
    block_bytes = deployment.cache_block_tokens * costs.kv_bytes_per_token

    if deployment.hbm_cache_gb_per_die is None:
        reserved = deployment.hbm_reserved_gb_per_die * _GB
        weights = costs.prefill_resident_weight_bytes_per_die()
        hbm_per_die = max(0.0, hardware.hbm_bytes_per_die - weights - reserved)
    else:
        hbm_per_die = deployment.hbm_cache_gb_per_die * _GB
    dies = deployment.prefill_npus_per_instance * hardware.dies_per_npu

    if deployment.pool_capacity_gb is None:
        pool_bytes = hardware.dram_gb_per_node * _GB * hardware.num_nodes
    else:
        pool_bytes = deployment.pool_capacity_gb * _GB
    return CacheCapacity(
        block_tokens=deployment.cache_block_tokens,
        hbm_blocks_per_instance=int(hbm_per_die * dies // block_bytes),
        pool_blocks=int(pool_bytes // block_bytes),
    )


class BlockTier:
    """One tier: cached block keys in LRU order, evicted leaves first.

    Each key remembers its parent key (None for a prompt's first block).
    `_children` counts the cached children of every cached key. A block
    whose parent is not cached in this tier is an orphan: it is counted in
    `_orphans` under the parent's key, so that adding the parent later
    restores the parent's count.
    """

    def __init__(self, capacity_blocks: int, name: str) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"capacity must be 0 or more, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self.name = name
        # Oldest first; a parent is normally newer than its children.
        self._parents: OrderedDict[int, int | None] = OrderedDict()
        self._children: dict[int, int] = {}
        self._orphans: dict[int, int] = {}
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._parents)

    def __contains__(self, key: object) -> bool:
        return key in self._parents

    def keys_oldest_first(self) -> list[int]:
        """Return the cached keys from least to most recently used."""
        return list(self._parents)

    def count_leading(self, keys: Sequence[int], start: int = 0) -> int:
        """Return how many of keys[start], keys[start + 1], ... are cached in a row.

        `keys` must be a chain, root first. Without orphans the tier holds
        the parent of every block it holds, so the cached keys of a chain
        are a prefix of it and a binary search finds its end.
        """
        parents = self._parents
        end = len(keys)
        if self._orphans:
            position = start
            while position < end and keys[position] in parents:
                position += 1
            return position - start
        low, high = 0, end  # keys[:low] are cached, keys[high:] are not
        while low < high:
            middle = (low + high) // 2
            if keys[middle] in parents:
                low = middle + 1
            else:
                high = middle
        return max(0, low - start)

    def touch(self, keys: Sequence[int]) -> None:
        """Mark the cached ones of `keys` (a chain, root first) as just used.

        They are refreshed from the tail to the root, so that within the
        chain the tail becomes the least recently used and goes first.
        """
        parents = self._parents
        move_to_end = parents.move_to_end
        for key in reversed(keys):
            if key in parents:
                move_to_end(key)

    def store_chain(self, keys: Sequence[int]) -> list[tuple[int, int | None]]:
        """Cache a chain of keys, root first; return what was evicted for room.

        Keys already cached are refreshed. When the tier cannot hold the
        whole chain, only its leading part is kept. Evicted (key, parent)
        pairs are returned oldest first.
        """
        parents = self._parents
        present = self.count_leading(keys)
        room = max(0, self.capacity_blocks - present)
        new_end = present + min(room, len(keys) - present)
        prefix_closed = not self._orphans
        if prefix_closed:
            missing = new_end - present
        else:
            missing = sum(key not in parents for key in keys[present:new_end])
        evicted: list[tuple[int, int | None]] = []
        if len(parents) + missing > self.capacity_blocks:
            # Refreshing every cached block of the kept part first makes
            # them the newest, so that making room evicts none of them.
            self.touch(keys[:new_end])
            evicted = self._make_room(missing)
        if prefix_closed:
            self._append_new_chain(keys, present, new_end)
        else:
            # Tail first, so that each block ends up older than its parent.
            for position in range(new_end - 1, present - 1, -1):
                self._add(keys[position], keys[position - 1] if position else None)
        self.touch(keys[:present])
        return evicted

    def add_blocks(self, blocks: Iterable[tuple[int, int | None]]) -> int:
        """Cache single blocks given as (key, parent), in order; return how many.

        Used for demotion: blocks arrive oldest first, as another tier
        evicted them. Blocks already cached keep their place.
        """
        added = 0
        for key, parent in blocks:
            if key in self._parents or self.capacity_blocks == 0:
                continue
            self._make_room(1)
            self._add(key, parent)
            added += 1
        return added

    def check(self) -> None:
        """Raise AssertionError when the bookkeeping is inconsistent (for tests)."""
        assert len(self._parents) <= self.capacity_blocks
        children: dict[int, int] = dict.fromkeys(self._parents, 0)
        orphans: dict[int, int] = {}
        for parent in self._parents.values():
            if parent is None:
                continue
            if parent in children:
                children[parent] += 1
            else:
                orphans[parent] = orphans.get(parent, 0) + 1
        assert children == self._children
        assert orphans == self._orphans

    def _append_new_chain(self, keys: Sequence[int], start: int, end: int) -> None:
        """Add keys[start:end], none of them cached, tail first; no orphans exist.

        The same as calling `_add` for each, without the orphan bookkeeping:
        every new block but the tail has exactly one cached child, the next.
        """
        if start >= end:
            return
        parents = self._parents
        children = self._children
        for position in range(end - 1, start, -1):
            key = keys[position]
            parents[key] = keys[position - 1]
            children[key] = 1
        first = keys[start]
        parents[first] = keys[start - 1] if start else None
        children[first] = 1
        children[keys[end - 1]] = 0
        if start:
            children[keys[start - 1]] += 1

    def _add(self, key: int, parent: int | None) -> None:
        if key in self._parents:
            self._parents.move_to_end(key)
            return
        self._parents[key] = parent
        self._children[key] = self._orphans.pop(key, 0)
        if parent is None:
            return
        if parent in self._children:
            self._children[parent] += 1
        else:
            self._orphans[parent] = self._orphans.get(parent, 0) + 1

    def _make_room(self, blocks: int) -> list[tuple[int, int | None]]:
        evicted: list[tuple[int, int | None]] = []
        while self._parents and len(self._parents) + blocks > self.capacity_blocks:
            evicted.append(self._evict_oldest_leaf())
        return evicted

    def _evict_oldest_leaf(self) -> tuple[int, int | None]:
        # The oldest block is a leaf unless a child was refreshed without
        # it, so the scan usually stops at once. A tier is never without a
        # leaf: the most recently added block of any chain has no child.
        victim = next(key for key in self._parents if self._children[key] == 0)
        parent = self._parents.pop(victim)
        del self._children[victim]
        if parent is not None:
            if parent in self._children:
                self._children[parent] -= 1
            else:
                self._orphans[parent] -= 1
                if not self._orphans[parent]:
                    del self._orphans[parent]
        self.evicted_blocks += 1
        return victim, parent


@dataclass(frozen=True)
class CacheStats:
    """Counts of a prefix cache since it was made, in blocks.

    `blocks_looked_up` counts the cacheable blocks of every request at the
    start of its prefill. Each hit is counted once, in the tier it was read
    from. `pool_blocks_recomputed` counts blocks found in the pool but
    prefilled, because loading them would have taken longer.
    """

    block_tokens: int
    lookups: int
    blocks_looked_up: int
    hbm_hit_blocks: int
    pool_hit_blocks: int
    pool_blocks_recomputed: int
    hbm_evicted_blocks: int
    demoted_blocks: int
    pool_evicted_blocks: int
    hbm_blocks_used: tuple[int, ...]
    pool_blocks_used: int

    @property
    def hit_blocks(self) -> int:
        return self.hbm_hit_blocks + self.pool_hit_blocks

    @property
    def block_hit_rate(self) -> float | None:
        """Hit blocks over looked-up blocks; None before any lookup."""
        if not self.blocks_looked_up:
            return None
        return self.hit_blocks / self.blocks_looked_up


class PrefixCache:
    """HBM tiers of the prefill instances and the shared pool, with counts."""

    def __init__(
        self,
        capacity: CacheCapacity,
        prefill_instances: int,
        write_policy: PoolWritePolicy = PoolWritePolicy.WRITE_THROUGH,
    ) -> None:
        self.block_tokens = capacity.block_tokens
        self.write_policy = write_policy
        self.hbm = [
            BlockTier(capacity.hbm_blocks_per_instance, f"hbm{index}")
            for index in range(prefill_instances)
        ]
        self.pool = BlockTier(capacity.pool_blocks, "pool")
        self._lookups = 0
        self._blocks_looked_up = 0
        self._hbm_hits = 0
        self._pool_hits = 0
        self._pool_recomputed = 0
        self._demoted = 0
        logger.info(
            "prefix cache: %d instances x %d HBM blocks, %d pool blocks of %d tokens",
            prefill_instances,
            capacity.hbm_blocks_per_instance,
            capacity.pool_blocks,
            capacity.block_tokens,
        )

    @classmethod
    def from_profiles(cls, profiles: Profiles) -> PrefixCache:
        """Build the cache that the deployment in `profiles` describes."""
        deployment = profiles.deployment
        return cls(
            cache_capacity(profiles),
            deployment.prefill_instances,
            deployment.pool_write_policy,
        )

    def match(self, instance: int, keys: Sequence[int]) -> CacheMatch:
        """Find the leading blocks cached in the instance's HBM, then the pool."""
        hbm_blocks = self.hbm[instance].count_leading(keys)
        pool_blocks = self.pool.count_leading(keys, hbm_blocks)
        return CacheMatch(hbm_blocks, pool_blocks)

    def claim(
        self, instance: int, keys: Sequence[int], match: CacheMatch, found_in_pool: int
    ) -> None:
        """Count a request's lookup and mark the blocks it reuses as used.

        `match` is what the request reuses; `found_in_pool` is how many pool
        blocks were found, which exceeds `match.pool_blocks` when some were
        prefilled instead of loaded.
        """
        self._lookups += 1
        self._blocks_looked_up += len(keys)
        self._hbm_hits += match.hbm_blocks
        self._pool_hits += match.pool_blocks
        self._pool_recomputed += found_in_pool - match.pool_blocks
        self.hbm[instance].touch(keys[: match.hbm_blocks])
        self.pool.touch(keys[: match.blocks])

    def store(self, instance: int, keys: Sequence[int]) -> None:
        """Cache a prefilled prompt's blocks in the instance's HBM.

        Blocks that HBM evicts for room are demoted to the pool; with
        write-through the whole chain is also copied to the pool.
        """
        if not keys:
            return
        evicted = self.hbm[instance].store_chain(keys)
        if evicted:
            self._demoted += self.pool.add_blocks(evicted)
        if self.write_policy is PoolWritePolicy.WRITE_THROUGH:
            self.pool.store_chain(keys)

    def preload_pool(self, keys: Sequence[int]) -> None:
        """Put a chain into the pool only, as if an earlier run had left it there."""
        self.pool.store_chain(keys)

    def stats(self) -> CacheStats:
        """Return the counts so far and the blocks each tier holds now."""
        return CacheStats(
            block_tokens=self.block_tokens,
            lookups=self._lookups,
            blocks_looked_up=self._blocks_looked_up,
            hbm_hit_blocks=self._hbm_hits,
            pool_hit_blocks=self._pool_hits,
            pool_blocks_recomputed=self._pool_recomputed,
            hbm_evicted_blocks=sum(tier.evicted_blocks for tier in self.hbm),
            demoted_blocks=self._demoted,
            pool_evicted_blocks=self.pool.evicted_blocks,
            hbm_blocks_used=tuple(len(tier) for tier in self.hbm),
            pool_blocks_used=len(self.pool),
        )
