"""Injected faults: what they are, when they are active, whom they touched.

A fault is a frozen `FaultSpec`: a kind (`SlowInstance`, `FailedInstance`,
`NetworkLatency`, `DropStreams`), a start delay and a duration, all in
emulated seconds. `FaultBook` keeps the pending and active faults of one
model and the history of instance faults, so that the requests a fault
touched can be named in their results. Applying a fault to the model and to
streams is the runtime's job (`emulator.runtime`).
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
from collections import deque
from dataclasses import dataclass, field

from emulator.core import ScheduledEvent
from emulator.engine import RequestRecord
from emulator.errors import EmulatorError
from emulator.profiles import Profiles

__all__ = [
    "DropStreams",
    "FailedInstance",
    "FailedInstancePolicy",
    "FaultBook",
    "FaultEntry",
    "FaultError",
    "FaultIdInUse",
    "FaultKind",
    "FaultSpec",
    "FaultState",
    "NetworkLatency",
    "Pool",
    "SlowInstance",
    "validate_fault",
]

logger = logging.getLogger(__name__)

# Instance faults remembered after they end, to name them in the results of
# requests that finish later; the oldest are forgotten first.
_HISTORY_LIMIT = 10_000


class FaultError(EmulatorError):
    """A fault that does not fit the deployment or has a value out of range."""


class FaultIdInUse(FaultError):
    """A pending or active fault already has the requested id."""


class Pool(enum.Enum):
    """Pool of instances in the prefill-decode disaggregated deployment."""

    PREFILL = "prefill"
    DECODE = "decode"


class FailedInstancePolicy(enum.Enum):
    """Handling of the requests on a failed instance."""

    REROUTE = "reroute"
    FAIL = "fail"


class FaultState(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True)
class SlowInstance:
    """Every step of an instance takes `slowdown` times longer.

    A slow die slows its whole instance the same way, because the all-to-all
    of expert parallelism makes every step wait for the slowest die. `die`
    only records which die it was.
    """

    pool: Pool
    instance: int
    slowdown: float
    die: int | None = None

    kind_name = "slow_instance"


@dataclass(frozen=True)
class FailedInstance:
    """An instance that takes no requests; its requests are rerouted or failed."""

    pool: Pool
    instance: int

    kind_name = "failed_instance"


@dataclass(frozen=True)
class NetworkLatency:
    """Emulated milliseconds added each way between clients and the model."""

    latency_ms: float

    kind_name = "network_latency"


@dataclass(frozen=True)
class DropStreams:
    """Streams dropped part-way with chance `probability`.

    The drop comes after `after_tokens` delivered tokens, or at a point drawn
    uniformly from 0 to output_tokens - 1 when `after_tokens` is 0.
    """

    probability: float
    after_tokens: int = 0

    kind_name = "drop_streams"


FaultKind = SlowInstance | FailedInstance | NetworkLatency | DropStreams


@dataclass(frozen=True)
class FaultSpec:
    """A fault with its timing, in emulated seconds.

    `start_after_s` counts from injection (or from arming, in a schedule);
    `duration_s` of 0 keeps the fault until it is cleared. An empty
    `fault_id` is replaced by the next free "f<N>" on injection.
    """

    kind: FaultKind
    fault_id: str = ""
    start_after_s: float = 0.0
    duration_s: float = 0.0

    @property
    def label(self) -> str:
        """Name used in results: "ID:KIND", such as "f2:slow_instance"."""
        return f"{self.fault_id}:{self.kind.kind_name}"


@dataclass
class FaultEntry:
    """A fault's life in one model: when it starts and ends, and its events."""

    spec: FaultSpec
    starts_at_s: float
    state: FaultState = FaultState.PENDING
    ends_at_s: float | None = None
    events: list[ScheduledEvent] = field(default_factory=list, repr=False)

    def overlaps(self, from_s: float, to_s: float) -> bool:
        """Return whether the fault was active at some time in [from_s, to_s]."""
        if self.state is FaultState.PENDING:
            return False
        ended_s = math.inf if self.ends_at_s is None else self.ends_at_s
        return self.starts_at_s <= to_s and from_s <= ended_s


def validate_fault(spec: FaultSpec, profiles: Profiles) -> None:
    """Check a fault against the deployment; raise FaultError naming the field."""
    _check_finite_at_least("start_after_s", spec.start_after_s, 0.0)
    _check_finite_at_least("duration_s", spec.duration_s, 0.0)
    if len(spec.fault_id) > 64 or "," in spec.fault_id or ":" in spec.fault_id:
        raise FaultError(
            f"fault_id {spec.fault_id!r} must be at most 64 characters without "
            "',' or ':'"
        )

    kind = spec.kind
    if isinstance(kind, SlowInstance | FailedInstance):
        _check_instance(kind.pool, kind.instance, profiles)
    if isinstance(kind, SlowInstance):
        _check_finite_at_least("slow_instance.slowdown", kind.slowdown, 1.0)
        if kind.die is not None:
            _check_die(kind, profiles)
    elif isinstance(kind, NetworkLatency):
        _check_finite_at_least("network_latency.latency_ms", kind.latency_ms, 0.0)
    elif isinstance(kind, DropStreams):
        if not 0.0 <= kind.probability <= 1.0:
            raise FaultError(
                f"drop_streams.probability must be in [0, 1], got {kind.probability}"
            )
        if kind.after_tokens < 0:
            raise FaultError(
                f"drop_streams.after_tokens must be 0 or more, got {kind.after_tokens}"
            )


def _check_finite_at_least(name: str, value: float, minimum: float) -> None:
    if not (math.isfinite(value) and value >= minimum):
        raise FaultError(f"{name} must be a finite number >= {minimum:g}, got {value}")


def _check_instance(pool: Pool, instance: int, profiles: Profiles) -> None:
    deployment = profiles.deployment
    count = (
        deployment.prefill_instances
        if pool is Pool.PREFILL
        else deployment.decode_instances
    )
    if not 0 <= instance < count:
        raise FaultError(
            f"instance {instance} is out of range: the deployment has {count} "
            f"{pool.value} instances, numbered 0 to {count - 1}"
        )


def _check_die(kind: SlowInstance, profiles: Profiles) -> None:
    deployment = profiles.deployment
    npus = (
        deployment.prefill_npus_per_instance
        if kind.pool is Pool.PREFILL
        else deployment.decode_npus_per_instance
    )
    dies = npus * profiles.hardware.dies_per_npu
    if kind.die is not None and not 0 <= kind.die < dies:
        raise FaultError(
            f"slow_instance.die {kind.die} is out of range: a {kind.pool.value} "
            f"instance has {dies} dies, numbered 0 to {dies - 1}"
        )


class FaultBook:
    """Pending, active and past faults of one model, by fault id.

    The book only keeps state: the runtime schedules the start and end events
    and calls `activate` and `end`.
    """

    def __init__(self) -> None:
        self._entries: dict[str, FaultEntry] = {}
        self._history: deque[FaultEntry] = deque(maxlen=_HISTORY_LIMIT)
        self._numbers = itertools.count(1)

    def add(self, spec: FaultSpec, starts_at_s: float) -> FaultEntry:
        """Register a pending fault, naming it when its id is empty.

        Raises FaultError when a pending or active fault has the same id.
        """
        if not spec.fault_id:
            while (fault_id := f"f{next(self._numbers)}") in self._entries:
                pass
            spec = FaultSpec(spec.kind, fault_id, spec.start_after_s, spec.duration_s)
        elif spec.fault_id in self._entries:
            raise FaultIdInUse(
                f"fault_id {spec.fault_id!r} is already pending or active; clear "
                "it first or choose another id"
            )
        entry = FaultEntry(spec=spec, starts_at_s=starts_at_s)
        self._entries[spec.fault_id] = entry
        return entry

    def activate(self, fault_id: str, now_s: float) -> FaultEntry:
        entry = self._entries[fault_id]
        entry.state = FaultState.ACTIVE
        entry.starts_at_s = now_s
        if isinstance(entry.spec.kind, SlowInstance | FailedInstance):
            self._history.append(entry)
        logger.info("fault %s started at %.3f s", entry.spec.label, now_s)
        return entry

    def end(self, fault_id: str, now_s: float) -> FaultEntry | None:
        """End a pending or active fault; return it, or None if unknown."""
        entry = self._entries.pop(fault_id, None)
        if entry is None:
            return None
        for event in entry.events:
            event.cancel()
        if entry.state is FaultState.ACTIVE:
            entry.ends_at_s = now_s
            logger.info("fault %s ended at %.3f s", entry.spec.label, now_s)
        entry.state = FaultState.ENDED
        return entry

    def entries(self) -> list[FaultEntry]:
        """Pending and active faults, in the order they were added."""
        return list(self._entries.values())

    def active(self) -> list[FaultEntry]:
        return [e for e in self._entries.values() if e.state is FaultState.ACTIVE]

    def instance_state(self, pool: Pool, instance: int) -> tuple[float, bool]:
        """Return the instance's step time multiplier and whether it is available."""
        slowdown = 1.0
        available = True
        for entry in self.active():
            kind = entry.spec.kind
            if isinstance(kind, SlowInstance | FailedInstance) and (
                kind.pool is pool and kind.instance == instance
            ):
                if isinstance(kind, SlowInstance):
                    slowdown *= kind.slowdown
                else:
                    available = False
        return slowdown, available

    def labels_touching(self, record: RequestRecord, now_s: float) -> list[str]:
        """Labels of the instance faults active while `record` was on an instance.

        A request is on its prefill instance from arrival to the end of its
        prefill, and on its decode instance from the end of its KV transfer
        to its last token (or `now_s` while it has not ended).
        """
        labels = []
        for entry in self._history:
            kind = entry.spec.kind
            assert isinstance(kind, SlowInstance | FailedInstance)
            interval = _interval_on(record, kind.pool, kind.instance, now_s)
            if interval is not None and entry.overlaps(*interval):
                labels.append(entry.spec.label)
        return labels


def _interval_on(
    record: RequestRecord, pool: Pool, instance: int, now_s: float
) -> tuple[float, float] | None:
    end_s = record.last_token_s if record.finished else None
    end_s = now_s if end_s is None else end_s
    if pool is Pool.PREFILL:
        if record.prefill_instance != instance:
            return None
        ended_s = record.prefill_ended_s
        return record.arrival_s, now_s if ended_s is None else ended_s
    if record.decode_instance != instance or record.prefill_ended_s is None:
        return None
    return record.prefill_ended_s + record.kv_transfer_s, end_s
