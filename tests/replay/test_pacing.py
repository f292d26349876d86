"""Tests of replay.pacing: the due-time wait and the lateness warning."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import pytest

from replay import pacing
from replay.pacing import LagMonitor, Pacer, precise_clock_name


class FakeClock:
    """Clock that only moves when a test sets `now_s`."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


# Each clock path: the Linux timerfd, the timer thread, the loop's timers only.
CLOCKS = ["timerfd", "thread", "loop"]


@pytest.fixture(params=CLOCKS)
def clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make `Pacer` use one clock path; returns its name."""
    name = str(request.param)
    if name == "timerfd" and precise_clock_name() != "timerfd":
        pytest.skip("no timerfd on this machine")
    if name == "thread":
        monkeypatch.setattr(pacing, "_timerfd_api", lambda: None)
    return name


def make_pacer(clock: str, stop: asyncio.Event | None = None) -> Pacer:
    handoff_s = 0.0 if clock == "loop" else 0.0012
    pacer = Pacer(stop or asyncio.Event(), handoff_s)
    assert pacer.clock_name == clock
    return pacer


def stamp(instants: list[float]) -> None:
    instants.append(time.perf_counter())


def run_pacer(clock: str, delays_s: list[float]) -> list[tuple[bool, float, float]]:
    """Wait for each delay in turn, with an on-time action.

    Returns (result, action instant - due, return instant - action instant)
    per wait.
    """

    async def scenario() -> list[tuple[bool, float, float]]:
        pacer = make_pacer(clock)
        results = []
        for delay_s in delays_s:
            due_at_s = time.perf_counter() + delay_s
            acted_at_s: list[float] = []
            ok = await pacer.wait_until(due_at_s, partial(stamp, acted_at_s))
            returned_at_s = time.perf_counter()
            assert len(acted_at_s) == 1
            results.append(
                (ok, acted_at_s[0] - due_at_s, returned_at_s - acted_at_s[0])
            )
        pacer.close()
        return results

    return asyncio.run(scenario())


def test_action_runs_once_never_before_due(clock: str) -> None:
    delays_s = [0.0, 0.0004, 0.003, 0.02, -0.5]
    for ok, after_due_s, return_after_action_s in run_pacer(clock, delays_s):
        assert ok is True
        assert after_due_s >= 0.0
        assert return_after_action_s >= 0.0


def test_wait_without_action_never_returns_before_due(clock: str) -> None:
    async def scenario() -> list[float]:
        pacer = make_pacer(clock)
        early_s = []
        for delay_s in (0.0005, 0.004, -0.1):
            due_at_s = time.perf_counter() + delay_s
            assert await pacer.wait_until(due_at_s) is True
            early_s.append(due_at_s - time.perf_counter())
        pacer.close()
        return early_s

    assert all(early_s <= 0.0 for early_s in asyncio.run(scenario()))


def test_stop_ends_wait_early_without_the_action(clock: str) -> None:
    async def scenario() -> tuple[bool, float, int]:
        stop = asyncio.Event()
        pacer = make_pacer(clock, stop)
        started_s = time.perf_counter()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        actions: list[None] = []
        ok = await pacer.wait_until(started_s + 30.0, lambda: actions.append(None))
        pacer.close()
        return ok, time.perf_counter() - started_s, len(actions)

    ok, waited_s, actions = asyncio.run(scenario())

    assert ok is False
    assert waited_s < 10.0
    assert actions == 0


def test_error_in_action_reaches_the_waiter(clock: str) -> None:
    def fail() -> None:
        raise RuntimeError("the send failed")

    async def scenario() -> None:
        pacer = make_pacer(clock)
        try:
            await pacer.wait_until(time.perf_counter() + 0.003, fail)
        finally:
            pacer.close()

    with pytest.raises(RuntimeError, match="the send failed"):
        asyncio.run(scenario())


def test_overdue_sends_skip_loop_turn() -> None:
    """Sends already due run back to back, yielding once per 17 in a row."""

    async def scenario() -> list[int]:
        pacer = make_pacer("loop")
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        counter = asyncio.create_task(count_turns())
        await asyncio.sleep(0)
        turns_seen = []
        past_s = time.perf_counter() - 1.0
        for _ in range(34):
            assert await pacer.wait_until(past_s) is True
            turns_seen.append(turns)
        counter.cancel()
        pacer.close()
        return turns_seen

    turns_seen = asyncio.run(scenario())

    # The counter task got a turn only at the 17th and the 34th overdue wait.
    assert turns_seen == [0] * 16 + [1] * 17 + [2]


def test_wait_or_stop_reports_which_came_first() -> None:
    async def scenario() -> tuple[bool, bool]:
        stop = asyncio.Event()
        pacer = Pacer(stop)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        first = await pacer.wait_or_stop(done)
        stop.set()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        second = await pacer.wait_or_stop(never)
        pacer.close()
        return first, second

    assert asyncio.run(scenario()) == (True, False)


def test_negative_handoff_is_rejected() -> None:
    async def scenario() -> None:
        Pacer(asyncio.Event(), handoff_s=-1.0)

    with pytest.raises(ValueError, match="handoff_s must be >= 0"):
        asyncio.run(scenario())


BEHIND = "replay is behind schedule: "


def test_monitor_reports_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    monitor = LagMonitor(10.0, "the test schedule", interval_s=5.0, clock=clock)

    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        monitor.record(5.0)
        monitor.record(12.0)  # first late send at 0 s: a report is due at 5 s
        clock.now_s = 1.0
        monitor.record(15.0)
        monitor.record(3.0)
        clock.now_s = 5.0
        monitor.record(11.0)  # reported with the four sends before it
        clock.now_s = 6.0
        monitor.record(4.0)
        monitor.record(20.0)  # first late send at 6 s: due at 11 s
        clock.now_s = 7.0
        monitor.flush()

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        BEHIND + "3 of the last 5 sends started more than 10 ms late (worst "
        "15.0 ms). This machine cannot keep up with the test schedule, so "
        "requests reach the target later than the trace says",
        # One late send is never enough to say the machine cannot keep up.
        "1 of the last 2 sends started more than 10 ms late (worst 20.0 ms)",
    ]
    assert monitor.sends == 7
    assert monitor.late_sends == 4
    assert monitor.worst_ms == 20.0


def test_monitor_one_late_send_is_plain(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    monitor = LagMonitor(10.0, "the test schedule", interval_s=5.0, clock=clock)

    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for index in range(1360):
            clock.now_s = index * 0.01
            monitor.record(10.2 if index == 3 else 0.5)
        monitor.flush()

    # The report is due 5 s after the late send, at the 504th send.
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "1 of the last 504 sends started more than 10 ms late (worst 10.2 ms)"
    ]


def test_monitor_small_share_is_plain(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(10.0, "the test schedule", clock=FakeClock())

    # 2 late sends of 200 is 1%, not more.
    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for index in range(200):
            monitor.record(30.0 if index in (50, 150) else 0.0)
        monitor.flush()

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "2 of the last 200 sends started more than 10 ms late (worst 30.0 ms)"
    ]


def test_monitor_share_above_one_percent(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(10.0, "the test schedule", clock=FakeClock())

    # 3 late sends of 200, 1.5%, in falling order so only the share counts.
    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for index in range(200):
            monitor.record({10: 40.0, 11: 30.0, 12: 20.0}.get(index, 0.0))
        monitor.flush()

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith(BEHIND + "3 of the last 200 sends")


def test_monitor_growing_lateness(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(10.0, "the test schedule", clock=FakeClock())

    # 5 late sends in a row, each later than the one before, among 1,000.
    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for index in range(1000):
            late = 500 <= index < 505
            monitor.record(11.0 + index - 500 if late else 0.0)
        monitor.flush()

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        BEHIND + "5 of the last 1000 sends started more than 10 ms late (worst "
        "15.0 ms). This machine cannot keep up with the test schedule, so "
        "requests reach the target later than the trace says"
    ]


def test_monitor_four_rising_are_plain(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(10.0, "the test schedule", clock=FakeClock())

    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for index in range(1000):
            late = 500 <= index < 504
            monitor.record(11.0 + index - 500 if late else 0.0)
        monitor.flush()

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "4 of the last 1000 sends started more than 10 ms late (worst 14.0 ms)"
    ]


def test_monitor_quiet_when_on_time(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(10.0, "the test schedule", clock=FakeClock())

    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for lateness_ms in (0.0, 0.5, 10.0):
            monitor.record(lateness_ms)
        monitor.flush()

    assert caplog.records == []
    assert monitor.late_sends == 0
    assert monitor.worst_ms == 10.0
