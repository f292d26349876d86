"""Locust user that sends the emulator's Generate calls, under gevent.

Import this module only in a Locust process (the ready `replay/locustfile.py`
does): importing `locust` monkey-patches the standard library for gevent, and
this module then switches gRPC to gevent with
`grpc.experimental.gevent.init_gevent()`, before any channel exists.

Every finished call fires Locust's `request` event with request type "grpc",
a name per prompt-length class (see `replay.locust_plan.request_kind`), the
emulated end-to-end latency in ms as response time and the output tokens
received as response length. An ok call also fires one event of request type
"TTFT" and, for two or more tokens, one of type "TPOT", whose response times
are the emulated TTFT and TPOT in ms. So Locust's tables and charts show the
percentiles of all three, and its "Aggregated" row counts each call up to
three times. A failed call counts as a failure named by its gRPC status. It
has no response time (None), so that it does not skew the percentiles.

Each worker also writes one results row per sent request (see
`replay.results`) to its own Parquet file, described in `replay.locust_plan`.
When Locust stops the run (or, in users mode, a user), open streams are
cancelled. Their rows are written with status CANCELLED, and no request event
is fired for them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from weakref import WeakKeyDictionary

import gevent
import gevent.pool
import grpc
import grpc.experimental.gevent
import numpy as np
from gevent import GreenletExit
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from cmx import __version__
from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.client import (
    CallInterrupted,
    Outcome,
    generate_sync,
    open_sync_channel,
)
from replay.errors import ReplayError
from replay.locust_options import LoadMode, LocustRunConfig, add_arguments
from replay.locust_plan import (
    RunPlan,
    ShapeSampler,
    ShardQueue,
    iter_shard,
    make_run_id,
    request_kind,
    worker_results_path,
)
from replay.results import STATUS_OK, ResultsWriter
from replay.runner import build_row
from replay.schedule import ScheduledRequest
from traces.errors import TraceError
from traces.schema import read_trace_metadata

__all__ = [
    "EXIT_RUN_FAILED",
    "REQUEST_TYPE",
    "TPOT_REQUEST_TYPE",
    "TTFT_REQUEST_TYPE",
    "WORKER_DONE_MESSAGE",
    "GenerateFailed",
    "GenerateUser",
    "call_generate",
]

logger = logging.getLogger(__name__)

# Must run after gevent has patched the standard library (done by importing
# locust) and before the first gRPC channel is made.
grpc.experimental.gevent.init_gevent()

REQUEST_TYPE = "grpc"
TTFT_REQUEST_TYPE = "TTFT"
TPOT_REQUEST_TYPE = "TPOT"
WORKER_DONE_MESSAGE = "cmx_worker_done"

# Name of the Locust option that carries the master's RunPlan to the workers.
# Locust copies every option the master has but Locust itself lacks into the
# workers' options with each spawn message, before it fires test_start there.
_PLAN_OPTION = "cmx_run_plan"
_LOCAL_WORKER_ID = "local"
# Lead time the master gives its workers to open their channels and results
# files before the first request is due.
_DISTRIBUTED_START_DELAY_S = 1.0
_FLUSH_INTERVAL_S = 2.0
_CONNECT_TIMEOUT_S = 10.0
_CANCEL_TIMEOUT_S = 10.0
# Exit status of a Locust process whose run could not start; 2 is also the
# status of `cmx` commands on bad input.
EXIT_RUN_FAILED = 2


class GenerateFailed(Exception):
    """A Generate call that ended with a gRPC status other than OK."""

    def __init__(self, status: str, details: str | None) -> None:
        super().__init__(f"{status}: {details}" if details else status)
        self.status = status


def call_generate(
    stub: emulator_pb2_grpc.EmulatorStub,
    request: emulator_pb2.GenerateRequest,
    timeout_s: float | None,
) -> Outcome:
    """Run one Generate call through the shared blocking client.

    A gRPC error status ends up in the outcome, never raised. When the
    calling greenlet is killed during the call, the call is cancelled and
    CallInterrupted is raised with the outcome so far (status CANCELLED).
    """
    return generate_sync(stub, request, timeout_s, interrupted_by=(GreenletExit,))


@dataclass
class _MasterRun:
    """The master's view of a run: its plan and the workers that finished."""

    plan: RunPlan
    finished_workers: set[int] = field(default_factory=set)


class _WorkerSession:
    """One worker's part of a run: its channel, results file and open calls.

    A local (not distributed) run has one session, as worker 0 of 1. Raises
    ReplayError or TraceError when the trace, a TLS file or the results path
    is unusable.
    """

    def __init__(
        self,
        environment: Environment,
        config: LocustRunConfig,
        plan: RunPlan,
        worker_index: int,
        worker_id: str,
    ) -> None:
        self.config = config
        self.worker_index = worker_index
        self.run_id = plan.run_id
        self._environment = environment
        # Send times count from the shared start; perf_counter is the clock
        # of the result rows' wall times.
        self.run_start_at_s = time.perf_counter() + (
            plan.start_at_epoch_s - time.time()
        )
        self._calls = gevent.pool.Group()
        self._users_started = 0
        self._done_reported = False
        self._closed = False

        self.queue: ShardQueue | None = None
        self.shapes: ShapeSampler | None = None
        if config.mode is LoadMode.TRACE:
            shard = iter_shard(config, worker_index, plan.worker_count)
            self.queue = ShardQueue(shard)
        else:
            self.shapes = ShapeSampler(config)

        # Opening the channel reads the TLS files, so an unreadable one fails
        # before the results file exists.
        self._channel = open_sync_channel(config.target, config.tls)
        self._stub = emulator_pb2_grpc.EmulatorStub(self._channel)

        path = worker_results_path(config.results_dir, plan.run_id, worker_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            **config.to_metadata(),
            "tool": "locust",
            "run_id": plan.run_id,
            "worker_index": worker_index,
            "worker_count": plan.worker_count,
            "locust_worker_id": worker_id,
            "started_at": datetime.fromtimestamp(
                plan.start_at_epoch_s, timezone.utc
            ).isoformat(),
            "cmx_version": __version__,
        }
        self._writer = ResultsWriter(path, metadata, flush_interval_s=_FLUSH_INTERVAL_S)
        self._flusher = gevent.spawn(self._flush_periodically)
        logger.info(
            "run %s: worker %d of %d writes %s",
            plan.run_id,
            worker_index,
            plan.worker_count,
            path,
        )

    def wait_for_connection(self) -> None:
        """Wait up to 10 s for the channel; log an error if it is not ready."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=_CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            logger.error(
                "could not connect to %s within %g s; calls will fail until the "
                "emulator is reachable there",
                self.config.target,
                _CONNECT_TIMEOUT_S,
            )

    def next_user_number(self) -> int:
        """Return a number for a new user, unique within this worker's run."""
        self._users_started += 1
        return self._users_started

    def send_next_scheduled(self) -> bool:
        """Wait until the next request of this worker is due, then send it.

        The call runs in its own greenlet, so that a slow stream never delays
        a later send. Returns False when this worker's requests are all sent.
        """
        assert self.queue is not None
        scheduled = self.queue.take()
        if scheduled is None:
            return False
        due_at_s = self.run_start_at_s + scheduled.scheduled_send_ms / 1000.0
        delay_s = due_at_s - time.perf_counter()
        if delay_s > 0:
            try:
                gevent.sleep(delay_s)
            except GreenletExit:
                self.queue.give_back(scheduled)
                raise
        self._calls.spawn(self._send_in_background, scheduled)
        return True

    def send_sampled(self, rng: np.random.Generator, request_id: str) -> None:
        """Send one request drawn from the trace and wait for its end."""
        assert self.shapes is not None
        request = self.shapes.draw(rng, request_id)
        now_ms = (time.perf_counter() - self.run_start_at_s) * 1000.0
        self.send(
            ScheduledRequest(
                request, arrival_ms=now_ms, scheduled_send_ms=now_ms, measured=True
            )
        )

    def send(self, scheduled: ScheduledRequest) -> None:
        """Run one call, write its row and report it to Locust.

        Raises GreenletExit again after writing the row of a call that was
        cancelled because its greenlet was killed.
        """
        try:
            outcome = call_generate(
                self._stub, scheduled.request, self.config.timeout_s
            )
        except CallInterrupted as stopped:
            self._write_row(scheduled, stopped.outcome)
            raise GreenletExit() from None
        self._write_row(scheduled, outcome)
        self._fire_request_events(scheduled.request, outcome)

    def finish(self) -> None:
        """Wait for this worker's open calls, then report its share as sent."""
        self._calls.join()
        self.report_done(None)

    def report_done(self, error: str | None) -> None:
        """Tell the master (or, in a local run, the runner) this worker is done."""
        if self._done_reported:
            return
        self._done_reported = True
        _report_worker_done(self._environment, self.run_id, self.worker_index, error)

    def close(self, grace_s: float) -> None:
        """Cancel calls still open after `grace_s` seconds, then close the file."""
        if self._closed:
            return
        if not self._calls.join(timeout=grace_s):
            logger.info("cancelling %d open Generate calls", len(self._calls))
            self._calls.kill(block=True, timeout=_CANCEL_TIMEOUT_S)
        self._closed = True
        self._flusher.kill(block=True)
        self._writer.close()
        self._channel.close()

    def _send_in_background(self, scheduled: ScheduledRequest) -> None:
        try:
            self.send(scheduled)
        except GreenletExit:
            pass
        except Exception:
            logger.exception(
                "request %s failed in the client", scheduled.request.request_id
            )

    def _write_row(self, scheduled: ScheduledRequest, outcome: Outcome) -> None:
        if self._closed:
            logger.warning(
                "results of %s are closed; dropping the row of request %s",
                self.run_id,
                scheduled.request.request_id,
            )
            return
        self._writer.append(build_row(scheduled, outcome, self.run_start_at_s))

    def _fire_request_events(
        self, request: emulator_pb2.GenerateRequest, outcome: Outcome
    ) -> None:
        fire: Callable[..., None] = self._environment.events.request.fire
        name = request_kind(request.input_tokens)
        context = {"request_id": request.request_id, "status": outcome.status}
        if outcome.status != STATUS_OK:
            fire(
                request_type=REQUEST_TYPE,
                name=name,
                response_time=None,
                response_length=outcome.tokens_received,
                exception=GenerateFailed(outcome.status, outcome.error),
                context=context,
            )
            return

        latencies = outcome.latencies
        fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=latencies.e2e_ms,
            response_length=outcome.tokens_received,
            exception=None,
            context=context,
        )
        for request_type, value_ms in (
            (TTFT_REQUEST_TYPE, latencies.ttft_ms),
            (TPOT_REQUEST_TYPE, latencies.tpot_ms),
        ):
            if value_ms is not None:
                fire(
                    request_type=request_type,
                    name=name,
                    response_time=value_ms,
                    response_length=0,
                    exception=None,
                    context=context,
                )

    def _flush_periodically(self) -> None:
        # Rows of calls that end during a quiet spell are flushed on time too,
        # not only with the next append.
        while True:
            gevent.sleep(_FLUSH_INTERVAL_S / 2)
            self._writer.flush_if_due()


_sessions: WeakKeyDictionary[Environment, _WorkerSession] = WeakKeyDictionary()
_master_runs: WeakKeyDictionary[Environment, _MasterRun] = WeakKeyDictionary()


class GenerateUser(User):
    """A Locust user that sends the trace's requests to the emulator.

    Set Locust's `--host` to the emulator's HOST:PORT and `--cmx-trace` to a
    canonical trace. In trace mode (`--cmx-mode trace`) the users of a worker
    share its requests and send each at its due time. One user per worker is
    enough, and each worker needs at least one. In users mode each user
    sends requests drawn from the trace one after another, waiting
    `wait_time` between them (none by default). Subclass it in your own
    locustfile to change `wait_time`.
    """

    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._session: _WorkerSession | None = None
        self._user_number = 0
        self._sent = 0
        self._rng: np.random.Generator | None = None

    def on_start(self) -> None:
        """Attach the user to its worker's session of the current run."""
        self._session = _sessions.get(self.environment)
        if self._session is None:
            return
        self._user_number = self._session.next_user_number()
        seed = (self._session.config.seed, self._session.worker_index)
        self._rng = np.random.default_rng([*seed, self._user_number])

    @task
    def send_request(self) -> None:
        """Send the next request of this user's mode."""
        session = self._session
        if session is None or _sessions.get(self.environment) is not session:
            # No part in this run, or the run this user started in has ended.
            raise StopUser()
        if session.config.mode is LoadMode.USERS:
            assert self._rng is not None
            self._sent += 1
            request_id = f"{session.worker_index}.{self._user_number}.{self._sent}"
            session.send_sampled(self._rng, request_id)
            return

        try:
            sent = session.send_next_scheduled()
        except TraceError as error:
            logger.error("cannot read the trace: %s", error)
            session.report_done(str(error))
            raise StopUser() from None
        if not sent:
            session.finish()
            raise StopUser()


def _add_options(parser: Any, **_kwargs: Any) -> None:
    add_arguments(parser)


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    options = environment.parsed_options
    if isinstance(runner, MasterRunner):
        runner.register_message(WORKER_DONE_MESSAGE, _on_worker_done)
        # With --master-bind-port 0 the port is chosen by the system and
        # Locust does not log it; workers need it to connect.
        bind_host = options.master_bind_host if options is not None else "*"
        logger.info("master accepts workers on %s:%d", bind_host, runner.server.port)
    if isinstance(runner, WorkerRunner) or options is None:
        # A worker gets the options from its master with each run.
        return
    if not (options.headless or options.autostart):
        # The host and options can still change in the web UI before a run.
        return
    try:
        _load_config(environment)
    except (ReplayError, TraceError) as error:
        print(f"cmx: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _plan_distributed_run(environment, runner)
    elif isinstance(runner, WorkerRunner):
        _open_session(environment, runner.client_id)
    elif isinstance(runner, LocalRunner):
        _new_plan(environment, start_delay_s=0.0, worker_ids=[_LOCAL_WORKER_ID])
        _open_session(environment, _LOCAL_WORKER_ID)


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    session = _sessions.pop(environment, None)
    if session is not None:
        session.close(grace_s=environment.stop_timeout or 0.0)


def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    # On SIGTERM or Ctrl-C, Locust fires `quitting` before it stops the
    # users. Stopping them first lets their open calls write CANCELLED rows
    # before the results file is closed by the test_stop listener.
    if environment in _sessions and environment.runner is not None:
        environment.runner.stop()
    _on_test_stop(environment)


def _plan_distributed_run(environment: Environment, runner: MasterRunner) -> None:
    workers = runner.clients.ready + runner.clients.running + runner.clients.spawning
    ordered = sorted(workers, key=lambda worker: runner.get_worker_index(worker.id))
    plan = _new_plan(
        environment,
        start_delay_s=_DISTRIBUTED_START_DELAY_S,
        worker_ids=[worker.id for worker in ordered],
    )
    logger.info(
        "run %s: the trace is split across %d workers", plan.run_id, len(ordered)
    )
    try:
        config = _load_config(environment)
    except (ReplayError, TraceError) as error:
        logger.error("cannot start run %s: %s", plan.run_id, error)
        _end_run(environment, failed=True)
        return

    too_few_users = runner.target_user_count < plan.worker_count
    if config.mode is LoadMode.TRACE and too_few_users:
        logger.error(
            "trace mode needs at least one user per worker, but %d users were "
            "requested for %d workers; set --users to %d or more",
            runner.target_user_count,
            plan.worker_count,
            plan.worker_count,
        )
        _end_run(environment, failed=True)


def _new_plan(
    environment: Environment, start_delay_s: float, worker_ids: list[str]
) -> RunPlan:
    """Make the next run's plan and store it where Locust sends it to workers."""
    previous = _master_runs.get(environment)
    plan = RunPlan(
        run_id=make_run_id(_utc_now(), previous.plan.run_id if previous else None),
        start_at_epoch_s=time.time() + start_delay_s,
        shard_by_worker={
            worker_id: index for index, worker_id in enumerate(worker_ids)
        },
    )
    _master_runs[environment] = _MasterRun(plan)
    if environment.parsed_options is not None:
        setattr(environment.parsed_options, _PLAN_OPTION, plan.to_message())
    return plan


def _load_config(environment: Environment) -> LocustRunConfig:
    """Return the checked options; raises ReplayError or TraceError."""
    if environment.parsed_options is None:
        raise ReplayError("Locust gave no parsed options to the cmx user")
    config = LocustRunConfig.from_options(environment.parsed_options, environment.host)
    read_trace_metadata(config.trace_path)
    return config


def _open_session(environment: Environment, worker_id: str) -> None:
    stale = _sessions.pop(environment, None)
    if stale is not None:
        stale.close(grace_s=0.0)
    try:
        plan = RunPlan.from_message(_plan_option(environment))
        worker_index = plan.shard_by_worker.get(worker_id)
        if worker_index is None:
            logger.warning(
                "run %s started before this worker joined; it sends nothing "
                "until the next run",
                plan.run_id,
            )
            return
        config = _load_config(environment)
        session = _WorkerSession(environment, config, plan, worker_index, worker_id)
    except (ReplayError, TraceError, OSError) as error:
        logger.error("cannot start this worker's part of the run: %s", error)
        run_id = str((_plan_option(environment) or {}).get("run_id", ""))
        _report_worker_done(environment, run_id, -1, str(error))
        return
    _sessions[environment] = session
    session.wait_for_connection()


def _report_worker_done(
    environment: Environment, run_id: str, worker_index: int, error: str | None
) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # The master ends the run as soon as every worker is done, and waits
        # only 0.5 s for the workers' last statistics, which they otherwise
        # send every 3 s. So the statistics go first, on the same connection,
        # and reach the master before this message. `_send_stats` is what
        # Locust's worker itself calls when it quits.
        runner._send_stats()
        data = {"run_id": run_id, "worker_index": worker_index, "error": error}
        runner.send_message(WORKER_DONE_MESSAGE, data)
    elif error is not None:
        # The caller has logged the error.
        _end_run(environment, failed=True)
    else:
        logger.info("run %s: every request of the trace was sent", run_id)
        _end_run(environment)


def _on_worker_done(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    run = _master_runs.get(environment)
    data = msg.data or {}
    if run is None or data.get("run_id") != run.plan.run_id:
        logger.debug("ignoring a done message of another run: %s", data)
        return
    if data.get("error"):
        logger.error(
            "stopping run %s: worker %s failed: %s",
            run.plan.run_id,
            msg.node_id,
            data["error"],
        )
        _end_run(environment, failed=True)
        return

    run.finished_workers.add(int(data["worker_index"]))
    logger.info(
        "run %s: %d of %d workers sent their share of the trace",
        run.plan.run_id,
        len(run.finished_workers),
        run.plan.worker_count,
    )
    if len(run.finished_workers) == run.plan.worker_count:
        _end_run(environment)


def _end_run(environment: Environment, failed: bool = False) -> None:
    """Quit a headless run, or stop a web UI run, from a greenlet of its own.

    With `failed`, a headless Locust exits with status 2 (bad input or setup).
    """
    runner = environment.runner
    if runner is None:
        return
    if failed:
        environment.process_exit_code = EXIT_RUN_FAILED
    options = environment.parsed_options
    headless = bool(options is not None and options.headless)
    gevent.spawn(runner.quit if headless else runner.stop)


def _plan_option(environment: Environment) -> Any:
    return getattr(environment.parsed_options, _PLAN_OPTION, None)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


events.init_command_line_parser.add_listener(_add_options)
events.init.add_listener(_on_init)
events.test_start.add_listener(_on_test_start)
events.test_stop.add_listener(_on_test_stop)
events.quitting.add_listener(_on_quitting)
