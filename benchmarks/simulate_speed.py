"""Time `cmx simulate` on the whole Mooncake conversation trace, twice.

Imports ../shared/data/mooncake_conversation.jsonl into a temporary folder
and simulates it with the full CloudMatrix384 deployment and seed 0 twice.
For each run it prints the wall and CPU time, the emulated duration, the
speed-up over real time and the share of prompt tokens served by the prefix
cache. Then it prints whether the two results files are byte for byte
identical. The target is under 10 s of wall time (at least 350x real time);
on a shared machine the CPU time is the steadier figure.

Run: .venv/bin/python benchmarks/simulate_speed.py [--trace JSONL]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from cmx.cli import main as cmx_main
from emulator.profiles import default_profiles
from emulator.simulate import SimulationConfig, simulate

REPO = Path(__file__).resolve().parents[1]
MOONCAKE = REPO.parent / "shared" / "data" / "mooncake_conversation.jsonl"
TARGET_WALL_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=MOONCAKE)
    args = parser.parse_args()
    if not args.trace.is_file():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.parquet"
        command = ["trace", "import", "--format", "mooncake", str(args.trace)]
        if cmx_main([*command, "-o", str(trace)]) != 0:
            return 1
        outputs = []
        for run in (1, 2):
            output = Path(folder) / f"results-{run}.parquet"
            started = time.perf_counter()
            cpu_started = time.process_time()
            summary = simulate(
                SimulationConfig(trace, output, seed=0),
                default_profiles(),
                show_progress=False,
            )
            wall_s = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
            outputs.append(output)
            print(
                f"run {run}: {summary.requests} requests, "
                f"{summary.emulated_s:,.1f} s emulated in {wall_s:.2f} s wall "
                f"({cpu_s:.2f} s CPU) = {summary.emulated_s / wall_s:,.0f}x "
                f"real time; {summary.cached_token_share or 0:.1%} of prompt "
                "tokens from the prefix cache"
            )
        identical = outputs[0].read_bytes() == outputs[1].read_bytes()

    print(f"same seed, identical results files: {identical}")
    print(f"target: under {TARGET_WALL_S:g} s wall per run")
    print(
        f"machine: {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
