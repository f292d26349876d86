"""Seeded generator of bursty, long-context request traces.

Arrivals form a renewal process with Gamma-distributed inter-arrival times:
mean 1 / rate_per_s and shape `burstiness`, so the coefficient of variation is
1 / sqrt(burstiness). Shape 1 gives Poisson arrivals and shapes below 1 give
bursts. Prompt and output lengths are lognormal, rounded and clipped to their
limits.

Requests belong to multi-turn sessions. Walking the arrivals in time order,
each request starts a new session with probability 1 / mean_turns and otherwise
continues a session still open. After each turn its session ends with
probability 1 / mean_turns, so turns per session are geometric with mean about
mean_turns. A follow-up turn's prompt is the previous prompt plus the
previous output plus a new user message, so it carries the earlier turn as a
shared prefix. A session whose next prompt would exceed max_input_tokens ends,
and that request starts a new session instead.

Block hashes number each session's token stream: block i of a session always
has the same id, and ids are unique across sessions. `prefix_block_hashes`
lists the prompt's full blocks only (floor(input_tokens / block_tokens)),
because a partial last block changes as the conversation grows.

The same parameters and seed give the same table, and `write_trace` turns it
into a byte-identical file with the same pyarrow version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from traces.errors import TraceError
from traces.importers import ImportedTrace
from traces.schema import TRACE_SCHEMA

__all__ = ["GeneratorParamError", "GeneratorParams", "generate_trace"]

logger = logging.getLogger(__name__)

_MAX_INT32 = 2**31 - 1


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
    second with inter-arrival CV 2, conversations of about three turns, and
    prompts with a heavy tail up to 128K tokens. Because follow-up turns grow,
    the median prompt over all requests is about 8K tokens (7.9K to 8K for
    seeds 1 and 2 at 20,000 requests) although a first turn's median is 5.5K.
    Construction raises GeneratorParamError for a value outside its range.
    """

    requests: int = 600
    """Number of requests (>= 1)."""
    rate_per_s: float = 5.0
    """Mean arrival rate in requests per second (> 0)."""
    burstiness: float = 0.25
    """Gamma shape of inter-arrival times (> 0). 1 is Poisson, 0.25 is CV 2."""
    input_median_tokens: int = 5500
    """Median prompt length of a session's first turn, in tokens."""
    input_sigma: float = 1.0
    """Lognormal sigma of first-turn prompt and follow-up message lengths."""
    min_input_tokens: int = 16
    """Minimum first-turn prompt length, in tokens (>= 1)."""
    max_input_tokens: int = 131072
    """Maximum prompt length of any turn, in tokens."""
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
    """Median length of the new user message in a follow-up turn, in tokens."""
    block_tokens: int = 512
    """Tokens per hashed prefix block."""

    def __post_init__(self) -> None:
        _check_int(self, "requests", 1, None)
        _check_float(self, "rate_per_s", 0.0, exclusive_low=True)
        _check_float(self, "burstiness", 0.0, exclusive_low=True)
        _check_int(self, "min_input_tokens", 1, None)
        _check_int(self, "max_input_tokens", self.min_input_tokens, None)
        _check_int(
            self, "input_median_tokens", self.min_input_tokens, self.max_input_tokens
        )
        _check_float(self, "input_sigma", 0.0)
        _check_int(self, "max_output_tokens", 1, None)
        _check_int(self, "output_median_tokens", 1, self.max_output_tokens)
        _check_float(self, "output_sigma", 0.0)
        _check_float(self, "mean_turns", 1.0)
        _check_int(self, "turn_median_tokens", 1, self.max_input_tokens)
        _check_int(self, "block_tokens", 1, _MAX_INT32)


@dataclass
class _Session:
    """An open conversation while the trace is being generated."""

    session_id: str
    context_tokens: int = 0
    block_hashes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Draws:
    """Every random draw of a trace, taken up front in a fixed order."""

    arrival_ms: npt.NDArray[np.float64]
    new_session: npt.NDArray[np.float64]
    session_pick: npt.NDArray[np.float64]
    session_end: npt.NDArray[np.float64]
    first_input_tokens: npt.NDArray[np.int64]
    turn_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]


def generate_trace(
    params: GeneratorParams | None = None, seed: int | np.random.Generator = 0
) -> ImportedTrace:
    """Generate a trace with the workload shape `params`.

    `seed` is an int >= 0 passed to `numpy.random.default_rng`, or a Generator
    to draw from. The first request arrives at 0 ms. Request ids are the
    0-based arrival order. Every request has a session id.

    Raises GeneratorParamError for a negative or non-integer seed.
    """
    if params is None:
        params = GeneratorParams()
    rng = _make_rng(seed)
    draws = _draw(params, rng)
    table = _build_sessions(params, draws)

    metadata = {
        "source_format": "generator",
        "generator_params": json.dumps(dataclasses.asdict(params), sort_keys=True),
    }
    if not isinstance(seed, np.random.Generator):
        metadata["generator_seed"] = str(seed)
    logger.info(
        "generated %d requests at %.3g requests/s (seed %s)",
        params.requests,
        params.rate_per_s,
        metadata.get("generator_seed", "from a Generator"),
    )
    return ImportedTrace(table=table, metadata=metadata)


def _make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GeneratorParamError("seed", seed, "an integer >= 0")
    return np.random.default_rng(seed)


def _draw(params: GeneratorParams, rng: np.random.Generator) -> _Draws:
    """Take every random draw, in an order that must never change."""
    count = params.requests
    shape = params.burstiness
    gaps_s = rng.gamma(shape, 1.0 / (shape * params.rate_per_s), size=count - 1)
    arrival_ms = np.concatenate(([0.0], np.cumsum(gaps_s))) * 1000.0
    if not np.isfinite(arrival_ms[-1]):
        raise GeneratorParamError(
            "burstiness", shape, "a larger value, because arrival times overflowed"
        )

    new_session = rng.random(count)
    session_pick = rng.random(count)
    session_end = rng.random(count)
    first_input = _lognormal_tokens(
        rng,
        count,
        median_tokens=params.input_median_tokens,
        sigma=params.input_sigma,
        low=params.min_input_tokens,
        high=params.max_input_tokens,
    )
    turn_tokens = _lognormal_tokens(
        rng,
        count,
        median_tokens=params.turn_median_tokens,
        sigma=params.input_sigma,
        low=1,
        high=params.max_input_tokens,
    )
    output_tokens = _lognormal_tokens(
        rng,
        count,
        median_tokens=params.output_median_tokens,
        sigma=params.output_sigma,
        low=1,
        high=params.max_output_tokens,
    )
    return _Draws(
        arrival_ms=arrival_ms,
        new_session=new_session,
        session_pick=session_pick,
        session_end=session_end,
        first_input_tokens=first_input,
        turn_tokens=turn_tokens,
        output_tokens=output_tokens,
    )


def _lognormal_tokens(
    rng: np.random.Generator,
    count: int,
    *,
    median_tokens: int,
    sigma: float,
    low: int,
    high: int,
) -> npt.NDArray[np.int64]:
    """Draw `count` lognormal lengths, rounded and clipped to [low, high]."""
    lengths = rng.lognormal(math.log(median_tokens), sigma, size=count)
    return np.clip(np.rint(lengths), low, high).astype(np.int64)


def _build_sessions(params: GeneratorParams, draws: _Draws) -> pa.Table:
    """Assign requests to sessions and build the canonical table."""
    new_session_probability = 1.0 / params.mean_turns
    open_sessions: list[_Session] = []
    session_count = 0
    next_hash = 0
    input_column: list[int] = []
    session_column: list[str] = []
    hashes_column: list[list[int]] = []

    for index in range(params.requests):
        session, position, input_tokens = _continue_session(
            open_sessions, draws, index, new_session_probability, params
        )
        if session is None:
            session = _Session(session_id=f"session-{session_count}")
            session_count += 1
            open_sessions.append(session)
            position = len(open_sessions) - 1
            input_tokens = int(draws.first_input_tokens[index])

        full_blocks = input_tokens // params.block_tokens
        while len(session.block_hashes) < full_blocks:
            session.block_hashes.append(next_hash)
            next_hash += 1
        session.context_tokens = input_tokens + int(draws.output_tokens[index])

        input_column.append(input_tokens)
        session_column.append(session.session_id)
        hashes_column.append(session.block_hashes[:full_blocks])
        if draws.session_end[index] < new_session_probability:
            _remove(open_sessions, position)

    logger.debug("generated %d sessions", session_count)
    return _to_table(params, draws, input_column, session_column, hashes_column)


def _continue_session(
    open_sessions: list[_Session],
    draws: _Draws,
    index: int,
    new_session_probability: float,
    params: GeneratorParams,
) -> tuple[_Session | None, int, int]:
    """Pick the open session that request `index` continues, if any.

    Returns the session, its position in `open_sessions` and the follow-up
    prompt length, or (None, -1, 0) when the request starts a new session.
    """
    if not open_sessions or draws.new_session[index] < new_session_probability:
        return None, -1, 0

    position = int(draws.session_pick[index] * len(open_sessions))
    session = open_sessions[position]
    input_tokens = session.context_tokens + int(draws.turn_tokens[index])
    if input_tokens > params.max_input_tokens:
        _remove(open_sessions, position)
        return None, -1, 0
    return session, position, input_tokens


def _remove(open_sessions: list[_Session], position: int) -> None:
    """Remove the session at `position` in O(1) by moving the last one there."""
    open_sessions[position] = open_sessions[-1]
    open_sessions.pop()


def _to_table(
    params: GeneratorParams,
    draws: _Draws,
    input_tokens: list[int],
    session_ids: list[str],
    prefix_block_hashes: list[list[int]],
) -> pa.Table:
    count = params.requests
    return pa.table(
        {
            "request_id": pa.array([str(index) for index in range(count)]),
            "arrival_ms": pa.array(draws.arrival_ms, type=pa.float64()),
            "input_tokens": pa.array(input_tokens, type=pa.int64()),
            "output_tokens": pa.array(draws.output_tokens, type=pa.int64()),
            "prefix_block_hashes": pa.array(
                prefix_block_hashes, type=pa.list_(pa.uint64())
            ),
            "block_tokens": pa.array([params.block_tokens] * count, type=pa.int32()),
            "session_id": pa.array(session_ids, type=pa.string()),
        },
        schema=TRACE_SCHEMA,
    )


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
    params: GeneratorParams, name: str, low: float, exclusive_low: bool = False
) -> None:
    value = getattr(params, name)
    relation = ">" if exclusive_low else ">="
    accepted = f"a finite number {relation} {low:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GeneratorParamError(name, value, accepted)
    if not math.isfinite(value):
        raise GeneratorParamError(name, value, accepted)
    if value < low or (exclusive_low and value == low):
        raise GeneratorParamError(name, value, accepted)
