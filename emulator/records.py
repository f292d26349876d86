"""Requests in the model, and the interfaces that the model reports through.

`RequestSpec` is what a client asks for, `RequestRecord` its progress through
the model, `TokenSink` the receiver of its output, and `EngineObserver` a
listener to every prefill iteration and decode step (for time series).
All times are emulated seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from emulator.errors import EmulatorError

__all__ = [
    "EngineObserver",
    "NoInstanceAvailable",
    "RequestRecord",
    "RequestSpec",
    "RequestTooLarge",
    "TokenSink",
]


class NoInstanceAvailable(EmulatorError):
    """Every instance of the pool a request needs is marked unavailable."""


class RequestTooLarge(EmulatorError):
    """A request's KV cache can never fit in a decode instance's memory."""


@dataclass(frozen=True)
class RequestSpec:
    """A client's request, validated before it reaches the model."""

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
        """The last token was produced; `record` contains the request's timings."""


class EngineObserver(Protocol):
    """Listener to the work of every instance, called as each piece ends."""

    def on_prefill_iteration(
        self, instance: int, ended_at_s: float, duration_s: float, tokens: int
    ) -> None:
        """Prefill `instance` finished an iteration over `tokens` prompt tokens."""

    def on_decode_step(
        self,
        instance: int,
        ended_at_s: float,
        duration_s: float,
        batch_size: int,
        tokens: int,
        kv_blocks_used: int,
    ) -> None:
        """Decode `instance` finished a step of `batch_size` sequences.

        `tokens` were produced; `kv_blocks_used` is the instance's KV cache
        occupancy after the step's finished sequences were released.
        """


@dataclass(eq=False)
class RequestRecord:
    """A request's progress through the model, in emulated seconds.

    When the supernode does not stream tokens (`stream_tokens=False`),
    `tokens_out` and `last_token_s` are brought up to date only when the
    request finishes or is cancelled.
    """

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
    # Prompt tokens reused from the prefix cache, in all and per tier, and
    # the time spent loading the pool's share; set when prefill starts.
    cached_tokens: int = 0
    cached_tokens_hbm: int = 0
    cached_tokens_pool: int = 0
    cache_load_s: float = 0.0
    kv_blocks: int = 0
    waiting_since_s: float = field(default=0.0, repr=False)
    # Keys of the prompt's cacheable blocks (see `emulator.cache`).
    cache_keys: tuple[int, ...] = field(default=(), repr=False)

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
        """Time from the first prefill iteration to the last, cache load included."""
        if self.prefill_started_s is None or self.prefill_ended_s is None:
            return 0.0
        return self.prefill_ended_s - self.prefill_started_s
