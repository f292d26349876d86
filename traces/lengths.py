"""Prompt, message and output length draws of the trace generator."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from traces.generator_params import GeneratorParams, LengthDistribution

__all__ = ["LengthSampler"]

IntArray = npt.NDArray[np.int64]


class LengthSampler:
    """Draws lengths in tokens, each kind in one fixed order per chunk."""

    def __init__(self, params: GeneratorParams, rng: np.random.Generator) -> None:
        self._params = params
        self._rng = rng

    def first_input(self, count: int) -> IntArray:
        """Prompt lengths of sessions' first turns."""
        params = self._params
        return draw_lengths(
            self._rng,
            count,
            params.input_distribution,
            median_tokens=params.input_median_tokens,
            sigma=params.input_sigma,
            alpha=params.input_pareto_alpha,
            low=params.min_input_tokens,
            high=params.max_input_tokens,
        )

    def turn(self, count: int) -> IntArray:
        """Lengths of the new user message of follow-up turns (lognormal)."""
        params = self._params
        return draw_lengths(
            self._rng,
            count,
            LengthDistribution.LOGNORMAL,
            median_tokens=params.turn_median_tokens,
            sigma=params.input_sigma,
            alpha=params.input_pareto_alpha,
            low=1,
            high=params.max_input_tokens,
        )

    def output(self, count: int) -> IntArray:
        """Output lengths."""
        params = self._params
        return draw_lengths(
            self._rng,
            count,
            params.output_distribution,
            median_tokens=params.output_median_tokens,
            sigma=params.output_sigma,
            alpha=params.output_pareto_alpha,
            low=1,
            high=params.max_output_tokens,
        )


def draw_lengths(
    rng: np.random.Generator,
    count: int,
    distribution: LengthDistribution,
    *,
    median_tokens: int,
    sigma: float,
    alpha: float,
    low: int,
    high: int,
) -> IntArray:
    """Draw `count` lengths with the given median, rounded and clipped to
    [low, high]. Every distribution takes exactly one draw per length, except
    `fixed`, which takes none."""
    if distribution is LengthDistribution.FIXED:
        lengths = np.full(count, float(median_tokens))
    elif distribution is LengthDistribution.LOGNORMAL:
        lengths = rng.lognormal(math.log(median_tokens), sigma, size=count)
    elif distribution is LengthDistribution.PARETO:
        scale = median_tokens / 2.0 ** (1.0 / alpha)
        survival = 1.0 - rng.random(count)
        lengths = scale * survival ** (-1.0 / alpha)
    else:
        lengths = rng.exponential(median_tokens / math.log(2.0), size=count)
    clipped: IntArray = np.clip(np.rint(lengths), low, high).astype(np.int64)
    return clipped
