"""Prefill routers: cache-aware against load, least-loaded and round-robin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import pytest

from emulator.cache import CacheCapacity, PrefixCache, cache_block_keys
from emulator.core import EventQueue
from emulator.engine import PrefillInstance, RequestRecord, RequestSpec, Supernode
from emulator.profiles import PoolWritePolicy, RoutingPolicy, default_profiles
from emulator.routing import (
    CacheAwareRouter,
    LeastLoadedRouter,
    RoundRobinRouter,
    make_router,
)


class Idle:
    """Sink that ignores the output."""

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        pass

    def on_finish(self, record: RequestRecord) -> None:
        pass


class FakeInstance:
    """A prefill instance as the routers see it."""

    def __init__(self, index: int, queued_tokens: int) -> None:
        self.index = index
        self.queued_tokens = queued_tokens


def fakes(*queued: tuple[int, int]) -> list[PrefillInstance]:
    """Instances given as (index, queued tokens)."""
    return cast(list[PrefillInstance], [FakeInstance(i, q) for i, q in queued])


def record_for(spec: RequestSpec, block_tokens: int = 512) -> RequestRecord:
    record = RequestRecord(spec=spec, sink=Idle(), arrival_s=0.0)
    record.cache_keys = cache_block_keys(
        spec.prefix_block_hashes, spec.block_tokens, spec.input_tokens, block_tokens
    )
    return record


def cache_with(instance: int, hashes: tuple[int, ...]) -> PrefixCache:
    """A cache of three instances where `instance` holds the blocks of `hashes`."""
    capacity = CacheCapacity(
        block_tokens=512, hbm_blocks_per_instance=100, pool_blocks=100
    )
    cache = PrefixCache(capacity, 3, PoolWritePolicy.WRITE_THROUGH)
    keys = cache_block_keys(hashes, 512, 512 * len(hashes), 512)
    cache.store(instance, keys)
    return cache


REQUEST = RequestSpec("r", 4096, 1, (1, 2, 3, 4, 5, 6, 7, 8), 512)


def test_cache_aware_picks_longest_prefix() -> None:
    cache = cache_with(2, (1, 2, 3, 4, 5))
    cache.store(1, cache_block_keys((1, 2), 512, 1024, 512))
    instances = fakes((0, 0), (1, 0), (2, 0))
    chosen = CacheAwareRouter(cache).choose(record_for(REQUEST), instances)
    assert chosen.index == 2


def test_cache_aware_weighs_load() -> None:
    # Instance 2 caches 5 blocks = 2,560 tokens of the 4,096-token prompt.
    cache = cache_with(2, (1, 2, 3, 4, 5))
    router = CacheAwareRouter(cache)
    record = record_for(REQUEST)

    # Work: instance 0 = 2,000 + 4,096; instance 2 = 3,000 + 4,096 - 2,560.
    instances = fakes((0, 2000), (1, 5000), (2, 3000))
    assert router.choose(record, instances).index == 2
    # Instance 2 = 5,000 + 1,536 = 6,536 > 6,096 on instance 0.
    instances[2].queued_tokens = 5000
    assert router.choose(record, instances).index == 0


def test_cache_aware_ties_go_to_cached_prefix() -> None:
    cache = cache_with(1, (1, 2))
    # Equal work: instance 0 = 1,024 + 4,096; instance 1 = 2,048 + 4,096 - 1,024.
    instances = fakes((0, 1024), (1, 2048))
    chosen = CacheAwareRouter(cache).choose(record_for(REQUEST), instances)
    assert chosen.index == 1


def test_cache_aware_without_hashes_is_least_loaded() -> None:
    cache = cache_with(1, (1, 2))
    record = record_for(RequestSpec("plain", 4096, 1))
    instances = fakes((0, 10), (1, 5), (2, 5))
    assert CacheAwareRouter(cache).choose(record, instances).index == 1
    assert CacheAwareRouter(None).choose(record, instances).index == 1


def test_least_loaded_ignores_cache() -> None:
    instances = fakes((0, 7), (1, 3), (2, 3))
    chosen = LeastLoadedRouter().choose(record_for(REQUEST), instances)
    assert chosen.index == 1


def test_round_robin_cycles() -> None:
    router = RoundRobinRouter()
    instances = fakes((0, 0), (2, 0), (5, 0))
    record = record_for(REQUEST)
    picks = [router.choose(record, instances).index for _ in range(5)]
    assert picks == [0, 2, 5, 0, 2]


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        (RoutingPolicy.CACHE_AWARE, CacheAwareRouter),
        (RoutingPolicy.LEAST_LOADED, LeastLoadedRouter),
        (RoutingPolicy.ROUND_ROBIN, RoundRobinRouter),
    ],
)
def test_policy_selects_router(policy: RoutingPolicy, kind: type) -> None:
    assert isinstance(make_router(policy, None), kind)


def route_repeat(policy: RoutingPolicy) -> tuple[int, int]:
    """Route a prompt, then the same prompt again; return both instances.

    Two plain requests go first, so the prompt lands on instance 2. All
    requests finish before the repeat arrives, so every queue is empty.
    """
    events = EventQueue()
    profiles = default_profiles(routing_policy=policy)
    supernode = Supernode(profiles, events, np.random.default_rng(0))
    for name in ("plain0", "plain1"):
        supernode.submit(RequestSpec(name, 8192, 1), Idle())
    first = supernode.submit(REQUEST, Idle())
    events.run()
    repeat = supernode.submit(
        RequestSpec("repeat", 4096, 1, REQUEST.prefix_block_hashes, 512), Idle()
    )
    events.run()
    return first.prefill_instance, repeat.prefill_instance


def test_supernode_routes_repeat_to_cached_instance() -> None:
    assert route_repeat(RoutingPolicy.CACHE_AWARE) == (2, 2)
    assert route_repeat(RoutingPolicy.LEAST_LOADED) == (2, 0)
    assert route_repeat(RoutingPolicy.ROUND_ROBIN) == (2, 3)


def test_unavailable_instances_are_skipped() -> None:
    events = EventQueue()
    profiles = default_profiles(routing_policy=RoutingPolicy.ROUND_ROBIN)
    supernode = Supernode(profiles, events, np.random.default_rng(0))
    supernode.prefill[0].available = False
    supernode.prefill[1].available = False
    picks = [
        supernode.submit(RequestSpec(f"r{i}", 100, 1), Idle()).prefill_instance
        for i in range(5)
    ]
    assert picks == [2, 3, 4, 5, 2]
