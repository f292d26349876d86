"""Send lag of the replayer at a fixed request rate against `cmx serve`.

Generates a seeded Poisson trace (default 500 requests/s for 20 s, short
prompts and outputs) and starts `cmx serve` on a free loopback port. Then
replays the trace three times in this process against the same server, so
that the clock paths of `replay.pacing` are measured side by side in one
run: the default on Linux (a timerfd that the event loop watches), the
timer thread used elsewhere, and the event loop's timers only
(`timer_handoff_s` 0). Prints, for each, the send lag p50/p99/max from the
results file, the sender's verdict, and the CPU time the replayer used.

With --pin the emulator's threads run on the last CPU and the replayer on
the others, so the two do not take CPU time from each other. Without it they
share every CPU, as they do by default.

Usage: .venv/bin/python benchmarks/replay_send_lag.py [--rate 500]
[--seconds 20] [--pin] [--out-dir DIR]. The emulator runs at time scale 1,
so it serves the trace's own load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.servers import start_cmx_serve  # noqa: E402
from replay import pacing  # noqa: E402
from replay.pacing import DEFAULT_HANDOFF_S, precise_clock_name  # noqa: E402
from replay.runner import ReplayConfig, ReplaySummary, run_replay  # noqa: E402
from traces.schema import write_trace  # noqa: E402


def write_poisson_trace(
    path: Path, rate_per_s: float, seconds: float, seed: int
) -> int:
    """Write a trace of Poisson arrivals; return its number of requests."""
    rng = np.random.default_rng(seed)
    count = int(rate_per_s * seconds)
    arrivals_ms = np.cumsum(rng.exponential(1000.0 / rate_per_s, count))
    table = pa.table(
        {
            "request_id": [f"r{index}" for index in range(count)],
            "arrival_ms": arrivals_ms,
            "input_tokens": rng.integers(64, 512, count),
            "output_tokens": rng.integers(2, 8, count),
            "prefix_block_hashes": [[] for _ in range(count)],
            "block_tokens": np.zeros(count, dtype=np.int32),
            "session_id": [None] * count,
        }
    )
    write_trace(table, path)
    return count


def run_once(
    trace: Path, target: str, output: Path, handoff_s: float
) -> tuple[ReplaySummary, float]:
    """Replay `trace`; return the summary and the CPU seconds used."""
    config = ReplayConfig(
        trace_path=trace, target=target, output_path=output, timer_handoff_s=handoff_s
    )
    cpu_before_s = time.process_time()
    summary = run_replay(config, show_progress=False)
    return summary, time.process_time() - cpu_before_s


# Send lag p99 in each second of the schedule. On a shared machine, a few
# seconds where the whole machine stalls decide the run's p99, so this shows
# how typical seconds fared next to them.
PER_SECOND_SQL = """
SELECT quantile_cont(p99, 0.5), count(*) FILTER (WHERE worst > $stall_ms), count(*)
FROM (
    SELECT quantile_cont(send_lag_ms, 0.99) AS p99, max(send_lag_ms) AS worst
    FROM read_parquet($path)
    GROUP BY floor(scheduled_send_ms / 1000)
)
"""
STALL_MS = 50.0


def report(label: str, summary: ReplaySummary, cpu_s: float, wall_s: float) -> None:
    metrics = summary.metrics
    print(
        f"{label:<22} sent {summary.sent:>6}  failed {summary.failed:>4}  "
        f"send lag p50 {metrics.send_lag_ms_p50:.3f} ms  "
        f"p99 {metrics.send_lag_ms_p99:.3f} ms  max {metrics.send_lag_ms_max:.1f} ms  "
        f"kept up: {metrics.kept_up}  replayer CPU {cpu_s:.1f} s of {wall_s:.1f} s"
    )
    connection = duckdb.connect()
    row = connection.execute(
        PER_SECOND_SQL, {"path": str(summary.output_path), "stall_ms": STALL_MS}
    ).fetchone()
    connection.close()
    assert row is not None
    median_p99_ms, stalled, seconds = row
    print(
        f"{'':<22} median of the per-second p99: {median_p99_ms:.3f} ms; "
        f"seconds with a send more than {STALL_MS:g} ms late: {stalled} of {seconds}"
    )


def pin(server_pid: int) -> str:
    """Put the server's threads on the last CPU and this process on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned: one CPU"
    for thread_id in os.listdir(f"/proc/{server_pid}/task"):
        os.sched_setaffinity(int(thread_id), {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    return f"emulator on CPU {cpus[-1]}, replayer on CPUs {cpus[:-1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="trace length")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--pin", action="store_true", help="run emulator and replayer on separate CPUs"
    )
    parser.add_argument("--out-dir", type=Path, help="keep files here")
    args = parser.parse_args()

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="cmx-send-lag-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / "trace.parquet"
    count = write_poisson_trace(trace, args.rate, args.seconds, args.seed)
    print(
        f"trace: {count} requests, Poisson at {args.rate:g}/s for {args.seconds:g} s; "
        f"{os.cpu_count()} CPUs; files in {out_dir}"
    )

    paths: list[tuple[str, float, str | None]] = [
        (f"{precise_clock_name()} (default)", DEFAULT_HANDOFF_S, None)
    ]
    if precise_clock_name() == "timerfd":
        paths.append(
            (
                f"timer thread {DEFAULT_HANDOFF_S * 1e3:g} ms",
                DEFAULT_HANDOFF_S,
                "thread",
            )
        )
    paths.append(("event loop only", 0.0, None))
    server_args = ("--time-scale", "1")
    with start_cmx_serve(out_dir / "server.log", *server_args) as server:
        if args.pin:
            print(pin(server.process.pid))
        for number, (label, handoff_s, forced) in enumerate(paths, 1):
            output = out_dir / f"results-{number}.parquet"
            output.unlink(missing_ok=True)
            timerfd_api = pacing._timerfd_api
            if forced == "thread":
                # The fallback of machines without a timerfd, chosen here so
                # that both precise clocks are measured on the same machine.
                pacing._timerfd_api = lambda: None
            try:
                started_s = time.perf_counter()
                summary, cpu_s = run_once(trace, server.target, output, handoff_s)
            finally:
                pacing._timerfd_api = timerfd_api
            report(label, summary, cpu_s, time.perf_counter() - started_s)


if __name__ == "__main__":
    main()
