"""Benchmark: generate, export, import and describe large traces in bounded memory.

For each size (default 1M and 10M requests) it runs, each stage in its own
Python process so that the peak resident set size (RSS) is the stage's own:

1. `gen`:    generate_trace_file, default generator parameters, seed 0;
2. `export`: the trace as Mooncake JSON lines;
3. `import`: that file back with import_trace_file;
4. `info`:   describe_trace, prefix reuse included;
5. `read`:   pyarrow.parquet.read_table of the whole trace, for comparison:
             what holding the trace in memory costs.

It prints wall time, CPU time, rows per wall second and peak RSS per stage
and size. CPU time (user + system, including the interpreter start and
imports) depends less than wall time on other load on the machine. It also
prints
the ratio of each stage's peak RSS at the largest size to the smallest: a
stage that streams stays near 1, while `read` grows with the rows.

Usage: python benchmarks/trace_scale.py [--sizes 1000000 10000000]
       [--work-dir DIR] [--keep]
Files go to a new folder under --work-dir (default: the system temporary
folder) and are removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("gen", "export", "import", "info", "read")

_STAGE_CODE = """
import json, resource, sys, time
from pathlib import Path
stage, rows, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
trace = folder / f"trace-{rows}.parquet"
source = folder / f"trace-{rows}.jsonl"
imported = folder / f"imported-{rows}.parquet"
started = time.perf_counter()
if stage == "gen":
    from traces.generator import GeneratorParams, generate_trace_file
    generate_trace_file(GeneratorParams(requests=rows), 0, trace)
elif stage == "export":
    from traces.export import ExportFormat, export_trace
    export_trace(trace, source, ExportFormat.MOONCAKE)
elif stage == "import":
    from traces.importers import SourceFormat, import_trace_file
    report = import_trace_file(source, SourceFormat.MOONCAKE, imported)
    assert report.rows_written == rows, report
elif stage == "info":
    from traces.stats import describe_trace
    stats = describe_trace(imported)
    assert stats.rows == rows, stats
elif stage == "read":
    import pyarrow.parquet as pq
    table = pq.read_table(imported)
    assert table.num_rows == rows
elapsed_s = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
peak_rss_mb = usage.ru_maxrss / 1024
cpu_s = usage.ru_utime + usage.ru_stime
print(json.dumps({"seconds": elapsed_s, "cpu_s": cpu_s, "peak_rss_mb": peak_rss_mb}))
"""


def run_stage(stage: str, rows: int, folder: Path) -> dict[str, float]:
    """Run one stage in a fresh interpreter and return its time and peak RSS."""
    completed = subprocess.run(
        [sys.executable, "-c", _STAGE_CODE, stage, str(rows), str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Run every stage at every size and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="cmx-trace-bench-", dir=args.work_dir))
    results: dict[tuple[str, int], dict[str, float]] = {}
    print(f"files in {folder}")
    print(
        f"{'stage':8} {'rows':>12} {'wall s':>8} {'CPU s':>8} {'rows/s':>10} "
        f"{'peak RSS MB':>12}"
    )
    try:
        for rows in args.sizes:
            for stage in STAGES:
                result = run_stage(stage, rows, folder)
                results[(stage, rows)] = result
                rate = rows / result["seconds"]
                print(
                    f"{stage:8} {rows:>12,} {result['seconds']:>8.1f} "
                    f"{result['cpu_s']:>8.1f} {rate:>10,.0f} "
                    f"{result['peak_rss_mb']:>12,.0f}",
                    flush=True,
                )
            sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
            print(f"file sizes at {rows:,} rows: {sizes}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    smallest, largest = min(args.sizes), max(args.sizes)
    if smallest != largest:
        print(f"\npeak RSS at {largest:,} rows / at {smallest:,} rows:")
        for stage in STAGES:
            ratio = (
                results[(stage, largest)]["peak_rss_mb"]
                / results[(stage, smallest)]["peak_rss_mb"]
            )
            print(f"  {stage:8} {ratio:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
