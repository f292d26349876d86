"""Export a chosen point and confirm it by `cmx simulate` or by a replay.

`export_point` writes the point's scaled trace and deployment file, the two
inputs that `cmx simulate` needs to reproduce it. `confirm_by_simulate`
runs the simulation again from those files, outside the cache, and
compares its figures with the point's: the model is deterministic, so
every difference should be 0. `confirm_by_replay` starts `cmx serve` on a
free loopback port at a time scale, replays the first requests of the
point's trace against it at the same speed-up, and compares the figures
with a simulation of the same requests. The replay's figures differ by
the server's pacing error, which grows with the time scale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from emulator.errors import ConfigError
from emulator.planning.metrics import (
    RESULT_COLUMNS,
    PointMetrics,
    SaturationTest,
    SloTargets,
    point_metrics,
)
from emulator.planning.points import LoadPoint, PointRunner, write_point_trace
from emulator.planning.search import deployment_to_mapping
from emulator.simulate import SimulationConfig, simulate
from traces.schema import read_trace, write_trace

__all__ = [
    "COMPARED_FIGURES",
    "Confirmation",
    "ExportedPoint",
    "FigureDifference",
    "confirm_by_replay",
    "confirm_by_simulate",
    "export_point",
]

logger = logging.getLogger(__name__)

COMPARED_FIGURES: tuple[str, ...] = (
    "requests",
    "ok",
    "throughput_rps",
    "output_tokens_per_s",
    "goodput_rps",
    "slo_attainment",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "tpot_ms_p50",
    "tpot_ms_p99",
    "e2e_ms_p50",
    "e2e_ms_p99",
)


@dataclass(frozen=True)
class ExportedPoint:
    """The files that reproduce a point, and the command that runs them."""

    trace_path: Path
    deployment_path: Path
    seed: int

    def simulate_command(self, output_path: Path) -> list[str]:
        """Return the `cmx simulate` arguments that reproduce the point."""
        return [
            "cmx",
            "simulate",
            str(self.trace_path),
            "--deployment",
            str(self.deployment_path),
            "--seed",
            str(self.seed),
            "-o",
            str(output_path),
        ]


@dataclass(frozen=True)
class FigureDifference:
    """One figure as planned and as confirmed; `relative` is None at 0."""

    name: str
    planned: float | None
    confirmed: float | None

    @property
    def difference(self) -> float | None:
        if self.planned is None or self.confirmed is None:
            return None
        return self.confirmed - self.planned

    @property
    def relative(self) -> float | None:
        difference = self.difference
        if difference is None or not self.planned:
            return None
        return difference / abs(self.planned)


@dataclass(frozen=True)
class Confirmation:
    """Comparison of a point's figures with a second run of the same point."""

    method: str
    results_path: Path
    figures: tuple[FigureDifference, ...]

    @property
    def identical(self) -> bool:
        """True when every figure is equal in both runs."""
        return all(f.planned == f.confirmed for f in self.figures)

    def max_relative_difference(self) -> float:
        """Return the largest |relative difference| over the figures."""
        values = [abs(f.relative) for f in self.figures if f.relative is not None]
        return max(values, default=0.0)


def export_point(
    runner: PointRunner, point: LoadPoint, directory: Path
) -> ExportedPoint:
    """Write the point's scaled trace and deployment file into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    trace_path = directory / "trace.parquet"
    write_point_trace(runner.source, point, trace_path)
    deployment_path = directory / "deployment.json"
    deployment = deployment_to_mapping(point.deployment)
    deployment_path.write_text(json.dumps(deployment, indent=2) + "\n")
    return ExportedPoint(trace_path, deployment_path, point.seed)


def confirm_by_simulate(
    runner: PointRunner,
    point: LoadPoint,
    planned: PointMetrics,
    slo: SloTargets,
    saturation: SaturationTest,
    directory: Path,
) -> Confirmation:
    """Simulate the exported point afresh and compare its figures."""
    exported = export_point(runner, point, directory)
    output_path = directory / "simulate.parquet"
    config = SimulationConfig(
        trace_path=exported.trace_path,
        output_path=output_path,
        seed=point.seed,
        timeseries_interval_s=None,
    )
    simulate(config, runner.profiles_for(point.deployment), show_progress=False)
    confirmed = _metrics_of(output_path, slo, saturation)
    return Confirmation("simulate", output_path, _compare(planned, confirmed))


def confirm_by_replay(
    runner: PointRunner,
    point: LoadPoint,
    slo: SloTargets,
    saturation: SaturationTest,
    directory: Path,
    *,
    time_scale: float = 10.0,
    limit: int = 500,
) -> Confirmation:
    """Replay the point's first `limit` requests against `cmx serve`.

    The server runs at `time_scale` and the replay at the same speed-up,
    so the emulated load is the point's own. The baseline is a simulation
    of the same requests. Raises EmulatorError when the server does not
    start and ReplayError when the replay cannot run.
    """
    from cmx.demo import start_server
    from replay.runner import ReplayConfig, run_replay

    if limit < 1:
        raise ConfigError(f"replay confirmation needs at least 1 request, got {limit}")
    exported = export_point(runner, point, directory)
    trace_path = directory / "replay_trace.parquet"
    write_trace(read_trace(exported.trace_path).slice(0, limit), trace_path)

    baseline_path = directory / "replay_baseline.parquet"
    simulate(
        SimulationConfig(
            trace_path, baseline_path, seed=point.seed, timeseries_interval_s=None
        ),
        runner.profiles_for(point.deployment),
        show_progress=False,
    )
    replay_path = directory / "replay.parquet"
    server_args = [
        "--deployment",
        str(exported.deployment_path),
        "--seed",
        str(point.seed),
    ]
    with start_server(directory / "server.log", time_scale, server_args) as target:
        config = ReplayConfig(
            trace_path=trace_path,
            target=target,
            output_path=replay_path,
            speedup=time_scale,
        )
        run_replay(config, show_progress=False)
    baseline = _metrics_of(baseline_path, slo, saturation)
    replayed = _metrics_of(replay_path, slo, saturation)
    return Confirmation("replay", replay_path, _compare(baseline, replayed))


def _metrics_of(
    path: Path, slo: SloTargets, saturation: SaturationTest
) -> PointMetrics:
    results = pq.read_table(path, columns=list(RESULT_COLUMNS))
    return point_metrics(results, slo, saturation)


def _compare(
    planned: PointMetrics,
    confirmed: PointMetrics,
    names: Sequence[str] = COMPARED_FIGURES,
) -> tuple[FigureDifference, ...]:
    return tuple(
        FigureDifference(
            name, _as_float(getattr(planned, name)), _as_float(getattr(confirmed, name))
        )
        for name in names
    )


def _as_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
