"""Tests of replay.pacing: the due-time wait and the lateness warning."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from replay.pacing import LagMonitor, Pacer


class FakeClock:
    """Clock that only moves when a test sets `now_s`."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def run_pacer(handoff_s: float, delays_s: list[float]) -> list[tuple[bool, float]]:
    """Wait for each delay in turn; return (result, instant - due) per wait."""

    async def scenario() -> list[tuple[bool, float]]:
        pacer = Pacer(asyncio.Event(), handoff_s)
        results = []
        for delay_s in delays_s:
            due_at_s = time.perf_counter() + delay_s
            ok = await pacer.wait_until(due_at_s)
            results.append((ok, time.perf_counter() - due_at_s))
        pacer.close()
        return results

    return asyncio.run(scenario())


@pytest.mark.parametrize("handoff_s", [0.0, 0.0012, 0.01])
def test_wait_never_returns_before_due(handoff_s: float) -> None:
    for ok, after_due_s in run_pacer(handoff_s, [0.0, 0.0004, 0.003, 0.02, -0.5]):
        assert ok is True
        assert after_due_s >= 0.0


def test_stop_ends_wait_early() -> None:
    async def scenario() -> tuple[bool, float]:
        stop = asyncio.Event()
        pacer = Pacer(stop)
        started_s = time.perf_counter()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        ok = await pacer.wait_until(started_s + 30.0)
        pacer.close()
        return ok, time.perf_counter() - started_s

    ok, waited_s = asyncio.run(scenario())

    assert ok is False
    assert waited_s < 10.0


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


def test_monitor_warns_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    monitor = LagMonitor(10.0, "the test schedule", interval_s=5.0, clock=clock)

    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        monitor.record(5.0)
        monitor.record(12.0)
        clock.now_s = 1.0
        monitor.record(15.0)
        monitor.record(3.0)
        clock.now_s = 6.0
        monitor.record(11.0)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(
        "replay is behind schedule: 1 of the last 2 sends started more than "
        "10 ms late (worst 12.0 ms)"
    )
    assert "cannot keep up with the test schedule" in messages[0]
    assert messages[1].startswith(
        "replay is behind schedule: 2 of the last 3 sends started more than "
        "10 ms late (worst 15.0 ms)"
    )
    assert monitor.sends == 5
    assert monitor.late_sends == 3
    assert monitor.worst_ms == 15.0


def test_monitor_quiet_when_on_time(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LagMonitor(10.0, "the test schedule", clock=FakeClock())

    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        for lateness_ms in (0.0, 0.5, 10.0):
            monitor.record(lateness_ms)

    assert caplog.records == []
    assert monitor.late_sends == 0
    assert monitor.worst_ms == 10.0
