"""A decode instance: continuous batching with KV memory and TPOT admission.

Each step the instance admits waiting requests in arrival order while all of
these hold:

- the batch stays within `max_batch_per_npu` sequences per NPU;
- the request's KV cache at its full length (prompt plus output, in blocks of
  `kv_block_tokens`) fits in the blocks still free, so that an admitted
  sequence never has to be preempted;
- with `tpot_slo_ms` set, the predicted TPOT of the larger batch stays within
  the SLO (a lone sequence is always admitted).

Then every sequence in the batch gains one token plus each accepted MTP draft
token, drawn per sequence from the supernode's seeded generator. The batch
is kept in numpy arrays, so a step costs a few vector operations. Tokens go
to each sink only when the supernode streams them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from emulator.records import RequestRecord

if TYPE_CHECKING:
    from emulator.engine import Supernode

__all__ = ["DecodeInstance"]


class DecodeInstance:
    """One decode instance running continuous batching over its dies."""

    def __init__(self, index: int, supernode: Supernode) -> None:
        self.index = index
        self._supernode = supernode
        costs = supernode.costs
        deployment = supernode.profiles.deployment
        self._dies = costs.decode_dies_per_instance
        self.capacity = self._dies * costs.max_batch_per_die()
        self.kv_block_tokens = deployment.kv_block_tokens
        self.kv_blocks_per_die = (
            costs.kv_capacity_tokens_per_die() // deployment.kv_block_tokens
        )
        self.kv_blocks_total = self._dies * self.kv_blocks_per_die
        self.kv_blocks_used = 0
        self._tpot_slo_s = (
            None if deployment.tpot_slo_ms is None else deployment.tpot_slo_ms / 1e3
        )
        self._waiting: deque[RequestRecord] = deque()
        self._active: list[RequestRecord] = []
        # Per active sequence, aligned with _active: tokens still to
        # produce, current context length and reserved KV blocks.
        self._remaining = np.zeros(0, dtype=np.int64)
        self._context = np.zeros(0, dtype=np.int64)
        self._blocks = np.zeros(0, dtype=np.int64)
        self._context_sum = 0
        self._cancel_pending = False
        self._stepping = False
        self.steps = 0
        self.peak_batch_size = 0
        self.tokens_generated = 0
        # Fault hooks: step times are multiplied by `slowdown`, and the
        # router skips an instance that is not `available`.
        self.slowdown = 1.0
        self.available = True

    @property
    def load(self) -> int:
        return len(self._active) + len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._active)

    @property
    def waiting_requests(self) -> int:
        return len(self._waiting)

    def admit(self, record: RequestRecord) -> None:
        """Queue a request whose first token is out; it joins at a step start."""
        record.decode_instance = self.index
        self._waiting.append(record)
        if not self._stepping:
            self._start_step()

    def remove(self, record: RequestRecord) -> None:
        """Drop a cancelled request; an active one leaves at the step's end."""
        if record in self._waiting:
            self._waiting.remove(record)
        elif self._stepping:
            self._cancel_pending = True

    def _start_step(self) -> None:
        self._admit_waiting()
        if not self._active:
            self._stepping = False
            return

        self._stepping = True
        batch_size = len(self._active)
        self.peak_batch_size = max(self.peak_batch_size, batch_size)
        duration_s = self._step_s(batch_size, self._context_sum) * self.slowdown
        self._supernode.events.schedule_in(
            duration_s, lambda: self._end_step(duration_s)
        )

    def _step_s(self, batch_size: int, context_sum: float) -> float:
        # Sequences are spread evenly over the dies. The busiest die runs
        # ceil(n / dies) of them, at the mean context, and sets the step time.
        on_busiest_die = math.ceil(batch_size / self._dies)
        mean_context = context_sum / batch_size
        costs = self._supernode.costs
        return costs.decode_step_for(
            on_busiest_die, on_busiest_die * mean_context
        ).total_s

    def _admit_waiting(self) -> None:
        events = self._supernode.events
        admitted: list[RequestRecord] = []
        batch_size = len(self._active)
        context_sum = self._context_sum
        blocks_free = self.kv_blocks_total - self.kv_blocks_used
        while self._waiting and batch_size < self.capacity:
            record = self._waiting[0]
            context = record.spec.input_tokens + record.tokens_out
            if record.kv_blocks > blocks_free:
                break
            if batch_size and not self._meets_tpot_slo(
                batch_size + 1, context_sum + context
            ):
                break
            self._waiting.popleft()
            record.decode_admitted_s = events.now_s
            admitted.append(record)
            batch_size += 1
            context_sum += context
            blocks_free -= record.kv_blocks
        if admitted:
            self._append(admitted)

    def _meets_tpot_slo(self, batch_size: int, context_sum: int) -> bool:
        if self._tpot_slo_s is None:
            return True
        expected = self._supernode.costs.expected_tokens_per_step
        step_s = self._step_s(batch_size, context_sum) * self.slowdown
        return step_s / expected <= self._tpot_slo_s

    def _append(self, records: list[RequestRecord]) -> None:
        remaining = [r.spec.output_tokens - r.tokens_out for r in records]
        context = [r.spec.input_tokens + r.tokens_out for r in records]
        blocks = [r.kv_blocks for r in records]
        self._active.extend(records)
        self._remaining = np.concatenate([self._remaining, remaining])
        self._context = np.concatenate([self._context, context])
        self._blocks = np.concatenate([self._blocks, blocks])
        self._context_sum += sum(context)
        self.kv_blocks_used += sum(blocks)

    def _end_step(self, duration_s: float) -> None:
        self.steps += 1
        supernode = self._supernode
        now_s = supernode.events.now_s
        batch_size = len(self._active)
        if self._cancel_pending:
            self._drop_cancelled()

        made = np.minimum(1 + self._draw_accepted(batch_size), self._remaining)
        self._remaining -= made
        self._context += made
        tokens = int(made.sum())
        self._context_sum += tokens
        self.tokens_generated += tokens
        if supernode.stream_tokens:
            # Every sequence's tokens of this step share one instant, so one
            # tuple per token count serves them all.
            times_by_count: dict[int, tuple[float, ...]] = {}
            emit_tokens = supernode.emit_tokens
            for record, count in zip(self._active, made.tolist(), strict=True):
                if count:
                    times_s = times_by_count.get(count)
                    if times_s is None:
                        times_s = times_by_count[count] = (now_s,) * count
                    emit_tokens(record, times_s)
        self._release_finished(now_s)

        for observer in supernode.observers:
            observer.on_decode_step(
                self.index, now_s, duration_s, batch_size, tokens, self.kv_blocks_used
            )
        self._start_step()

    def _draw_accepted(self, batch_size: int) -> np.ndarray:
        deployment = self._supernode.profiles.deployment
        drafts = deployment.mtp_draft_tokens
        if not drafts:
            return np.zeros(batch_size, dtype=np.int64)
        return self._supernode.rng.binomial(
            drafts, deployment.mtp_acceptance, size=batch_size
        )

    def _drop_cancelled(self) -> None:
        self._cancel_pending = False
        for position, record in enumerate(self._active):
            if record.cancelled:
                self._remaining[position] = 0

    def _release_finished(self, now_s: float) -> None:
        done = self._remaining == 0
        if not done.any():
            return
        supernode = self._supernode
        for position in np.flatnonzero(done).tolist():
            record = self._active[position]
            if not supernode.stream_tokens and not record.cancelled:
                record.tokens_out = record.spec.output_tokens
                record.last_token_s = now_s
                supernode.finish(record)
        self._context_sum -= int(self._context[done].sum())
        self.kv_blocks_used -= int(self._blocks[done].sum())
        keep = ~done
        self._active = [
            record
            for record, kept in zip(self._active, keep.tolist(), strict=True)
            if kept
        ]
        self._remaining = self._remaining[keep]
        self._context = self._context[keep]
        self._blocks = self._blocks[keep]
