"""Sending on time: a precise wait for each due instant, and a watch on lateness.

asyncio wakes a sleeping task only at whole milliseconds of its selector's
timeout (Python's epoll and poll selectors round the timeout up to 1 ms), and
later still when the loop is busy. `Pacer.wait_until` therefore waits on a
precise clock:

- on Linux, for the whole wait, a timerfd on CLOCK_MONOTONIC (the clock of
  `time.perf_counter`) that the loop watches like a socket, so that the
  kernel wakes the loop itself at the instant, with no thread and no wait
  for the GIL;
- elsewhere, the loop sleeps until `handoff_s` before the due instant and a
  timer thread sleeps the rest with `time.sleep`, then wakes the loop with
  `call_soon_threadsafe`.

`wait_until` can also run the send itself, as `on_time`, in the callback in
which the precise clock fires; the sender's task then resumes one turn of
the loop later, after the send. benchmarks/replay_send_lag.py measures the
clock paths side by side.

Lateness is never hidden: the runner stamps every send with the monotonic
`time.perf_counter()` clock, so a loop that runs late shows as send lag.
`LagMonitor` turns large lags into a warning while the run goes on.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["DEFAULT_HANDOFF_S", "LagMonitor", "Pacer", "precise_clock_name"]

logger = logging.getLogger(__name__)

# Longer than the 1 ms rounding of the selector timeout plus a margin for a
# busy loop, so that the loop's own sleep ends before the due instant.
DEFAULT_HANDOFF_S = 0.002

# Sends already due when the sender reaches them go out at once, without a
# turn of the loop, up to this many in a row.
_MAX_OVERDUE_IN_A_ROW = 16


class Pacer:
    """Waits for due instants of `time.perf_counter()`, unless `stop` is set.

    With `handoff_s` 0 only the event loop's timers are used. Call `close`
    when done, to release the precise clock and the task that watches `stop`.
    """

    def __init__(
        self, stop: asyncio.Event, handoff_s: float = DEFAULT_HANDOFF_S
    ) -> None:
        if handoff_s < 0:
            raise ValueError(f"handoff_s must be >= 0, not {handoff_s}")
        self._stop = stop
        self._handoff_s = handoff_s
        self._stop_waiter: asyncio.Task[bool] = asyncio.ensure_future(stop.wait())
        self._clock: _PreciseClock | None = None
        self._overdue_in_a_row = 0
        if handoff_s > 0:
            self._clock = _make_precise_clock(asyncio.get_running_loop())
            self._stop_waiter.add_done_callback(self._abandon_wait)

    @property
    def clock_name(self) -> str:
        """The clock of the last part of each wait: timerfd, thread or loop."""
        return "loop" if self._clock is None else self._clock.name

    async def wait_until(
        self, due_at_s: float, on_time: Callable[[], None] | None = None
    ) -> bool:
        """Return at `due_at_s` or just after; False if `stop` was set first.

        `on_time`, when given, runs once at the due instant, before this
        returns True, in the loop callback that the precise clock wakes
        (it never runs when this returns False). When `due_at_s` has
        already passed, returns at once, but yields to the loop after
        `_MAX_OVERDUE_IN_A_ROW` such returns in a row, so that a sender that
        has fallen behind still lets calls progress.
        """
        ran = False
        if time.perf_counter() >= due_at_s:
            if self._stop.is_set():
                return False
            self._overdue_in_a_row += 1
            if self._overdue_in_a_row > _MAX_OVERDUE_IN_A_ROW:
                self._overdue_in_a_row = 0
                await asyncio.sleep(0)
        else:
            self._overdue_in_a_row = 0
            clock = self._clock
            if clock is None or not clock.covers_whole_wait:
                coarse_s = due_at_s - time.perf_counter() - self._handoff_s
                if coarse_s > 0:
                    await asyncio.wait({self._stop_waiter}, timeout=coarse_s)
            if self._stop.is_set():
                return False
            if clock is not None and time.perf_counter() < due_at_s:
                stop = self._stop

                def at_due() -> None:
                    nonlocal ran
                    if on_time is not None and not stop.is_set():
                        ran = True
                        on_time()

                await clock.call_at(due_at_s, at_due)
            else:
                await asyncio.sleep(0)
        # A guard: neither clock path is expected to return early, except
        # after a stop.
        while time.perf_counter() < due_at_s and not self._stop.is_set():
            await asyncio.sleep(0)
        if ran:
            return True
        if self._stop.is_set():
            return False
        if on_time is not None:
            on_time()
        return True

    async def wait_or_stop(self, future: asyncio.Future[Any]) -> bool:
        """Wait until `future` is done or `stop` is set; True if `future` is done."""
        waits: set[asyncio.Future[Any]] = {future, self._stop_waiter}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return future.done()

    def _abandon_wait(self, _: object) -> None:
        if self._clock is not None:
            self._clock.abandon()

    def close(self) -> None:
        """Release the precise clock and the task that watches the stop event."""
        self._stop_waiter.cancel()
        if self._clock is not None:
            self._clock.close()


def precise_clock_name() -> str:
    """Return the precise clock `Pacer` uses on this machine: "timerfd" or "thread"."""
    return "timerfd" if _timerfd_api() is not None else "thread"


class _PreciseClock(Protocol):
    name: str
    # Whether the clock waits the whole way, rather than the last `handoff_s`.
    covers_whole_wait: bool

    def call_at(
        self, due_at_s: float, callback: Callable[[], None]
    ) -> asyncio.Future[None]:
        """Run `callback` on the loop at `due_at_s`, then complete the future.

        An exception from `callback` is set on the future instead.
        """
        ...

    def abandon(self) -> None:
        """Complete the pending future now, without running its callback."""
        ...

    def close(self) -> None: ...


def _make_precise_clock(loop: asyncio.AbstractEventLoop) -> _PreciseClock:
    api = _timerfd_api()
    if api is not None:
        try:
            return _TimerFd(loop, api)
        except (OSError, NotImplementedError) as error:
            # NotImplementedError: an event loop that cannot watch a file.
            logger.debug("no timerfd (%r); using a timer thread", error)
    return _TimerThread(loop)


def _fire(future: asyncio.Future[None], callback: Callable[[], None]) -> None:
    if future.done():
        return
    try:
        callback()
    except BaseException as error:  # handed to the waiting task
        future.set_exception(error)
    else:
        future.set_result(None)


class _TimerThread:
    """A thread that sleeps until each requested instant and then wakes the loop.

    Requests come one at a time from the sender, so a single thread serves
    them in order.
    """

    name = "thread"
    covers_whole_wait = False

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: asyncio.Future[None] | None = None
        self._requests: queue.SimpleQueue[
            tuple[float, asyncio.Future[None], Callable[[], None]] | None
        ]
        self._requests = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name="replay-timer", daemon=True
        )
        self._thread.start()

    def call_at(
        self, due_at_s: float, callback: Callable[[], None]
    ) -> asyncio.Future[None]:
        future = self._loop.create_future()
        self._pending = future
        self._requests.put((due_at_s, future, callback))
        return future

    def abandon(self) -> None:
        # The thread still wakes the loop, and _fire finds the future done.
        if self._pending is not None and not self._pending.done():
            self._pending.set_result(None)

    def close(self) -> None:
        """Ask the thread to end once its current sleep is over."""
        self._requests.put(None)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            due_at_s, future, callback = request
            delay_s = due_at_s - time.perf_counter()
            if delay_s > 0:
                time.sleep(delay_s)
            try:
                self._loop.call_soon_threadsafe(_fire, future, callback)
            except RuntimeError:
                return  # the loop has closed, so no task waits any more


class _TimerFdApi(Protocol):
    def create(self) -> int: ...

    def arm(self, fd: int, due_at_ns: int) -> None: ...


class _TimerFd:
    """A Linux timerfd, watched by the loop, that fires at absolute instants.

    One instant is armed at a time, as the sender waits for one send at a
    time.
    """

    name = "timerfd"
    covers_whole_wait = True

    def __init__(self, loop: asyncio.AbstractEventLoop, api: _TimerFdApi) -> None:
        self._loop = loop
        self._api = api
        self._fd = api.create()
        self._pending: tuple[asyncio.Future[None], Callable[[], None]] | None = None
        try:
            loop.add_reader(self._fd, self._on_readable)
        except BaseException:
            os.close(self._fd)
            raise

    def call_at(
        self, due_at_s: float, callback: Callable[[], None]
    ) -> asyncio.Future[None]:
        future = self._loop.create_future()
        self._pending = (future, callback)
        self._arm(due_at_s)
        return future

    def abandon(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._api.arm(self._fd, 0)  # 0 disarms
            if not pending[0].done():
                pending[0].set_result(None)

    def close(self) -> None:
        self.abandon()
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

    def _arm(self, at_s: float) -> None:
        # Nanoseconds of CLOCK_MONOTONIC; 1 ns at the least, as 0 disarms.
        self._api.arm(self._fd, max(1, round(at_s * 1e9)))

    def _on_readable(self) -> None:
        # Disarming clears the expiry that made the fd readable, without a
        # read(2), which would let other threads take the GIL.
        self._api.arm(self._fd, 0)
        pending, self._pending = self._pending, None
        if pending is not None:
            _fire(*pending)


_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


class _LibcTimerFd:
    """timerfd through the C library, for Pythons before 3.13."""

    def __init__(self) -> None:
        # timerfd_create and timerfd_settime return at once, so PyDLL keeps
        # the GIL during them. CDLL would release it and could then wait for
        # another thread to give it back.
        libc = ctypes.PyDLL(None, use_errno=True)
        self._create = libc.timerfd_create
        self._create.argtypes = [ctypes.c_int, ctypes.c_int]
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_ITimerSpec),
            ctypes.c_void_p,
        ]

    def create(self) -> int:
        fd = int(self._create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return fd

    def arm(self, fd: int, due_at_ns: int) -> None:
        value = _TimeSpec(due_at_ns // 1_000_000_000, due_at_ns % 1_000_000_000)
        spec = _ITimerSpec(_TimeSpec(0, 0), value)
        if self._settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))


class _OsTimerFd:
    """timerfd through the os module of Python 3.13 and later."""

    # Typed as Any: the type stubs of older Pythons have no timerfd names.
    _os: Any = os

    def create(self) -> int:
        flags = self._os.TFD_NONBLOCK | self._os.TFD_CLOEXEC
        return int(self._os.timerfd_create(time.CLOCK_MONOTONIC, flags=flags))

    def arm(self, fd: int, due_at_ns: int) -> None:
        flags = self._os.TFD_TIMER_ABSTIME
        self._os.timerfd_settime_ns(fd, flags=flags, initial=due_at_ns)


def _timerfd_api() -> _TimerFdApi | None:
    """Return the timerfd calls, or None unless `perf_counter` reads CLOCK_MONOTONIC."""
    if not sys.platform.startswith("linux"):
        return None
    implementation = time.get_clock_info("perf_counter").implementation
    if "CLOCK_MONOTONIC" not in implementation or "RAW" in implementation:
        return None
    if hasattr(os, "timerfd_create"):
        return _OsTimerFd()
    try:
        return _LibcTimerFd()
    except (OSError, AttributeError):
        return None


# A report claims that the machine cannot keep up only when more than this
# share of the sends since the previous report were late, and more than one.
# It also claims so after this many late sends in a row, each later than the
# one before, because that is how a growing backlog shows.
_BEHIND_SHARE = 0.01
_BEHIND_RISING_RUN = 5


class LagMonitor:
    """Counts sends later than `threshold_ms` and reports them in log warnings.

    A report is logged `interval_s` seconds of `clock` after the first late
    send since the previous report, or at `flush`, so at most one every
    `interval_s`. It gives the number of late sends among the sends since
    the previous report and the worst lateness. It claims that the machine
    cannot keep up only when the late sends are more than 1% of those sends
    (and more than one), or when 5 late sends in a row each started later
    than the one before. `late_sends` and `worst_ms` cover the whole run.
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
        # When the first late send since the last report happened, if any.
        self._first_late_at_s: float | None = None
        self._sends_since_report = 0
        self._late_since_report = 0
        self._worst_since_report_ms = 0.0
        self._previous_lateness_ms: float | None = None
        self._rising_run = 0
        self._longest_rising_run = 0
        self.sends = 0
        self.late_sends = 0
        self.worst_ms = 0.0

    def record(self, lateness_ms: float) -> None:
        """Record one send's lateness in ms, logging a report when one is due."""
        self.sends += 1
        self._sends_since_report += 1
        self.worst_ms = max(self.worst_ms, lateness_ms)
        if lateness_ms > self.threshold_ms:
            self._record_late(lateness_ms)
        else:
            self._previous_lateness_ms = None
            self._rising_run = 0

        if (
            self._first_late_at_s is not None
            and self._clock() - self._first_late_at_s >= self._interval_s
        ):
            self._report()

    def flush(self) -> None:
        """Log the report of the late sends not yet reported, if there are any."""
        if self._late_since_report:
            self._report()

    def _record_late(self, lateness_ms: float) -> None:
        self.late_sends += 1
        self._late_since_report += 1
        self._worst_since_report_ms = max(self._worst_since_report_ms, lateness_ms)
        if self._first_late_at_s is None:
            self._first_late_at_s = self._clock()

        previous_ms = self._previous_lateness_ms
        if previous_ms is not None and lateness_ms > previous_ms:
            self._rising_run += 1
        else:
            self._rising_run = 1
        self._previous_lateness_ms = lateness_ms
        self._longest_rising_run = max(self._longest_rising_run, self._rising_run)

    def _report(self) -> None:
        late, sends = self._late_since_report, self._sends_since_report
        behind = (late > 1 and late > _BEHIND_SHARE * sends) or (
            self._longest_rising_run >= _BEHIND_RISING_RUN
        )
        if behind:
            logger.warning(
                "replay is behind schedule: %d of the last %d sends started more "
                "than %g ms late (worst %.1f ms). This machine cannot keep up with "
                "%s, so requests reach the target later than the trace says",
                late,
                sends,
                self.threshold_ms,
                self._worst_since_report_ms,
                self._description,
            )
        else:
            logger.warning(
                "%d of the last %d sends started more than %g ms late (worst %.1f ms)",
                late,
                sends,
                self.threshold_ms,
                self._worst_since_report_ms,
            )
        self._first_late_at_s = None
        self._sends_since_report = 0
        self._late_since_report = 0
        self._worst_since_report_ms = 0.0
        self._longest_rising_run = self._rising_run
