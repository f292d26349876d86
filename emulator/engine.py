"""The supernode model: routing, prefill instances, KV transfer, decode batching.

Requests flow as in a PD-disaggregated deployment:

1. arrival -> the prefill instance that the router picks (see
   `emulator.routing`) -> its FIFO queue;
2. prefill in iterations of at most `prefill_batch_tokens` prompt tokens
   (long prompts are chunked across iterations). When a request's first
   iteration starts, it claims the longest chain of its prompt's leading
   blocks found in the prefix cache, first in the instance's HBM and then
   in the DRAM pool (see `emulator.cache`). Only the rest is prefilled.
   Pool blocks are used only where loading them beats recomputing them,
   and the iteration first waits for their load. When the request's
   prefill ends, its blocks are cached;
3. KV transfer to a decode instance over RDMA; the first output token, made
   by prefill, is released when the transfer ends, so TTFT includes it;
4. continuous batching on the decode instance (see `emulator.decode`):
   every step admits waiting requests while the batch limit, the free KV
   memory and the TPOT SLO allow, and each sequence gains one token plus
   each accepted MTP draft token.

All times are emulated seconds on the `EventQueue` passed in.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emulator.cache import CacheMatch, InvalidPrefix, PrefixCache, cache_block_keys
from emulator.core import EventQueue
from emulator.costs import CostModel, PrefillChunk
from emulator.decode import DecodeInstance
from emulator.profiles import Profiles
from emulator.records import (
    EngineObserver,
    NoInstanceAvailable,
    RequestRecord,
    RequestSpec,
    RequestTooLarge,
    TokenSink,
)
from emulator.routing import make_router

__all__ = [
    "DecodeInstance",
    "EngineObserver",
    "InvalidPrefix",
    "NoInstanceAvailable",
    "PrefillInstance",
    "RequestRecord",
    "RequestSpec",
    "RequestTooLarge",
    "Supernode",
    "SupernodeMetrics",
    "TokenSink",
    "request_problem",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupernodeMetrics:
    """A snapshot of the model's load, for metrics endpoints and tests."""

    emulated_now_s: float
    active_requests: int
    prefill_queued_requests: tuple[int, ...]
    prefill_queued_tokens: tuple[int, ...]
    decode_batch_sizes: tuple[int, ...]
    decode_tokens_generated: tuple[int, ...]
    decode_waiting_requests: tuple[int, ...] = ()
    decode_kv_blocks_used: tuple[int, ...] = ()
    # Prefix cache blocks held in each prefill instance's HBM and in the pool.
    prefix_cache_hbm_blocks_used: tuple[int, ...] = ()
    prefix_cache_pool_blocks_used: int = 0


def request_problem(
    input_tokens: int,
    output_tokens: int,
    prefix_hashes: int,
    block_tokens: int,
    profiles: Profiles,
) -> str | None:
    """Return why a request is invalid, naming the field and accepted range.

    Returns None for a valid request. The checks are those of the gRPC
    server: token counts of at least 1, prompt plus output within the
    model's context window, and no more prefix hashes than prompt blocks.
    """
    window = profiles.model.max_context_tokens
    if input_tokens < 1:
        return f"input_tokens must be at least 1, got {input_tokens}"
    if output_tokens < 1:
        return f"output_tokens must be at least 1, got {output_tokens}"
    if input_tokens + output_tokens > window:
        return (
            f"input_tokens + output_tokens must be at most {window} "
            f"({profiles.model.name} context window), got "
            f"{input_tokens + output_tokens}"
        )
    if prefix_hashes and block_tokens < 1:
        return "block_tokens must be at least 1 when prefix_block_hashes are given"
    if prefix_hashes:
        blocks = math.ceil(input_tokens / block_tokens)
        if prefix_hashes > blocks:
            return (
                f"prefix_block_hashes has {prefix_hashes} blocks of {block_tokens} "
                f"tokens but input_tokens {input_tokens} fills only {blocks}"
            )
    return None


class PrefillInstance:
    """One prefill instance: a FIFO queue served in token-budgeted iterations."""

    def __init__(self, index: int, supernode: Supernode) -> None:
        self.index = index
        self._supernode = supernode
        self._queue: deque[RequestRecord] = deque()
        self._busy = False
        self.queued_tokens = 0
        # Fault hooks: iteration times are multiplied by `slowdown`, and the
        # router skips an instance that is not `available`.
        self.slowdown = 1.0
        self.available = True

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    def enqueue(self, record: RequestRecord) -> None:
        record.prefill_instance = self.index
        self._queue.append(record)
        self.queued_tokens += record.tokens_to_prefill - record.prefilled_tokens
        if not self._busy:
            self._start_iteration()

    def remove(self, record: RequestRecord) -> None:
        if record in self._queue:
            self._queue.remove(record)
            self.queued_tokens -= record.tokens_to_prefill - record.prefilled_tokens

    def _start_iteration(self) -> None:
        supernode = self._supernode
        events = supernode.events
        budget = supernode.profiles.deployment.prefill_batch_tokens
        planned: list[tuple[RequestRecord, PrefillChunk]] = []
        pool_tokens = 0
        for record in self._queue:
            if budget <= 0:
                break
            if record.prefill_started_s is None:
                pool_tokens += supernode.claim_prefix(record, self)
                record.prefill_started_s = events.now_s
            remaining = record.tokens_to_prefill - record.prefilled_tokens
            take = min(remaining, budget)
            start = record.cached_tokens + record.prefilled_tokens
            planned.append((record, PrefillChunk(start, start + take)))
            budget -= take
        if not planned:
            self._busy = False
            return

        self._busy = True
        chunks = [chunk for _, chunk in planned]
        # Blocks loaded from the pool must arrive before the iteration's
        # compute can use them, so the load adds to the iteration's time.
        duration_s = supernode.costs.pool_load_s(pool_tokens)
        duration_s += supernode.costs.prefill_s(chunks)
        duration_s *= self.slowdown
        events.schedule_in(duration_s, lambda: self._end_iteration(planned, duration_s))

    def _end_iteration(
        self, planned: list[tuple[RequestRecord, PrefillChunk]], duration_s: float
    ) -> None:
        now_s = self._supernode.events.now_s
        tokens = sum(chunk.tokens for record, chunk in planned if not record.cancelled)
        for record, chunk in planned:
            if record.cancelled:
                continue
            record.prefilled_tokens += chunk.tokens
            self.queued_tokens -= chunk.tokens
            if record.prefilled_tokens >= record.tokens_to_prefill:
                self._queue.remove(record)
                record.prefill_ended_s = now_s
                self._supernode.store_prefix(record)
                self._supernode.on_prefill_done(record)
        for observer in self._supernode.observers:
            observer.on_prefill_iteration(self.index, now_s, duration_s, tokens)
        self._start_iteration()


class Supernode:
    """The whole deployment: prefill and decode instances with their router.

    With `stream_tokens` (the default) every token reaches its sink as it is
    produced, with its exact emulated time. Without it, sinks get the first
    token and then only `on_finish`, whose record contains the count and
    the time of the last token. That is all `cmx simulate` needs, and it
    saves a call per sequence per step.
    """

    def __init__(
        self,
        profiles: Profiles,
        events: EventQueue,
        rng: np.random.Generator,
        *,
        stream_tokens: bool = True,
    ) -> None:
        self.profiles = profiles
        self.events = events
        self.rng = rng
        self.stream_tokens = stream_tokens
        self.observers: list[EngineObserver] = []
        self.costs = CostModel(profiles)
        deployment = profiles.deployment
        self.prefill = [
            PrefillInstance(i, self) for i in range(deployment.prefill_instances)
        ]
        self.decode = [
            DecodeInstance(i, self) for i in range(deployment.decode_instances)
        ]
        self.cache = (
            PrefixCache.from_profiles(profiles) if deployment.prefix_caching else None
        )
        self.router = make_router(deployment.routing_policy, self.cache)
        self.active_requests = 0

    def submit(self, spec: RequestSpec, sink: TokenSink) -> RequestRecord:
        """Accept a request arriving now; its output goes to `sink`.

        Raises NoInstanceAvailable when every prefill instance is marked
        unavailable, RequestTooLarge when the request's KV cache at its full
        length exceeds the memory of one decode die, and InvalidPrefix when
        its prefix block hashes do not fit its prompt.
        """
        candidates = [p for p in self.prefill if p.available]
        if not candidates:
            raise NoInstanceAvailable("no prefill instance is available")
        decode = self.decode[0]
        blocks = math.ceil(
            (spec.input_tokens + spec.output_tokens) / decode.kv_block_tokens
        )
        if spec.output_tokens > 1 and blocks > decode.kv_blocks_per_die:
            raise RequestTooLarge(
                f"request {spec.request_id} needs {blocks} KV blocks of "
                f"{decode.kv_block_tokens} tokens but a decode die has room "
                f"for {decode.kv_blocks_per_die}"
            )
        # Computed even with caching off, to check the hashes the same way.
        keys = cache_block_keys(
            spec.prefix_block_hashes,
            spec.block_tokens,
            spec.input_tokens,
            self.profiles.deployment.cache_block_tokens,
        )
        record = RequestRecord(spec=spec, sink=sink, arrival_s=self.events.now_s)
        record.kv_blocks = blocks
        record.cache_keys = keys if self.cache is not None else ()
        self.active_requests += 1
        instance = self.router.choose(record, candidates)
        instance.enqueue(record)
        logger.debug("request %s -> prefill %d", spec.request_id, instance.index)
        return record

    def metrics(self) -> SupernodeMetrics:
        """Return the current load of every instance."""
        return SupernodeMetrics(
            emulated_now_s=self.events.now_s,
            active_requests=self.active_requests,
            prefill_queued_requests=tuple(p.queued_requests for p in self.prefill),
            prefill_queued_tokens=tuple(p.queued_tokens for p in self.prefill),
            decode_batch_sizes=tuple(d.batch_size for d in self.decode),
            decode_tokens_generated=tuple(d.tokens_generated for d in self.decode),
            decode_waiting_requests=tuple(d.waiting_requests for d in self.decode),
            decode_kv_blocks_used=tuple(d.kv_blocks_used for d in self.decode),
            prefix_cache_hbm_blocks_used=(
                () if self.cache is None else tuple(len(t) for t in self.cache.hbm)
            ),
            prefix_cache_pool_blocks_used=(
                0 if self.cache is None else len(self.cache.pool)
            ),
        )

    def claim_prefix(self, record: RequestRecord, instance: PrefillInstance) -> int:
        """Reuse the request's cached leading blocks; return the pool tokens to load.

        Takes the longest chain found in the instance's HBM and then in the
        pool, short of the prompt's last token. The pool's part is kept only
        when loading it is faster than recomputing it. Sets the request's
        cached token counts and load time and lowers the instance's queued
        tokens.
        """
        cache = self.cache
        keys = record.cache_keys
        if cache is None or not keys:
            return 0
        block_tokens = cache.block_tokens
        usable = (record.spec.input_tokens - 1) // block_tokens
        found = cache.match(instance.index, keys)
        hbm_blocks = min(found.hbm_blocks, usable)
        found_in_pool = min(found.pool_blocks, usable - hbm_blocks)
        pool_blocks = found_in_pool
        start, end = (
            hbm_blocks * block_tokens,
            (hbm_blocks + pool_blocks) * block_tokens,
        )
        if pool_blocks and not self.costs.pool_load_is_cheaper(start, end):
            pool_blocks = 0
        cache.claim(
            instance.index, keys, CacheMatch(hbm_blocks, pool_blocks), found_in_pool
        )

        record.cached_tokens_hbm = hbm_blocks * block_tokens
        record.cached_tokens_pool = pool_blocks * block_tokens
        record.cached_tokens = record.cached_tokens_hbm + record.cached_tokens_pool
        record.cache_load_s = self.costs.pool_load_s(record.cached_tokens_pool)
        instance.queued_tokens -= record.cached_tokens
        return record.cached_tokens_pool

    def store_prefix(self, record: RequestRecord) -> None:
        """Cache the blocks of a request whose prefill has just ended."""
        if self.cache is not None and record.cache_keys:
            self.cache.store(record.prefill_instance, record.cache_keys)

    def cancel(self, record: RequestRecord) -> None:
        """Drop a request wherever it is; it produces no more tokens."""
        if record.cancelled or record.finished:
            return
        record.cancelled = True
        self.active_requests -= 1
        if record.prefill_instance >= 0:
            self.prefill[record.prefill_instance].remove(record)
        if record.decode_instance >= 0:
            self.decode[record.decode_instance].remove(record)

    def on_prefill_done(self, record: RequestRecord) -> None:
        """Start the KV transfer; release the first token when it ends."""
        record.kv_transfer_s = self.costs.kv_transfer_s(record.spec.input_tokens)
        self.events.schedule_in(record.kv_transfer_s, lambda: self._on_kv_ready(record))

    def emit_tokens(
        self, record: RequestRecord, emulated_at_s: Sequence[float]
    ) -> None:
        """Hand tokens to the request's sink and finish it after its last one."""
        first_index = record.tokens_out
        record.tokens_out += len(emulated_at_s)
        if record.first_token_s is None:
            record.first_token_s = emulated_at_s[0]
        record.last_token_s = emulated_at_s[-1]
        record.sink.on_tokens(first_index, emulated_at_s)
        if record.tokens_out >= record.spec.output_tokens:
            self.finish(record)

    def finish(self, record: RequestRecord) -> None:
        """Mark a request done after its last token and tell its sink."""
        record.finished = True
        self.active_requests -= 1
        record.sink.on_finish(record)

    def _on_kv_ready(self, record: RequestRecord) -> None:
        if record.cancelled:
            return
        self.emit_tokens(record, [self.events.now_s])
        if not record.finished:
            # NOTE: with every decode instance unavailable the request still
            # goes to one of them; failing it needs an error path to the sink.
            candidates = [d for d in self.decode if d.available] or self.decode
            instance = min(candidates, key=lambda d: (d.load, d.index))
            instance.admit(record)
