"""Routers that pick the prefill instance for each new request.

`RoutingPolicy` in the deployment selects one:

- cache-aware: the instance with the least prefill work once the request
  is added, counting only the prompt tokens that its HBM does not cache:
  queued tokens + input tokens - HBM-cached tokens. A long cached prefix
  draws a request to an instance unless that instance's queue is longer
  than the prefix. Pool hits are the same on every instance, so they do not
  count. Ties go to the longer cached prefix, then the lower index.
- least-loaded: the fewest queued prefill tokens, then the lower index.
- round-robin: the available instances in turn.

Queued tokens are the tokens still to prefill of every request in the
instance's queue, after their cache hits once claimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from emulator.cache import PrefixCache
from emulator.profiles import RoutingPolicy
from emulator.records import RequestRecord

if TYPE_CHECKING:
    from emulator.engine import PrefillInstance

__all__ = [
    "CacheAwareRouter",
    "LeastLoadedRouter",
    "PrefillRouter",
    "RoundRobinRouter",
    "RoutingPolicy",
    "make_router",
]


class PrefillRouter(Protocol):
    """Picks one of the available prefill instances for a request."""

    def choose(
        self, record: RequestRecord, candidates: Sequence[PrefillInstance]
    ) -> PrefillInstance:
        """Return the instance for `record`; `candidates` is never empty."""


class LeastLoadedRouter:
    """The instance with the fewest queued prefill tokens."""

    def choose(
        self, record: RequestRecord, candidates: Sequence[PrefillInstance]
    ) -> PrefillInstance:
        return min(candidates, key=lambda p: (p.queued_tokens, p.index))


class RoundRobinRouter:
    """The available instances in turn, by a counter over all requests."""

    def __init__(self) -> None:
        self._next = 0

    def choose(
        self, record: RequestRecord, candidates: Sequence[PrefillInstance]
    ) -> PrefillInstance:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen


class CacheAwareRouter:
    """The instance with the least prefill work after its HBM cache hits."""

    def __init__(self, cache: PrefixCache | None) -> None:
        self._cache = cache

    def choose(
        self, record: RequestRecord, candidates: Sequence[PrefillInstance]
    ) -> PrefillInstance:
        keys = record.cache_keys
        if self._cache is None or not keys:
            return min(candidates, key=lambda p: (p.queued_tokens, p.index))

        cache = self._cache
        usable_blocks = (record.spec.input_tokens - 1) // cache.block_tokens
        best: tuple[int, int, int] | None = None
        chosen = candidates[0]
        for instance in candidates:
            blocks = cache.hbm[instance.index].count_leading(keys)
            cached_tokens = min(blocks, usable_blocks) * cache.block_tokens
            work = instance.queued_tokens + record.spec.input_tokens - cached_tokens
            rank = (work, -cached_tokens, instance.index)
            if best is None or rank < best:
                best = rank
                chosen = instance
        return chosen


def make_router(policy: RoutingPolicy, cache: PrefixCache | None) -> PrefillRouter:
    """Build the router for `policy`; cache-aware needs the prefix cache."""
    if policy is RoutingPolicy.CACHE_AWARE:
        return CacheAwareRouter(cache)
    if policy is RoutingPolicy.ROUND_ROBIN:
        return RoundRobinRouter()
    return LeastLoadedRouter()
