"""Per-instance time series of a run: batch size, KV blocks used, tokens/s.

`TimeSeriesRecorder` listens to the supernode (`EngineObserver`) and sums
each instance's work into fixed intervals of emulated time. A prefill
iteration or decode step counts in the interval where it ends, so a long
step can make one interval busier than 100% and leave the one before it
empty. Intervals in which an instance finished no work have no row.

| column            | type          | meaning                                     |
| ----------------- | ------------- | ------------------------------------------- |
| interval_start_s  | float64       | emulated seconds from the run start         |
| interval_s        | float64       | length of every interval                    |
| pool              | string        | `prefill` or `decode`                       |
| instance          | int64         | index within its pool                       |
| steps             | int64         | iterations or steps that ended in it        |
| tokens            | int64         | prompt tokens prefilled or tokens decoded   |
| tokens_per_s      | float64       | tokens / interval_s                         |
| busy_fraction     | float64       | summed step time / interval_s               |
| mean_batch_size   | float64, null | decode: step-time-weighted mean batch       |
| max_batch_size    | int64, null   | decode: largest batch of a step             |
| kv_blocks_used    | int64, null   | decode: KV blocks in use after the last step |
| kv_blocks_total   | int64, null   | decode: KV blocks of the instance           |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["TIMESERIES_SCHEMA", "TimeSeriesRecorder"]

TIMESERIES_SCHEMA = pa.schema(
    [
        pa.field("interval_start_s", pa.float64(), nullable=False),
        pa.field("interval_s", pa.float64(), nullable=False),
        pa.field("pool", pa.string(), nullable=False),
        pa.field("instance", pa.int64(), nullable=False),
        pa.field("steps", pa.int64(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("tokens_per_s", pa.float64(), nullable=False),
        pa.field("busy_fraction", pa.float64(), nullable=False),
        pa.field("mean_batch_size", pa.float64(), nullable=True),
        pa.field("max_batch_size", pa.int64(), nullable=True),
        pa.field("kv_blocks_used", pa.int64(), nullable=True),
        pa.field("kv_blocks_total", pa.int64(), nullable=True),
    ]
)

_PREFILL = "prefill"
_DECODE = "decode"


@dataclass
class _Interval:
    steps: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    batch_time_s: float = 0.0
    max_batch_size: int = 0
    kv_blocks_used: int = 0


class TimeSeriesRecorder:
    """Sums instance work into intervals of `interval_s` emulated seconds.

    `kv_blocks_total` maps each decode instance to its KV capacity in blocks,
    reported beside the blocks used. Raises ValueError for a non-positive or
    non-finite interval.
    """

    def __init__(self, interval_s: float, kv_blocks_total: dict[int, int]) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval_s must be a positive number, got {interval_s}")
        self.interval_s = interval_s
        self._kv_blocks_total = dict(kv_blocks_total)
        self._intervals: dict[tuple[str, int, int], _Interval] = {}

    def on_prefill_iteration(
        self, instance: int, ended_at_s: float, duration_s: float, tokens: int
    ) -> None:
        interval = self._interval(_PREFILL, instance, ended_at_s)
        interval.steps += 1
        interval.tokens += tokens
        interval.busy_s += duration_s

    def on_decode_step(
        self,
        instance: int,
        ended_at_s: float,
        duration_s: float,
        batch_size: int,
        tokens: int,
        kv_blocks_used: int,
    ) -> None:
        interval = self._interval(_DECODE, instance, ended_at_s)
        interval.steps += 1
        interval.tokens += tokens
        interval.busy_s += duration_s
        interval.batch_time_s += batch_size * duration_s
        interval.max_batch_size = max(interval.max_batch_size, batch_size)
        interval.kv_blocks_used = kv_blocks_used

    def to_table(self) -> pa.Table:
        """Return the rows, ordered by pool, instance and interval."""
        columns: dict[str, list[object]] = {
            name: [] for name in TIMESERIES_SCHEMA.names
        }
        for key in sorted(self._intervals):
            pool, instance, number = key
            interval = self._intervals[key]
            is_decode = pool == _DECODE
            row = {
                "interval_start_s": number * self.interval_s,
                "interval_s": self.interval_s,
                "pool": pool,
                "instance": instance,
                "steps": interval.steps,
                "tokens": interval.tokens,
                "tokens_per_s": interval.tokens / self.interval_s,
                "busy_fraction": interval.busy_s / self.interval_s,
                "mean_batch_size": (
                    interval.batch_time_s / interval.busy_s
                    if is_decode and interval.busy_s > 0
                    else None
                ),
                "max_batch_size": interval.max_batch_size if is_decode else None,
                "kv_blocks_used": interval.kv_blocks_used if is_decode else None,
                "kv_blocks_total": (
                    self._kv_blocks_total.get(instance) if is_decode else None
                ),
            }
            for name, value in row.items():
                columns[name].append(value)
        return pa.table(columns, schema=TIMESERIES_SCHEMA)

    def write(self, path: str | Path, metadata: dict[str, str]) -> None:
        """Write the rows as Parquet with `metadata` in the file footer."""
        table = self.to_table().replace_schema_metadata(metadata)
        pq.write_table(table, str(path), compression="zstd")

    def _interval(self, pool: str, instance: int, ended_at_s: float) -> _Interval:
        number = int(ended_at_s // self.interval_s)
        key = (pool, instance, number)
        interval = self._intervals.get(key)
        if interval is None:
            interval = self._intervals[key] = _Interval()
        return interval
