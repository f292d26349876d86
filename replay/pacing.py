"""Sending on time: a precise wait for each due instant, and a watch on lateness.

asyncio wakes a sleeping task only at whole milliseconds of its selector's
timeout (Python's epoll and poll selectors round the timeout up to 1 ms), and
later still when the loop is busy. `Pacer.wait_until` therefore sleeps on the
loop until `handoff_s` before the due instant, then hands the rest of the wait
to a timer thread. That thread sleeps with `time.sleep`, which has
sub-millisecond resolution on Linux, and wakes the loop with
`call_soon_threadsafe`. A thread that sleeps, unlike a task that polls the
loop, costs no CPU while it waits, so the operating system also wakes the
process promptly on a busy machine. benchmarks/replay_send_lag.py measures
both clock paths side by side.

Lateness is never hidden: the runner stamps every send with the monotonic
`time.perf_counter()` clock, so a loop that runs late shows as send lag.
`LagMonitor` turns large lags into a warning while the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_HANDOFF_S", "LagMonitor", "Pacer"]

logger = logging.getLogger(__name__)

# Longer than the 1 ms rounding of the selector timeout plus a margin for a
# busy loop, so that the loop's own sleep ends before the due instant.
DEFAULT_HANDOFF_S = 0.002


class Pacer:
    """Waits for due instants of `time.perf_counter()`, unless `stop` is set.

    With `handoff_s` 0 only the event loop's timers are used. Call `close`
    when done, to end the timer thread and the task that watches `stop`.
    """

    def __init__(
        self, stop: asyncio.Event, handoff_s: float = DEFAULT_HANDOFF_S
    ) -> None:
        if handoff_s < 0:
            raise ValueError(f"handoff_s must be >= 0, not {handoff_s}")
        self._stop = stop
        self._handoff_s = handoff_s
        self._stop_waiter: asyncio.Task[bool] = asyncio.ensure_future(stop.wait())
        self._timer: _TimerThread | None = None
        if handoff_s > 0:
            self._timer = _TimerThread(asyncio.get_running_loop())

    async def wait_until(self, due_at_s: float) -> bool:
        """Return at `due_at_s` or just after; False if `stop` was set first.

        When `due_at_s` has already passed, yields to the loop once, so that
        tasks started for earlier sends can begin their calls.
        """
        coarse_s = due_at_s - time.perf_counter() - self._handoff_s
        if coarse_s > 0:
            await asyncio.wait({self._stop_waiter}, timeout=coarse_s)
        if self._stop.is_set():
            return False

        if self._timer is not None and time.perf_counter() < due_at_s:
            await self._timer.wake_at(due_at_s)
        else:
            await asyncio.sleep(0)
        # A guard: neither clock path is expected to return early.
        while time.perf_counter() < due_at_s:
            await asyncio.sleep(0)
        return not self._stop.is_set()

    async def wait_or_stop(self, future: asyncio.Future[Any]) -> bool:
        """Wait until `future` is done or `stop` is set; True if `future` is done."""
        waits: set[asyncio.Future[Any]] = {future, self._stop_waiter}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return future.done()

    def close(self) -> None:
        """End the timer thread and the task that watches the stop event."""
        self._stop_waiter.cancel()
        if self._timer is not None:
            self._timer.close()


class _TimerThread:
    """A thread that sleeps until each requested instant and then wakes the loop.

    Requests come one at a time from the sender, so a single thread serves
    them in order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._requests: queue.SimpleQueue[tuple[float, asyncio.Future[None]] | None]
        self._requests = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name="replay-timer", daemon=True
        )
        self._thread.start()

    def wake_at(self, due_at_s: float) -> asyncio.Future[None]:
        """Return a future that the thread completes at `due_at_s`."""
        future = self._loop.create_future()
        self._requests.put((due_at_s, future))
        return future

    def close(self) -> None:
        """Ask the thread to end once its current sleep is over."""
        self._requests.put(None)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            due_at_s, future = request
            delay_s = due_at_s - time.perf_counter()
            if delay_s > 0:
                time.sleep(delay_s)
            try:
                self._loop.call_soon_threadsafe(_complete, future)
            except RuntimeError:
                return  # the loop has closed, so no task waits any more


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LagMonitor:
    """Counts sends later than `threshold_ms` and logs a warning about them.

    At most one warning is logged every `interval_s` seconds of `clock`. It
    gives the number of sends late since the last warning and the worst one.
    `late_sends` and `worst_ms` cover the whole run.
    """

    def __init__(
        self,
        threshold_ms: float,
        description: str,
        *,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold_ms = threshold_ms
        self._description = description
        self._interval_s = interval_s
        self._clock = clock
        self._last_warning_at_s: float | None = None
        self._sends_since_warning = 0
        self._late_since_warning = 0
        self._worst_since_warning_ms = 0.0
        self.sends = 0
        self.late_sends = 0
        self.worst_ms = 0.0

    def record(self, lateness_ms: float) -> None:
        """Record one send's lateness in ms, warning when it is due."""
        self.sends += 1
        self._sends_since_warning += 1
        self.worst_ms = max(self.worst_ms, lateness_ms)
        if lateness_ms <= self.threshold_ms:
            return

        self.late_sends += 1
        self._late_since_warning += 1
        self._worst_since_warning_ms = max(self._worst_since_warning_ms, lateness_ms)
        now_s = self._clock()
        if (
            self._last_warning_at_s is not None
            and now_s - self._last_warning_at_s < self._interval_s
        ):
            return
        logger.warning(
            "replay is behind schedule: %d of the last %d sends started more than "
            "%g ms late (worst %.1f ms). This machine cannot keep up with %s, so "
            "requests reach the target later than the trace says",
            self._late_since_warning,
            self._sends_since_warning,
            self.threshold_ms,
            self._worst_since_warning_ms,
            self._description,
        )
        self._last_warning_at_s = now_s
        self._sends_since_warning = 0
        self._late_since_warning = 0
        self._worst_since_warning_ms = 0.0
