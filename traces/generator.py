"""Seeded generator of bursty, long-context, multi-turn request traces.

Arrivals follow one of the processes in `traces.arrivals`: a Gamma renewal
process whose shape `burstiness` sets the inter-arrival CV to
1 / sqrt(burstiness), or an on-off Markov-modulated Poisson process, either
with an optional diurnal modulation of the rate.

Prompt lengths of a session's first turn are lognormal (median and sigma) or
Pareto (median and tail index alpha, heavy-tailed), rounded and clipped to
[min_input_tokens, max_input_tokens]. Output lengths are lognormal,
exponential (with the given median) or fixed, clipped to
[1, max_output_tokens].

Requests belong to multi-turn sessions. Walking the arrivals in time order,
each request starts a new session with probability 1 / mean_turns and
otherwise continues a session still open. After each turn its session ends
with probability 1 / mean_turns, so turns per session are geometric with mean
about mean_turns. A follow-up turn's prompt is the previous prompt plus the
previous output plus a new user message, so it carries the earlier turn as a
shared prefix. A session whose next prompt would exceed max_input_tokens
ends, and that request starts a new session instead.

Block hashes: with M = ceil(max_input_tokens / block_tokens) blocks at most
per prompt and K shared prefixes, block i of shared prefix k has hash
k * M + i, and block i of session s has hash (K + s) * M + i. So a session's
block i always has the same hash, and hashes never collide across sessions or
prefixes. `prefix_block_hashes` lists the prompt's full blocks only
(floor(input_tokens / block_tokens)), because a partial last block changes as
the conversation grows.

Prefix reuse target: when `prefix_reuse_ratio` is set, a session's first
turn may start with the first p blocks of one of K shared prefixes (such as a
system prompt), picked uniformly. p is chosen by feedback so that the ideal
prefix reuse ratio of the trace so far (defined in `traces.stats`) tracks the
target: p covers the reused tokens still missing, up to the prompt's full
blocks. Follow-up turns already reuse their session's earlier blocks, so a
target below what sessions alone give cannot be reached and the trace
exceeds it. A target near 1 cannot be reached either, because first uses
of a prefix, partial blocks and new messages are never reused.
`generate_trace` logs a warning when the result misses the target by more
than 0.01.

The same parameters and seed give the same rows, and the same file bytes
with the same pyarrow version, whatever the batch sizes of the writer.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from traces.arrivals import ArrivalSampler
from traces.generator_params import GeneratorParamError, GeneratorParams
from traces.importers import ImportedTrace
from traces.lengths import LengthSampler
from traces.schema import TRACE_SCHEMA, TraceWriter

__all__ = [
    "GeneratorParamError",
    "GeneratorParams",
    "GeneratorSummary",
    "generate_trace",
    "generate_trace_file",
    "iter_generated_batches",
]

logger = logging.getLogger(__name__)

CHUNK_REQUESTS = 8192
"""Requests drawn and assigned to sessions per step; part of the seeded
stream, so changing it changes every generated trace."""


@dataclass
class GeneratorSummary:
    """Totals that the generator counts as it goes.

    `reused_tokens` / `input_tokens` is the trace's ideal prefix reuse ratio.
    """

    requests: int = 0
    sessions: int = 0
    input_tokens: int = 0
    reused_tokens: int = 0

    @property
    def prefix_reuse_ratio(self) -> float:
        """Fraction of prompt tokens in blocks that appeared earlier."""
        return self.reused_tokens / self.input_tokens if self.input_tokens else 0.0


@dataclass
class _Session:
    """An open conversation while the trace is being generated."""

    number: int
    context_tokens: int = 0
    seen_blocks: int = 0
    prefix: int = -1
    prefix_blocks: int = 0


@dataclass
class _Rows:
    """Per-request values of one chunk, before hashes are built."""

    input_tokens: list[int] = field(default_factory=list)
    session: list[int] = field(default_factory=list)
    prefix: list[int] = field(default_factory=list)
    prefix_blocks: list[int] = field(default_factory=list)


class _SessionBuilder:
    """Assigns requests to sessions and shared prefixes, chunk after chunk."""

    def __init__(self, params: GeneratorParams, summary: GeneratorSummary) -> None:
        self._params = params
        self._summary = summary
        self._new_probability = 1.0 / params.mean_turns
        self._open: list[_Session] = []
        self._prefix_seen_blocks = [0] * params.shared_prefixes

    def assign(
        self,
        new_session: npt.NDArray[np.float64],
        session_pick: npt.NDArray[np.float64],
        session_end: npt.NDArray[np.float64],
        prefix_pick: npt.NDArray[np.float64],
        first_input: npt.NDArray[np.int64],
        turn_tokens: npt.NDArray[np.int64],
        output_tokens: npt.NDArray[np.int64],
    ) -> _Rows:
        rows = _Rows()
        params = self._params
        block = params.block_tokens
        open_sessions = self._open
        for index in range(len(first_input)):
            session: _Session | None = None
            position = -1
            if open_sessions and new_session[index] >= self._new_probability:
                position = int(session_pick[index] * len(open_sessions))
                session = open_sessions[position]
                input_tokens = session.context_tokens + int(turn_tokens[index])
                if input_tokens > params.max_input_tokens:
                    _remove(open_sessions, position)
                    session = None
            if session is None:
                input_tokens = int(first_input[index])
                session = self._start_session(input_tokens, prefix_pick[index])
                open_sessions.append(session)
                position = len(open_sessions) - 1
                reused_blocks = self._reuse_prefix(session)
            else:
                reused_blocks = session.seen_blocks

            session.seen_blocks = input_tokens // block
            session.context_tokens = input_tokens + int(output_tokens[index])
            self._summary.input_tokens += input_tokens
            self._summary.reused_tokens += reused_blocks * block
            rows.input_tokens.append(input_tokens)
            rows.session.append(session.number)
            rows.prefix.append(session.prefix)
            rows.prefix_blocks.append(session.prefix_blocks)
            if session_end[index] < self._new_probability:
                _remove(open_sessions, position)
        return rows

    def _start_session(self, input_tokens: int, prefix_pick: float) -> _Session:
        summary = self._summary
        session = _Session(number=summary.sessions)
        summary.sessions += 1
        target = self._params.prefix_reuse_ratio
        if target is None or self._params.shared_prefixes == 0:
            return session
        block = self._params.block_tokens
        missing_tokens = target * (summary.input_tokens + input_tokens)
        missing_tokens -= summary.reused_tokens
        if missing_tokens <= 0:
            return session
        blocks = min(input_tokens // block, math.ceil(missing_tokens / block))
        if blocks > 0:
            session.prefix = int(prefix_pick * self._params.shared_prefixes)
            session.prefix_blocks = blocks
        return session

    def _reuse_prefix(self, session: _Session) -> int:
        """Return the blocks of the session's shared prefix seen before."""
        if session.prefix < 0:
            return 0
        seen = self._prefix_seen_blocks[session.prefix]
        self._prefix_seen_blocks[session.prefix] = max(seen, session.prefix_blocks)
        return min(seen, session.prefix_blocks)


def _remove(open_sessions: list[_Session], position: int) -> None:
    """Remove the session at `position` in O(1) by moving the last one there."""
    open_sessions[position] = open_sessions[-1]
    open_sessions.pop()


def iter_generated_batches(
    params: GeneratorParams,
    seed: int | np.random.Generator = 0,
    summary: GeneratorSummary | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield the generated trace in batches of at most CHUNK_REQUESTS rows.

    `seed` is an int >= 0 passed to `numpy.random.default_rng`, or a
    Generator to draw from. The first request arrives at 0 ms. Request ids
    are the 0-based arrival order. Every request has a session id.
    `summary`, when given, is updated as the batches are drawn.

    Raises GeneratorParamError for a negative or non-integer seed.
    """
    rng = _make_rng(seed)
    arrival_rng, length_rng = rng.spawn(2)
    arrivals = ArrivalSampler(params.arrival_shape, arrival_rng)
    lengths = LengthSampler(params, length_rng)
    summary = summary if summary is not None else GeneratorSummary()
    builder = _SessionBuilder(params, summary)
    max_blocks = -(-params.max_input_tokens // params.block_tokens)

    start = 0
    while start < params.requests:
        count = min(CHUNK_REQUESTS, params.requests - start)
        arrival_ms = arrivals.next_ms(count)
        if not np.isfinite(arrival_ms[-1]):
            raise GeneratorParamError(
                "rate_per_s",
                params.rate_per_s,
                "a larger value, because arrival times overflowed",
            )
        uniforms = length_rng.random((4, count))
        first_input = lengths.first_input(count)
        turn_tokens = lengths.turn(count)
        output_tokens = lengths.output(count)
        rows = builder.assign(
            uniforms[0],
            uniforms[1],
            uniforms[2],
            uniforms[3],
            first_input,
            turn_tokens,
            output_tokens,
        )
        yield _to_batch(params, start, arrival_ms, rows, output_tokens, max_blocks)
        summary.requests += count
        start += count


def generate_trace(
    params: GeneratorParams | None = None, seed: int | np.random.Generator = 0
) -> ImportedTrace:
    """Generate a trace with the workload shape `params`, in memory.

    See iter_generated_batches for `seed` and the rows. Raises
    GeneratorParamError for a negative or non-integer seed.
    """
    params = params or GeneratorParams()
    summary = GeneratorSummary()
    batches = list(iter_generated_batches(params, seed, summary))
    table = pa.Table.from_batches(batches, schema=TRACE_SCHEMA)
    _log_summary(params, summary)
    return ImportedTrace(table=table, metadata=_metadata(params, seed))


def generate_trace_file(
    params: GeneratorParams,
    seed: int,
    output: str | Path,
    progress: Callable[[int], None] | None = None,
) -> GeneratorSummary:
    """Generate a trace straight to the trace file `output`, in bounded memory.

    `progress` is called with the number of requests generated so far.
    Returns the totals counted while generating.
    """
    summary = GeneratorSummary()
    with TraceWriter(output, _metadata(params, seed)) as writer:
        for batch in iter_generated_batches(params, seed, summary):
            writer.write(batch)
            if progress is not None:
                progress(summary.requests)
    _log_summary(params, summary)
    return summary


def _make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GeneratorParamError("seed", seed, "an integer >= 0")
    return np.random.default_rng(seed)


def _to_batch(
    params: GeneratorParams,
    start: int,
    arrival_ms: npt.NDArray[np.float64],
    rows: _Rows,
    output_tokens: npt.NDArray[np.int64],
    max_blocks: int,
) -> pa.RecordBatch:
    count = len(rows.input_tokens)
    input_tokens = np.asarray(rows.input_tokens, dtype=np.int64)
    # A request must fit the model's context window, prompt and output together.
    room = np.maximum(params.context_window_tokens - input_tokens, 1)
    output_tokens = np.minimum(output_tokens, room)
    hashes = _block_hashes(
        input_tokens // params.block_tokens,
        np.asarray(rows.session, dtype=np.uint64) + np.uint64(params.shared_prefixes),
        np.asarray(rows.prefix, dtype=np.int64),
        np.asarray(rows.prefix_blocks, dtype=np.int64),
        np.uint64(max_blocks),
    )
    return pa.RecordBatch.from_pydict(
        {
            "request_id": pa.array([str(start + i) for i in range(count)]),
            "arrival_ms": pa.array(arrival_ms, type=pa.float64()),
            "input_tokens": pa.array(input_tokens, type=pa.int64()),
            "output_tokens": pa.array(output_tokens, type=pa.int64()),
            "prefix_block_hashes": hashes,
            "block_tokens": pa.array(
                np.full(count, params.block_tokens, dtype=np.int32), type=pa.int32()
            ),
            "session_id": pa.array([f"session-{s}" for s in rows.session]),
        },
        schema=TRACE_SCHEMA,
    )


def _block_hashes(
    full_blocks: npt.NDArray[np.int64],
    session_slot: npt.NDArray[np.uint64],
    prefix: npt.NDArray[np.int64],
    prefix_blocks: npt.NDArray[np.int64],
    max_blocks: np.uint64,
) -> pa.ListArray:
    """Build each row's hash list: prefix blocks first, then session blocks."""
    offsets = np.zeros(len(full_blocks) + 1, dtype=np.int64)
    np.cumsum(full_blocks, out=offsets[1:])
    row = np.repeat(np.arange(len(full_blocks)), full_blocks)
    block = (np.arange(offsets[-1], dtype=np.int64) - offsets[row]).astype(np.uint64)
    in_prefix = block < prefix_blocks[row].astype(np.uint64)
    prefix_base = np.maximum(prefix[row], 0).astype(np.uint64) * max_blocks
    session_base = session_slot[row] * max_blocks
    values = np.where(in_prefix, prefix_base, session_base) + block
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.uint64())
    )


def _metadata(
    params: GeneratorParams, seed: int | np.random.Generator
) -> dict[str, str]:
    metadata = {
        "source_format": "generator",
        "generator_params": json.dumps(params.to_dict(), sort_keys=True),
    }
    if not isinstance(seed, np.random.Generator):
        metadata["generator_seed"] = str(seed)
    return metadata


def _log_summary(params: GeneratorParams, summary: GeneratorSummary) -> None:
    logger.info(
        "generated %d requests in %d sessions at %.3g requests/s, prefix reuse %.3f",
        summary.requests,
        summary.sessions,
        params.rate_per_s,
        summary.prefix_reuse_ratio,
    )
    target = params.prefix_reuse_ratio
    if target is not None and abs(summary.prefix_reuse_ratio - target) > 0.01:
        logger.warning(
            "prefix reuse ratio %.3f misses the target %.3f: sessions alone reuse "
            "more, or prompts leave too few full blocks to reuse",
            summary.prefix_reuse_ratio,
            target,
        )
