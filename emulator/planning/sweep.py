"""Rate sweep: one deployment under a trace scaled to several request rates.

Every rate factor is simulated (in parallel, cached) and gets its figures
(`PointMetrics`). From them:

- the largest SLO rate is the highest factor below the first point that
  fails the SLOs, among the points sorted by factor. So the point found
  meets the SLOs and the next higher point does not (unless every point
  meets them, which `limit_found` reports as False). A saturated point
  never meets the SLOs;
- the saturation factor is the lowest factor whose point is saturated.

With `refine_rounds`, each round simulates `jobs` more factors evenly
spaced between the largest SLO rate and the next point, so the bracket
narrows by a factor of jobs + 1 per round.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from emulator.errors import ConfigError
from emulator.planning.metrics import (
    PointMetrics,
    SaturationTest,
    SloTargets,
    point_metrics,
)
from emulator.planning.points import LoadPoint, PointResult, PointRunner
from emulator.planning.scaling import RateScaling
from emulator.profiles import DeploymentConfig

__all__ = ["SweepConfig", "SweepPoint", "SweepResult", "run_sweep"]

logger = logging.getLogger(__name__)

_MAX_REFINE_ROUNDS = 10


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a sweep: the rate factors and the rules that judge points.

    `rate_factors` multiply the trace's request rate (1 is the trace as
    recorded). Raises ConfigError for an empty or non-positive factor list
    or a refine count outside 0..10.
    """

    rate_factors: tuple[float, ...]
    slo: SloTargets = SloTargets()
    saturation: SaturationTest = SaturationTest()
    scaling: RateScaling = RateScaling.COMPRESS
    refine_rounds: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rate_factors:
            raise ConfigError("a sweep needs at least one rate factor")
        for factor in self.rate_factors:
            if not (math.isfinite(factor) and factor > 0):
                raise ConfigError(
                    f"rate factors must be positive finite numbers, got {factor}"
                )
        if not 0 <= self.refine_rounds <= _MAX_REFINE_ROUNDS:
            raise ConfigError(
                f"refine rounds must be in 0..{_MAX_REFINE_ROUNDS}, "
                f"got {self.refine_rounds}"
            )


@dataclass(frozen=True)
class SweepPoint:
    """A simulated rate factor and its figures; `refined` if added by refining."""

    result: PointResult
    metrics: PointMetrics
    refined: bool = False

    @property
    def rate_factor(self) -> float:
        return self.result.point.rate_factor


@dataclass(frozen=True)
class SweepResult:
    """The points sorted by rate factor, with the sweep's findings.

    `max_slo_index` is the index of the largest SLO rate in `points`, None
    when even the lowest point fails. `limit_found` is True when a higher
    point fails, so that the largest SLO rate is bracketed. `saturation_index`
    is the first saturated point (None when none is).
    """

    deployment: DeploymentConfig
    config: SweepConfig
    points: tuple[SweepPoint, ...]
    max_slo_index: int | None
    limit_found: bool
    saturation_index: int | None

    @property
    def best(self) -> SweepPoint | None:
        """The point at the largest SLO rate."""
        return None if self.max_slo_index is None else self.points[self.max_slo_index]


def run_sweep(
    runner: PointRunner, deployment: DeploymentConfig, config: SweepConfig
) -> SweepResult:
    """Simulate the sweep's factors, then refine; return the judged points."""
    factors = sorted(set(config.rate_factors))
    results = runner.run([_point(deployment, f, config) for f in factors], "sweep")
    points = [_judge(result, config) for result in results]
    for round_index in range(config.refine_rounds):
        extra = _refinement_factors(points, runner.jobs)
        if not extra:
            break
        label = f"refine {round_index + 1}/{config.refine_rounds}"
        results = runner.run([_point(deployment, f, config) for f in extra], label)
        points.extend(_judge(result, config, refined=True) for result in results)
        points.sort(key=lambda p: p.rate_factor)
    return _summarize(deployment, config, points)


def max_slo_index(points: list[SweepPoint]) -> tuple[int | None, bool]:
    """Return (index of the largest SLO rate, whether a higher point fails)."""
    for index, point in enumerate(points):
        if not point.metrics.meets_slo:
            return (index - 1 if index > 0 else None), True
    return (len(points) - 1 if points else None), False


def _point(
    deployment: DeploymentConfig, factor: float, config: SweepConfig
) -> LoadPoint:
    return LoadPoint(deployment, factor, config.scaling, config.seed)


def _judge(
    result: PointResult, config: SweepConfig, refined: bool = False
) -> SweepPoint:
    metrics = point_metrics(result.read_results(), config.slo, config.saturation)
    return SweepPoint(result, metrics, refined)


def _refinement_factors(points: list[SweepPoint], jobs: int) -> list[float]:
    index, limit_found = max_slo_index(points)
    if index is None or not limit_found:
        return []
    low = points[index].rate_factor
    high = points[index + 1].rate_factor
    count = max(1, jobs)
    step = (high - low) / (count + 1)
    # Rounded so that cache keys stay readable and stable across runs.
    candidates = {round(low + step * (k + 1), 6) for k in range(count)}
    return sorted(candidates - {p.rate_factor for p in points})


def _summarize(
    deployment: DeploymentConfig, config: SweepConfig, points: list[SweepPoint]
) -> SweepResult:
    index, limit_found = max_slo_index(points)
    saturation_index = next(
        (i for i, point in enumerate(points) if point.metrics.saturated), None
    )
    if index is None:
        logger.info("no sweep point meets the SLOs (%s)", config.slo.describe())
    return SweepResult(
        deployment=deployment,
        config=config,
        points=tuple(points),
        max_slo_index=index,
        limit_found=limit_found,
        saturation_index=saturation_index,
    )
