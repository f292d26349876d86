"""Rate scaling of a trace, for load sweeps: time compression or replication.

Both methods multiply the offered request rate by `rate_factor` and keep the
prompt and output length distributions:

- COMPRESS divides every arrival's offset from the first arrival by the
  factor. The same requests arrive closer together (or further apart for a
  factor below 1), so bursts keep their shape and get shorter.
- REPLICATE overlays copies of the trace on the same arrival times:
  floor(factor) whole copies, plus one copy thinned to the fractional part,
  each row kept with that probability by a generator seeded with `seed`.
  Copy c >= 1 gets request ids `<id>/copy<c>`, session ids
  `<session>/copy<c>` and its own prefix block hashes (each hash mixed with
  the copy number), because the copies stand for other users: without the
  remapping, every copy would reuse the prefix cache of the original.

The first copy (c = 0) keeps its ids and hashes, so REPLICATE with factor 1
returns the trace unchanged.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from emulator.errors import ConfigError
from traces.schema import TRACE_SCHEMA

__all__ = ["RateScaling", "offered_rate_rps", "scale_trace", "window_trace"]

# Multiplier of the splitmix64 step, used to mix copy numbers into hashes.
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


class RateScaling(enum.Enum):
    """Method that a sweep uses to multiply a trace's request rate."""

    COMPRESS = "compress"
    REPLICATE = "replicate"


def scale_trace(
    trace: pa.Table, rate_factor: float, scaling: RateScaling, seed: int = 0
) -> pa.Table:
    """Return `trace` with its request rate multiplied by `rate_factor`.

    `trace` has the canonical trace schema and is sorted by `arrival_ms`; the
    result is too. Raises ConfigError for a factor that is not a positive
    finite number.
    """
    if not (math.isfinite(rate_factor) and rate_factor > 0):
        raise ConfigError(
            f"rate factor must be a positive finite number, got {rate_factor}"
        )
    trace = trace.select(TRACE_SCHEMA.names).cast(TRACE_SCHEMA)
    if trace.num_rows == 0:
        return trace
    if scaling is RateScaling.COMPRESS:
        return _compress(trace, rate_factor)
    return _replicate(trace, rate_factor, seed)


def window_trace(
    trace: pa.Table, limit: int | None = None, duration_s: float | None = None
) -> pa.Table:
    """Keep the first `limit` rows and the rows within `duration_s` of the first.

    The same rule as `cmx simulate --limit/--duration-s`: a row is kept when
    its arrival is less than `duration_s` seconds after the first row's.
    """
    if limit is not None:
        trace = trace.slice(0, limit)
    if duration_s is not None and trace.num_rows:
        arrival_ms = trace.column("arrival_ms").to_numpy()
        cutoff_ms = arrival_ms[0] + duration_s * 1e3
        trace = trace.slice(0, int(np.searchsorted(arrival_ms, cutoff_ms, "left")))
    return trace


def offered_rate_rps(trace: pa.Table) -> float | None:
    """Return requests per second over the arrival span: rows / span.

    None when fewer than two distinct arrival times make a span.
    """
    if trace.num_rows < 2:
        return None
    arrival_ms = trace.column("arrival_ms").to_numpy()
    span_s = (float(arrival_ms.max()) - float(arrival_ms.min())) / 1e3
    return trace.num_rows / span_s if span_s > 0 else None


def _compress(trace: pa.Table, rate_factor: float) -> pa.Table:
    arrival_ms = trace.column("arrival_ms").to_numpy()
    first_ms = arrival_ms[0]
    scaled_ms = first_ms + (arrival_ms - first_ms) / rate_factor
    index = TRACE_SCHEMA.get_field_index("arrival_ms")
    return trace.set_column(index, TRACE_SCHEMA.field(index), pa.array(scaled_ms))


def _replicate(trace: pa.Table, rate_factor: float, seed: int) -> pa.Table:
    whole = math.floor(rate_factor)
    fraction = rate_factor - whole
    copies = [_copy(trace, c) for c in range(whole)]
    if fraction > 0:
        rng = np.random.default_rng(seed)
        keep = rng.random(trace.num_rows) < fraction
        copies.append(_copy(trace.filter(pa.array(keep)), whole))
    merged = pa.concat_tables(copies)
    # Arrow's sort is stable, so rows with equal arrival times stay in
    # copy order, the original first.
    order = pc.sort_indices(merged, sort_keys=[("arrival_ms", "ascending")])
    return merged.take(order)


def _copy(trace: pa.Table, copy: int) -> pa.Table:
    if copy == 0:
        return trace
    suffix = f"/copy{copy}"
    columns = {
        "request_id": pc.binary_join_element_wise(
            trace.column("request_id"), pa.scalar(suffix), ""
        ),
        "session_id": pc.binary_join_element_wise(
            trace.column("session_id"), pa.scalar(suffix), ""
        ),
        "prefix_block_hashes": _mixed_hashes(trace.column("prefix_block_hashes"), copy),
    }
    for name, column in columns.items():
        index = TRACE_SCHEMA.get_field_index(name)
        trace = trace.set_column(index, TRACE_SCHEMA.field(index), column)
    return trace


def _mixed_hashes(hashes: pa.ChunkedArray, copy: int) -> pa.Array:
    """Mix `copy` into every hash with one splitmix64 finalisation step."""
    lists = hashes.combine_chunks()
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = np.uint64(copy) * _GOLDEN_GAMMA
    mixed = _splitmix64(values ^ salt)
    # A sliced list array's offsets need not start at 0; flatten() does.
    offsets = pc.subtract(lists.offsets, lists.offsets[0])
    return pa.ListArray.from_arrays(offsets, pa.array(mixed, type=pa.uint64()))


def _splitmix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        z = values + _GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
