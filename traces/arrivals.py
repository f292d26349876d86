"""Arrival processes of the trace generator, drawn in chunks from a seeded RNG.

- Gamma renewal: inter-arrival times are Gamma with shape k and mean 1 / R,
  so their coefficient of variation (CV) is 1 / sqrt(k). k = 1 is Poisson;
  k < 1 gives bursts.
- On-off, a two-state Markov-modulated Poisson process (MMPP-2): ON and OFF
  periods have exponential lengths with means on_s and off_s; arrivals are
  Poisson at rate r_on during ON and r_off = f * r_on during OFF, with r_on
  chosen so that the long-run mean rate is R:
  r_on = R * (on_s + off_s) / (on_s + f * off_s).
- Diurnal modulation, on top of either: the rate becomes
  R * (1 + A * sin(2 pi t / P)), by time rescaling. A base arrival at
  operational time u moves to the real time t with Lambda(t) = u, where
  Lambda(t) = t + A * P / (2 pi) * (1 - cos(2 pi t / P)).

Every process starts with an arrival at time 0.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ArrivalProcess",
    "ArrivalShape",
    "ArrivalSampler",
    "expected_interarrival_cv",
]

FloatArray = npt.NDArray[np.float64]


class ArrivalProcess(enum.Enum):
    """Base arrival processes of the generator."""

    GAMMA = "gamma"
    ONOFF = "onoff"


@dataclass(frozen=True)
class ArrivalShape:
    """Parameters of an arrival process; checked by GeneratorParams.

    `rate_per_s` is the long-run mean rate R. `burstiness` is the Gamma shape
    k. `on_mean_s`, `off_mean_s` and `off_rate_ratio` (f) shape the on-off
    process. `diurnal_amplitude` (A, 0 for none) and `diurnal_period_s` (P)
    shape the diurnal modulation.
    """

    process: ArrivalProcess
    rate_per_s: float
    burstiness: float
    on_mean_s: float
    off_mean_s: float
    off_rate_ratio: float
    diurnal_amplitude: float
    diurnal_period_s: float


def expected_interarrival_cv(shape: ArrivalShape) -> float | None:
    """Return the CV of inter-arrival times the process has in the long run.

    Gamma: 1 / sqrt(k). On-off: from the moments of the MMPP-2's stationary
    interval, E[X^n] = n! phi (-D0)^-n 1, where D0 = Q - diag(r), D1 =
    diag(r), phi = pi D1 / (pi D1 1) and pi is the stationary distribution
    of the state generator Q. None with a diurnal modulation, whose CV also
    depends on the period and the length of the trace.
    """
    if shape.diurnal_amplitude > 0:
        return None
    if shape.process is ArrivalProcess.GAMMA:
        return 1.0 / math.sqrt(shape.burstiness)

    on_rate, off_rate = _onoff_rates(shape)
    leave_on = 1.0 / shape.on_mean_s
    leave_off = 1.0 / shape.off_mean_s
    generator = np.array([[-leave_on, leave_on], [leave_off, -leave_off]])
    rates = np.diag([on_rate, off_rate])
    stationary = np.array([leave_off, leave_on]) / (leave_on + leave_off)
    interval_start = stationary @ rates / (stationary @ rates).sum()
    inverse = np.linalg.inv(rates - generator)
    ones = np.ones(2)
    mean = float(interval_start @ inverse @ ones)
    second_moment = float(2.0 * interval_start @ inverse @ inverse @ ones)
    return math.sqrt(second_moment / mean**2 - 1.0)


def _onoff_rates(shape: ArrivalShape) -> tuple[float, float]:
    """Return (r_on, r_off) in requests per second."""
    on_s, off_s = shape.on_mean_s, shape.off_mean_s
    on_rate = shape.rate_per_s * (on_s + off_s) / (on_s + shape.off_rate_ratio * off_s)
    return on_rate, shape.off_rate_ratio * on_rate


class ArrivalSampler:
    """Stateful sampler that returns the next arrivals in ms, chunk by chunk.

    The same shape and RNG state give the same times whatever the chunk
    sizes asked for, so a trace does not depend on how it is cut.
    """

    def __init__(self, shape: ArrivalShape, rng: np.random.Generator) -> None:
        self._shape = shape
        self._rng = rng
        self._ready: deque[FloatArray] = deque()
        self._ready_count = 0
        self._time_s = 0.0
        self._on = True
        self._state_left_s = 0.0
        self._started = False

    def next_ms(self, count: int) -> FloatArray:
        """Return the next `count` arrival times in ms, non-decreasing."""
        while self._ready_count < count:
            times = self._draw_base()
            self._ready.append(times)
            self._ready_count += times.size
        parts: list[FloatArray] = []
        needed = count
        while needed:
            head = self._ready.popleft()
            if head.size > needed:
                self._ready.appendleft(head[needed:])
                head = head[:needed]
            parts.append(head)
            needed -= head.size
        self._ready_count -= count
        seconds = np.concatenate(parts) if parts else np.empty(0)
        if self._shape.diurnal_amplitude > 0:
            seconds = _diurnal_times(
                seconds, self._shape.diurnal_amplitude, self._shape.diurnal_period_s
            )
        return seconds * 1000.0

    def _draw_base(self) -> FloatArray:
        """Draw the next block of base arrival times in seconds."""
        if self._shape.process is ArrivalProcess.GAMMA:
            return self._draw_gamma(4096)
        return self._draw_onoff_period()

    def _draw_gamma(self, count: int) -> FloatArray:
        shape = self._shape.burstiness
        gaps_s = self._rng.gamma(shape, 1.0 / (shape * self._shape.rate_per_s), count)
        if not self._started:
            self._started = True
            gaps_s[0] = 0.0
        times = self._time_s + np.cumsum(gaps_s)
        self._time_s = float(times[-1])
        return times

    def _draw_onoff_period(self) -> FloatArray:
        """Draw the arrivals of one ON or OFF period (uniform order statistics
        of a Poisson count), then switch state."""
        shape = self._shape
        if not self._started:
            self._started = True
            self._on = True
            first = np.zeros(1)
            return np.concatenate((first, self._draw_onoff_period()))
        mean_s = shape.on_mean_s if self._on else shape.off_mean_s
        length_s = float(self._rng.exponential(mean_s))
        on_rate, off_rate = _onoff_rates(shape)
        rate = on_rate if self._on else off_rate
        count = int(self._rng.poisson(rate * length_s)) if rate > 0 else 0
        offsets = np.sort(self._rng.random(count)) * length_s
        times = self._time_s + offsets
        self._time_s += length_s
        self._on = not self._on
        return times


def _diurnal_times(
    operational_s: FloatArray, amplitude: float, period_s: float
) -> FloatArray:
    """Solve Lambda(t) = u for each u by safeguarded Newton steps.

    Lambda(t) - t lies in [0, A * P / pi], so t lies in [u - A P / pi, u];
    a Newton step that leaves that bracket is replaced by bisection.
    """
    omega = 2.0 * math.pi / period_s
    swing_s = amplitude / omega

    def integral(t: FloatArray) -> FloatArray:
        return t + swing_s * (1.0 - np.cos(omega * t))

    low = np.maximum(operational_s - 2.0 * swing_s, 0.0)
    high = operational_s.copy()
    guess = operational_s.copy()
    for _ in range(100):
        error = integral(guess) - operational_s
        low = np.where(error < 0, guess, low)
        high = np.where(error > 0, guess, high)
        slope = 1.0 + amplitude * np.sin(omega * guess)
        step = guess - error / slope
        inside = (step > low) & (step < high)
        guess = np.where(inside, step, 0.5 * (low + high))
        if float(np.max(np.abs(error), initial=0.0)) < 1e-9 * max(
            1.0, float(np.max(operational_s, initial=0.0))
        ):
            break
    return guess
