"""The model paced against the wall clock, with admission and faults.

`PacedRuntime` owns one model (event queue, supernode, fault book) and the
streams being served on it. One asyncio task runs the events as the scaled
wall clock reaches them; requests are admitted, cancelled and restarted
between events. Reset and a new deployment replace the model as a whole, and
the emulated clock starts again at 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import grpc
import numpy as np

from emulator.admission import AdmissionLimits, admission_problem
from emulator.core import EventQueue
from emulator.engine import NoInstanceAvailable, RequestRecord, Supernode
from emulator.errors import ConfigError, EmulatorError
from emulator.faults import (
    DropStreams,
    FailedInstance,
    FailedInstancePolicy,
    FaultBook,
    FaultEntry,
    FaultError,
    FaultSpec,
    FaultState,
    NetworkLatency,
    Pool,
    SlowInstance,
    validate_fault,
)
from emulator.profiles import Profiles
from emulator.sessions import RequestSession

__all__ = ["AdmissionRejected", "PacedRuntime", "RescalableClock"]

logger = logging.getLogger(__name__)


# Minimum wall time the run loop sleeps before an event that is not yet due.
# At high time scales decode steps come every fraction of a millisecond, so
# running them in batches of about a millisecond saves a loop iteration per
# step. Token times stay exact because every event keeps its due time.
_MIN_WAKE_S = 0.001


class AdmissionRejected(EmulatorError):
    """The admission limits are reached; the message names the limit."""


class RescalableClock:
    """Emulated time from the wall clock, at a time scale that can change.

    Emulated time = emulated time at the last change + wall seconds since
    then x `time_scale`, so it stays continuous when the scale changes.
    Based on `time.perf_counter`, which is monotonic.
    """

    def __init__(self, time_scale: float) -> None:
        self._check(time_scale)
        self._time_scale = time_scale
        self._base_emulated_s = 0.0
        self._base_wall_s = time.perf_counter()

    @property
    def time_scale(self) -> float:
        return self._time_scale

    def now_s(self) -> float:
        elapsed_s = time.perf_counter() - self._base_wall_s
        return self._base_emulated_s + elapsed_s * self._time_scale

    def wall_delay_s(self, emulated_at_s: float) -> float:
        """Wall seconds from now until emulated time `emulated_at_s` (>= 0)."""
        return max(0.0, (emulated_at_s - self.now_s()) / self._time_scale)

    def set_time_scale(self, time_scale: float) -> None:
        self._check(time_scale)
        self._base_emulated_s = self.now_s()
        self._base_wall_s = time.perf_counter()
        self._time_scale = time_scale

    def restart(self) -> None:
        """Set emulated time back to 0."""
        self._base_emulated_s = 0.0
        self._base_wall_s = time.perf_counter()

    @staticmethod
    def _check(time_scale: float) -> None:
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ConfigError(
                f"time_scale must be a positive finite number, got {time_scale}"
            )


class PacedRuntime:
    """Runs the model so that emulated time tracks the scaled wall clock.

    One asyncio task sleeps until the wall time of the next event, then runs
    every event due. Events carry their exact emulated due time, so token
    timestamps stay exact even when the task wakes late.
    """

    def __init__(
        self,
        profiles: Profiles,
        time_scale: float,
        seed: int,
        *,
        admission: AdmissionLimits | None = None,
        failed_instance_policy: FailedInstancePolicy = FailedInstancePolicy.REROUTE,
        fault_schedule: tuple[FaultSpec, ...] = (),
    ) -> None:
        self.clock = RescalableClock(time_scale)
        self.admission = admission or AdmissionLimits()
        self.failed_instance_policy = failed_instance_policy
        self.sessions: set[RequestSession] = set()
        self._seed = seed
        self._wakeup = asyncio.Event()
        # Emulated due time of the event the run loop sleeps until: inf
        # while it waits with no event pending, -inf while it is not asleep.
        self._asleep_until_s = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._build_model(profiles)
        for spec in fault_schedule:
            validate_fault(spec, profiles)
        self.fault_schedule = fault_schedule
        self._arm_schedule()

    def _build_model(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.events = EventQueue()
        self.clock.restart()
        rng = np.random.default_rng(self._seed)
        self.supernode = Supernode(profiles, self.events, rng)
        self.faults = FaultBook()
        self._stream_rng = np.random.default_rng([self._seed, 1])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def advance(self) -> None:
        """Run every event due by the current emulated time."""
        self.events.run_until(self.clock.now_s())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            next_at_s = self.events.next_at_s()
            timeout_s = (
                None if next_at_s is None else self.clock.wall_delay_s(next_at_s)
            )
            self._wakeup.clear()
            if timeout_s is None or timeout_s > 0:
                self._asleep_until_s = math.inf if next_at_s is None else next_at_s
                # A timer instead of asyncio.wait_for: cheaper, and wait_for
                # of Python 3.11 can swallow a cancellation that comes as
                # the wait ends, which left stop() waiting forever.
                timer = None
                if timeout_s is not None:
                    wake_in_s = max(timeout_s, _MIN_WAKE_S)
                    timer = loop.call_later(wake_in_s, self._wakeup.set)
                try:
                    await self._wakeup.wait()
                finally:
                    self._asleep_until_s = -math.inf
                    if timer is not None:
                        timer.cancel()
            else:
                await asyncio.sleep(0)  # let streams run between due events
            self.advance()

    # Requests.

    def plan_stream(self, session: RequestSession) -> None:
        """Apply the active stream faults to a new stream: latency and drops."""
        for entry in self.faults.active():
            kind = entry.spec.kind
            if isinstance(kind, NetworkLatency) and kind.latency_ms > 0:
                wall_s = kind.latency_ms / 1e3 / self.clock.time_scale
                session.latency_wall_s += wall_s
                session.add_fault(entry.spec.label)
            elif isinstance(kind, DropStreams) and session.drop_after_tokens is None:
                if self._stream_rng.random() < kind.probability:
                    session.drop_after_tokens = self._drop_point(kind, session)
                    session.drop_label = entry.spec.label
                    session.add_fault(entry.spec.label)

    def _drop_point(self, kind: DropStreams, session: RequestSession) -> int:
        if kind.after_tokens > 0:
            return kind.after_tokens
        return int(self._stream_rng.integers(0, session.spec.output_tokens))

    def admit(self, session: RequestSession) -> None:
        """Put a new request into the model at the current emulated time.

        Raises AdmissionRejected when the admission limits are reached and
        NoInstanceAvailable when a pool has no available instance.
        """
        self.advance()
        supernode = self.supernode
        problem = admission_problem(
            self.admission,
            supernode.active_requests,
            sum(instance.queued_tokens for instance in supernode.prefill),
            session.spec.input_tokens,
        )
        if problem is not None:
            raise AdmissionRejected(problem)
        self._submit(session)
        self.sessions.add(session)
        self._wake_if_sooner()

    def _wake_if_sooner(self) -> None:
        """Wake the run loop when an event is now due before the one it awaits.

        Most new requests only add events after the next decode step, so
        the loop keeps its timer and is not woken for nothing.
        """
        next_at_s = self.events.next_at_s()
        if next_at_s is not None and next_at_s < self._asleep_until_s:
            self._wakeup.set()

    def _submit(self, session: RequestSession) -> None:
        if not any(d.available for d in self.supernode.decode):
            raise NoInstanceAvailable(self._unavailable_reason(Pool.DECODE))
        if not any(p.available for p in self.supernode.prefill):
            raise NoInstanceAvailable(self._unavailable_reason(Pool.PREFILL))
        spec, sink = session.next_attempt()
        session.start_attempt(self.supernode.submit(spec, sink))

    def _unavailable_reason(self, pool: Pool) -> str:
        labels = [
            entry.spec.label
            for entry in self.faults.active()
            if isinstance(entry.spec.kind, FailedInstance)
            and entry.spec.kind.pool is pool
        ]
        return (
            f"no {pool.value} instance is available: every one has failed "
            f"(faults {', '.join(labels) or 'none'})"
        )

    def release(self, session: RequestSession) -> None:
        """Take an ended stream's request out of the model, wherever it is."""
        if session in self.sessions:
            self.sessions.discard(session)
            if session.in_model:
                self.advance()
                self._cancel_in_model(session)
                self._wakeup.set()

    def _cancel_in_model(self, session: RequestSession) -> None:
        record = session.record
        if record is not None and not record.finished:
            self.supernode.cancel(record)

    def fault_labels(self, session: RequestSession) -> list[str]:
        """Labels of every fault that touched the session's request."""
        now_s = self.events.now_s
        for record in session.attempts:
            for label in self.faults.labels_touching(record, now_s):
                session.add_fault(label)
        return list(session.fault_labels)

    # Control.

    def set_time_scale(self, time_scale: float) -> None:
        self.advance()
        self.clock.set_time_scale(time_scale)
        self._wakeup.set()

    def reset(self, profiles: Profiles | None = None) -> int:
        """Replace the model with an empty one; return how many streams ended.

        Open streams end with ABORTED, faults are cleared, emulated time
        starts again at 0 and the fault schedule is armed again. Raises
        FaultError when the schedule does not fit the new profiles.
        """
        profiles = profiles or self.profiles
        for spec in self.fault_schedule:
            validate_fault(spec, profiles)
        aborted = len(self.sessions)
        for session in self.sessions:
            session.abort(
                grpc.StatusCode.ABORTED,
                "the emulator was reset through its control service; "
                "send the request again",
            )
        self.sessions.clear()
        self._build_model(profiles)
        self._arm_schedule()
        self._wakeup.set()
        logger.info("model reset; %d open streams aborted", aborted)
        return aborted

    def load_fault_schedule(self, schedule: tuple[FaultSpec, ...]) -> None:
        """Replace the fault schedule and arm it from now.

        Pending faults are dropped first; active ones go on. Raises
        FaultError, changing nothing, when an entry is invalid or its id is
        repeated or taken by an active fault.
        """
        for spec in schedule:
            validate_fault(spec, self.profiles)
        ids = [spec.fault_id for spec in schedule if spec.fault_id]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        active = {entry.spec.fault_id for entry in self.faults.active()}
        if repeated or active & set(ids):
            raise FaultError(
                "fault schedule reuses fault_id values "
                f"{repeated or sorted(active & set(ids))}; ids must be unique "
                "and not those of active faults"
            )
        self.advance()
        for entry in self.faults.entries():
            if entry.state is FaultState.PENDING:
                self._end_fault(entry.spec.fault_id)
        self.fault_schedule = schedule
        self._arm_schedule()

    def _arm_schedule(self) -> None:
        for spec in self.fault_schedule:
            self.inject_fault(spec)

    def inject_fault(self, spec: FaultSpec) -> FaultEntry:
        """Add a fault that starts `spec.start_after_s` from now.

        Raises FaultError when it does not fit the deployment or its id is
        taken.
        """
        validate_fault(spec, self.profiles)
        self.advance()
        now_s = self.events.now_s
        entry = self.faults.add(spec, now_s + spec.start_after_s)
        fault_id = entry.spec.fault_id
        if spec.start_after_s > 0:
            entry.events.append(
                self.events.schedule_at(
                    entry.starts_at_s, lambda: self._activate(fault_id)
                )
            )
        else:
            self._activate(fault_id)
        self._wakeup.set()
        return entry

    def clear_faults(self, fault_ids: list[str], clear_schedule: bool) -> list[str]:
        """End the named faults (every active one when none is named)."""
        self.advance()
        entries = self.faults.entries()
        if fault_ids:
            targets = [e for e in entries if e.spec.fault_id in set(fault_ids)]
        else:
            targets = [e for e in entries if e.state is FaultState.ACTIVE]
        if clear_schedule:
            self.fault_schedule = ()
            targets += [e for e in entries if e.state is FaultState.PENDING]
        cleared = []
        for entry in targets:
            if self._end_fault(entry.spec.fault_id):
                cleared.append(entry.spec.fault_id)
        return cleared

    def _activate(self, fault_id: str) -> None:
        now_s = self.events.now_s
        entry = self.faults.activate(fault_id, now_s)
        if entry.spec.duration_s > 0:
            entry.events.append(
                self.events.schedule_in(
                    entry.spec.duration_s, lambda: self._on_fault_expired(fault_id)
                )
            )
        self._apply_instance_faults()
        kind = entry.spec.kind
        if isinstance(kind, FailedInstance):
            self._evacuate(kind.pool, kind.instance, entry.spec.label)

    def _on_fault_expired(self, fault_id: str) -> None:
        self._end_fault(fault_id)

    def _end_fault(self, fault_id: str) -> bool:
        ended = self.faults.end(fault_id, self.events.now_s)
        if ended is not None and isinstance(
            ended.spec.kind, SlowInstance | FailedInstance
        ):
            self._apply_instance_faults()
        return ended is not None

    def _apply_instance_faults(self) -> None:
        for prefill in self.supernode.prefill:
            state = self.faults.instance_state(Pool.PREFILL, prefill.index)
            prefill.slowdown, prefill.available = state
        for decode in self.supernode.decode:
            state = self.faults.instance_state(Pool.DECODE, decode.index)
            decode.slowdown, decode.available = state

    def _evacuate(self, pool: Pool, index: int, label: str) -> None:
        """Reroute or fail the requests on a failed instance."""
        pool_lost = not any(
            i.available
            for i in (
                self.supernode.prefill
                if pool is Pool.PREFILL
                else self.supernode.decode
            )
        )
        for session in list(self.sessions):
            record = session.record
            if record is None or not session.in_model:
                continue
            if _is_on(record, pool, index) or (pool_lost and _needs(record, pool)):
                session.add_fault(label)
                self._restart_or_fail(session, pool, index, label)

    def _restart_or_fail(
        self, session: RequestSession, pool: Pool, index: int, label: str
    ) -> None:
        self._cancel_in_model(session)
        failure = f"{pool.value} instance {index} failed (fault {label})"
        if self.failed_instance_policy is FailedInstancePolicy.FAIL:
            session.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{failure}; requests on it are failed, not rerouted "
                "(failed-instance policy: fail)",
            )
            return
        try:
            self._submit(session)
        except EmulatorError as error:  # no instance left, or too large now
            session.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{failure} and it cannot be rerouted: {error}",
            )


def _is_on(record: RequestRecord, pool: Pool, index: int) -> bool:
    if pool is Pool.PREFILL:
        return record.prefill_instance == index and record.prefill_ended_s is None
    return record.decode_instance == index


def _needs(record: RequestRecord, pool: Pool) -> bool:
    """Return whether the request has still to pass through `pool`."""
    if pool is Pool.PREFILL:
        return record.prefill_ended_s is None
    return True
