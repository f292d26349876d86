"""Shares, send times and results paths of the workers of a Locust run.

In trace mode the trace's rows are numbered from 0 in file order (after
`--cmx-limit` and `--cmx-duration-s`), and the worker at position i of a run's
N workers sends row r exactly when r % N == i. Row r is due

    scheduled_send_ms = (arrival_ms_r - arrival_ms_0) / speedup

wall milliseconds after the run's shared start, where arrival_ms_0 is the
first row's arrival in the whole trace, so the workers together send the
trace's own arrival pattern. The master fixes the positions and the start in
a `RunPlan` and passes it to the workers with the options of each run.

In users mode each user draws rows at random from the trace (with
replacement) and sends them one after another. Its requests get new ids,
`<trace id>/<worker>.<user>.<n>`, unique across the run.

Each worker writes `<results dir>/run_id=<run>/worker_index=<i>/results.parquet`.
DuckDB reads the `key=value` folder names as columns (hive partitioning), so
`SELECT worker_index, count(*) FROM 'DIR/*/*/*.parquet' GROUP BY 1` counts
rows per worker. This module does not import Locust or gevent.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cmx.v1 import emulator_pb2
from replay.errors import ReplayError
from replay.locust_options import LocustRunConfig
from replay.schedule import ScheduledRequest
from traces.errors import TraceFormatError
from traces.schema import iter_trace_batches

__all__ = [
    "RESULTS_FILE_NAME",
    "RunPlan",
    "ShapeSampler",
    "ShardQueue",
    "iter_shard",
    "make_run_id",
    "request_from_row",
    "request_kind",
    "worker_results_path",
]

RESULTS_FILE_NAME = "results.parquet"

# Upper bounds (inclusive) of the prompt-length classes that name the
# requests in Locust's statistics, with their labels.
_PROMPT_CLASSES: tuple[tuple[int, str], ...] = (
    (1024, "1K"),
    (4096, "4K"),
    (16384, "16K"),
    (65536, "64K"),
)


def request_kind(input_tokens: int) -> str:
    """Return the Locust request name for a prompt of `input_tokens` tokens.

    Prompts are classed as <=1K, 1K-4K, 4K-16K, 16K-64K and >64K tokens
    (K = 1,024), each class including its upper bound: a 4,096-token prompt
    is "Generate prompt 1K-4K".
    """
    lower_label = ""
    for upper_tokens, label in _PROMPT_CLASSES:
        if input_tokens <= upper_tokens:
            if not lower_label:
                return f"Generate prompt <={label}"
            return f"Generate prompt {lower_label}-{label}"
        lower_label = label
    return f"Generate prompt >{lower_label}"


@dataclass(frozen=True)
class RunPlan:
    """Parameters the master fixes for one run and passes to every worker.

    `run_id` names the run's results folder. `start_at_epoch_s` is the shared
    start (Unix time in seconds) from which send times count.
    `shard_by_worker` maps each Locust worker's client id to its position
    0..N-1 among the run's N workers.
    """

    run_id: str
    start_at_epoch_s: float
    shard_by_worker: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positions = sorted(self.shard_by_worker.values())
        if positions != list(range(len(positions))):
            raise ReplayError(
                f"worker positions {positions} of run {self.run_id} are not "
                f"0..{len(positions) - 1}, each once"
            )

    @property
    def worker_count(self) -> int:
        """Number of workers that share the run's trace."""
        return len(self.shard_by_worker)

    def to_message(self) -> dict[str, Any]:
        """Return the plan as plain values that Locust can send to workers."""
        return {
            "run_id": self.run_id,
            "start_at_epoch_s": self.start_at_epoch_s,
            "shard_by_worker": dict(self.shard_by_worker),
        }

    @classmethod
    def from_message(cls, message: object) -> RunPlan:
        """Rebuild a plan from `to_message` output; raises ReplayError if invalid."""
        if not isinstance(message, Mapping):
            raise ReplayError(
                "no run plan received from the Locust master; start the master "
                "with the same locustfile as the workers"
            )
        try:
            return cls(
                run_id=str(message["run_id"]),
                start_at_epoch_s=float(message["start_at_epoch_s"]),
                shard_by_worker={
                    str(worker): int(position)
                    for worker, position in message["shard_by_worker"].items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ReplayError(f"invalid run plan from the master: {error!r}") from None


def make_run_id(started_at: datetime, previous_run_id: str | None = None) -> str:
    """Return a run id such as "20250101T120000Z" from the UTC start time.

    A run started in the same second as `previous_run_id` gets a suffix
    ("-2", "-3", ...), so that two runs never share a results folder.
    """
    run_id = started_at.strftime("%Y%m%dT%H%M%SZ")
    if previous_run_id is None:
        return run_id
    base, _, suffix = previous_run_id.partition("-")
    if base != run_id:
        return run_id
    return f"{run_id}-{int(suffix or 1) + 1}"


def worker_results_path(results_dir: Path, run_id: str, worker_index: int) -> Path:
    """Return the results file of worker `worker_index` in run `run_id`."""
    return (
        results_dir
        / f"run_id={run_id}"
        / f"worker_index={worker_index}"
        / RESULTS_FILE_NAME
    )


def request_from_row(row: Mapping[str, Any]) -> emulator_pb2.GenerateRequest:
    """Build the Generate request of one canonical trace row."""
    return emulator_pb2.GenerateRequest(
        request_id=row["request_id"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        prefix_block_hashes=row["prefix_block_hashes"],
        block_tokens=row["block_tokens"],
        session_id=row["session_id"] or "",
    )


def iter_shard(
    config: LocustRunConfig, worker_index: int, worker_count: int
) -> Iterator[ScheduledRequest]:
    """Yield the trace rows of worker `worker_index` of `worker_count`, in order.

    Send times follow the module docstring. Raises TraceFormatError when the
    trace is unreadable or its rows are not sorted by `arrival_ms`, and
    ValueError when `worker_index` is not in 0..worker_count-1.
    """
    if not 0 <= worker_index < worker_count:
        raise ValueError(f"worker_index {worker_index} is not in 0..{worker_count - 1}")
    for row_index, row in enumerate(_iter_selected_rows(config)):
        if row_index % worker_count != worker_index:
            continue
        arrival_ms = float(row["arrival_ms"])
        yield ScheduledRequest(
            request=request_from_row(row),
            arrival_ms=arrival_ms,
            scheduled_send_ms=(arrival_ms - row["first_arrival_ms"]) / config.speedup,
            measured=True,
        )


def _iter_selected_rows(config: LocustRunConfig) -> Iterator[dict[str, Any]]:
    """Yield the rows within the limit and duration, each with `first_arrival_ms`."""
    path = str(config.trace_path)
    first_arrival_ms: float | None = None
    previous_arrival_ms = -math.inf
    row_number = 0

    for batch in iter_trace_batches(config.trace_path):
        for row in batch.to_pylist():
            row_number += 1
            if config.limit is not None and row_number > config.limit:
                return
            arrival_ms = float(row["arrival_ms"])
            if arrival_ms < previous_arrival_ms:
                raise TraceFormatError(
                    path,
                    f"arrival_ms {arrival_ms} is earlier than the previous row's "
                    f"{previous_arrival_ms}; trace mode needs rows sorted by "
                    "arrival_ms",
                    row=row_number,
                    field="arrival_ms",
                )
            previous_arrival_ms = arrival_ms
            if first_arrival_ms is None:
                first_arrival_ms = arrival_ms
            offset_ms = arrival_ms - first_arrival_ms
            if config.duration_s is not None and offset_ms >= config.duration_s * 1e3:
                return
            row["first_arrival_ms"] = first_arrival_ms
            yield row


class ShardQueue:
    """One worker's requests in send order, shared by all its users.

    `take` returns the next request due, or None when none are left.
    `give_back` returns a request that a stopped user did not send, so that
    another user sends it. Under gevent no other greenlet runs inside these
    methods, because reading the trace does not wait on gevent, so users need
    no lock to share a queue.
    """

    def __init__(self, requests: Iterator[ScheduledRequest]) -> None:
        self._requests = requests
        # Given-back requests, ordered by send time; the counter keeps
        # requests with equal times in the order they were given back.
        self._returned: list[tuple[float, int, ScheduledRequest]] = []
        self._returned_count = 0
        self.taken_count = 0

    def take(self) -> ScheduledRequest | None:
        """Return the next request due, or None when every request was taken."""
        if self._returned:
            _, _, scheduled = heapq.heappop(self._returned)
        else:
            next_request = next(self._requests, None)
            if next_request is None:
                return None
            scheduled = next_request
        self.taken_count += 1
        return scheduled

    def give_back(self, scheduled: ScheduledRequest) -> None:
        """Put back a request taken but not sent.

        Requests put back are taken again before the rest, earliest send time
        first.
        """
        self._returned_count += 1
        item = (scheduled.scheduled_send_ms, self._returned_count, scheduled)
        heapq.heappush(self._returned, item)
        self.taken_count -= 1


class ShapeSampler:
    """Request shapes of a trace, drawn at random for users mode.

    Raises TraceFormatError when the trace is unreadable, and ReplayError
    when no row is left after the limit and duration.
    """

    def __init__(self, config: LocustRunConfig) -> None:
        self._requests = [request_from_row(row) for row in _iter_selected_rows(config)]
        if not self._requests:
            raise ReplayError(
                f"trace {config.trace_path} has no requests within --cmx-limit "
                "and --cmx-duration-s"
            )

    def __len__(self) -> int:
        return len(self._requests)

    def draw(
        self, rng: np.random.Generator, request_id: str
    ) -> emulator_pb2.GenerateRequest:
        """Return a copy of a uniformly drawn trace request, renamed.

        The copy's id is `<trace id>/<request_id>`, so that results can be
        joined back to the trace row.
        """
        source = self._requests[int(rng.integers(len(self._requests)))]
        request = emulator_pb2.GenerateRequest()
        request.CopyFrom(source)
        request.request_id = f"{source.request_id}/{request_id}"
        return request
