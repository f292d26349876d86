"""Discrete-event core: a queue of callbacks ordered by emulated time.

The core owns the emulated clock and nothing else. It does not know whether
it runs in virtual time (jumping from event to event) or paced against the
wall clock; `PacedClock` is the bridge used by the gRPC server.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EventQueue", "PacedClock", "ScheduledEvent"]


@dataclass(order=True)
class ScheduledEvent:
    """A callback due at `at_s` emulated seconds; ties run in schedule order."""

    at_s: float
    sequence: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Keep the callback from running; it stays queued until popped."""
        self.cancelled = True


class EventQueue:
    """Pending events in emulated time, starting at 0 s.

    `now_s` never goes backwards: scheduling in the past raises ValueError,
    and running events advances `now_s` to each event's due time.
    """

    def __init__(self) -> None:
        self._heap: list[ScheduledEvent] = []
        self._sequence = itertools.count()
        self.now_s = 0.0

    def schedule_at(self, at_s: float, callback: Callable[[], None]) -> ScheduledEvent:
        """Run `callback` when emulated time reaches `at_s` (seconds)."""
        if at_s < self.now_s:
            raise ValueError(
                f"cannot schedule at {at_s} s, before now ({self.now_s} s)"
            )
        event = ScheduledEvent(at_s, next(self._sequence), callback)
        heapq.heappush(self._heap, event)
        return event

    def schedule_in(
        self, delay_s: float, callback: Callable[[], None]
    ) -> ScheduledEvent:
        """Run `callback` `delay_s` seconds after the current emulated time."""
        return self.schedule_at(self.now_s + delay_s, callback)

    def next_at_s(self) -> float | None:
        """Due time of the earliest pending event, or None when there is none."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].at_s if self._heap else None

    def run_until(self, until_s: float) -> int:
        """Run every event due at or before `until_s`, then set now to it.

        Returns the number of callbacks run. Callbacks may schedule more
        events; those due by `until_s` run in the same call.
        """
        ran = 0
        while self._heap and self._heap[0].at_s <= until_s:
            event = heapq.heappop(self._heap)
            if event.cancelled:
                continue
            self.now_s = event.at_s
            event.callback()
            ran += 1
        self.now_s = max(self.now_s, until_s)
        return ran

    def run(self) -> int:
        """Run events until none is left (virtual time); return how many ran."""
        ran = 0
        while (next_at := self.next_at_s()) is not None:
            ran += self.run_until(next_at)
        return ran

    def __len__(self) -> int:
        return sum(1 for event in self._heap if not event.cancelled)


class PacedClock:
    """Maps the wall clock to emulated time: emulated = wall elapsed x scale.

    A `time_scale` of 10 runs emulated time ten times faster than the wall
    clock. Based on `time.perf_counter`, which is monotonic.
    """

    def __init__(self, time_scale: float = 1.0) -> None:
        if not (time_scale > 0 and time_scale < float("inf")):
            raise ValueError(f"time_scale must be a positive number, got {time_scale}")
        self.time_scale = time_scale
        self._started_at = time.perf_counter()

    def now_s(self) -> float:
        """Emulated seconds since the clock was made."""
        return (time.perf_counter() - self._started_at) * self.time_scale

    def wall_delay_s(self, emulated_at_s: float) -> float:
        """Wall seconds from now until emulated time `emulated_at_s` (>= 0)."""
        return max(0.0, (emulated_at_s - self.now_s()) / self.time_scale)
