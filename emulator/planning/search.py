"""Deployment search: a grid of deployments under an NPU budget, ranked.

A search space is a JSON object:

    {
      "npu_budget": 384,
      "min_npus": 256,
      "fixed": {"prefill_npus_per_instance": 16},
      "vary": {"decode_npus_per_instance": [64, 96, 160], "mtp_draft_tokens": [0, 1]}
    }

`vary` maps `DeploymentConfig` fields to the values to try. The search
takes every combination (the Cartesian product, in the order given) and lays
it over the base deployment and `fixed`. Any deployment field can be an axis,
with values spelled as in a deployment file, so a new field of the
deployment is one more entry here. `npu_budget` (default: the hardware's
NPUs) and `min_npus` (default: none) bound the NPUs a deployment uses.
Combinations that are invalid, over the budget, under the minimum or whose
decode dies have no HBM left for KV cache after the weights are skipped and
counted by reason.

Each deployment is simulated at every rate factor given (cached, in
parallel). Its best point is the point that meets the SLOs with the highest
goodput in output tokens/s per NPU (NPUs used by the deployment, prefill
and decode together). Deployments are ranked by that figure, ties broken by
the lower latency metric; deployments with no point meeting the SLOs get no
rank and follow, by their highest SLO attainment. The Pareto front is taken
over the points that are not saturated, of output tokens/s per NPU (higher
is better) against the latency metric (lower is better).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from emulator.costs import CostModel
from emulator.errors import ConfigError
from emulator.planning.metrics import (
    LATENCY_METRICS,
    PointMetrics,
    SaturationTest,
    SloTargets,
    point_metrics,
)
from emulator.planning.pareto import pareto_front
from emulator.planning.points import LoadPoint, PointResult, PointRunner
from emulator.planning.scaling import RateScaling
from emulator.profiles import (
    DeploymentConfig,
    Profiles,
    deployment_from_mapping,
)

__all__ = [
    "DEFAULT_SPACE",
    "RankedDeployment",
    "SearchConfig",
    "SearchPoint",
    "SearchResult",
    "SearchSpace",
    "deployment_to_mapping",
    "enumerate_deployments",
    "load_search_space",
    "run_search",
    "sample_deployments",
]

logger = logging.getLogger(__name__)

DEFAULT_SPACE = "cloudmatrix384_search_space.json"
_SPACE_KEYS = {"npu_budget", "min_npus", "fixed", "vary"}


@dataclass(frozen=True)
class SearchSpace:
    """Fixed fields, axes of values to combine, and NPU bounds; see module doc."""

    fixed: Mapping[str, object]
    axes: tuple[tuple[str, tuple[object, ...]], ...]
    npu_budget: int | None = None
    min_npus: int | None = None
    source: str = "search space"


@dataclass(frozen=True)
class SearchConfig:
    """Rate factors to simulate each deployment at, and how to judge points.

    `latency_metric` is one of LATENCY_METRICS, e.g. "e2e_ms_p99".
    """

    rate_factors: tuple[float, ...] = (1.0,)
    slo: SloTargets = SloTargets()
    saturation: SaturationTest = SaturationTest()
    scaling: RateScaling = RateScaling.COMPRESS
    latency_metric: str = "e2e_ms_p99"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rate_factors:
            raise ConfigError("a search needs at least one rate factor")
        if self.latency_metric not in LATENCY_METRICS:
            raise ConfigError(
                f"latency metric {self.latency_metric!r} is not one of "
                f"{', '.join(LATENCY_METRICS)}"
            )


@dataclass(frozen=True)
class SearchPoint:
    """One deployment at one rate factor, with its figures."""

    deployment_id: int
    npus: int
    result: PointResult
    metrics: PointMetrics

    @property
    def output_tokens_per_s_per_npu(self) -> float:
        return self.metrics.output_tokens_per_s / self.npus

    @property
    def goodput_tokens_per_s_per_npu(self) -> float:
        return self.metrics.goodput_output_tokens_per_s / self.npus

    def latency_ms(self, metric: str) -> float | None:
        value = getattr(self.metrics, metric)
        return None if value is None else float(value)


@dataclass(frozen=True)
class RankedDeployment:
    """A deployment's place in the ranking; `rank` is None when unranked."""

    rank: int | None
    deployment_id: int
    deployment: DeploymentConfig
    best_point: SearchPoint | None


@dataclass(frozen=True)
class SearchResult:
    """Every point, the ranking (ranked first) and the Pareto flags per point."""

    config: SearchConfig
    deployments: tuple[DeploymentConfig, ...]
    points: tuple[SearchPoint, ...]
    ranking: tuple[RankedDeployment, ...]
    on_front: tuple[bool, ...]
    skipped: Mapping[str, int]

    @property
    def best(self) -> RankedDeployment | None:
        """The first-ranked deployment, or None when no point meets the SLOs."""
        first = self.ranking[0] if self.ranking else None
        return first if first is not None and first.rank is not None else None


def load_search_space(path: Path | None = None) -> SearchSpace:
    """Read a search space file; None reads the bundled CloudMatrix384 space.

    Raises ConfigError naming the file and key for unreadable JSON, unknown
    keys, empty axes or values that a deployment file would reject.
    """
    if path is None:
        files = resources.files("emulator").joinpath("profiles", DEFAULT_SPACE)
        text, where = files.read_text(), f"bundled search space {DEFAULT_SPACE}"
    else:
        where = str(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(
                f"cannot read search space {where}: {error.strerror}"
            ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"search space {where} is not valid JSON: {error}") from None
    return _space_from_document(document, where)


def deployment_to_mapping(deployment: DeploymentConfig) -> dict[str, object]:
    """Return the deployment's fields as deployment-file values."""
    return {
        field.name: _plain(getattr(deployment, field.name))
        for field in dataclasses.fields(deployment)
    }


def enumerate_deployments(
    space: SearchSpace, base: DeploymentConfig, hardware_model: Profiles
) -> tuple[list[DeploymentConfig], Counter[str]]:
    """Return the distinct valid deployments of `space`, and skips by reason."""
    hardware = hardware_model.hardware
    budget = space.npu_budget or hardware.num_npus
    names = [name for name, _ in space.axes]
    values = [axis for _, axis in space.axes]
    fields = deployment_to_mapping(base) | dict(space.fixed)
    deployments: list[DeploymentConfig] = []
    skipped: Counter[str] = Counter()
    for combination in itertools.product(*values):
        choice = dict(zip(names, combination, strict=True))
        try:
            deployment = deployment_from_mapping(fields | choice, space.source)
        except ConfigError as error:
            logger.debug("skipping %s: %s", choice, error)
            skipped["invalid"] += 1
            continue
        reason = _skip_reason(deployment, budget, space.min_npus, hardware_model)
        if reason is not None:
            skipped[reason] += 1
        elif deployment not in deployments:
            deployments.append(deployment)
    return deployments, skipped


def sample_deployments(
    deployments: Sequence[DeploymentConfig], count: int, seed: int
) -> list[DeploymentConfig]:
    """Return `count` of the deployments drawn without replacement, in order."""
    if count >= len(deployments):
        return list(deployments)
    chosen = np.random.default_rng(seed).choice(len(deployments), count, replace=False)
    return [deployments[i] for i in sorted(chosen.tolist())]


def run_search(
    runner: PointRunner,
    deployments: Sequence[DeploymentConfig],
    config: SearchConfig,
    skipped: Mapping[str, int] | None = None,
) -> SearchResult:
    """Simulate every deployment at every rate factor; rank them."""
    if not deployments:
        raise ConfigError("the search space has no valid deployment to simulate")
    loads = [
        (index, LoadPoint(deployment, factor, config.scaling, config.seed))
        for index, deployment in enumerate(deployments)
        for factor in sorted(set(config.rate_factors))
    ]
    results = runner.run([point for _, point in loads], "search")
    points = tuple(
        SearchPoint(
            deployment_id=index,
            npus=deployments[index].npus_used(),
            result=result,
            metrics=point_metrics(result.read_results(), config.slo, config.saturation),
        )
        for (index, _), result in zip(loads, results, strict=True)
    )
    return SearchResult(
        config=config,
        deployments=tuple(deployments),
        points=points,
        ranking=_rank(deployments, points, config.latency_metric),
        on_front=_front(points, config.latency_metric),
        skipped=dict(skipped or {}),
    )


def _rank(
    deployments: Sequence[DeploymentConfig],
    points: Sequence[SearchPoint],
    metric: str,
) -> tuple[RankedDeployment, ...]:
    def latency(point: SearchPoint) -> float:
        value = point.latency_ms(metric)
        return float("inf") if value is None else value

    best: dict[int, SearchPoint] = {}
    attainment: dict[int, float] = {}
    for point in points:
        index = point.deployment_id
        attainment[index] = max(
            attainment.get(index, 0.0), point.metrics.slo_attainment
        )
        if not point.metrics.meets_slo:
            continue
        current = best.get(index)
        key = (-point.goodput_tokens_per_s_per_npu, latency(point))
        if current is None or key < (
            -current.goodput_tokens_per_s_per_npu,
            latency(current),
        ):
            best[index] = point

    ranked = sorted(
        best,
        key=lambda i: (-best[i].goodput_tokens_per_s_per_npu, latency(best[i]), i),
    )
    unranked = sorted(
        (i for i in range(len(deployments)) if i not in best),
        key=lambda i: (-attainment.get(i, 0.0), i),
    )
    return tuple(
        [
            RankedDeployment(r + 1, i, deployments[i], best[i])
            for r, i in enumerate(ranked)
        ]
        + [RankedDeployment(None, i, deployments[i], None) for i in unranked]
    )


def _front(points: Sequence[SearchPoint], metric: str) -> tuple[bool, ...]:
    candidates = [
        i
        for i, point in enumerate(points)
        if not point.metrics.saturated and point.latency_ms(metric) is not None
    ]
    flags = pareto_front(
        [points[i].latency_ms(metric) or 0.0 for i in candidates],
        [points[i].output_tokens_per_s_per_npu for i in candidates],
    )
    on_front = [False] * len(points)
    for i, flag in zip(candidates, flags, strict=True):
        on_front[i] = flag
    return tuple(on_front)


def _skip_reason(
    deployment: DeploymentConfig,
    budget: int,
    min_npus: int | None,
    hardware_model: Profiles,
) -> str | None:
    npus = deployment.npus_used()
    if npus > budget:
        return "over the NPU budget"
    if min_npus is not None and npus < min_npus:
        return "under the minimum NPUs"
    try:
        profiles = Profiles(hardware_model.hardware, hardware_model.model, deployment)
    except ConfigError:
        return "invalid"
    if CostModel(profiles).kv_capacity_tokens_per_die() == 0:
        return "no HBM left for KV cache"
    return None


def _space_from_document(document: object, where: str) -> SearchSpace:
    if not isinstance(document, dict):
        raise ConfigError(f"search space {where} must be a JSON object")
    unknown = sorted(set(document) - _SPACE_KEYS)
    if unknown:
        raise ConfigError(
            f"search space {where}: unknown keys {unknown}; "
            f"accepted: {sorted(_SPACE_KEYS)}"
        )
    fixed = document.get("fixed", {})
    vary = document.get("vary", {})
    if not isinstance(fixed, dict) or not isinstance(vary, dict):
        raise ConfigError(f"search space {where}: 'fixed' and 'vary' must be objects")
    _check_fields(fixed, f"search space {where}: fixed")
    axes = []
    for name, axis in vary.items():
        if not isinstance(axis, list) or not axis:
            raise ConfigError(
                f"search space {where}: vary.{name} must be a non-empty list"
            )
        for position, value in enumerate(axis):
            _check_fields(
                {name: value}, f"search space {where}: vary.{name}[{position}]"
            )
        axes.append((name, tuple(axis)))
    return SearchSpace(
        fixed=fixed,
        axes=tuple(axes),
        npu_budget=_optional_count(document, "npu_budget", where),
        min_npus=_optional_count(document, "min_npus", where),
        source=f"search space {where}",
    )


def _check_fields(fields: Mapping[str, object], where: str) -> None:
    """Raise ConfigError, naming `where`, if a deployment file rejects `fields`."""
    try:
        deployment_from_mapping(fields, where)
    except ConfigError as error:
        message = str(error)
        if not message.startswith(where):
            message = f"{where}: {message}"
        raise ConfigError(message) from None


def _optional_count(document: Mapping[str, Any], key: str, where: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"search space {where}: {key} must be a positive integer, got {value!r}"
        )
    return value


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value
