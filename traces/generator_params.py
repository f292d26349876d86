"""Parameters of the trace generator, checked on construction."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

from traces.arrivals import ArrivalProcess, ArrivalShape, expected_interarrival_cv
from traces.errors import TraceError

__all__ = [
    "MAX_PROMPT_BLOCKS",
    "GeneratorParamError",
    "GeneratorParams",
    "LengthDistribution",
]

MAX_PROMPT_BLOCKS = 131072
"""Most hashed blocks one prompt may have (max_input_tokens / block_tokens),
so that one chunk's hash lists fit in 32-bit list offsets."""

_MAX_INT32 = 2**31 - 1
_MAX_UINT64 = 2**64 - 1
_MAX_SHARED_PREFIXES = 2**20


class LengthDistribution(enum.Enum):
    """Distributions of prompt and output lengths, each set by its median.

    lognormal: median m and sigma. pareto: P(X > x) = (x_m / x)^alpha for
    x >= x_m = m / 2^(1 / alpha), a heavy tail. exponential: mean m / ln 2.
    fixed: always m. Draws are rounded and clipped to the length limits.
    """

    LOGNORMAL = "lognormal"
    PARETO = "pareto"
    EXPONENTIAL = "exponential"
    FIXED = "fixed"


class GeneratorParamError(TraceError):
    """A generator parameter outside its accepted range."""

    def __init__(self, name: str, value: object, accepted: str) -> None:
        self.name = name
        self.value = value
        super().__init__(
            f"invalid generator parameter {name}={value!r}: expected {accepted}"
        )


@dataclass(frozen=True)
class GeneratorParams:
    """Workload shape of a generated trace.

    The defaults describe a bursty, long-context demo: 600 requests at 5 per
    second with Gamma inter-arrival CV 2, conversations of about three turns,
    and lognormal prompts up to 128K tokens. Because follow-up turns grow,
    the median prompt over all requests is about 8K tokens although a first
    turn's median is 5.5K. Construction raises GeneratorParamError for a
    value outside its range.
    """

    requests: int = 600
    """Number of requests (>= 1)."""
    rate_per_s: float = 5.0
    """Long-run mean arrival rate in requests per second (> 0)."""
    burstiness: float = 0.25
    """Gamma shape of inter-arrival times, in [0.001, 1000]. 1 is Poisson,
    0.25 is CV 2; used by the gamma process only."""
    input_median_tokens: int = 5500
    """Median prompt length of a session's first turn, in tokens."""
    input_sigma: float = 1.0
    """Lognormal sigma of first-turn prompt and follow-up message lengths."""
    min_input_tokens: int = 16
    """Minimum first-turn prompt length, in tokens (>= 1)."""
    max_input_tokens: int = 131072
    """Maximum prompt length of any turn, in tokens; up to MAX_PROMPT_BLOCKS
    blocks."""
    output_median_tokens: int = 300
    """Median output length, in tokens."""
    output_sigma: float = 0.8
    """Lognormal sigma of output lengths."""
    max_output_tokens: int = 4096
    """Maximum output length, in tokens. The minimum is 1."""
    mean_turns: float = 3.0
    """Mean number of turns per session (>= 1). 1 makes every request a
    session of its own."""
    turn_median_tokens: int = 400
    """Median length of the new user message in a follow-up turn, in tokens
    (lognormal with input_sigma)."""
    block_tokens: int = 512
    """Tokens per hashed prefix block."""

    # Fields added later stay after the first ones, so that positional
    # construction keeps working.
    arrival_process: ArrivalProcess = ArrivalProcess.GAMMA
    """Base arrival process: gamma renewal or on-off (MMPP-2)."""
    on_mean_s: float = 10.0
    """Mean length of an on-off process's ON periods, in seconds (> 0)."""
    off_mean_s: float = 30.0
    """Mean length of an on-off process's OFF periods, in seconds (> 0)."""
    off_rate_ratio: float = 0.0
    """Arrival rate during OFF periods as a fraction of the ON rate, [0, 1]."""
    diurnal_amplitude: float = 0.0
    """Relative swing A of the rate R * (1 + A sin(2 pi t / P)), in [0, 1)."""
    diurnal_period_s: float = 86400.0
    """Period P of the diurnal modulation, in seconds (> 0)."""
    input_distribution: LengthDistribution = LengthDistribution.LOGNORMAL
    """Distribution of a session's first prompt length."""
    input_pareto_alpha: float = 1.5
    """Tail index of Pareto prompt lengths, in [0.1, 100]; smaller is heavier."""
    output_distribution: LengthDistribution = LengthDistribution.LOGNORMAL
    """Distribution of output lengths."""
    output_pareto_alpha: float = 1.5
    """Tail index of Pareto output lengths, in [0.1, 100]."""
    prefix_reuse_ratio: float | None = None
    """Target ideal prefix reuse ratio in [0, 1), reached with shared
    prefixes; None adds no shared prefixes."""
    shared_prefixes: int = 16
    """Number K of distinct shared prefixes, in [1, 2**20]."""
    context_window_tokens: int = 131072
    """Largest prompt plus output that the served model accepts (DeepSeek-R1's
    131,072 tokens by default); outputs are shortened to fit it."""

    def __post_init__(self) -> None:
        self._check_arrivals()
        self._check_lengths()
        _check_float(self, "mean_turns", 1.0)
        _check_int(self, "context_window_tokens", 2, None)
        _check_int(self, "turn_median_tokens", 1, self.max_input_tokens)
        _check_int(self, "block_tokens", 1, _MAX_INT32)
        if self.max_prompt_blocks > MAX_PROMPT_BLOCKS:
            raise GeneratorParamError(
                "max_input_tokens",
                self.max_input_tokens,
                f"at most {MAX_PROMPT_BLOCKS} blocks of block_tokens="
                f"{self.block_tokens}, i.e. <= {MAX_PROMPT_BLOCKS * self.block_tokens}",
            )
        if self.prefix_reuse_ratio is not None:
            _check_float(self, "prefix_reuse_ratio", 0.0, high=1.0, open_high=True)
        _check_int(self, "shared_prefixes", 1, _MAX_SHARED_PREFIXES)
        largest_hash = (self.shared_prefixes + self.requests) * self.max_prompt_blocks
        if largest_hash > _MAX_UINT64:
            raise GeneratorParamError(
                "requests", self.requests, "fewer requests: block hashes overflow"
            )

    def _check_arrivals(self) -> None:
        _check_int(self, "requests", 1, None)
        _check_float(self, "rate_per_s", 0.0, exclusive_low=True)
        _check_float(self, "burstiness", 0.001, high=1000.0)
        _check_enum(self, "arrival_process", ArrivalProcess)
        _check_float(self, "on_mean_s", 0.0, exclusive_low=True)
        _check_float(self, "off_mean_s", 0.0, exclusive_low=True)
        _check_float(self, "off_rate_ratio", 0.0, high=1.0)
        _check_float(self, "diurnal_amplitude", 0.0, high=1.0, open_high=True)
        _check_float(self, "diurnal_period_s", 0.0, exclusive_low=True)

    def _check_lengths(self) -> None:
        _check_enum(self, "input_distribution", LengthDistribution)
        _check_int(self, "min_input_tokens", 1, None)
        _check_int(self, "max_input_tokens", self.min_input_tokens, None)
        _check_int(
            self, "input_median_tokens", self.min_input_tokens, self.max_input_tokens
        )
        _check_float(self, "input_sigma", 0.0)
        _check_float(self, "input_pareto_alpha", 0.1, high=100.0)
        _check_enum(self, "output_distribution", LengthDistribution)
        _check_int(self, "max_output_tokens", 1, None)
        _check_int(self, "output_median_tokens", 1, self.max_output_tokens)
        _check_float(self, "output_sigma", 0.0)
        _check_float(self, "output_pareto_alpha", 0.1, high=100.0)

    @property
    def max_prompt_blocks(self) -> int:
        """M = ceil(max_input_tokens / block_tokens), the hash stride."""
        return -(-self.max_input_tokens // self.block_tokens)

    @property
    def arrival_shape(self) -> ArrivalShape:
        """The arrival process parameters."""
        return ArrivalShape(
            process=self.arrival_process,
            rate_per_s=float(self.rate_per_s),
            burstiness=float(self.burstiness),
            on_mean_s=float(self.on_mean_s),
            off_mean_s=float(self.off_mean_s),
            off_rate_ratio=float(self.off_rate_ratio),
            diurnal_amplitude=float(self.diurnal_amplitude),
            diurnal_period_s=float(self.diurnal_period_s),
        )

    @property
    def expected_interarrival_cv(self) -> float | None:
        """Long-run inter-arrival CV of the arrival process (None when diurnal)."""
        return expected_interarrival_cv(self.arrival_shape)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as JSON-ready values (enums as their values)."""
        values = dataclasses.asdict(self)
        return {
            key: value.value if isinstance(value, enum.Enum) else value
            for key, value in values.items()
        }


def _check_int(params: GeneratorParams, name: str, low: int, high: int | None) -> None:
    value = getattr(params, name)
    accepted = f"an integer >= {low}"
    if high is not None:
        accepted = f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise GeneratorParamError(name, value, accepted)
    if value < low or (high is not None and value > high):
        raise GeneratorParamError(name, value, accepted)


def _check_float(
    params: GeneratorParams,
    name: str,
    low: float,
    exclusive_low: bool = False,
    high: float | None = None,
    open_high: bool = False,
) -> None:
    value = getattr(params, name)
    relation = ">" if exclusive_low else ">="
    accepted = f"a finite number {relation} {low:g}"
    if high is not None:
        closing = ")" if open_high else "]"
        accepted = f"a number in [{low:g}, {high:g}{closing}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GeneratorParamError(name, value, accepted)
    if not math.isfinite(value):
        raise GeneratorParamError(name, value, accepted)
    if value < low or (exclusive_low and value == low):
        raise GeneratorParamError(name, value, accepted)
    if high is not None and (value > high or (open_high and value == high)):
        raise GeneratorParamError(name, value, accepted)


def _check_enum(params: GeneratorParams, name: str, kind: type[enum.Enum]) -> None:
    value = getattr(params, name)
    if not isinstance(value, kind):
        choices = ", ".join(member.value for member in kind)
        raise GeneratorParamError(name, value, f"one of {choices}")
