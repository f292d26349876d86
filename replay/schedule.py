"""The open-loop send schedule of a replay: which trace rows are sent, and when.

All times here are trace milliseconds (`arrival_ms`) unless named `*_send_ms`,
which are wall milliseconds after the run starts. With a_0 the first arrival
of the trace file:

    window start   w = a_0 + 1000 start_s
    window         rows with w <= arrival_ms < w + 1000 duration_s (no end
                   without duration_s), at most the first `limit` of them
    send time      scheduled_send_ms = (arrival_ms - w) / speedup

So a trace whose first arrival is not zero starts sending at once, and a
window that starts between two arrivals keeps the gap to its first request.
Warm-up and cool-down only mark rows, they never change what is sent: with
e the last arrival in the window, a row is `measured` when

    w + 1000 warmup_s <= arrival_ms <= e - 1000 cooldown_s

Before a run, `plan_schedule` reads the `arrival_ms` column once (in batches)
to check the order, count the window and find e, and hashes the file. The
run then streams the rows with `iter_scheduled`, one small slice at a time,
so that memory stays bounded for traces of millions of requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cmx.v1 import emulator_pb2
from replay.errors import ReplayError
from traces.errors import TraceFormatError
from traces.schema import iter_trace_batches, read_trace_metadata

__all__ = [
    "ScheduleWindow",
    "ScheduledRequest",
    "TracePlan",
    "iter_scheduled",
    "plan_schedule",
]

logger = logging.getLogger(__name__)

# Rows read from Parquet at a time, and rows turned into Python objects at a
# time on the event loop: a slice of 128 takes well under a millisecond, so
# converting never holds up a send for long.
_READ_BATCH_ROWS = 16_384
_CONVERT_SLICE_ROWS = 128
_HASH_CHUNK_BYTES = 1 << 20
# Every Parquet file starts (and ends) with these 4 bytes.
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class ScheduleWindow:
    """Part of a trace to send, and the part of it to measure.

    Every duration is in seconds of trace time. `start_s` and `duration_s`
    select the rows sent, `limit` caps their number, and `warmup_s` and
    `cooldown_s` exclude the first and last rows of the window from the
    measured set. Raises ReplayError on a negative, zero or non-finite value
    where a positive one is needed.
    """

    start_s: float = 0.0
    duration_s: float | None = None
    limit: int | None = None
    warmup_s: float = 0.0
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        _check_at_least_zero("start_s", self.start_s)
        _check_at_least_zero("warmup_s", self.warmup_s)
        _check_at_least_zero("cooldown_s", self.cooldown_s)
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ReplayError(
                f"duration_s must be a number > 0 (seconds of trace time), "
                f"not {self.duration_s}"
            )
        if self.limit is not None and self.limit < 1:
            raise ReplayError(f"limit must be at least 1 request, not {self.limit}")


@dataclass(frozen=True)
class TracePlan:
    """Plan of a replay of one trace file, made before the run.

    Arrival times are trace ms. `last_arrival_ms` is None when the window
    is empty. `trace_sha256` is the hex SHA-256 of the file's bytes.
    """

    trace_path: Path
    trace_sha256: str
    trace_bytes: int
    trace_rows: int
    trace_metadata: dict[str, str]
    speedup: float
    first_arrival_ms: float
    window_start_ms: float
    window_end_ms: float
    planned_requests: int
    last_arrival_ms: float | None
    measured_from_ms: float
    measured_to_ms: float

    def scheduled_send_ms(self, arrival_ms: float) -> float:
        """Return when a request arriving at `arrival_ms` is due, in wall ms."""
        return (arrival_ms - self.window_start_ms) / self.speedup

    def is_measured(self, arrival_ms: float) -> bool:
        """Return whether a request arriving at `arrival_ms` is outside warm-up
        and cool-down."""
        return self.measured_from_ms <= arrival_ms <= self.measured_to_ms

    def describe(self) -> dict[str, object]:
        """Return the plan as JSON-ready values, for the results metadata."""
        return {
            "path": str(self.trace_path),
            "sha256": self.trace_sha256,
            "bytes": self.trace_bytes,
            "rows": self.trace_rows,
            "metadata": self.trace_metadata,
            "first_arrival_ms": self.first_arrival_ms,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": _finite_or_none(self.window_end_ms),
            "planned_requests": self.planned_requests,
            "last_arrival_ms": self.last_arrival_ms,
            "measured_from_ms": self.measured_from_ms,
            "measured_to_ms": _finite_or_none(self.measured_to_ms),
        }


@dataclass(frozen=True, slots=True)
class ScheduledRequest:
    """A trace row with its send time (wall ms from run start)."""

    request: emulator_pb2.GenerateRequest
    arrival_ms: float
    scheduled_send_ms: float
    measured: bool


def plan_schedule(
    trace_path: Path, window: ScheduleWindow, speedup: float
) -> TracePlan:
    """Read the arrival column and hash the file; return what will be sent.

    Raises TraceFormatError when the file is not a canonical trace (with a
    pointer to `cmx trace import` when it is not Parquet at all), has an
    arrival that is not finite, or is not sorted by `arrival_ms`, and
    ReplayError when the window contains no request or warm-up and
    cool-down leave no request to measure.
    """
    _check_parquet_magic(trace_path)
    trace_metadata = read_trace_metadata(trace_path)
    arrivals = _ArrivalScan(window)
    parquet_file = pq.ParquetFile(str(trace_path))
    for batch in parquet_file.iter_batches(
        batch_size=_READ_BATCH_ROWS, columns=["arrival_ms"]
    ):
        arrivals.add(str(trace_path), batch.column(0).to_numpy(zero_copy_only=False))

    first_arrival_ms = arrivals.first_ms if arrivals.first_ms is not None else 0.0
    window_start_ms = first_arrival_ms + window.start_s * 1000.0
    last_ms = arrivals.last_in_window_ms
    measured_to_ms = -math.inf if last_ms is None else last_ms - window.cooldown_s * 1e3
    plan = TracePlan(
        trace_path=trace_path,
        trace_sha256=_file_sha256(trace_path),
        trace_bytes=trace_path.stat().st_size,
        trace_rows=parquet_file.metadata.num_rows,
        trace_metadata=trace_metadata,
        speedup=speedup,
        first_arrival_ms=first_arrival_ms,
        window_start_ms=window_start_ms,
        window_end_ms=_window_end_ms(window_start_ms, window),
        planned_requests=arrivals.in_window,
        last_arrival_ms=last_ms,
        measured_from_ms=window_start_ms + window.warmup_s * 1000.0,
        measured_to_ms=measured_to_ms,
    )
    _check_window_not_empty(plan, window, arrivals.last_ms)
    _check_something_measured(plan, window)
    logger.info("schedule: %s", plan.describe())
    return plan


async def iter_scheduled(
    plan: TracePlan,
) -> AsyncGenerator[ScheduledRequest, None]:
    """Yield the planned requests in trace order, with their send times.

    Parquet batches are read in a worker thread one batch ahead, so reading
    never waits on the disk when a send is due. Rows become Python objects
    on the event loop, in slices of 128.
    """
    batches = iter_trace_batches(plan.trace_path, batch_rows=_READ_BATCH_ROWS)
    remaining = plan.planned_requests
    next_batch = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    try:
        while remaining > 0:
            batch = await next_batch
            if batch is None:
                return
            next_batch = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            for row in _rows_in_window(batch, plan):
                yield _scheduled_request(row, plan)
                remaining -= 1
                if remaining == 0:
                    return
    finally:
        next_batch.cancel()


def _rows_in_window(batch: pa.RecordBatch, plan: TracePlan) -> Iterator[dict[str, Any]]:
    arrivals = batch.column("arrival_ms").to_numpy(zero_copy_only=False)
    first = int(np.searchsorted(arrivals, plan.window_start_ms, side="left"))
    end = int(np.searchsorted(arrivals, plan.window_end_ms, side="left"))
    for offset in range(first, end, _CONVERT_SLICE_ROWS):
        length = min(_CONVERT_SLICE_ROWS, end - offset)
        yield from batch.slice(offset, length).to_pylist()


def _scheduled_request(row: dict[str, Any], plan: TracePlan) -> ScheduledRequest:
    arrival_ms = float(row["arrival_ms"])
    request = emulator_pb2.GenerateRequest(
        request_id=row["request_id"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        prefix_block_hashes=row["prefix_block_hashes"],
        block_tokens=row["block_tokens"],
        session_id=row["session_id"] or "",
    )
    return ScheduledRequest(
        request=request,
        arrival_ms=arrival_ms,
        scheduled_send_ms=plan.scheduled_send_ms(arrival_ms),
        measured=plan.is_measured(arrival_ms),
    )


class _ArrivalScan:
    """Running checks and counts over the arrival column, batch by batch."""

    def __init__(self, window: ScheduleWindow) -> None:
        self._window = window
        self._rows_seen = 0
        self._previous_ms = -math.inf
        self.first_ms: float | None = None
        self.last_ms: float | None = None
        self.in_window = 0
        self.last_in_window_ms: float | None = None

    def add(self, path: str, arrivals_ms: np.ndarray[Any, Any]) -> None:
        if not len(arrivals_ms):
            return
        self._check(path, arrivals_ms)
        if self.first_ms is None:
            self.first_ms = float(arrivals_ms[0])
        self._rows_seen += len(arrivals_ms)
        self._previous_ms = float(arrivals_ms[-1])
        self.last_ms = self._previous_ms

        start_ms = self.first_ms + self._window.start_s * 1000.0
        end_ms = _window_end_ms(start_ms, self._window)
        inside = arrivals_ms[(arrivals_ms >= start_ms) & (arrivals_ms < end_ms)]
        room = math.inf if self._window.limit is None else self._window.limit
        within_limit = inside[: int(min(len(inside), room - self.in_window))]
        if len(within_limit):
            self.in_window += len(within_limit)
            self.last_in_window_ms = float(within_limit[-1])

    def _check(self, path: str, arrivals_ms: np.ndarray[Any, Any]) -> None:
        not_finite = np.flatnonzero(~np.isfinite(arrivals_ms))
        if len(not_finite):
            index = int(not_finite[0])
            raise TraceFormatError(
                path,
                f"arrival_ms {arrivals_ms[index]} is not a finite number",
                row=self._rows_seen + index + 1,
                field="arrival_ms",
            )
        previous = np.concatenate(([self._previous_ms], arrivals_ms[:-1]))
        earlier = np.flatnonzero(arrivals_ms < previous)
        if len(earlier):
            index = int(earlier[0])
            raise TraceFormatError(
                path,
                f"arrival_ms {arrivals_ms[index]} is earlier than the previous "
                f"row's {previous[index]}; replay needs rows sorted by arrival_ms",
                row=self._rows_seen + index + 1,
                field="arrival_ms",
            )


def _window_end_ms(window_start_ms: float, window: ScheduleWindow) -> float:
    if window.duration_s is None:
        return math.inf
    return window_start_ms + window.duration_s * 1000.0


def _check_parquet_magic(trace_path: Path) -> None:
    """Reject a file that does not start as Parquet does, such as a CSV source.

    A missing file is left to `read_trace_metadata`, which names it.
    """
    try:
        with open(trace_path, "rb") as trace_file:
            head = trace_file.read(len(_PARQUET_MAGIC))
    except OSError:
        return
    if head != _PARQUET_MAGIC:
        raise TraceFormatError(
            str(trace_path),
            "not a Parquet file; replay reads canonical trace Parquet, so "
            "convert a CSV or JSON lines source first with 'cmx trace import "
            "--format FORMAT SOURCE -o TRACE.parquet'",
        )


def _check_window_not_empty(
    plan: TracePlan, window: ScheduleWindow, last_arrival_ms: float | None
) -> None:
    """Raise ReplayError, giving the trace's time span, for an empty window."""
    if plan.planned_requests > 0:
        return
    if last_arrival_ms is None:
        raise ReplayError(f"trace {plan.trace_path} has no requests to replay")

    window_end = "the end of the trace"
    if window.duration_s is not None:
        window_end = f"{_seconds(window.start_s + window.duration_s)} s"
    span_s = (last_arrival_ms - plan.first_arrival_ms) / 1000.0
    raise ReplayError(
        f"the window from {_seconds(window.start_s)} s to {window_end} after "
        f"the first arrival contains no request: the {plan.trace_rows:,} "
        f"requests of {plan.trace_path} arrive from 0 to {_seconds(span_s)} s "
        "after the first (trace time); choose --start-s and --duration-s "
        "within that span"
    )


def _seconds(value_s: float) -> str:
    """Format seconds with up to 3 decimals and no exponent: 3600, 0.05."""
    return f"{value_s:,.3f}".rstrip("0").rstrip(".")


def _check_something_measured(plan: TracePlan, window: ScheduleWindow) -> None:
    if plan.planned_requests == 0 or plan.measured_from_ms <= plan.measured_to_ms:
        return
    if window.warmup_s == 0 and window.cooldown_s == 0:
        return
    assert plan.last_arrival_ms is not None
    span_s = (plan.last_arrival_ms - plan.window_start_ms) / 1000.0
    raise ReplayError(
        f"warm-up {window.warmup_s:g} s and cool-down {window.cooldown_s:g} s "
        f"leave no request to measure in a window whose requests span "
        f"{span_s:g} s of trace time; shorten them"
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as trace_file:
        while chunk := trace_file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_at_least_zero(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ReplayError(
            f"{name} must be a number >= 0 (seconds of trace time), not {value}"
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
