"""Run Vidur and `cmx simulate` on the same trace and compare their speed.

Vidur (https://github.com/microsoft/vidur, PyPI package `vidur`) must live in
its own virtual environment, never in this project's; pass its Python with
--vidur-python. The script writes the trace in Vidur's trace-replay CSV
format (Date, Time, PromptTokenCount, CompletionTokenCount), runs Vidur with
Hugging Face Hub and Weights & Biases kept offline, so that nothing leaves
this machine, and times both simulators. When Vidur cannot run, it prints
Vidur's own error as the reason.

Set-up used for the record in docs/calibration.md:
    python3 -m venv /tmp/vidur-venv && /tmp/vidur-venv/bin/pip install vidur
Run: .venv/bin/python benchmarks/vidur_side_by_side.py \
         --vidur-python /tmp/vidur-venv/bin/python [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from cmx.cli import main as cmx_main
from emulator.profiles import default_profiles
from emulator.simulate import SimulationConfig, simulate

REPO = Path(__file__).resolve().parents[1]
MOONCAKE = REPO.parent / "shared" / "data" / "mooncake_conversation.jsonl"
VIDUR_TIMEOUT_S = 1800
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def write_vidur_trace(trace: Path, output: Path, limit: int | None) -> int:
    rows = pq.read_table(trace).to_pylist()[:limit]
    first_ms = rows[0]["arrival_ms"]
    with output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Date", "Time", "PromptTokenCount", "CompletionTokenCount"])
        for row in rows:
            seconds = (row["arrival_ms"] - first_ms) / 1e3
            writer.writerow(
                ["2024-01-01", seconds, row["input_tokens"], row["output_tokens"]]
            )
    return len(rows)


def run_vidur(python: str, trace_csv: Path, folder: Path) -> tuple[bool, float, str]:
    command = [
        python,
        "-m",
        "vidur.main",
        "--request_generator_config_type",
        "trace_replay",
        "--trace_request_generator_config_trace_file",
        str(trace_csv),
        "--trace_request_generator_config_date",
        "2024-01-01",
        "--trace_request_generator_config_max_tokens",
        "131072",
        "--metrics_config_output_dir",
        str(folder / "vidur-out"),
        "--no-metrics_config_write_json_trace",
    ]
    started = time.perf_counter()
    try:
        finished = subprocess.run(
            command,
            cwd=folder,
            env={**os.environ, **OFFLINE},
            capture_output=True,
            text=True,
            timeout=VIDUR_TIMEOUT_S,
        )
    except FileNotFoundError as error:
        return False, 0.0, f"cannot start {python}: {error.strerror}"
    except subprocess.TimeoutExpired:
        return False, VIDUR_TIMEOUT_S, f"timed out after {VIDUR_TIMEOUT_S} s"
    wall_s = time.perf_counter() - started
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines() or ["no output"]
        return False, wall_s, lines[-1]
    return True, wall_s, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=MOONCAKE)
    parser.add_argument("--vidur-python", default="/tmp/vidur-venv/bin/python")
    parser.add_argument("--limit", type=int, help="use the first N requests")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        trace = folder / "trace.parquet"
        imported = ["trace", "import", "--format", "mooncake", str(args.trace)]
        if cmx_main([*imported, "-o", str(trace)]) != 0:
            return 1
        requests = write_vidur_trace(trace, folder / "vidur-trace.csv", args.limit)

        started = time.perf_counter()
        summary = simulate(
            SimulationConfig(trace, folder / "cmx.parquet", limit=args.limit),
            default_profiles(),
            show_progress=False,
        )
        cmx_wall_s = time.perf_counter() - started
        print(
            f"cmx simulate: {requests} requests, {summary.emulated_s:,.1f} s "
            f"emulated in {cmx_wall_s:.2f} s wall "
            f"({summary.emulated_s / cmx_wall_s:,.0f}x real time)"
        )

        ran, vidur_wall_s, reason = run_vidur(
            args.vidur_python, folder / "vidur-trace.csv", folder
        )
    if not ran:
        print(f"vidur could not run: {reason}")
        return 0
    print(
        f"vidur: {requests} requests in {vidur_wall_s:.2f} s wall "
        f"({summary.emulated_s / vidur_wall_s:,.0f}x real time); "
        f"cmx simulate is {vidur_wall_s / cmx_wall_s:.1f}x faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
