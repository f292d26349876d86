"""Tests of replay.schedule: the send schedule, windows and streaming."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay import schedule
from replay.errors import ReplayError
from replay.schedule import (
    ScheduledRequest,
    ScheduleWindow,
    TracePlan,
    iter_scheduled,
    plan_schedule,
)
from tests.replay.test_runner import write_test_trace
from traces.errors import TraceFormatError

# The first arrival is 1000 ms, not 0, so every case must subtract it.
ARRIVALS_MS = [1000.0, 1000.0, 1100.0, 1300.0, 1600.0, 2500.0]


def plan_for(
    tmp_path: Path,
    window: ScheduleWindow,
    speedup: float,
    arrivals_ms: Sequence[float] = ARRIVALS_MS,
) -> TracePlan:
    trace_path = write_test_trace(tmp_path / "trace.parquet", arrivals_ms)
    return plan_schedule(trace_path, window, speedup)


def collect(plan: TracePlan) -> list[ScheduledRequest]:
    async def drain() -> list[ScheduledRequest]:
        return [scheduled async for scheduled in iter_scheduled(plan)]

    return asyncio.run(drain())


def sends(plan: TracePlan) -> list[tuple[str, float]]:
    return [(item.request.request_id, item.scheduled_send_ms) for item in collect(plan)]


# Each case worked out by hand: send = (arrival - window start) / speed-up.
SCHEDULE_CASES = [
    # Whole trace at 10x: window start 1000.
    (
        ScheduleWindow(),
        10.0,
        [("r0", 0.0), ("r1", 0.0), ("r2", 10.0), ("r3", 30.0), ("r4", 60.0),
         ("r5", 150.0)],
    ),
    # Half speed doubles every gap.
    (
        ScheduleWindow(),
        0.5,
        [("r0", 0.0), ("r1", 0.0), ("r2", 200.0), ("r3", 600.0), ("r4", 1200.0),
         ("r5", 3000.0)],
    ),
    # Start 0.2 s in: window start 1200, so 1300 is due at 100 / 4 = 25 ms.
    (
        ScheduleWindow(start_s=0.2),
        4.0,
        [("r3", 25.0), ("r4", 100.0), ("r5", 325.0)],
    ),
    # Start 0.2 s, 0.5 s long: [1200, 1700) contains 1300 and 1600.
    (
        ScheduleWindow(start_s=0.2, duration_s=0.5),
        2.0,
        [("r3", 50.0), ("r4", 200.0)],
    ),
    # The duration's end is open: [1000, 1300) leaves out 1300.
    (
        ScheduleWindow(duration_s=0.3),
        1.0,
        [("r0", 0.0), ("r1", 0.0), ("r2", 100.0)],
    ),
    # The limit counts from the window start (1050), not from the trace's.
    (
        ScheduleWindow(start_s=0.05, limit=2),
        1.0,
        [("r2", 50.0), ("r3", 250.0)],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("window", "speedup", "expected"), SCHEDULE_CASES)
def test_schedule_matches_hand_worked_sends(
    tmp_path: Path,
    window: ScheduleWindow,
    speedup: float,
    expected: list[tuple[str, float]],
) -> None:
    plan = plan_for(tmp_path, window, speedup)

    assert sends(plan) == expected
    assert plan.planned_requests == len(expected)


def test_plan_records_window_bounds(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, ScheduleWindow(start_s=0.2, duration_s=0.5), 2.0)

    assert plan.first_arrival_ms == 1000.0
    assert plan.window_start_ms == 1200.0
    assert plan.window_end_ms == 1700.0
    assert plan.last_arrival_ms == 1600.0
    assert plan.trace_rows == 6


def test_warmup_and_cooldown_mark_rows(tmp_path: Path) -> None:
    # Measured from 1000 + 100 to 2500 - 900: arrivals 1100, 1300 and 1600.
    window = ScheduleWindow(warmup_s=0.1, cooldown_s=0.9)
    plan = plan_for(tmp_path, window, 10.0)

    measured = [item.measured for item in collect(plan)]
    assert measured == [False, False, True, True, True, False]
    assert plan.measured_from_ms == 1100.0
    assert plan.measured_to_ms == 1600.0


def test_warmup_does_not_change_sends(tmp_path: Path) -> None:
    plain = plan_for(tmp_path, ScheduleWindow(), 10.0)
    warmed = plan_for(tmp_path, ScheduleWindow(warmup_s=0.5, cooldown_s=0.1), 10.0)

    assert sends(warmed) == sends(plain)


def test_default_window_measures_every_row(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, ScheduleWindow(), 1.0)

    assert all(item.measured for item in collect(plan))


def test_window_measuring_nothing_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="leave no request to measure"):
        plan_for(tmp_path, ScheduleWindow(warmup_s=1.0, cooldown_s=1.0), 1.0)


def test_window_after_last_arrival_is_rejected(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.parquet"
    # Arrivals 1000 to 2500 ms: they span 1.5 s from the first.
    expected = (
        "the window from 999,999 s to the end of the trace after the first "
        "arrival contains no request: the 6 requests of "
        f"{trace_path} arrive from 0 to 1.5 s after the first (trace time); "
        "choose --start-s and --duration-s within that span"
    )

    with pytest.raises(ReplayError) as raised:
        plan_for(tmp_path, ScheduleWindow(start_s=999_999.0), 1.0)

    assert str(raised.value) == expected


def test_window_between_arrivals_is_rejected(tmp_path: Path) -> None:
    # [1150, 1250) ms falls between the arrivals at 1100 and 1300.
    window = ScheduleWindow(start_s=0.15, duration_s=0.1)

    with pytest.raises(ReplayError) as raised:
        plan_for(tmp_path, window, 1.0)

    message = str(raised.value)
    assert message.startswith("the window from 0.15 s to 0.25 s after the first ")
    assert "arrive from 0 to 1.5 s after the first" in message


def test_trace_without_rows_is_rejected(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", [])

    with pytest.raises(ReplayError) as raised:
        plan_schedule(trace_path, ScheduleWindow(), 1.0)

    assert str(raised.value) == f"trace {trace_path} has no requests to replay"


def test_csv_trace_points_to_import(tmp_path: Path) -> None:
    source = tmp_path / "trace.csv"
    source.write_text("timestamp,input_length,output_length\n0,10,2\n")

    with pytest.raises(TraceFormatError) as raised:
        plan_schedule(source, ScheduleWindow(), 1.0)

    assert str(raised.value) == (
        f"{source}: not a Parquet file; replay reads canonical trace Parquet, "
        "so convert a CSV or JSON lines source first with 'cmx trace import "
        "--format FORMAT SOURCE -o TRACE.parquet'"
    )


def test_requests_carry_trace_fields(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, ScheduleWindow(limit=3), 1.0)
    items = collect(plan)

    assert items[2].arrival_ms == 1100.0
    assert items[2].request.input_tokens == 102
    assert items[2].request.output_tokens == 4
    assert list(items[2].request.prefix_block_hashes) == [7, 10]
    assert items[2].request.session_id == "s2"
    assert items[1].request.session_id == ""


def test_rows_stream_across_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule, "_READ_BATCH_ROWS", 2)
    monkeypatch.setattr(schedule, "_CONVERT_SLICE_ROWS", 1)
    plan = plan_for(tmp_path, ScheduleWindow(start_s=0.05, duration_s=0.6), 1.0)

    assert sends(plan) == [("r2", 50.0), ("r3", 250.0), ("r4", 550.0)]


def test_unsorted_row_in_later_batch_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule, "_READ_BATCH_ROWS", 2)
    arrivals = [0.0, 10.0, 5.0, 20.0]

    with pytest.raises(TraceFormatError, match="row 3, field 'arrival_ms'"):
        plan_for(tmp_path, ScheduleWindow(), 1.0, arrivals)


def test_non_finite_arrival_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="row 2, field 'arrival_ms'"):
        plan_for(tmp_path, ScheduleWindow(), 1.0, [0.0, math.nan, 20.0])


def test_plan_hashes_trace_file(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, ScheduleWindow(), 1.0)
    trace_bytes = (tmp_path / "trace.parquet").read_bytes()

    assert plan.trace_sha256 == hashlib.sha256(trace_bytes).hexdigest()
    assert plan.trace_bytes == len(trace_bytes)
    assert plan.describe()["sha256"] == plan.trace_sha256


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("start_s", -1.0, "start_s must be a number >= 0"),
        ("warmup_s", math.inf, "warmup_s must be a number >= 0"),
        ("cooldown_s", math.nan, "cooldown_s must be a number >= 0"),
        ("duration_s", 0.0, "duration_s must be a number > 0"),
        ("limit", 0, "limit must be at least 1"),
    ],
)
def test_window_rejects_bad_value(field: str, value: float, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        ScheduleWindow(**{field: value})  # type: ignore[arg-type]


def reference_sends(
    arrivals_ms: list[float], window: ScheduleWindow, speedup: float
) -> list[float]:
    """Send times by the module docstring's formulas, row by row."""
    start_ms = arrivals_ms[0] + window.start_s * 1000.0
    end_ms = math.inf
    if window.duration_s is not None:
        end_ms = start_ms + window.duration_s * 1000.0
    inside = [arrival for arrival in arrivals_ms if start_ms <= arrival < end_ms]
    if window.limit is not None:
        inside = inside[: window.limit]
    return [(arrival - start_ms) / speedup for arrival in inside]


@settings(max_examples=40, deadline=None)
@given(
    gaps_ms=st.lists(st.floats(0.0, 500.0), min_size=1, max_size=30),
    first_ms=st.floats(0.0, 1e6),
    start_s=st.floats(0.0, 3.0),
    duration_s=st.one_of(st.none(), st.floats(0.01, 5.0)),
    limit=st.one_of(st.none(), st.integers(1, 40)),
    speedup=st.floats(0.1, 100.0),
)
def test_schedule_follows_formula(
    tmp_path_factory: pytest.TempPathFactory,
    gaps_ms: list[float],
    first_ms: float,
    start_s: float,
    duration_s: float | None,
    limit: int | None,
    speedup: float,
) -> None:
    arrivals_ms = [first_ms]
    for gap_ms in gaps_ms[1:]:
        arrivals_ms.append(arrivals_ms[-1] + gap_ms)
    window = ScheduleWindow(start_s=start_s, duration_s=duration_s, limit=limit)
    expected = reference_sends(arrivals_ms, window, speedup)
    folder = tmp_path_factory.mktemp("trace")
    if not expected:
        with pytest.raises(ReplayError, match="contains no request"):
            plan_for(folder, window, speedup, arrivals_ms)
        return
    plan = plan_for(folder, window, speedup, arrivals_ms)

    got = [item.scheduled_send_ms for item in collect(plan)]
    assert got == expected
    assert got == sorted(got)
    assert all(send_ms >= 0.0 for send_ms in got)
