"""`cmx simulate`: the supernode model in virtual time, with no gRPC.

The trace's requests arrive at their trace times (measured from the first
row), the event queue jumps from event to event, and each finished request
becomes one row of the results schema that `cmx replay` writes, so every
analysis query works on both. Columns that describe the network and the
wall clock take the values an ideal client would measure at speed-up 1:

- `scheduled_send_ms` = `actual_send_ms` = arrival_ms - first arrival_ms,
  and `send_lag_ms` = 0;
- `wall_ttft_ms` = `ttft_ms` and `wall_e2e_ms` = `e2e_ms` (emulated);
- `decode_instance` is null for a request that never reached decode (a
  one-token output, or a rejected request).

Requests that the gRPC server would reject get `INVALID_ARGUMENT` with the
server's message, preceded by the trace row number; requests whose KV cache
cannot fit a decode die get `RESOURCE_EXHAUSTED`. Rows are in the order the
requests finished, rejected ones at their arrival.

Requests carry the trace's prefix block hashes, so the prefix cache works
as in `cmx serve`: `cached_tokens`, `cached_tokens_hbm`,
`cached_tokens_pool` and `cache_load_ms` say what each request reused, and
the summary gives the hit rates of the run.

Beside RESULTS.parquet the run writes RESULTS.profiles.json (the hardware,
model and deployment used) and, unless disabled, RESULTS.timeseries.parquet
(see `emulator.timeseries`). The results file metadata carries the run
configuration, profiles included, under `cmx.results.run_config`. The same
trace, profiles and seed give identical results files.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cmx import __version__
from emulator.cache import CacheStats
from emulator.core import EventQueue
from emulator.engine import RequestTooLarge, Supernode, request_problem
from emulator.errors import ConfigError
from emulator.profiles import Profiles, profiles_to_dict
from emulator.records import RequestRecord, RequestSpec
from emulator.timeseries import TimeSeriesRecorder
from traces.cli_common import is_same_file
from traces.errors import TraceFormatError
from traces.results_schema import (
    RESULTS_SCHEMA,
    RUN_CONFIG_KEY,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    STATUS_OK,
    emulated_latencies,
)
from traces.schema import iter_trace_batches

__all__ = [
    "SimulationConfig",
    "SimulationSummary",
    "companion_path",
    "simulate",
]

logger = logging.getLogger(__name__)

STATUS_INVALID_ARGUMENT = "INVALID_ARGUMENT"
STATUS_RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
_Advance = Callable[[], None]
_TRACE_COLUMNS = [
    "request_id",
    "arrival_ms",
    "input_tokens",
    "output_tokens",
    "prefix_block_hashes",
    "block_tokens",
]


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of one simulation run; raises ConfigError on an invalid value.

    `limit` keeps the first N rows and `duration_s` the rows that arrive less
    than that many seconds after the first one. `timeseries_interval_s` is
    the length of a time series interval; None writes no time series.
    """

    trace_path: Path
    output_path: Path
    seed: int = 0
    limit: int | None = None
    duration_s: float | None = None
    timeseries_interval_s: float | None = 1.0

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1 request, got {self.limit}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError(
                f"duration_s must be a positive number of seconds, "
                f"got {self.duration_s}"
            )
        interval = self.timeseries_interval_s
        if interval is not None and not interval > 0:
            raise ConfigError(
                f"time series interval must be a positive number of seconds, "
                f"got {interval}"
            )
        if not self.output_path.parent.is_dir():
            raise ConfigError(
                f"output directory {self.output_path.parent} not found; "
                "create it or choose another output path"
            )
        if self.output_path.is_dir():
            raise ConfigError(
                f"output path {self.output_path} is a directory; give a file name"
            )
        self._check_trace_kept()

    def _check_trace_kept(self) -> None:
        """Reject an output path whose results or companions replace the trace."""
        for written in self.written_paths():
            if not is_same_file(written, self.trace_path):
                continue
            if written == self.output_path:
                problem = "is the input trace"
            else:
                problem = f"would write {written}, which is the input trace"
            raise ConfigError(
                f"output path {self.output_path} {problem}; choose another output path"
            )

    def written_paths(self) -> list[Path]:
        """Return the files the run writes: results, profiles, time series."""
        written = [self.output_path, companion_path(self.output_path, "profiles")]
        if self.timeseries_interval_s is not None:
            written.append(companion_path(self.output_path, "timeseries"))
        return written


@dataclass(frozen=True)
class SimulationSummary:
    """Counts and timings of a finished simulation.

    The token counts are summed over finished requests: `prompt_tokens` is
    their input, and `cached_tokens_hbm` and `cached_tokens_pool` the part
    reused from each cache tier. `cache` is None when prefix caching is off.
    """

    requests: int
    finished: int
    rejected: int
    emulated_s: float
    wall_s: float
    output_path: Path
    profiles_path: Path
    timeseries_path: Path | None
    prompt_tokens: int = 0
    cached_tokens_hbm: int = 0
    cached_tokens_pool: int = 0
    cache: CacheStats | None = None

    @property
    def speedup(self) -> float:
        """Emulated seconds per wall second."""
        return self.emulated_s / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def cached_token_share(self) -> float | None:
        """Share of finished requests' prompt tokens reused from the cache."""
        if not self.prompt_tokens:
            return None
        cached = self.cached_tokens_hbm + self.cached_tokens_pool
        return cached / self.prompt_tokens


def companion_path(output_path: Path, kind: str) -> Path:
    """Return the file written beside `output_path`, e.g. RESULTS.profiles.json."""
    suffix = ".json" if kind == "profiles" else ".parquet"
    stem = output_path.name.removesuffix(".parquet")
    return output_path.with_name(f"{stem}.{kind}{suffix}")


class _Collector:
    """Token sink of every request: keeps finished records in order."""

    def __init__(self) -> None:
        self.finished: list[RequestRecord] = []

    def on_tokens(self, first_index: int, emulated_at_s: Sequence[float]) -> None:
        pass

    def on_finish(self, record: RequestRecord) -> None:
        self.finished.append(record)


@dataclass(frozen=True)
class _Rejected:
    request_id: str
    arrival_ms: float
    sent_ms: float
    input_tokens: int
    output_tokens: int
    status: str
    error: str


def simulate(
    config: SimulationConfig, profiles: Profiles, *, show_progress: bool | None = None
) -> SimulationSummary:
    """Run the trace through the model in virtual time and write the results.

    Raises TraceFormatError for an unreadable or unsorted trace and
    ConfigError for invalid settings.
    """
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    started_at = time.perf_counter()
    events = EventQueue()
    supernode = Supernode(
        profiles, events, np.random.default_rng(config.seed), stream_tokens=False
    )
    recorder = None
    if config.timeseries_interval_s is not None:
        recorder = TimeSeriesRecorder(
            config.timeseries_interval_s,
            {d.index: d.kv_blocks_total for d in supernode.decode},
        )
        supernode.observers.append(recorder)
    logger.info("simulating %s on %s", config.trace_path, profiles.deployment)

    collector = _Collector()
    rows: list[RequestRecord | _Rejected] = []
    submitted = 0
    first_arrival_ms: float | None = None
    with _progress(show_progress) as advance:
        for request in _iter_requests(config):
            if first_arrival_ms is None:
                first_arrival_ms = request.arrival_ms
            arrival_s = (request.arrival_ms - first_arrival_ms) / 1e3
            events.run_until(arrival_s)
            rows.extend(collector.finished)
            collector.finished.clear()
            rejected = _submit(supernode, collector, request, arrival_s)
            if rejected is not None:
                rows.append(rejected)
            submitted += 1
            advance()
        events.run()
    rows.extend(collector.finished)

    offset_ms = first_arrival_ms or 0.0
    table = _results_table(rows, offset_ms)
    emulated_s = events.now_s
    wall_s = time.perf_counter() - started_at
    profiles_path = companion_path(config.output_path, "profiles")
    run_config = _run_config(config, profiles, emulated_s)
    if supernode.cache is not None:
        run_config["prefix_cache"] = _cache_config(supernode.cache.stats())
    _write_results(table, config.output_path, run_config)
    profiles_path.write_text(json.dumps(profiles_to_dict(profiles), indent=2) + "\n")
    timeseries_path = None
    if recorder is not None:
        timeseries_path = companion_path(config.output_path, "timeseries")
        recorder.write(
            timeseries_path, {RUN_CONFIG_KEY: json.dumps(run_config, sort_keys=True)}
        )

    records = [row for row in rows if isinstance(row, RequestRecord)]
    summary = SimulationSummary(
        requests=submitted,
        finished=len(records),
        rejected=len(rows) - len(records),
        emulated_s=emulated_s,
        wall_s=time.perf_counter() - started_at,
        output_path=config.output_path,
        profiles_path=profiles_path,
        timeseries_path=timeseries_path,
        prompt_tokens=sum(record.spec.input_tokens for record in records),
        cached_tokens_hbm=sum(record.cached_tokens_hbm for record in records),
        cached_tokens_pool=sum(record.cached_tokens_pool for record in records),
        cache=None if supernode.cache is None else supernode.cache.stats(),
    )
    logger.info("simulation finished in %.2f s: %s", wall_s, summary)
    return summary


@dataclass(frozen=True, slots=True)
class _Request:
    row: int
    request_id: str
    arrival_ms: float
    input_tokens: int
    output_tokens: int
    prefix_block_hashes: tuple[int, ...]
    block_tokens: int


def _iter_requests(config: SimulationConfig) -> Iterator[_Request]:
    """Yield the trace's requests in order, with their 1-based row numbers."""
    path = str(config.trace_path)
    previous_ms = -float("inf")
    first_ms: float | None = None
    count = 0
    row_number = 0
    for batch in iter_trace_batches(config.trace_path):
        columns = [batch.column(name).to_pylist() for name in _TRACE_COLUMNS]
        for request_id, arrival_ms, inputs, outputs, hashes, block in zip(
            *columns, strict=True
        ):
            row_number += 1
            if arrival_ms < previous_ms:
                raise TraceFormatError(
                    path,
                    f"arrival_ms {arrival_ms} is before the previous row's "
                    f"{previous_ms}; simulate needs rows sorted by arrival_ms",
                    row=row_number,
                    field="arrival_ms",
                )
            previous_ms = arrival_ms
            if first_ms is None:
                first_ms = arrival_ms
            if config.limit is not None and count >= config.limit:
                return
            if (
                config.duration_s is not None
                and arrival_ms - first_ms >= config.duration_s * 1e3
            ):
                return
            count += 1
            yield _Request(
                row_number,
                request_id,
                arrival_ms,
                inputs,
                outputs,
                tuple(hashes or ()),
                block,
            )


def _submit(
    supernode: Supernode, collector: _Collector, request: _Request, arrival_s: float
) -> _Rejected | None:
    problem = request_problem(
        request.input_tokens,
        request.output_tokens,
        len(request.prefix_block_hashes),
        request.block_tokens,
        supernode.profiles,
    )
    if problem is None:
        spec = RequestSpec(
            request.request_id,
            request.input_tokens,
            request.output_tokens,
            prefix_block_hashes=request.prefix_block_hashes,
            block_tokens=request.block_tokens,
        )
        try:
            supernode.submit(spec, collector)
            return None
        except RequestTooLarge as error:
            problem = str(error)
            status = STATUS_RESOURCE_EXHAUSTED
    else:
        problem = f"trace row {request.row}: {problem}"
        status = STATUS_INVALID_ARGUMENT
    return _Rejected(
        request.request_id,
        request.arrival_ms,
        arrival_s * 1e3,
        request.input_tokens,
        request.output_tokens,
        status,
        problem,
    )


def _results_table(rows: list[RequestRecord | _Rejected], offset_ms: float) -> pa.Table:
    """Build the results table; columns a row does not set are NULL.

    Columns that only a client can measure (inter-token statistics,
    concurrency wait, SLO checks) stay NULL in simulated rows.
    """
    columns: dict[str, list[object]] = {name: [] for name in RESULTS_SCHEMA.names}
    for row in rows:
        values = (
            _rejected_values(row)
            if isinstance(row, _Rejected)
            else _record_values(row, offset_ms)
        )
        unknown = values.keys() - columns.keys()
        assert not unknown, f"columns missing from RESULTS_SCHEMA: {sorted(unknown)}"
        for name, column in columns.items():
            column.append(values.get(name))
    return pa.table(columns, schema=RESULTS_SCHEMA)


def _record_values(record: RequestRecord, offset_ms: float) -> dict[str, object]:
    arrival_s = record.arrival_s
    first_ms = last_ms = None
    if record.first_token_s is not None and record.last_token_s is not None:
        first_ms = (record.first_token_s - arrival_s) * 1e3
        last_ms = (record.last_token_s - arrival_s) * 1e3
    latencies = emulated_latencies(first_ms, last_ms, record.tokens_out)
    sent_ms = arrival_s * 1e3
    decode_instance = record.decode_instance if record.decode_instance >= 0 else None
    normalized_ms = None
    if latencies.e2e_ms is not None and record.tokens_out > 0:
        normalized_ms = latencies.e2e_ms / record.tokens_out
    return {
        "request_id": record.spec.request_id,
        "arrival_ms": sent_ms + offset_ms,
        "scheduled_send_ms": sent_ms,
        "actual_send_ms": sent_ms,
        "send_lag_ms": 0.0,
        "input_tokens": record.spec.input_tokens,
        "output_tokens": record.spec.output_tokens,
        "output_tokens_received": record.tokens_out,
        "status": STATUS_OK,
        "error": None,
        "ttft_ms": latencies.ttft_ms,
        "tpot_ms": latencies.tpot_ms,
        "e2e_ms": latencies.e2e_ms,
        "wall_ttft_ms": latencies.ttft_ms,
        "wall_e2e_ms": latencies.e2e_ms if latencies.e2e_ms is not None else 0.0,
        "queue_ms": record.queue_s * 1e3,
        "prefill_ms": record.prefill_s * 1e3,
        "kv_transfer_ms": record.kv_transfer_s * 1e3,
        "cached_tokens": record.cached_tokens,
        "prefill_instance": record.prefill_instance,
        "decode_instance": decode_instance,
        "normalized_latency_ms": normalized_ms,
        "measured": True,
        "cached_tokens_hbm": record.cached_tokens_hbm,
        "cached_tokens_pool": record.cached_tokens_pool,
        "cache_load_ms": record.cache_load_s * 1e3,
        "faults": [],
    }


def _rejected_values(row: _Rejected) -> dict[str, object]:
    return {
        "request_id": row.request_id,
        "arrival_ms": row.arrival_ms,
        "scheduled_send_ms": row.sent_ms,
        "actual_send_ms": row.sent_ms,
        "send_lag_ms": 0.0,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "output_tokens_received": 0,
        "status": row.status,
        "error": row.error,
        "wall_e2e_ms": 0.0,
        "measured": True,
        "faults": [],
    }


def _run_config(
    config: SimulationConfig, profiles: Profiles, emulated_s: float
) -> dict[str, object]:
    return {
        "mode": "simulate",
        "trace_path": str(config.trace_path),
        "seed": config.seed,
        "limit": config.limit,
        "duration_s": config.duration_s,
        "timeseries_interval_s": config.timeseries_interval_s,
        "emulated_s": emulated_s,
        "cmx_version": __version__,
        "profiles": profiles_to_dict(profiles),
    }


def _cache_config(stats: CacheStats) -> dict[str, object]:
    return {
        "block_tokens": stats.block_tokens,
        "blocks_looked_up": stats.blocks_looked_up,
        "hbm_hit_blocks": stats.hbm_hit_blocks,
        "pool_hit_blocks": stats.pool_hit_blocks,
        "pool_blocks_recomputed": stats.pool_blocks_recomputed,
        "block_hit_rate": stats.block_hit_rate,
        "hbm_evicted_blocks": stats.hbm_evicted_blocks,
        "demoted_blocks": stats.demoted_blocks,
        "pool_evicted_blocks": stats.pool_evicted_blocks,
    }


def _write_results(table: pa.Table, path: Path, run_config: dict[str, object]) -> None:
    metadata = {
        SCHEMA_VERSION_KEY: SCHEMA_VERSION,
        RUN_CONFIG_KEY: json.dumps(run_config, sort_keys=True),
    }
    partial = path.with_name(path.name + ".partial")
    pq.write_table(
        table.replace_schema_metadata(metadata), str(partial), compression="zstd"
    )
    partial.replace(path)


@contextmanager
def _progress(show: bool) -> Iterator[_Advance]:
    if not show:
        yield lambda: None
        return
    columns = (
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.completed:,} requests"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("simulate", total=None)
        yield lambda: progress.advance(task)
