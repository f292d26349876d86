"""Transforms of canonical trace files: slice, scale, merge and sample.

Each transform streams its input in batches and writes a new trace file, so
traces of any size fit in bounded memory. The output keeps the input's
metadata and appends a description of the transform to the JSON list under
`transforms`. Arrival times stay in the input's time base except where a
transform's docstring states a change.

Hash mixing: where rows from different inputs or replicas must not share
prefix blocks, each block hash h of stream k becomes splitmix64(h + k * G)
with G = 0x9E3779B97F4A7C15, so equal hashes stay equal within one stream
and collide across streams only by chance (probability about n^2 / 2^65
for n distinct hashes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from traces.duck import connect, quote_literal
from traces.errors import TraceError
from traces.fields import TimeZoneRule, format_utc_ns, parse_datetime_ns
from traces.schema import (
    ROW_GROUP_ROWS,
    TRACE_SCHEMA,
    TraceWriter,
    iter_trace_batches,
    read_trace_metadata,
)

__all__ = [
    "TransformError",
    "merge_traces",
    "mix_hashes",
    "sample_trace",
    "scale_trace",
    "slice_trace",
]

logger = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


class TransformError(TraceError):
    """Invalid transform options, naming the option and its accepted range."""


@dataclass(frozen=True)
class _Step:
    """A transform's name and options, as stored in the metadata."""

    name: str
    options: Mapping[str, object]


def slice_trace(
    source: str | Path,
    output: str | Path,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    first: int | None = None,
) -> int:
    """Keep rows with start_s <= arrival - t0 < end_s, then the first `first`.

    Times are seconds of trace time after the first arrival t0; arrival
    times are kept as they are. Returns the number of rows written.
    Raises TransformError for a negative start, an end not after the start
    or a `first` below 1.
    """
    _check_number("start_s", start_s, low=0.0)
    if end_s is not None:
        _check_number("end_s", end_s, low=start_s, exclusive=True)
    if first is not None:
        _check_count("first", first)

    def rows() -> Iterator[pa.RecordBatch]:
        origin_ms: float | None = None
        kept = 0
        for batch in iter_trace_batches(source):
            if batch.num_rows == 0:
                continue
            arrival_ms = batch.column("arrival_ms").to_numpy()
            origin_ms = float(arrival_ms[0]) if origin_ms is None else origin_ms
            offset_s = (arrival_ms - origin_ms) / 1000.0
            keep = offset_s >= start_s
            if end_s is not None:
                keep &= offset_s < end_s
            selected = batch.filter(pa.array(keep))
            if first is not None:
                selected = selected.slice(0, first - kept)
            kept += selected.num_rows
            yield selected
            if (first is not None and kept >= first) or (
                end_s is not None and offset_s[-1] >= end_s
            ):
                return

    step = _Step("slice", {"start_s": start_s, "end_s": end_s, "first": first})
    return _write(output, _carried_metadata(source, step), rows())


def scale_trace(
    source: str | Path,
    output: str | Path,
    *,
    speedup: float = 1.0,
    rate_factor: float = 1.0,
    seed: int = 0,
) -> int:
    """Compress time by `speedup` and scale the request rate by `rate_factor`.

    Time: arrival' = t0 + (arrival - t0) / speedup, with t0 the first
    arrival. Rate: a factor below 1 keeps each row with that probability
    (thinning). A factor f above 1 sends each row floor(f) times plus once
    more with probability f - floor(f). Copy k >= 1 of row i arrives uniformly in
    [t_i, t_i+1) (at t_i for the last row), so bursts stay bursts. Its
    request id and session id get the suffix `#k` and its block hashes are
    mixed with k, so copies do not share prefix blocks with each other.
    Returns the number of rows written. Raises TransformError for factors
    that are not finite and > 0, and for request ids containing `#` when
    copying.
    """
    _check_number("speedup", speedup, low=0.0, exclusive=True)
    _check_number("rate_factor", rate_factor, low=0.0, exclusive=True)
    _check_seed(seed)
    rng = np.random.default_rng(seed)

    def rows() -> Iterator[pa.RecordBatch]:
        origin_ms: float | None = None
        for batch, next_arrival_ms in _with_next_arrival(iter_trace_batches(source)):
            if origin_ms is None:
                origin_ms = float(batch.column("arrival_ms")[0].as_py())
            if rate_factor < 1.0:
                batch = batch.filter(pa.array(rng.random(batch.num_rows) < rate_factor))
            elif rate_factor > 1.0:
                batch = _replicate(batch, next_arrival_ms, rate_factor, rng, source)
            yield _compress(batch, origin_ms, speedup)

    options = {"speedup": speedup, "rate_factor": rate_factor, "seed": seed}
    return _write(output, _carried_metadata(source, _Step("scale", options)), rows())


def merge_traces(
    sources: Sequence[str | Path],
    output: str | Path,
    *,
    absolute: bool = False,
    shared_hashes: bool = False,
) -> int:
    """Merge traces into one, ordered by arrival (ties by input, then row).

    Request ids and session ids of input k become `k:id` (k counts from 0),
    so they stay unique. Block hashes of input k >= 1 are mixed with k
    unless `shared_hashes`, because unrelated traces number their blocks
    alike; the first input keeps its hashes.
    By default each input keeps its own time base, so all start together.
    `absolute` shifts each input by its `trace_start` so that they line up
    in real time, and raises TransformError when an input has none.
    Returns the number of rows written.
    """
    if len(sources) < 2:
        raise TransformError(f"merge needs at least 2 traces, got {len(sources)}")
    metadata = [read_trace_metadata(path) for path in sources]
    shifts_ms = _merge_shifts(sources, metadata, absolute)

    merged: dict[str, str] = {
        "source_format": "merge",
        "sources": json.dumps(
            [
                {
                    "path": str(path),
                    **{k: v for k, v in meta.items() if k != "transforms"},
                }
                for path, meta in zip(sources, metadata, strict=True)
            ]
        ),
        "transforms": json.dumps(
            [{"name": "merge", "absolute": absolute, "shared_hashes": shared_hashes}]
        ),
    }
    if absolute:
        starts = [_trace_start_ns(meta) for meta in metadata]
        merged["trace_start"] = format_utc_ns(min(s for s in starts if s is not None))

    def rows() -> Iterator[pa.RecordBatch]:
        with connect() as connection:
            for batch in _merged_batches(connection, sources, shifts_ms):
                yield _rename_merged(batch, shared_hashes)

    return _write(output, merged, rows())


def sample_trace(
    source: str | Path,
    output: str | Path,
    *,
    fraction: float | None = None,
    requests: int | None = None,
    by_session: bool = False,
    seed: int = 0,
) -> int:
    """Keep a seeded random sample of the rows, in their order.

    Give exactly one of `fraction` and `requests`. With `fraction`, each row
    (or each session, with `by_session`) is kept with that probability. With
    `requests`, exactly that many rows are kept, uniformly without
    replacement, and `by_session` is not accepted.
    With `by_session`, a session is kept when a keyed BLAKE2b hash of its
    id falls below the fraction, so all its turns stay or go together; rows
    without a session are sampled one by one. Returns the number of rows
    written. Raises TransformError for invalid options.
    """
    _check_seed(seed)
    if (fraction is None) == (requests is None):
        raise TransformError("give exactly one of --fraction and --requests")
    if fraction is not None:
        _check_number("fraction", fraction, low=0.0, high=1.0)
    if requests is not None:
        _check_count("requests", requests)
        if by_session:
            raise TransformError("--by-session works with --fraction, not --requests")

    options = {
        "fraction": fraction,
        "requests": requests,
        "by_session": by_session,
        "seed": seed,
    }
    metadata = _carried_metadata(source, _Step("sample", options))
    if requests is not None:
        total = int(pq.ParquetFile(str(source)).metadata.num_rows)
        chosen = np.sort(
            np.random.default_rng(seed).choice(
                total, min(requests, total), replace=False
            )
        )
        batches = _take_rows(iter_trace_batches(source), chosen)
    else:
        assert fraction is not None
        batches = _sample_fraction(source, fraction, by_session, seed)

    return _write(output, metadata, batches)


def mix_hashes(hashes: npt.NDArray[np.uint64], stream: int) -> npt.NDArray[np.uint64]:
    """Return splitmix64(h + stream * G) for each hash h (wrapping mod 2^64)."""
    with np.errstate(over="ignore"):
        mixed = hashes + np.uint64(stream) * _GOLDEN
        mixed = (mixed ^ (mixed >> np.uint64(30))) * _MIX_1
        mixed = (mixed ^ (mixed >> np.uint64(27))) * _MIX_2
        result: npt.NDArray[np.uint64] = mixed ^ (mixed >> np.uint64(31))
    return result


def _write(
    output: str | Path, metadata: dict[str, str], batches: Iterator[pa.RecordBatch]
) -> int:
    with TraceWriter(output, metadata) as writer:
        for batch in batches:
            writer.write(batch)
    logger.info("wrote %d requests to %s", writer.rows_written, output)
    return writer.rows_written


def _carried_metadata(source: str | Path, step: _Step) -> dict[str, str]:
    metadata = read_trace_metadata(source)
    metadata.pop("schema_version", None)
    steps = json.loads(metadata.get("transforms", "[]"))
    steps.append({"name": step.name, **step.options})
    metadata["transforms"] = json.dumps(steps)
    return metadata


def _with_next_arrival(
    batches: Iterator[pa.RecordBatch],
) -> Iterator[tuple[pa.RecordBatch, float | None]]:
    """Yield each non-empty batch with the first arrival of the next one."""
    previous: pa.RecordBatch | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if previous is not None:
            yield previous, float(batch.column("arrival_ms")[0].as_py())
        previous = batch
    if previous is not None:
        yield previous, None


def _compress(
    batch: pa.RecordBatch, origin_ms: float, speedup: float
) -> pa.RecordBatch:
    if speedup == 1.0:
        return batch
    arrival_ms = batch.column("arrival_ms").to_numpy()
    scaled = origin_ms + (arrival_ms - origin_ms) / speedup
    return batch.set_column(
        TRACE_SCHEMA.get_field_index("arrival_ms"),
        TRACE_SCHEMA.field("arrival_ms"),
        pa.array(scaled, type=pa.float64()),
    )


def _replicate(
    batch: pa.RecordBatch,
    next_arrival_ms: float | None,
    rate_factor: float,
    rng: np.random.Generator,
    source: str | Path,
) -> pa.RecordBatch:
    """Return each row followed by its extra copies, in time order."""
    if pc.any(pc.match_substring(batch.column("request_id"), "#")).as_py():
        raise TransformError(
            f"{source}: request ids contain '#', which marks copies; rename them "
            "or use a rate factor <= 1"
        )
    arrival_ms = batch.column("arrival_ms").to_numpy()
    following = np.append(arrival_ms[1:], next_arrival_ms or arrival_ms[-1])
    gaps_ms = following - arrival_ms

    whole = math.floor(rate_factor)
    copies = whole + (rng.random(batch.num_rows) < rate_factor - whole)
    row = np.repeat(np.arange(batch.num_rows), copies)
    copy = np.arange(row.size) - np.repeat(np.cumsum(copies) - copies, copies)
    jitter = rng.random(row.size)
    times = arrival_ms[row] + np.where(copy > 0, jitter * gaps_ms[row], 0.0)
    order = np.lexsort((copy, row, times))
    row, copy, times = row[order], copy[order], times[order]

    taken = batch.take(pa.array(row))
    return _mark_copies(taken, copy, times)


def _mark_copies(
    batch: pa.RecordBatch, copy: npt.NDArray[np.int64], times: npt.NDArray[np.float64]
) -> pa.RecordBatch:
    suffix = np.where(copy > 0, np.char.add("#", copy.astype(str)), "")
    suffixes = pa.array(suffix.tolist(), type=pa.string())
    request_id = pc.binary_join_element_wise(batch.column("request_id"), suffixes, "")
    session_id = pc.binary_join_element_wise(batch.column("session_id"), suffixes, "")
    hashes = _mix_list(batch.column("prefix_block_hashes"), copy)
    return pa.RecordBatch.from_pydict(
        {
            "request_id": request_id,
            "arrival_ms": pa.array(times, type=pa.float64()),
            "input_tokens": batch.column("input_tokens"),
            "output_tokens": batch.column("output_tokens"),
            "prefix_block_hashes": hashes,
            "block_tokens": batch.column("block_tokens"),
            "session_id": session_id,
        },
        schema=TRACE_SCHEMA,
    )


def _mix_list(hashes: pa.Array, stream: npt.NDArray[np.int64]) -> pa.Array:
    """Mix each row's hashes with its stream number; stream 0 stays as is."""
    lengths = pc.list_value_length(hashes).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pc.list_flatten(hashes).to_numpy(zero_copy_only=False).astype(np.uint64)
    row_stream = np.repeat(stream, lengths)
    mixed = values.copy()
    for number in np.unique(row_stream):
        if number == 0:
            continue
        selected = row_stream == number
        mixed[selected] = mix_hashes(values[selected], int(number))
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(mixed, type=pa.uint64())
    )


def _merge_shifts(
    sources: Sequence[str | Path], metadata: list[dict[str, str]], absolute: bool
) -> list[float]:
    if not absolute:
        return [0.0] * len(sources)
    starts = [_trace_start_ns(meta) for meta in metadata]
    for path, start in zip(sources, starts, strict=True):
        if start is None:
            raise TransformError(
                f"{path}: no valid trace_start in the metadata, so --absolute "
                "cannot place it in real time; merge without --absolute"
            )
    earliest = min(start for start in starts if start is not None)
    return [(start - earliest) / 1e6 for start in starts if start is not None]


def _trace_start_ns(metadata: dict[str, str]) -> int | None:
    text = metadata.get("trace_start")
    if text is None:
        return None
    try:
        return parse_datetime_ns(text, TimeZoneRule("UTC"), "trace_start")
    except TraceError:
        return None


def _merged_batches(
    connection: duckdb.DuckDBPyConnection,
    sources: Sequence[str | Path],
    shifts_ms: list[float],
) -> Iterator[pa.RecordBatch]:
    parts = [
        f"SELECT {index} AS source_index, file_row_number, * REPLACE "
        f"(arrival_ms + {shift!r} AS arrival_ms) "
        f"FROM read_parquet({quote_literal(str(path))}, file_row_number = true)"
        for index, (path, shift) in enumerate(zip(sources, shifts_ms, strict=True))
    ]
    query = " UNION ALL ".join(parts)
    query += " ORDER BY arrival_ms, source_index, file_row_number"
    yield from connection.sql(query).to_arrow_reader(ROW_GROUP_ROWS)


def _rename_merged(batch: pa.RecordBatch, shared_hashes: bool) -> pa.RecordBatch:
    index = batch.column("source_index").to_numpy().astype(np.int64)
    prefixes = pa.array([f"{k}:" for k in index.tolist()], type=pa.string())
    request_id = pc.binary_join_element_wise(
        prefixes, pc.cast(batch.column("request_id"), pa.string()), ""
    )
    session_id = pc.binary_join_element_wise(
        prefixes, pc.cast(batch.column("session_id"), pa.string()), ""
    )
    hashes = pc.cast(batch.column("prefix_block_hashes"), pa.list_(pa.uint64()))
    if not shared_hashes:
        hashes = _mix_list(hashes, index)
    return pa.RecordBatch.from_pydict(
        {
            "request_id": request_id,
            "arrival_ms": batch.column("arrival_ms"),
            "input_tokens": batch.column("input_tokens"),
            "output_tokens": batch.column("output_tokens"),
            "prefix_block_hashes": hashes,
            "block_tokens": batch.column("block_tokens"),
            "session_id": session_id,
        },
        schema=TRACE_SCHEMA,
    )


def _take_rows(
    batches: Iterator[pa.RecordBatch], chosen: npt.NDArray[np.int64]
) -> Iterator[pa.RecordBatch]:
    """Yield the rows whose 0-based positions are in sorted `chosen`."""
    start = 0
    for batch in batches:
        end = start + batch.num_rows
        low, high = np.searchsorted(chosen, [start, end])
        yield batch.take(pa.array(chosen[low:high] - start))
        start = end


def _sample_fraction(
    source: str | Path, fraction: float, by_session: bool, seed: int
) -> Iterator[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    key = seed.to_bytes(16, "little")
    for batch in iter_trace_batches(source):
        keep = rng.random(batch.num_rows) < fraction
        if by_session:
            sessions = batch.column("session_id").to_pylist()
            for position, session in enumerate(sessions):
                if session is not None:
                    keep[position] = _session_draw(session, key) < fraction
        yield batch.filter(pa.array(keep))


def _session_draw(session_id: str, key: bytes) -> float:
    """Return a uniform number in [0, 1) fixed by the session id and key."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _check_number(
    name: str,
    value: float,
    low: float,
    exclusive: bool = False,
    high: float | None = None,
) -> None:
    relation = ">" if exclusive else ">="
    accepted = f"a finite number {relation} {low:g}"
    if high is not None:
        accepted = f"a number in [{low:g}, {high:g}]"
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    if valid:
        valid = math.isfinite(value) and (value > low if exclusive else value >= low)
        valid = valid and (high is None or value <= high)
    if not valid:
        raise TransformError(f"invalid {name} {value!r}: expected {accepted}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TransformError(f"invalid {name} {value!r}: expected an integer >= 1")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise TransformError(
            f"invalid seed {seed!r}: expected an integer in [0, 2**64)"
        )
