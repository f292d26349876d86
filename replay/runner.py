"""Open-loop replay of a trace against an emulator over gRPC.

Each request is sent at its trace arrival divided by the speed-up, counted
from the start of the chosen window (`replay.schedule` gives the formulas).
It is sent whether or not earlier requests have finished, because every
request runs in its own task, so a slow response never delays a later send.
Timers and stamps use the monotonic `time.perf_counter()`. Each row records
how late its send was (`send_lag_ms`), so a loop that runs late shows in the
results instead of being hidden, and the run warns while it goes when sends
fall behind.

With `max_concurrency` set, the run is no longer purely open-loop: at most
that many requests are in flight, and a request that is due while all slots
are taken waits, in trace order, for one to free. That wait is recorded as
`concurrency_wait_ms` and is part of `send_lag_ms`. When the sender was
still waiting for a slot for an earlier request at a request's due time,
the whole delay from its due time to its send counts as concurrency wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import math
import platform
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import cast

import grpc.aio
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from cmx import __version__
from cmx.v1 import control_pb2, control_pb2_grpc, emulator_pb2_grpc
from replay.client import Outcome, StartedCall, TlsConfig, generate, open_channel
from replay.errors import ReplayError
from replay.metrics import (
    NO_GAPS,
    InterTokenStats,
    Slo,
    TokenGaps,
    check_unique_slos,
    meets_slos,
    normalized_latency_ms,
)
from replay.pacing import DEFAULT_HANDOFF_S, LagMonitor, Pacer
from replay.results import (
    STATUS_OK,
    ResultRow,
    ResultsWriter,
    is_cancelled_by_replayer,
)
from replay.schedule import (
    ScheduledRequest,
    ScheduleWindow,
    TracePlan,
    iter_scheduled,
    plan_schedule,
)
from replay.summary import RunMetrics, summarize_results
from traces.cli_common import is_same_file

__all__ = [
    "Interrupt",
    "ReplayConfig",
    "ReplaySummary",
    "build_row",
    "parse_target",
    "read_server_config",
    "replay",
    "run_replay",
    "software_versions",
]

logger = logging.getLogger(__name__)

_ProgressUpdate = Callable[[int, int, int], None]

# Packages whose versions are stored with every results file.
_VERSIONED_PACKAGES = ("grpcio", "protobuf", "pyarrow", "duckdb", "numpy")


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of one replay run; raises ReplayError on an invalid value.

    `speedup` divides trace time (2 sends twice as fast). `start_s`,
    `duration_s`, `limit`, `warmup_s` and `cooldown_s` choose the window
    and the measured rows, in seconds of trace time (see
    `replay.schedule.ScheduleWindow`). `timeout_s` is each call's deadline
    (None for none). `max_concurrency` caps the requests in flight (None
    for no cap, the open-loop default). `slos` decide `slo_met` and goodput.
    A send whose own lateness exceeds `lag_warning_ms` counts as late for the
    warning and the summary. On a stop request, in-flight calls get
    `cancel_grace_s` seconds to finish before they are cancelled. Sends
    wait for their due instant on a precise clock (see `replay.pacing`): a
    timerfd on Linux, elsewhere a timer thread for the last
    `timer_handoff_s`; `timer_handoff_s` 0 uses only the event loop's
    timers. `tls` connects with TLS (None: plaintext). An `output_path`
    that is the trace file, or a link to it, is rejected.
    """

    trace_path: Path
    target: str
    output_path: Path
    speedup: float = 1.0
    limit: int | None = None
    duration_s: float | None = None
    start_s: float = 0.0
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    timeout_s: float | None = 600.0
    max_concurrency: int | None = None
    slos: tuple[Slo, ...] = ()
    lag_warning_ms: float = 10.0
    connect_timeout_s: float = 10.0
    cancel_grace_s: float = 5.0
    flush_interval_s: float = 2.0
    timer_handoff_s: float = DEFAULT_HANDOFF_S
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        parse_target(self.target)
        if is_same_file(self.output_path, self.trace_path):
            raise ReplayError(
                f"output {self.output_path} and trace {self.trace_path} are the "
                "same file, so the results would replace the trace; choose "
                "another -o"
            )
        _check_positive("speedup", self.speedup, "1 replays at trace speed")
        _ = self.window  # building the window checks its fields
        if self.timeout_s is not None:
            _check_positive("timeout_s", self.timeout_s, "seconds per request")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ReplayError(
                f"max_concurrency must be at least 1 request in flight, "
                f"not {self.max_concurrency}"
            )
        check_unique_slos(self.slos)
        _check_positive("lag_warning_ms", self.lag_warning_ms, "milliseconds")
        _check_positive("connect_timeout_s", self.connect_timeout_s, "seconds")
        _check_positive("flush_interval_s", self.flush_interval_s, "seconds")
        if not self.cancel_grace_s >= 0:
            raise ReplayError(
                f"cancel_grace_s must be >= 0 seconds, not {self.cancel_grace_s}"
            )
        handoff_s = self.timer_handoff_s
        if not (math.isfinite(handoff_s) and 0 <= handoff_s <= 1):
            raise ReplayError(
                f"timer_handoff_s must be between 0 and 1 s, not {handoff_s}"
            )

    @property
    def window(self) -> ScheduleWindow:
        """The trace window to send and measure."""
        return ScheduleWindow(
            start_s=self.start_s,
            duration_s=self.duration_s,
            limit=self.limit,
            warmup_s=self.warmup_s,
            cooldown_s=self.cooldown_s,
        )

    def to_metadata(
        self, started_at: datetime, server_time_scale: float | None = None
    ) -> dict[str, object]:
        """Return the run description stored in the results file metadata.

        `server_time_scale` is the target's emulated seconds per wall second,
        None when the target did not report it.
        """
        return {
            "trace_path": str(self.trace_path),
            "target": self.target,
            "speedup": self.speedup,
            "limit": self.limit,
            "duration_s": self.duration_s,
            "start_s": self.start_s,
            "warmup_s": self.warmup_s,
            "cooldown_s": self.cooldown_s,
            "timeout_s": self.timeout_s,
            "max_concurrency": self.max_concurrency,
            "slos": {slo.metric.value: slo.limit_ms for slo in self.slos},
            "lag_warning_ms": self.lag_warning_ms,
            "cancel_grace_s": self.cancel_grace_s,
            "flush_interval_s": self.flush_interval_s,
            "timer_handoff_s": self.timer_handoff_s,
            "tls": None if self.tls is None else self.tls.describe(),
            "started_at": started_at.isoformat(),
            "cmx_version": __version__,
            "server_time_scale": server_time_scale,
        }


@dataclass(frozen=True)
class ReplaySummary:
    """Counts of a finished or interrupted run, and its summary figures.

    `failed` counts requests that did not end ok, except those that the
    replayer cancelled after a stop request, which `cancelled` counts.
    """

    output_path: Path
    rows_written: int
    sent: int
    failed: int
    interrupted: bool
    metrics: RunMetrics
    late_sends: int = 0
    cancelled: int = 0


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


def build_row(
    scheduled: ScheduledRequest,
    outcome: Outcome,
    run_start_at_s: float,
    *,
    gaps: InterTokenStats = NO_GAPS,
    concurrency_wait_ms: float | None = None,
    slos: tuple[Slo, ...] = (),
) -> ResultRow:
    """Combine a request's schedule and outcome into its result row.

    `run_start_at_s` is the `time.perf_counter()` instant the run started.
    `gaps` are the stream's inter-token statistics, `concurrency_wait_ms` its
    wait for a slot (None without a cap); `slos` decide `slo_met`.
    """
    actual_send_ms = (outcome.sent_at_s - run_start_at_s) * 1000.0
    wall_ttft_ms = None
    if outcome.first_token_at_s is not None:
        wall_ttft_ms = (outcome.first_token_at_s - outcome.sent_at_s) * 1000.0
    summary = outcome.summary
    request = scheduled.request

    row = ResultRow(
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
        itl_ms_p50=gaps.itl_ms_p50,
        itl_ms_p99=gaps.itl_ms_p99,
        itl_ms_max=gaps.itl_ms_max,
        normalized_latency_ms=normalized_latency_ms(
            outcome.latencies.e2e_ms, outcome.tokens_received
        ),
        concurrency_wait_ms=concurrency_wait_ms,
        measured=scheduled.measured,
        cached_tokens_hbm=summary.cached_tokens_hbm if summary else None,
        cached_tokens_pool=summary.cached_tokens_pool if summary else None,
        cache_load_ms=summary.emulated_cache_load_ms if summary else None,
        faults=outcome.faults,
    )
    if not slos:
        return row
    values = {slo.metric.value: getattr(row, slo.metric.value) for slo in slos}
    values["output_tokens_received"] = row.output_tokens_received
    slo_met = meets_slos(values, slos, status_ok=row.status == STATUS_OK)
    return dataclasses.replace(row, slo_met=slo_met)


def software_versions() -> dict[str, str]:
    """Return the versions of cmx, Python and the packages a run depends on."""
    versions = {
        "cmx": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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
    trace, and ReplayError when the target cannot be reached in time, the
    window contains no request or measures nothing, or the output path
    cannot be written (see `ResultsWriter`). Logs a warning when the
    target's time scale, read from its Control service, differs from the
    speed-up.
    """
    interrupt = interrupt or Interrupt()
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    plan = await asyncio.to_thread(
        plan_schedule, config.trace_path, config.window, config.speedup
    )
    logger.info("replaying %s against %s: %s", config.trace_path, config.target, config)

    channel = open_channel(config.target, config.tls)
    try:
        await _wait_for_connection(channel, config)
        server_config = await read_server_config(channel)
        server_time_scale = None
        if server_config is not None:
            server_time_scale = server_config.time_scale
        _warn_if_time_scale_differs(config.speedup, server_time_scale)
        started_at = datetime.now(timezone.utc)
        metadata = {
            "trace": json.dumps(plan.describe(), sort_keys=True),
            "versions": json.dumps(software_versions(), sort_keys=True),
            # Profiles and deployment as the target reports them; null for a
            # target without a reachable Control service.
            "server_config": json.dumps(
                None
                if server_config is None
                else json_format.MessageToDict(server_config),
                sort_keys=True,
            ),
        }
        with (
            ResultsWriter(
                config.output_path,
                config.to_metadata(started_at, server_time_scale),
                metadata=metadata,
                flush_interval_s=config.flush_interval_s,
            ) as writer,
            _progress_bar(show_progress, plan.planned_requests) as update_progress,
        ):
            stub = emulator_pb2_grpc.EmulatorStub(channel)
            run = _Run(config, plan, stub, writer, interrupt, update_progress)
            await run.execute()
    finally:
        await channel.close()

    metrics = await asyncio.to_thread(
        summarize_results,
        config.output_path,
        config.speedup,
        config.slos,
        config.lag_warning_ms,
    )
    summary = ReplaySummary(
        output_path=config.output_path,
        rows_written=writer.rows_written,
        sent=run.sent,
        failed=run.failed,
        interrupted=interrupt.stop_sending.is_set(),
        metrics=metrics,
        late_sends=run.lag_monitor.late_sends,
        cancelled=run.cancelled,
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
    received so far have been written. Objects alive at the start are moved
    out of the garbage collector's reach (`gc.freeze`), so that its full
    collections during the run have less to scan and pause sends for less.
    """
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_replay_with_interrupt_handler(config, show_progress))
    finally:
        gc.unfreeze()


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
        plan: TracePlan,
        stub: emulator_pb2_grpc.EmulatorStub,
        writer: ResultsWriter,
        interrupt: Interrupt,
        update_progress: _ProgressUpdate,
    ) -> None:
        self._config = config
        self._plan = plan
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
        self._slots: asyncio.Semaphore | None = None
        if config.max_concurrency is not None:
            self._slots = asyncio.Semaphore(config.max_concurrency)
        # When the sender last stopped waiting for a slot; see the module notes.
        self._slot_wait_ended_at_s = -math.inf
        self.lag_monitor = LagMonitor(
            config.lag_warning_ms, f"the schedule at speed-up {config.speedup:g}"
        )
        self.sent = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0

    async def execute(self) -> None:
        """Send every request on schedule, then wait for all of them to end."""
        pacer = Pacer(self._interrupt.stop_sending, self._config.timer_handoff_s)
        flusher = asyncio.create_task(self._flush_periodically())
        try:
            await self._send_all(pacer)
        except BaseException:
            self._interrupt.stop_sending.set()
            raise
        finally:
            # Also after an error or cancellation, so that rows still get written.
            pacer.close()
            self.lag_monitor.flush()
            await self._drain()
            self._done.set()
            await flusher
        if self._task_error is not None:
            raise self._task_error

    async def _send_all(self, pacer: Pacer) -> None:
        requests = iter_scheduled(self._plan)
        async with contextlib.aclosing(requests):
            # The clock starts once the first request is read, so that
            # opening the trace does not make the first sends late.
            scheduled = await anext(requests, None)
            self._start_at_s = time.perf_counter()
            while scheduled is not None:
                if not await self._dispatch(scheduled, pacer):
                    return
                scheduled = await anext(requests, None)

    async def _dispatch(self, scheduled: ScheduledRequest, pacer: Pacer) -> bool:
        """Wait until `scheduled` is due and, under a cap, for a slot; start it.

        Returns False, without starting it, when a stop came first.
        """
        due_at_s = self._start_at_s + scheduled.scheduled_send_ms / 1000.0
        if self._slots is None:
            # Sent from the callback in which the pacer's clock fires.
            return await pacer.wait_until(
                due_at_s, lambda: self._start_send(scheduled, due_at_s, None)
            )
        if not await pacer.wait_until(due_at_s):
            return False

        ready_at_s = time.perf_counter()
        if self._slot_wait_ended_at_s >= due_at_s:
            ready_at_s = due_at_s
        if not await self._take_slot(pacer):
            return False
        wait_ms = (time.perf_counter() - ready_at_s) * 1000.0

        self._start_send(scheduled, due_at_s, wait_ms)
        return True

    async def _take_slot(self, pacer: Pacer) -> bool:
        """Wait for a free concurrency slot; False if a stop came first."""
        assert self._slots is not None
        if not self._slots.locked():
            await self._slots.acquire()
            return True

        acquiring = asyncio.ensure_future(self._slots.acquire())
        if await pacer.wait_or_stop(acquiring):
            self._slot_wait_ended_at_s = time.perf_counter()
            return True
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquiring
        if not acquiring.cancelled():
            self._slots.release()
        return False

    def _start_send(
        self, scheduled: ScheduledRequest, due_at_s: float, wait_ms: float | None
    ) -> None:
        # The call starts here, in the sender, and a task reads it: starting
        # it in the new task would add a turn of the event loop to the lag.
        gaps = TokenGaps()
        started = StartedCall(
            self._stub,
            scheduled.request,
            self._config.timeout_s,
            on_chunk=gaps.add_chunk,
        )
        lateness_ms = (started.sent_at_s - due_at_s) * 1000.0 - (wait_ms or 0.0)
        self.lag_monitor.record(lateness_ms)
        task = asyncio.create_task(self._send_one(scheduled, gaps, started, wait_ms))
        self._in_flight.add(task)
        self._idle.clear()
        # A task cancelled before its first step never reads, nor cancels, its call.
        task.add_done_callback(lambda _: started.cancel())
        task.add_done_callback(self._on_task_done)

    async def _send_one(
        self,
        scheduled: ScheduledRequest,
        gaps: TokenGaps,
        started: StartedCall,
        concurrency_wait_ms: float | None,
    ) -> None:
        self.sent += 1
        self._report_progress()
        try:
            outcome = await generate(
                self._stub, scheduled.request, self._config.timeout_s, started=started
            )
        finally:
            if self._slots is not None:
                self._slots.release()

        row = build_row(
            scheduled,
            outcome,
            self._start_at_s,
            gaps=gaps.stats(),
            concurrency_wait_ms=concurrency_wait_ms,
            slos=self._config.slos,
        )
        self._writer.append(row, flush=False)
        self.finished += 1
        if is_cancelled_by_replayer(outcome.status, outcome.error):
            self.cancelled += 1
        elif outcome.status != STATUS_OK:
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
        # Rows of calls that end during a quiet spell are flushed on time too.
        # Parts are written in a worker thread, so the sender keeps its
        # schedule while pyarrow compresses and writes.
        interval_s = self._config.flush_interval_s / 2
        while not self._done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), interval_s)
            await asyncio.to_thread(self._writer.flush_if_due)

    def _report_progress(self) -> None:
        self._update_progress(self.sent, self.finished, self.failed)


async def _wait_for_connection(channel: grpc.aio.Channel, config: ReplayConfig) -> None:
    """Wait until `channel` is ready; raise ReplayError saying why it is not.

    When the channel is not ready within the connect timeout, one health
    check without wait_for_ready returns gRPC's own reason, such as a
    refused connection or a failed TLS handshake, for the message. When the
    server replies to that check, even with an error status, the connection
    came up late and the run goes on.
    """
    try:
        await asyncio.wait_for(channel.channel_ready(), config.connect_timeout_s)
        return
    except asyncio.TimeoutError:
        pass

    reason = await _connection_failure(channel)
    if reason is None:
        logger.info("connected to %s after the connect timeout", config.target)
        return
    message = (
        f"could not connect to {config.target} within "
        f"{config.connect_timeout_s:g} s: {reason}. "
    )
    if config.tls is None:
        message += (
            "Check that the emulator is running and listening at that address, "
            "and connect with --tls-ca if it serves TLS"
        )
    else:
        message += (
            f"The TLS settings ({_tls_options(config.tls)}) may be the cause: "
            "check that the server serves TLS with a certificate signed by the "
            "trusted CA for that name, and, if it requires client certificates, "
            "that it trusts the CA of --tls-cert"
        )
    raise ReplayError(message)


# Deadline of the health check that reads gRPC's reason for a channel that
# is not ready, and of the call that reads the server's time scale.
_DIAGNOSIS_TIMEOUT_S = 2.0
# gRPC's details of a failed connection start with this, then the status and
# address of the last attempt, as in (grpcio 1.85) "failed to connect to all
# addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: Connection refused".
_LAST_ERROR = re.compile(
    r"^failed to connect to all addresses; last error: (?:[A-Z_]+: )?"
    r"(?:(?:ipv4|ipv6|unix):\S+: )?"
)


async def _connection_failure(channel: grpc.aio.Channel) -> str | None:
    """Return gRPC's reason why `channel` cannot connect, None if it can."""
    health = health_pb2_grpc.HealthStub(channel)
    try:
        await health.Check(
            health_pb2.HealthCheckRequest(), timeout=_DIAGNOSIS_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as error:
        code = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within another {_DIAGNOSIS_TIMEOUT_S:g} s"
        if code != grpc.StatusCode.UNAVAILABLE:
            return None  # the server replied, if only to reject the check
        details = _LAST_ERROR.sub("", error.details() or "")
        return details.removesuffix(": OK") or "unavailable, with no details"
    return None


def _tls_options(tls: TlsConfig) -> str:
    """Name the TLS options that a run was given, with their values."""
    given = [
        f"{option} {value}"
        for option, value in (
            ("--tls-ca", tls.root_ca),
            ("--tls-cert", tls.client_cert),
            ("--tls-key", tls.client_key),
            ("--tls-server-name", tls.server_name),
        )
        if value is not None
    ]
    return ", ".join(given) if given else "--tls, with the system's CA certificates"


async def read_server_config(
    channel: grpc.aio.Channel,
) -> control_pb2.EmulatorConfig | None:
    """Return the target's configuration from its Control service, or None.

    The configuration names the hardware and model profiles and gives the
    deployment, time scale and admission limits. The Control service may be
    turned off or served on another port, so a failed call is logged at
    debug level only.
    """
    control = control_pb2_grpc.ControlStub(channel)
    try:
        config = await control.GetConfig(
            control_pb2.GetConfigRequest(), timeout=_DIAGNOSIS_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as error:
        logger.debug(
            "cannot read the target's configuration: %s %s",
            error.code().name,
            error.details(),
        )
        return None
    return cast(control_pb2.EmulatorConfig, config)


def _warn_if_time_scale_differs(speedup: float, time_scale: float | None) -> None:
    if time_scale is None or math.isclose(time_scale, speedup, rel_tol=1e-9):
        return
    load_factor = speedup / time_scale
    logger.warning(
        "the server's time scale is %g but the speed-up is %g: requests arrive "
        "%g times faster than in the trace while emulated time runs %g times "
        "faster than the wall clock, so the emulator serves %.3g times the "
        "trace's load and its latencies and rates are those of that load. To "
        "replay the trace's own load, pass --speedup %g or set the server's time "
        "scale to %g (cmx serve --time-scale, or Control/SetTimeScale)",
        time_scale,
        speedup,
        speedup,
        time_scale,
        load_factor,
        time_scale,
        speedup,
    )


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


# Drawing the bar holds the GIL for about 0.7 ms, which delays any send due
# meanwhile, so it is redrawn twice a second rather than rich's default 10.
_PROGRESS_REFRESHES_PER_S = 2.0


class _ReplayProgress(Progress):
    """A progress bar that reads the run's counts only when it redraws.

    Each request changes the counts twice; rich's `update` costs about
    10 us, so the counts are kept as plain numbers until a redraw.
    """

    counts = (0, 0, 0)
    task_id: TaskID | None = None

    def get_renderables(self) -> Iterable[RenderableType]:
        self.take_counts()
        yield from super().get_renderables()

    def take_counts(self) -> None:
        if self.task_id is not None:
            sent, finished, failed = self.counts
            self.update(self.task_id, completed=sent, finished=finished, failed=failed)


@contextlib.contextmanager
def _progress_bar(enabled: bool, planned: int | None) -> Iterator[_ProgressUpdate]:
    progress = _ReplayProgress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("sent {task.completed:.0f}"),
        TextColumn("finished {task.fields[finished]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        refresh_per_second=_PROGRESS_REFRESHES_PER_S,
    )
    with progress:
        progress.task_id = progress.add_task(
            "replay", total=planned, finished=0, failed=0
        )

        def update(sent: int, finished: int, failed: int) -> None:
            progress.counts = (sent, finished, failed)

        try:
            yield update
        finally:
            progress.take_counts()


def _check_positive(name: str, value: float, meaning: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ReplayError(f"{name} must be a number > 0 ({meaning}), not {value}")
