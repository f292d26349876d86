"""Simulation of load points in parallel, cached on disk by a hash of their inputs.

A load point is one deployment under one rate factor of one trace. Its
inputs are the trace file's SHA-256, the window taken from it, the rate
scaling and factor, the seed and the hardware, model and deployment, plus
the cmx version and the cache format. Their hash names the cache file
`<cache dir>/<key>.parquet`, which contains the point's per-request results
(the `RESULT_COLUMNS` of a results file) and the point's inputs as JSON in
its metadata. A finished point is written to a temporary name and then
renamed, so a killed run leaves only whole files, and running the same
points again simulates only the missing ones.

NOTE: the key does not cover the model's code. After changing the emulator,
run with `fresh=True` (`--fresh`) or delete the cache directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cmx import __version__
from emulator.errors import ConfigError
from emulator.planning.metrics import RESULT_COLUMNS
from emulator.planning.scaling import RateScaling, scale_trace, window_trace
from emulator.profiles import DeploymentConfig, Profiles, profiles_to_dict
from emulator.simulate import SimulationConfig, simulate
from traces.schema import read_trace, write_trace

__all__ = [
    "CACHE_FORMAT",
    "LoadPoint",
    "PointResult",
    "PointRunner",
    "TraceSource",
    "write_point_trace",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "1"
_POINT_KEY = b"cmx.planning.point"
_Advance = Callable[[], None]


@dataclass(frozen=True)
class TraceSource:
    """A trace file, its checksum, and the window of it that points use.

    `limit` and `duration_s` are applied before scaling, so every rate
    factor scales the same requests.
    """

    path: Path
    sha256: str
    limit: int | None = None
    duration_s: float | None = None

    @classmethod
    def open(
        cls, path: Path, limit: int | None = None, duration_s: float | None = None
    ) -> TraceSource:
        """Checksum the trace at `path`; raises ConfigError for a bad window."""
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be at least 1 request, got {limit}")
        if duration_s is not None and not duration_s > 0:
            raise ConfigError(
                f"duration_s must be a positive number of seconds, got {duration_s}"
            )
        read_trace(path)  # Raises TraceFormatError naming the file.
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(path, digest, limit, duration_s)

    def load(self) -> pa.Table:
        """Read the trace and apply the window."""
        return window_trace(read_trace(self.path), self.limit, self.duration_s)


@dataclass(frozen=True)
class LoadPoint:
    """One deployment under one rate factor of the trace."""

    deployment: DeploymentConfig
    rate_factor: float
    scaling: RateScaling = RateScaling.COMPRESS
    seed: int = 0


@dataclass(frozen=True)
class PointResult:
    """A simulated point: its cache file and the wall time its simulation took.

    `wall_s` is the time of the run that filled the cache, not of this one.
    """

    point: LoadPoint
    key: str
    results_path: Path
    wall_s: float

    def read_results(self) -> pa.Table:
        """Return the point's per-request results (RESULT_COLUMNS)."""
        return pq.read_table(self.results_path)


@dataclass(frozen=True)
class _Task:
    """Everything a worker process needs to simulate one point."""

    source: TraceSource
    point: LoadPoint
    profiles: Profiles
    inputs_json: str
    output_path: Path


class PointRunner:
    """Simulate load points on `jobs` processes, skipping cached ones.

    `hardware_model` gives the hardware and model profiles; each point
    brings its deployment. `jobs` 1 runs in this process. A progress bar is
    drawn on stderr when `show_progress` is True (default: when stderr is a
    terminal).
    """

    def __init__(
        self,
        source: TraceSource,
        hardware_model: Profiles,
        cache_dir: Path,
        *,
        jobs: int = 1,
        fresh: bool = False,
        show_progress: bool | None = None,
    ) -> None:
        if jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {jobs}")
        self.source = source
        self.hardware_model = hardware_model
        self.cache_dir = cache_dir
        self.jobs = jobs
        self.fresh = fresh
        self.show_progress = (
            sys.stderr.isatty() if show_progress is None else show_progress
        )
        self.simulated = 0
        self.reused = 0
        self._done_this_run: set[str] = set()
        cache_dir.mkdir(parents=True, exist_ok=True)

    def profiles_for(self, deployment: DeploymentConfig) -> Profiles:
        """Return the runner's hardware and model with `deployment`."""
        base = self.hardware_model
        return Profiles(base.hardware, base.model, deployment)

    def key_of(self, point: LoadPoint) -> tuple[str, str]:
        """Return the point's cache key and the JSON of the inputs it hashes."""
        inputs = {
            "cache_format": CACHE_FORMAT,
            "cmx_version": __version__,
            "trace_sha256": self.source.sha256,
            "limit": self.source.limit,
            "duration_s": self.source.duration_s,
            "rate_factor": float(point.rate_factor),
            "scaling": point.scaling.value,
            "seed": point.seed,
            "profiles": profiles_to_dict(self.profiles_for(point.deployment)),
        }
        text = json.dumps(inputs, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32], text

    def run(self, points: Sequence[LoadPoint], label: str) -> list[PointResult]:
        """Simulate the points not yet cached; return results in input order."""
        tasks: dict[str, _Task] = {}
        keys = []
        for point in points:
            key, inputs_json = self.key_of(point)
            keys.append(key)
            path = self.cache_dir / f"{key}.parquet"
            stale = self.fresh and key not in self._done_this_run
            if key not in tasks and (stale or not path.is_file()):
                profiles = self.profiles_for(point.deployment)
                tasks[key] = _Task(self.source, point, profiles, inputs_json, path)
        cached = len(set(keys) - tasks.keys())
        logger.info(
            "%s: %d points, %d cached, %d to simulate on %d processes",
            label,
            len(points),
            cached,
            len(tasks),
            self.jobs,
        )
        self._simulate(list(tasks.values()), label, cached)
        self.simulated += len(tasks)
        self.reused += cached
        self._done_this_run.update(keys)
        return [
            _read_result(point, key, self.cache_dir / f"{key}.parquet")
            for point, key in zip(points, keys, strict=True)
        ]

    def _simulate(self, tasks: list[_Task], label: str, cached: int) -> None:
        if not tasks:
            return
        with _progress(self.show_progress, label, len(tasks), cached) as advance:
            if self.jobs == 1 or len(tasks) == 1:
                for task in tasks:
                    simulate_point(task)
                    advance()
                return
            self._simulate_in_pool(tasks, advance)

    def _simulate_in_pool(self, tasks: list[_Task], advance: _Advance) -> None:
        # Spawned workers, not forked ones: the progress bar runs a thread,
        # and forking a process that has threads can deadlock the child.
        context = multiprocessing.get_context("spawn")
        workers = min(self.jobs, len(tasks))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures: list[Future[float]] = [
                pool.submit(simulate_point, task) for task in tasks
            ]
            try:
                for future in as_completed(futures):
                    future.result()
                    advance()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def simulate_point(task: _Task) -> float:
    """Simulate one point into its cache file; return the wall seconds taken.

    Runs in a worker process. The scaled trace and the full results go to
    a temporary folder inside the cache directory and are deleted after.
    """
    started_at = time.perf_counter()
    cache_dir = task.output_path.parent
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".work-") as work:
        trace_path = Path(work) / "trace.parquet"
        write_point_trace(task.source, task.point, trace_path)
        results_path = Path(work) / "results.parquet"
        config = SimulationConfig(
            trace_path=trace_path,
            output_path=results_path,
            seed=task.point.seed,
            timeseries_interval_s=None,
        )
        simulate(config, task.profiles, show_progress=False)
        results = pq.read_table(results_path, columns=list(RESULT_COLUMNS))

    wall_s = time.perf_counter() - started_at
    metadata = {_POINT_KEY: json.dumps({"inputs": task.inputs_json, "wall_s": wall_s})}
    partial = task.output_path.with_name(f"{task.output_path.name}.{os.getpid()}")
    pq.write_table(
        results.replace_schema_metadata(metadata), str(partial), compression="zstd"
    )
    partial.replace(task.output_path)
    logger.debug("simulated %s in %.2f s", task.output_path.name, wall_s)
    return wall_s


def write_point_trace(source: TraceSource, point: LoadPoint, path: Path) -> None:
    """Write the windowed, scaled trace that `point` simulates to `path`."""
    scaled = scale_trace(source.load(), point.rate_factor, point.scaling, point.seed)
    write_trace(
        scaled,
        path,
        {
            "source": str(source.path),
            "rate_factor": repr(point.rate_factor),
            "rate_scaling": point.scaling.value,
        },
    )


def _read_result(point: LoadPoint, key: str, path: Path) -> PointResult:
    metadata = pq.read_schema(path).metadata or {}
    stored = json.loads(metadata.get(_POINT_KEY, b"{}"))
    return PointResult(point, key, path, float(stored.get("wall_s", 0.0)))


@contextmanager
def _progress(show: bool, label: str, total: int, cached: int) -> Iterator[_Advance]:
    if not show:
        yield lambda: None
        return
    columns = (
        TextColumn(f"{label} ({cached} cached)"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("points, elapsed"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)
