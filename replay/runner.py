"""Open-loop replay of a trace against an emulator over gRPC.

Request i is sent at

    scheduled_send_ms = (arrival_ms_i - arrival_ms_0) / speedup

wall milliseconds after the run starts, where arrival_ms_0 is the first row's
arrival. Every request runs in its own task, so a slow response never delays
a later send. How late each send really was is recorded as `send_lag_ms`.
The wall clock is `time.perf_counter()` (monotonic). The trace is streamed in
batches, and its rows must be sorted by `arrival_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc.aio
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cmx import __version__
from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.client import Outcome, generate, open_channel
from replay.errors import ReplayError
from replay.results import STATUS_OK, ResultRow, ResultsWriter
from traces.errors import TraceFormatError
from traces.schema import iter_trace_batches, read_trace_metadata

__all__ = [
    "Interrupt",
    "ReplayConfig",
    "ReplaySummary",
    "ScheduledRequest",
    "build_row",
    "parse_target",
    "replay",
    "run_replay",
    "scheduled_send_ms",
]

logger = logging.getLogger(__name__)

_ProgressUpdate = Callable[[int, int, int], None]


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of one replay run; raises ReplayError on an invalid value.

    `speedup` divides trace time (2 sends twice as fast). `limit` keeps the
    first N rows. `duration_s` keeps the rows whose arrival is less than that
    many seconds of trace time after the first row's. `timeout_s` is each
    call's deadline (None for none). On a stop request, in-flight calls get
    `cancel_grace_s` seconds to finish before they are cancelled.
    """

    trace_path: Path
    target: str
    output_path: Path
    speedup: float = 1.0
    limit: int | None = None
    duration_s: float | None = None
    timeout_s: float | None = 600.0
    connect_timeout_s: float = 10.0
    cancel_grace_s: float = 5.0
    flush_interval_s: float = 2.0

    def __post_init__(self) -> None:
        parse_target(self.target)
        _check_positive("speedup", self.speedup, "1 replays at trace speed")
        if self.limit is not None and self.limit < 1:
            raise ReplayError(f"limit must be at least 1 request, not {self.limit}")
        if self.duration_s is not None:
            _check_positive("duration_s", self.duration_s, "seconds of trace time")
        if self.timeout_s is not None:
            _check_positive("timeout_s", self.timeout_s, "seconds per request")
        _check_positive("connect_timeout_s", self.connect_timeout_s, "seconds")
        _check_positive("flush_interval_s", self.flush_interval_s, "seconds")
        if not self.cancel_grace_s >= 0:
            raise ReplayError(
                f"cancel_grace_s must be >= 0 seconds, not {self.cancel_grace_s}"
            )

    def to_metadata(self, started_at: datetime) -> dict[str, object]:
        """Return the run description stored in the results file metadata."""
        return {
            "trace_path": str(self.trace_path),
            "target": self.target,
            "speedup": self.speedup,
            "limit": self.limit,
            "duration_s": self.duration_s,
            "timeout_s": self.timeout_s,
            "started_at": started_at.isoformat(),
            "cmx_version": __version__,
        }


@dataclass(frozen=True)
class ReplaySummary:
    """Counts of a finished or interrupted run."""

    output_path: Path
    rows_written: int
    sent: int
    failed: int
    interrupted: bool


@dataclass(frozen=True)
class ScheduledRequest:
    """A trace row with its send time, in wall ms from run start."""

    request: emulator_pb2.GenerateRequest
    arrival_ms: float
    scheduled_send_ms: float


class Interrupt:
    """Stop request for a run, escalating on repeat.

    The first `request()` stops sending and gives in-flight calls the grace
    period. The second cancels them at once.
    """

    def __init__(self) -> None:
        self.stop_sending = asyncio.Event()
        self.cancel_now = asyncio.Event()

    def request(self) -> None:
        """Stop sending, or cancel in-flight calls if sending already stopped."""
        if self.stop_sending.is_set():
            self.cancel_now.set()
        else:
            logger.warning("stop requested: no more requests will be sent")
            self.stop_sending.set()


def parse_target(target: str) -> tuple[str, int]:
    """Split "HOST:PORT" (IPv6 as "[::1]:PORT") into host and port.

    Raises ReplayError when the port is missing or outside 1-65535.
    """
    host, separator, port_text = target.rpartition(":")
    unbracketed_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not separator or not host or not port_text.isdigit() or unbracketed_ipv6:
        raise ReplayError(
            f"target {target!r} is not HOST:PORT; give the emulator's address "
            "with its port, for example 127.0.0.1:50051 or [::1]:50051"
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ReplayError(f"port {port} of target {target!r} is not in 1-65535")
    return host, port


def scheduled_send_ms(
    arrival_ms: float, first_arrival_ms: float, speedup: float
) -> float:
    """Return when a request is due, in wall ms from run start."""
    return (arrival_ms - first_arrival_ms) / speedup


def build_row(
    scheduled: ScheduledRequest, outcome: Outcome, run_start_at_s: float
) -> ResultRow:
    """Combine a request's schedule and outcome into its result row.

    `run_start_at_s` is the `time.perf_counter()` instant the run started.
    """
    actual_send_ms = (outcome.sent_at_s - run_start_at_s) * 1000.0
    wall_ttft_ms = None
    if outcome.first_token_at_s is not None:
        wall_ttft_ms = (outcome.first_token_at_s - outcome.sent_at_s) * 1000.0
    summary = outcome.summary
    request = scheduled.request

    return ResultRow(
        request_id=request.request_id,
        arrival_ms=scheduled.arrival_ms,
        scheduled_send_ms=scheduled.scheduled_send_ms,
        actual_send_ms=actual_send_ms,
        send_lag_ms=actual_send_ms - scheduled.scheduled_send_ms,
        input_tokens=request.input_tokens,
        output_tokens=request.output_tokens,
        output_tokens_received=outcome.tokens_received,
        status=outcome.status,
        error=outcome.error,
        ttft_ms=outcome.latencies.ttft_ms,
        tpot_ms=outcome.latencies.tpot_ms,
        e2e_ms=outcome.latencies.e2e_ms,
        wall_ttft_ms=wall_ttft_ms,
        wall_e2e_ms=(outcome.finished_at_s - outcome.sent_at_s) * 1000.0,
        queue_ms=summary.emulated_queue_ms if summary else None,
        prefill_ms=summary.emulated_prefill_ms if summary else None,
        kv_transfer_ms=summary.emulated_kv_transfer_ms if summary else None,
        cached_tokens=summary.cached_tokens if summary else None,
        prefill_instance=summary.prefill_instance if summary else None,
        decode_instance=summary.decode_instance if summary else None,
        faults=outcome.faults,
    )


async def replay(
    config: ReplayConfig,
    *,
    interrupt: Interrupt | None = None,
    show_progress: bool | None = None,
) -> ReplaySummary:
    """Replay `config.trace_path` against `config.target` and write the results.

    Waits for every sent request to end before returning. After
    `interrupt.request()` no more requests are sent, and in-flight calls are
    cancelled after the grace period; their rows and all earlier ones are
    still written. The progress bar goes to stderr, by default only when it
    is a terminal. Raises TraceFormatError for an unreadable or unsorted
    trace, and ReplayError when the target cannot be reached in time or the
    output path cannot be written (see `ResultsWriter`).
    """
    interrupt = interrupt or Interrupt()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    planned = _count_planned_requests(config)
    logger.info("replaying %s against %s: %s", config.trace_path, config.target, config)

    channel = open_channel(config.target)
    try:
        await _wait_for_connection(channel, config)
        started_at = datetime.now(timezone.utc)
        with (
            ResultsWriter(
                config.output_path,
                config.to_metadata(started_at),
                flush_interval_s=config.flush_interval_s,
            ) as writer,
            _progress_bar(show_progress, planned) as update_progress,
        ):
            run = _Run(
                config,
                emulator_pb2_grpc.EmulatorStub(channel),
                writer,
                interrupt,
                update_progress,
            )
            await run.execute()
    finally:
        await channel.close()

    summary = ReplaySummary(
        output_path=config.output_path,
        rows_written=writer.rows_written,
        sent=run.sent,
        failed=run.failed,
        interrupted=interrupt.stop_sending.is_set(),
    )
    logger.info("replay finished: %s", summary)
    return summary


def run_replay(
    config: ReplayConfig, *, show_progress: bool | None = None
) -> ReplaySummary:
    """Run `replay` in a new event loop, with Ctrl-C as the stop request.

    The first Ctrl-C stops sending and the second cancels in-flight calls.
    Where the loop cannot take over SIGINT (outside the main thread, or on
    Windows), Ctrl-C raises KeyboardInterrupt as usual, after the rows
    received so far have been written.
    """
    return asyncio.run(_replay_with_interrupt_handler(config, show_progress))


async def _replay_with_interrupt_handler(
    config: ReplayConfig, show_progress: bool | None
) -> ReplaySummary:
    interrupt = Interrupt()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, interrupt.request)
    except (NotImplementedError, RuntimeError, ValueError):
        logger.debug("cannot handle SIGINT in this thread; Ctrl-C stops at once")
        return await replay(config, interrupt=interrupt, show_progress=show_progress)

    try:
        return await replay(config, interrupt=interrupt, show_progress=show_progress)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


class _Run:
    """State of one run: the open-loop sender and its in-flight tasks."""

    def __init__(
        self,
        config: ReplayConfig,
        stub: emulator_pb2_grpc.EmulatorStub,
        writer: ResultsWriter,
        interrupt: Interrupt,
        update_progress: _ProgressUpdate,
    ) -> None:
        self._config = config
        self._stub = stub
        self._writer = writer
        self._interrupt = interrupt
        self._update_progress = update_progress
        self._in_flight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task_error: BaseException | None = None
        self._done = asyncio.Event()
        self._start_at_s = 0.0
        self.sent = 0
        self.finished = 0
        self.failed = 0

    async def execute(self) -> None:
        """Send every request on schedule, then wait for all of them to end."""
        self._start_at_s = time.perf_counter()
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            await self._send_all()
        except BaseException:
            self._interrupt.stop_sending.set()
            raise
        finally:
            # Also after an error or cancellation, so that rows still get written.
            await self._drain()
            self._done.set()
            await flusher
        if self._task_error is not None:
            raise self._task_error

    async def _send_all(self) -> None:
        requests = _schedule_requests(self._config)
        async with contextlib.aclosing(requests):
            async for scheduled in requests:
                due_at_s = self._start_at_s + scheduled.scheduled_send_ms / 1000.0
                if await self._stopped_before(due_at_s):
                    return
                task = asyncio.create_task(self._send_one(scheduled))
                self._in_flight.add(task)
                self._idle.clear()
                task.add_done_callback(self._on_task_done)

    async def _stopped_before(self, due_at_s: float) -> bool:
        """Wait until `due_at_s`; return True if a stop was requested first."""
        stop_sending = self._interrupt.stop_sending
        delay_s = due_at_s - time.perf_counter()
        if delay_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop_sending.wait(), delay_s)
        else:
            # Lets the tasks spawned for equal arrival times start their calls.
            await asyncio.sleep(0)
        return stop_sending.is_set()

    async def _send_one(self, scheduled: ScheduledRequest) -> None:
        self.sent += 1
        self._report_progress()
        outcome = await generate(self._stub, scheduled.request, self._config.timeout_s)

        self._writer.append(build_row(scheduled, outcome, self._start_at_s))
        self.finished += 1
        if outcome.status != STATUS_OK:
            self.failed += 1
        self._report_progress()

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not self._in_flight:
            self._idle.set()
        if task.cancelled() or task.exception() is None:
            return
        if self._task_error is None:
            self._task_error = task.exception()
            logger.error("request task failed, stopping the run: %r", self._task_error)
        self._interrupt.stop_sending.set()

    async def _drain(self) -> None:
        """Wait for in-flight calls; after a stop, only for the grace period."""
        await _first_of(self._idle.wait(), self._interrupt.stop_sending.wait())
        if self._idle.is_set():
            return

        grace_s = self._config.cancel_grace_s
        logger.warning(
            "waiting up to %.1f s for %d in-flight requests",
            grace_s,
            len(self._in_flight),
        )
        await _first_of(
            self._idle.wait(), self._interrupt.cancel_now.wait(), timeout_s=grace_s
        )
        remaining = list(self._in_flight)
        if remaining:
            logger.warning("cancelling %d in-flight requests", len(remaining))
        for task in remaining:
            task.cancel()
        await asyncio.gather(*remaining, return_exceptions=True)

    async def _flush_periodically(self) -> None:
        # Rows of calls that end during a quiet spell are flushed on time too,
        # not only with the next append.
        interval_s = self._config.flush_interval_s / 2
        while not self._done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), interval_s)
            self._writer.flush_if_due()

    def _report_progress(self) -> None:
        self._update_progress(self.sent, self.finished, self.failed)


async def _schedule_requests(
    config: ReplayConfig,
) -> AsyncGenerator[ScheduledRequest, None]:
    """Yield the trace rows to send, in order, with their send times.

    Batches are read in a worker thread so that reading does not hold up
    sends that are due.
    """
    path = str(config.trace_path)
    batches = iter_trace_batches(config.trace_path)
    first_arrival_ms: float | None = None
    previous_arrival_ms = -math.inf
    row_number = 0

    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        for row in batch.to_pylist():
            row_number += 1
            if config.limit is not None and row_number > config.limit:
                return
            arrival_ms = float(row["arrival_ms"])
            if arrival_ms < previous_arrival_ms:
                raise TraceFormatError(
                    path,
                    f"arrival_ms {arrival_ms} is earlier than the previous row's "
                    f"{previous_arrival_ms}; replay needs rows sorted by arrival_ms",
                    row=row_number,
                    field="arrival_ms",
                )
            previous_arrival_ms = arrival_ms
            if first_arrival_ms is None:
                first_arrival_ms = arrival_ms
            if _beyond_duration(config, arrival_ms - first_arrival_ms):
                return
            yield ScheduledRequest(
                request=_request_from_row(row),
                arrival_ms=arrival_ms,
                scheduled_send_ms=scheduled_send_ms(
                    arrival_ms, first_arrival_ms, config.speedup
                ),
            )


def _beyond_duration(config: ReplayConfig, trace_offset_ms: float) -> bool:
    if config.duration_s is None:
        return False
    return trace_offset_ms >= config.duration_s * 1000.0


def _request_from_row(row: dict[str, Any]) -> emulator_pb2.GenerateRequest:
    return emulator_pb2.GenerateRequest(
        request_id=row["request_id"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        prefix_block_hashes=row["prefix_block_hashes"],
        block_tokens=row["block_tokens"],
        session_id=row["session_id"] or "",
    )


def _count_planned_requests(config: ReplayConfig) -> int | None:
    """Return how many rows will be sent, or None when `duration_s` decides it.

    Raises TraceFormatError when the trace is missing or not canonical.
    """
    read_trace_metadata(config.trace_path)
    if config.duration_s is not None:
        return None
    trace_rows: int = pq.ParquetFile(str(config.trace_path)).metadata.num_rows
    if config.limit is None:
        return trace_rows
    return min(trace_rows, config.limit)


async def _wait_for_connection(channel: grpc.aio.Channel, config: ReplayConfig) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), config.connect_timeout_s)
    except asyncio.TimeoutError:
        raise ReplayError(
            f"could not connect to {config.target} within "
            f"{config.connect_timeout_s:g} s; check that the emulator is running "
            "and listening at that address"
        ) from None


async def _first_of(*waits: Awaitable[object], timeout_s: float | None = None) -> None:
    """Wait until one of `waits` completes or `timeout_s` passes."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(
            tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in tasks:
            task.cancel()


@contextlib.contextmanager
def _progress_bar(enabled: bool, planned: int | None) -> Iterator[_ProgressUpdate]:
    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("sent {task.completed:.0f}"),
        TextColumn("finished {task.fields[finished]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        task_id = progress.add_task("replay", total=planned, finished=0, failed=0)

        def update(sent: int, finished: int, failed: int) -> None:
            progress.update(task_id, completed=sent, finished=finished, failed=failed)

        yield update


def _check_positive(name: str, value: float, meaning: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ReplayError(f"{name} must be a number > 0 ({meaning}), not {value}")
