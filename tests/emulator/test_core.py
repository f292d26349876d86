"""Event queue ordering and clock monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.core import EventQueue, PacedClock


def test_events_run_in_time_order_then_fifo() -> None:
    events = EventQueue()
    ran: list[str] = []
    events.schedule_at(2.0, lambda: ran.append("late"))
    events.schedule_at(1.0, lambda: ran.append("first"))
    events.schedule_at(1.0, lambda: ran.append("second"))

    assert events.run() == 3
    assert ran == ["first", "second", "late"]
    assert events.now_s == 2.0


def test_run_until_stops_at_bound() -> None:
    events = EventQueue()
    ran: list[float] = []
    for at_s in (0.5, 1.5, 2.5):
        events.schedule_at(at_s, lambda at_s=at_s: ran.append(at_s))

    assert events.run_until(2.0) == 2
    assert ran == [0.5, 1.5]
    assert events.now_s == 2.0
    assert events.next_at_s() == 2.5


def test_schedule_in_past_is_rejected() -> None:
    events = EventQueue()
    events.run_until(3.0)
    with pytest.raises(ValueError, match="before now"):
        events.schedule_at(2.0, lambda: None)


def test_cancelled_event_does_not_run() -> None:
    events = EventQueue()
    ran: list[int] = []
    event = events.schedule_at(1.0, lambda: ran.append(1))
    event.cancel()

    assert events.run() == 0
    assert ran == []
    assert len(events) == 0


def test_callbacks_see_their_own_time() -> None:
    events = EventQueue()
    seen: list[float] = []

    def chain() -> None:
        seen.append(events.now_s)
        if len(seen) < 3:
            events.schedule_in(0.25, chain)

    events.schedule_at(1.0, chain)
    events.run()
    assert seen == [1.0, 1.25, 1.5]


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_clock_never_goes_backwards(due_times: list[float]) -> None:
    events = EventQueue()
    seen: list[float] = []
    for at_s in due_times:
        events.schedule_at(at_s, lambda: seen.append(events.now_s))
    events.run()
    assert seen == sorted(due_times)


def test_paced_clock_scales_wall_time() -> None:
    clock = PacedClock(time_scale=1000.0)
    first = clock.now_s()
    second = clock.now_s()
    assert second >= first
    assert clock.wall_delay_s(first - 1.0) == 0.0
    assert clock.wall_delay_s(clock.now_s() + 1000.0) <= 1.0


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_paced_clock_rejects_bad_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale"):
        PacedClock(scale)
