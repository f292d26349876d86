"""The supernode model: routing, prefill instances, KV transfer, decode batching.

Requests flow as in a PD-disaggregated deployment:

1. arrival -> the least-loaded prefill instance's FIFO queue;
2. prefill in iterations of at most `prefill_batch_tokens` prompt tokens
   (long prompts are chunked across iterations);
3. KV transfer to a decode instance over RDMA; the first output token, made
   by prefill, is released when the transfer ends, so TTFT includes it;
4. continuous batching on the decode instance: every step admits waiting
   requests up to the batch limit, and each sequence gains one token plus
   each accepted MTP draft token.

All times are emulated seconds on the `EventQueue` passed in.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from emulator.core import EventQueue
from emulator.costs import CostModel, PrefillChunk
from emulator.errors import EmulatorError
from emulator.profiles import Profiles

__all__ = [
    "NoInstanceAvailable",
    "RequestRecord",
    "RequestSpec",
    "Supernode",
    "SupernodeMetrics",
    "TokenSink",
]

logger = logging.getLogger(__name__)


class NoInstanceAvailable(EmulatorError):
    """Every instance of the pool a request needs is marked unavailable."""


@dataclass(frozen=True)
class SupernodeMetrics:
    """A snapshot of the model's load, for metrics endpoints and tests."""

    emulated_now_s: float
    active_requests: int
    prefill_queued_requests: tuple[int, ...]
    prefill_queued_tokens: tuple[int, ...]
    decode_batch_sizes: tuple[int, ...]
    decode_tokens_generated: tuple[int, ...]


@dataclass(frozen=True)
class RequestSpec:
    """What a client asks for; validated before it reaches the model."""

    request_id: str
    input_tokens: int
    output_tokens: int
    prefix_block_hashes: tuple[int, ...] = ()
    block_tokens: int = 0
    session_id: str = ""


class TokenSink(Protocol):
    """Receiver of one request's output as the model produces it."""

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        """Tokens first_index, first_index + 1, ... were produced at these times."""

    def on_finish(self, record: RequestRecord) -> None:
        """The last token was produced; `record` holds the request's timings."""


@dataclass(eq=False)
class RequestRecord:
    """A request's progress through the model, in emulated seconds."""

    spec: RequestSpec
    sink: TokenSink
    arrival_s: float
    prefill_instance: int = -1
    decode_instance: int = -1
    prefilled_tokens: int = 0
    prefill_started_s: float | None = None
    prefill_ended_s: float | None = None
    kv_transfer_s: float = 0.0
    decode_admitted_s: float | None = None
    tokens_out: int = 0
    first_token_s: float | None = None
    last_token_s: float | None = None
    cancelled: bool = False
    finished: bool = False
    cached_tokens: int = 0
    waiting_since_s: float = field(default=0.0, repr=False)

    @property
    def tokens_to_prefill(self) -> int:
        return self.spec.input_tokens - self.cached_tokens

    @property
    def queue_s(self) -> float:
        """Time spent waiting for prefill and for a decode slot."""
        waited = 0.0
        if self.prefill_started_s is not None:
            waited += self.prefill_started_s - self.arrival_s
        if self.decode_admitted_s is not None and self.prefill_ended_s is not None:
            ready_s = self.prefill_ended_s + self.kv_transfer_s
            waited += max(0.0, self.decode_admitted_s - ready_s)
        return waited

    @property
    def prefill_s(self) -> float:
        if self.prefill_started_s is None or self.prefill_ended_s is None:
            return 0.0
        return self.prefill_ended_s - self.prefill_started_s


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
        events = self._supernode.events
        budget = self._supernode.profiles.deployment.prefill_batch_tokens
        planned: list[tuple[RequestRecord, PrefillChunk]] = []
        for record in self._queue:
            if budget <= 0:
                break
            remaining = record.tokens_to_prefill - record.prefilled_tokens
            take = min(remaining, budget)
            start = record.cached_tokens + record.prefilled_tokens
            planned.append((record, PrefillChunk(start, start + take)))
            if record.prefill_started_s is None:
                record.prefill_started_s = events.now_s
            budget -= take
        if not planned:
            self._busy = False
            return

        self._busy = True
        chunks = [chunk for _, chunk in planned]
        duration_s = self._supernode.costs.prefill_s(chunks) * self.slowdown
        events.schedule_in(duration_s, lambda: self._end_iteration(planned))

    def _end_iteration(self, planned: list[tuple[RequestRecord, PrefillChunk]]) -> None:
        now_s = self._supernode.events.now_s
        for record, chunk in planned:
            if record.cancelled:
                continue
            record.prefilled_tokens += chunk.tokens
            self.queued_tokens -= chunk.tokens
            if record.prefilled_tokens >= record.tokens_to_prefill:
                self._queue.remove(record)
                record.prefill_ended_s = now_s
                self._supernode.on_prefill_done(record)
        self._start_iteration()


class DecodeInstance:
    """One decode instance running continuous batching over its dies."""

    def __init__(self, index: int, supernode: Supernode) -> None:
        self.index = index
        self._supernode = supernode
        costs = supernode.costs
        self._dies = costs.decode_dies_per_instance
        self.capacity = self._dies * costs.max_batch_per_die()
        self._waiting: deque[RequestRecord] = deque()
        self._active: list[RequestRecord] = []
        self._context_sum = 0
        self._stepping = False
        self.steps = 0
        self.peak_batch_size = 0
        self.tokens_generated = 0
        # Fault hooks, as on PrefillInstance.
        self.slowdown = 1.0
        self.available = True

    @property
    def load(self) -> int:
        return len(self._active) + len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._active)

    def admit(self, record: RequestRecord) -> None:
        record.decode_instance = self.index
        self._waiting.append(record)
        if not self._stepping:
            self._start_step()

    def remove(self, record: RequestRecord) -> None:
        if record in self._waiting:
            self._waiting.remove(record)
        elif record in self._active:
            self._active.remove(record)
            self._context_sum -= record.spec.input_tokens + record.tokens_out

    def _start_step(self) -> None:
        events = self._supernode.events
        while self._waiting and len(self._active) < self.capacity:
            record = self._waiting.popleft()
            record.decode_admitted_s = events.now_s
            self._active.append(record)
            self._context_sum += record.spec.input_tokens + record.tokens_out
        if not self._active:
            self._stepping = False
            return

        self._stepping = True
        self.peak_batch_size = max(self.peak_batch_size, len(self._active))
        # Sequences are spread evenly over the dies; the busiest die holds
        # ceil(n / dies) of them, at the mean context, and sets the step time.
        on_busiest_die = math.ceil(len(self._active) / self._dies)
        mean_context = round(self._context_sum / len(self._active))
        step_s = self._supernode.costs.decode_step_s([mean_context] * on_busiest_die)
        duration_s = step_s * self.slowdown
        batch = list(self._active)
        events.schedule_in(duration_s, lambda: self._end_step(batch))

    def _end_step(self, batch: list[RequestRecord]) -> None:
        self.steps += 1
        supernode = self._supernode
        now_s = supernode.events.now_s
        deployment = supernode.profiles.deployment
        drafts = deployment.mtp_draft_tokens
        accepted = (
            supernode.rng.binomial(drafts, deployment.mtp_acceptance, size=len(batch))
            if drafts
            else np.zeros(len(batch), dtype=np.int64)
        )
        for record, extra in zip(batch, accepted.tolist(), strict=True):
            if record.cancelled or record.finished:
                continue
            remaining = record.spec.output_tokens - record.tokens_out
            made = min(1 + int(extra), remaining)
            self._context_sum += made
            self.tokens_generated += made
            supernode.emit_tokens(record, [now_s] * made)
            if record.finished:
                self._active.remove(record)
                self._context_sum -= record.spec.input_tokens + record.tokens_out
        self._start_step()


class Supernode:
    """The whole deployment: prefill and decode instances with their router."""

    def __init__(
        self, profiles: Profiles, events: EventQueue, rng: np.random.Generator
    ) -> None:
        self.profiles = profiles
        self.events = events
        self.rng = rng
        self.costs = CostModel(profiles)
        deployment = profiles.deployment
        self.prefill = [
            PrefillInstance(i, self) for i in range(deployment.prefill_instances)
        ]
        self.decode = [
            DecodeInstance(i, self) for i in range(deployment.decode_instances)
        ]
        self.active_requests = 0

    def submit(self, spec: RequestSpec, sink: TokenSink) -> RequestRecord:
        """Accept a request arriving now; its output goes to `sink`."""
        candidates = [p for p in self.prefill if p.available]
        if not candidates:
            raise NoInstanceAvailable("no prefill instance is available")
        record = RequestRecord(spec=spec, sink=sink, arrival_s=self.events.now_s)
        self.active_requests += 1
        instance = min(candidates, key=lambda p: (p.queued_tokens, p.index))
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
        )

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

    def emit_tokens(self, record: RequestRecord, emulated_at_s: list[float]) -> None:
        """Hand tokens to the request's sink and finish it after its last one."""
        first_index = record.tokens_out
        record.tokens_out += len(emulated_at_s)
        if record.first_token_s is None:
            record.first_token_s = emulated_at_s[0]
        record.last_token_s = emulated_at_s[-1]
        record.sink.on_tokens(first_index, emulated_at_s)
        if record.tokens_out >= record.spec.output_tokens:
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
