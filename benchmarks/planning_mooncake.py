"""Time a rate sweep and a deployment search on the Mooncake trace.

Imports `mooncake_conversation.jsonl` from the `shared/data` folder beside the
repository into a temporary folder, then runs, with the `cmx` of this
environment:

1. `cmx sweep` over the whole trace at 8 rate factors (time compression);
2. `cmx search` over the bundled CloudMatrix384 search space (36
   deployments under 384 NPUs) on the first 20 minutes of the trace at
   rate factors 4 and 6;
3. for the best point of each, the `cmx simulate` command that `cmx sweep`
   and `cmx search` print, and a comparison of its figures with the row of
   that point in points.parquet.

It prints the wall time of each step, the number of cores and the load
average (other processes share the machine), and whether the figures of
`cmx simulate` equal those of the planning run. A second run with the same
`--work-dir` takes its points from the cache.

    python benchmarks/planning_mooncake.py [--work-dir DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from emulator.planning.confirm import COMPARED_FIGURES
from emulator.planning.metrics import RESULT_COLUMNS, SloTargets, point_metrics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SLO_OPTIONS = [
    "--slo-ttft-ms",
    "2000",
    "--slo-tpot-ms",
    "50",
    "--slo-attainment",
    "0.9",
]
SLO = SloTargets(ttft_ms=2000.0, tpot_ms=50.0, attainment=0.9)
SWEEP_FACTORS = "1,1.5,2,3,4,6,8,12"
SEARCH_FACTORS = "4,6"
SEARCH_WINDOW_S = "1200"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="keep files here (default: temp)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    source = DATA / "mooncake_conversation.jsonl"
    if not source.is_file():
        print(f"skipped: {source} not found")
        return 0
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        return run(source, work, args.jobs)


def run(source: Path, work: Path, jobs: int) -> int:
    print(f"cores: {os.cpu_count()}, load average before: {_load()}, jobs: {jobs}")
    trace = work / "mooncake.parquet"
    if not trace.is_file():
        _cmx(["trace", "import", "--format", "mooncake", str(source), "-o", str(trace)])
    common = [*SLO_OPTIONS, "--jobs", str(jobs)]

    sweep_out = work / "sweep"
    sweep_s = _timed(
        ["sweep", str(trace), "-o", str(sweep_out), "--factors", SWEEP_FACTORS, *common]
    )
    search_out = work / "search"
    search_s = _timed(
        [
            "search",
            str(trace),
            "-o",
            str(search_out),
            "--duration-s",
            SEARCH_WINDOW_S,
            "--factors",
            SEARCH_FACTORS,
            *common,
        ]
    )
    print(f"load average after: {_load()}")
    print(f"sweep: {_count(sweep_out)} points in {sweep_s:.1f} s wall")
    print(f"search: {_count(search_out)} points in {search_s:.1f} s wall")

    identical = True
    for name, out, best_filter in (
        ("sweep", sweep_out, "is_max_slo_rate"),
        ("search", search_out, "rank = 1 AND is_best_of_deployment"),
    ):
        identical &= _confirm(name, out, best_filter)
    return 0 if identical else 1


def _confirm(name: str, out: Path, best_filter: str) -> bool:
    best = out / "best"
    output = best / "benchmark_simulate.parquet"
    command = [
        "simulate",
        str(best / "trace.parquet"),
        "--deployment",
        str(best / "deployment.json"),
        "--seed",
        "0",
        "-o",
        str(output),
        "--timeseries-interval-s",
        "0",
    ]
    simulate_s = _timed(command)

    results = pq.read_table(output, columns=list(RESULT_COLUMNS))
    confirmed = point_metrics(results, SLO).as_dict()
    row = _best_row(out, best_filter)
    print(f"{name} best point: rate factor {row['rate_factor']:g}, {row['npus']} NPUs")
    print(f"  cmx simulate took {simulate_s:.1f} s; figure: planned / simulate")

    same = True
    for figure in COMPARED_FIGURES:
        planned, simulated = row[figure], confirmed[figure]
        same &= planned == simulated
        print(f"  {figure:22} {planned!s:>22} {simulated!s:>22}")
    print(f"  {'identical' if same else 'DIFFERENT'}")

    print("  percentiles by DuckDB (quantile_cont) on the cmx simulate output:")
    for figure, duckdb_value in _duckdb_percentiles(output).items():
        planned = float(row[figure])  # type: ignore[arg-type]
        relative = abs(duckdb_value - planned) / planned if planned else 0.0
        same &= relative < 1e-9
        print(f"  {figure:22} {planned!s:>22} {duckdb_value!s:>22}")
    return same


def _duckdb_percentiles(results: Path) -> dict[str, float]:
    figures = [
        (f"{metric}_p{q}", metric, q / 100)
        for metric in ("ttft_ms", "tpot_ms", "e2e_ms")
        for q in (50, 99)
    ]
    columns = ", ".join(
        f"quantile_cont({metric}, {fraction}) FILTER (WHERE status = 'ok')"
        for _, metric, fraction in figures
    )
    connection = duckdb.connect()
    try:
        query = f"SELECT {columns} FROM read_parquet($path)"
        row = connection.execute(query, {"path": str(results)}).fetchone()
    finally:
        connection.close()
    assert row is not None
    return {
        name: float(value) for (name, _, _), value in zip(figures, row, strict=True)
    }


def _best_row(out: Path, best_filter: str) -> dict[str, object]:
    query = f"SELECT * FROM read_parquet($path) WHERE {best_filter}"
    connection = duckdb.connect()
    try:
        cursor = connection.execute(query, {"path": str(out / "points.parquet")})
        names = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
    finally:
        connection.close()
    if len(rows) != 1:
        raise SystemExit(f"{out}: expected one best point, found {len(rows)}")
    return dict(zip(names, rows[0], strict=True))


def _count(out: Path) -> int:
    return pq.read_metadata(out / "points.parquet").num_rows


def _timed(arguments: list[str]) -> float:
    started_at = time.perf_counter()
    _cmx(arguments)
    return time.perf_counter() - started_at


def _cmx(arguments: list[str]) -> None:
    command = [sys.executable, "-m", "cmx", *arguments]
    print("$ cmx " + shlex.join(arguments), flush=True)
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        print(completed.stdout)
        raise SystemExit(f"cmx {arguments[0]} failed with {completed.returncode}")


def _load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
