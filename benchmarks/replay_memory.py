"""Peak memory of the replayer on long traces, against a minimal fake server.

The emulator itself cannot serve a million requests quickly on a small
machine, and its memory is not what this measures. So a minimal gRPC server
(in its own process, `--serve`) replies to every Generate call at once with
one chunk of two tokens and a summary. The replayer runs in a child process
of its own (`--replay`) and reports its peak resident set size
(`ru_maxrss`) when it ends. Two trace lengths run side by side, one tenth
of the requests and all of them, at the same rate: if the replayer streams
the trace and keeps no per-request state after a request ends, both peaks
are about the same.

Usage: .venv/bin/python benchmarks/replay_memory.py [--requests 1000000]
[--rate 1000] [--out-dir DIR]. At 1,000 requests/s the full run takes about
17 minutes. Choose a rate the machine sustains: an open-loop replay against
a server that falls behind keeps more requests in flight, and memory grows
with them, whatever the replayer does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pyarrow as pa

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from replay.runner import ReplayConfig, run_replay
from traces.schema import write_trace

_WRITE_ROWS = 200_000


class _InstantEmulator(emulator_pb2_grpc.EmulatorServicer):
    """Replies to every call with two tokens and a summary, without waiting."""

    async def Generate(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: emulator_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[emulator_pb2.GenerateResponse]:
        chunk = emulator_pb2.TokenChunk(token_ids=[1, 2], emulated_ms=[5.0, 6.0])
        yield emulator_pb2.GenerateResponse(chunk=chunk)
        summary = emulator_pb2.GenerateSummary(
            request_id=request.request_id, output_tokens=2, emulated_e2e_ms=6.0
        )
        yield emulator_pb2.GenerateResponse(summary=summary)


async def _serve() -> None:
    server = grpc.aio.server()
    emulator_pb2_grpc.add_EmulatorServicer_to_server(_InstantEmulator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


class _RssSampler:
    """Samples this process's resident set size once a second in a thread."""

    def __init__(self) -> None:
        self.samples_mib: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
        while not self._stop.wait(1.0):
            with open("/proc/self/statm") as statm:
                self.samples_mib.append(int(statm.read().split()[1]) * page_mib)

    def quarter_peaks_mib(self) -> list[float]:
        """Return the largest sample in each quarter of the samples taken."""
        self._stop.set()
        self._thread.join()
        samples = self.samples_mib
        if len(samples) < 4:
            return [round(max(samples, default=0.0), 1)]
        size = len(samples) // 4
        return [round(max(samples[i : i + size]), 1) for i in range(0, 4 * size, size)]


def _replay_child(trace: Path, target: str, output: Path, speedup: float) -> None:
    config = ReplayConfig(
        trace_path=trace, target=target, output_path=output, speedup=speedup
    )
    started_s = time.perf_counter()
    sampler = _RssSampler()
    summary = run_replay(config, show_progress=False)
    metrics = summary.metrics
    report = {
        "sent": summary.sent,
        "failed": summary.failed,
        "wall_s": time.perf_counter() - started_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_mib_peak_per_quarter": sampler.quarter_peaks_mib(),
        "send_lag_ms_p50": metrics.send_lag_ms_p50,
        "send_lag_ms_p99": metrics.send_lag_ms_p99,
        "send_lag_ms_max": metrics.send_lag_ms_max,
        "kept_up": metrics.kept_up,
    }
    print(json.dumps(report), flush=True)


def write_trace_file(path: Path, count: int) -> None:
    """Write `count` requests, one per trace second, each with 4 prefix hashes."""
    tables = []
    for first in range(0, count, _WRITE_ROWS):
        size = min(_WRITE_ROWS, count - first)
        index = np.arange(first, first + size)
        tables.append(
            pa.table(
                {
                    "request_id": pa.array(index.astype(str)),
                    "arrival_ms": index * 1000.0,
                    "input_tokens": np.full(size, 2048),
                    "output_tokens": np.full(size, 2),
                    "prefix_block_hashes": pa.FixedSizeListArray.from_arrays(
                        pa.array(np.repeat(index, 4).astype(np.uint64)), 4
                    ).cast(pa.list_(pa.uint64())),
                    "block_tokens": np.full(size, 512, dtype=np.int32),
                    "session_id": pa.nulls(size, pa.string()),
                }
            )
        )
    write_trace(pa.concat_tables(tables), path)


def measure(trace: Path, target: str, output: Path, rate: float) -> dict[str, object]:
    """Run one replay in a child process and return its report."""
    completed = subprocess.run(
        [sys.executable, __file__, "--replay", str(trace), "--target", target,
         "--output", str(output), "--rate", str(rate)],
        capture_output=True, text=True,
    )  # fmt: skip
    if completed.returncode != 0:
        raise SystemExit(f"replay failed:\n{completed.stderr}")
    report: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s")
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        asyncio.run(_serve())
        return
    if args.replay is not None:
        _replay_child(args.replay, args.target, args.output, args.rate)
        return

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="cmx-replay-memory-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        target = server.stdout.readline().split()[-1]
        print(f"fake server at {target}; rate {args.rate:g} requests/s; in {out_dir}")
        for count in (args.requests // 10, args.requests):
            trace = out_dir / f"trace-{count}.parquet"
            write_trace_file(trace, count)
            output = out_dir / f"results-{count}.parquet"
            output.unlink(missing_ok=True)
            report = measure(trace, target, output, args.rate)
            print(f"{count:>9} requests: {json.dumps(report)}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
