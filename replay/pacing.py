"""Sending on time: a precise wait for each due instant, and a watch on lateness.

asyncio wakes a sleeping task only at whole milliseconds of its selector's
timeout (Python's epoll and poll selectors round the timeout up to 1 ms), and
later still when the loop is busy. `Pacer.wait_until` therefore sleeps until
`spin_s` before the due instant and then yields to the loop with
`asyncio.sleep(0)` until the instant has passed, which lets other tasks run
while it waits. The spin costs CPU: about `spin_s` per send at most.

Lateness is never hidden: the runner stamps every send with the monotonic
`time.perf_counter()` clock, so a loop that runs late shows as send lag.
`LagMonitor` turns large lags into a warning while the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_SPIN_S", "LagMonitor", "Pacer"]

logger = logging.getLogger(__name__)

# A little above the 1 ms rounding of the selector timeout, so that the
# coarse sleep ends before the due instant on an idle machine.
DEFAULT_SPIN_S = 0.0012


class Pacer:
    """Waits for due instants of `time.perf_counter()`, unless `stop` is set.

    Call `close` when done, to end the task that watches `stop`.
    """

    def __init__(self, stop: asyncio.Event, spin_s: float = DEFAULT_SPIN_S) -> None:
        if spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, not {spin_s}")
        self._stop = stop
        self._spin_s = spin_s
        self._stop_waiter: asyncio.Task[bool] = asyncio.ensure_future(stop.wait())

    async def wait_until(self, due_at_s: float) -> bool:
        """Return at `due_at_s` or just after; False if `stop` was set first.

        When `due_at_s` has already passed, yields to the loop once, so that
        tasks started for earlier sends can begin their calls.
        """
        coarse_s = due_at_s - time.perf_counter() - self._spin_s
        if coarse_s > 0:
            await asyncio.wait({self._stop_waiter}, timeout=coarse_s)

        await asyncio.sleep(0)
        while time.perf_counter() < due_at_s and not self._stop.is_set():
            await asyncio.sleep(0)
        return not self._stop.is_set()

    async def wait_or_stop(self, future: asyncio.Future[Any]) -> bool:
        """Wait until `future` is done or `stop` is set; True if `future` is done."""
        waits: set[asyncio.Future[Any]] = {future, self._stop_waiter}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return future.done()

    def close(self) -> None:
        """Cancel the task that watches the stop event."""
        self._stop_waiter.cancel()


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
