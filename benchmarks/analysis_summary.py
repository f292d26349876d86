"""Time the `summary` query over generated results rows, beside pyarrow.

Writes a seeded results file of `--rows` rows (10 million by default) in
the replayer's schema, zstd-compressed in row groups of 65,536 rows, then
times, in one process and one run:

- `summary`: opening the file with `traces.analysis.Analysis` (footer
  checks and view definitions) and running the canned `summary` query;
- `pyarrow read`: `pyarrow.parquet.read_table` of the nine columns the
  summary reads, which is the floor for any reader that needs those values.

Each is run `--repeat` times after one warm-up run, so that the file is in
the page cache for both. The medians of wall time and of CPU time (all
threads of the process) are printed with the ratios summary / pyarrow and
the 1-minute load average, because other work on the machine inflates wall
times. Run it with the project's venv:

    .venv/bin/python benchmarks/analysis_summary.py
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from replay.results import RESULTS_SCHEMA
from traces.analysis import Analysis

SUMMARY_COLUMNS = [
    "status",
    "actual_send_ms",
    "wall_e2e_ms",
    "output_tokens_received",
    "input_tokens",
    "cached_tokens",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
]
CHUNK_ROWS = 1_000_000
ROW_GROUP_ROWS = 65_536
FAILED_SHARE = 0.01
GOAL_S = 2.0


def generated_chunk(rng: np.random.Generator, first_row: int, rows: int) -> pa.Table:
    """Return `rows` plausible result rows starting at row number `first_row`."""
    index = np.arange(first_row, first_row + rows)
    arrival_ms = index * 10.0 + rng.exponential(5.0, rows)
    failed = rng.random(rows) < FAILED_SHARE
    output_tokens = rng.integers(1, 2048, rows)
    ttft_ms = rng.lognormal(5.0, 1.0, rows)
    tpot_ms = rng.normal(30.0, 5.0, rows).clip(1.0)
    e2e_ms = ttft_ms + tpot_ms * (output_tokens - 1)
    input_tokens = rng.integers(16, 131_072 - 2048, rows)

    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=failed)

    columns = {
        "request_id": pc.cast(pa.array(index), pa.string()),
        "arrival_ms": pa.array(arrival_ms),
        "scheduled_send_ms": pa.array(arrival_ms),
        "actual_send_ms": pa.array(arrival_ms + 0.5),
        "send_lag_ms": pa.array(rng.exponential(0.5, rows)),
        "input_tokens": pa.array(input_tokens),
        "output_tokens": pa.array(output_tokens),
        "output_tokens_received": pa.array(np.where(failed, 0, output_tokens)),
        "status": pa.array(np.where(failed, "UNAVAILABLE", "ok")),
        "error": pa.array(np.full(rows, "unavailable"), mask=~failed),
        "ttft_ms": nullable(ttft_ms),
        "tpot_ms": nullable(tpot_ms),
        "e2e_ms": nullable(e2e_ms),
        "wall_ttft_ms": nullable(ttft_ms),
        "wall_e2e_ms": pa.array(np.where(failed, 1.0, e2e_ms)),
        "queue_ms": nullable(rng.exponential(10.0, rows)),
        "prefill_ms": nullable(ttft_ms * 0.8),
        "kv_transfer_ms": nullable(rng.exponential(0.5, rows)),
        "cached_tokens": nullable((input_tokens * rng.random(rows)).astype(np.int64)),
        "prefill_instance": nullable(rng.integers(0, 6, rows)),
        "decode_instance": nullable(np.zeros(rows, dtype=np.int64)),
    }
    # Columns the summary does not read: NULL, and no faults.
    for field in RESULTS_SCHEMA:
        if field.name == "faults":
            columns[field.name] = pa.array([[]] * rows, field.type)
        elif field.name not in columns:
            columns[field.name] = pa.nulls(rows, field.type)
    return pa.table(columns).select(RESULTS_SCHEMA.names).cast(RESULTS_SCHEMA)


def write_results_file(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    schema = RESULTS_SCHEMA.with_metadata(
        {
            "cmx.results.schema_version": "1",
            "cmx.results.run_config": '{"speedup": 1.0}',
        }
    )
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for first_row in range(0, rows, CHUNK_ROWS):
            chunk = generated_chunk(rng, first_row, min(CHUNK_ROWS, rows - first_row))
            writer.write_table(chunk, row_group_size=ROW_GROUP_ROWS)


@dataclass(frozen=True)
class Timing:
    """Median wall and CPU seconds (all threads of the process) of runs."""

    wall_s: float
    cpu_s: float


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(action: Callable[[], object], repeat: int) -> tuple[Timing, object]:
    """Run `action` once to warm up, then `repeat` times; return medians."""
    result = action()
    wall_times, cpu_times = [], []
    for _ in range(repeat):
        started_wall, started_cpu = time.perf_counter(), _cpu_s()
        result = action()
        wall_times.append(time.perf_counter() - started_wall)
        cpu_times.append(_cpu_s() - started_cpu)
    timing = Timing(statistics.median(wall_times), statistics.median(cpu_times))
    return timing, result


def run_summary(path: Path) -> object:
    with Analysis(path) as analysis:
        return analysis.run_query("summary").to_rows()[0]


def read_with_pyarrow(path: Path) -> object:
    return pq.read_table(path, columns=SUMMARY_COLUMNS).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows to generate")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--file",
        type=Path,
        help=(
            "keep the generated file at this path, or reuse it if it exists "
            "(default: a temporary file, deleted at the end)"
        ),
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cmx-bench-") as directory:
        path = args.file or Path(directory) / "results.parquet"
        if path.exists():
            print(f"reusing {path}")
        else:
            started = time.perf_counter()
            write_results_file(path, args.rows, args.seed)
            print(f"written in {time.perf_counter() - started:.1f} s")
        rows = pq.ParquetFile(path).metadata.num_rows
        size_mib = path.stat().st_size / 2**20
        print(f"rows: {rows:,}; file {size_mib:,.0f} MiB")
        print(
            f"cores: {os.cpu_count()}; duckdb {duckdb.__version__}, "
            f"pyarrow {pa.__version__}; median of {args.repeat} after a warm-up"
        )

        load_before = os.getloadavg()[0]
        summary, summary_row = measure(lambda: run_summary(path), args.repeat)
        arrow, read_rows = measure(lambda: read_with_pyarrow(path), args.repeat)
        load_after = os.getloadavg()[0]

    assert isinstance(summary_row, dict)
    print(f"load average (1 min): {load_before:.1f} before, {load_after:.1f} after")
    print(
        f"summary query:         {summary.wall_s:7.3f} s wall, "
        f"{summary.cpu_s:6.2f} s CPU ({summary_row['requests']:,} rows)"
    )
    print(
        f"pyarrow read (9 cols): {arrow.wall_s:7.3f} s wall, "
        f"{arrow.cpu_s:6.2f} s CPU ({read_rows:,} rows)"
    )
    print(f"ratio summary / pyarrow read, wall: {summary.wall_s / arrow.wall_s:.2f}")
    print(f"ratio summary / pyarrow read, CPU:  {summary.cpu_s / arrow.cpu_s:.2f}")
    verdict = "met" if summary.wall_s < GOAL_S else "NOT met"
    print(f"goal: summary under {GOAL_S:g} s wall -> {verdict}")


if __name__ == "__main__":
    main()
