"""Soak run: a steady request rate for many minutes, printing server memory.

Starts `cmx serve` on loopback, injects a drop_streams fault so that failure
paths run too, sends Generate calls at a fixed rate with the asyncio client
for `--duration-s` seconds, and prints the server's resident memory every
`--sample-s` seconds. At the end it prints the first and last samples of the
second half and the slope of a least-squares line through them, in MiB per
minute. Flat memory shows as a slope near 0.

    .venv/bin/python benchmarks/soak.py --duration-s 660
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.servers import rss_mb, start_cmx_serve  # noqa: E402
from cmx.v1 import control_pb2, control_pb2_grpc, emulator_pb2  # noqa: E402
from replay.client import AsyncEmulatorClient  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=660.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per s")
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--input-tokens", type=int, default=4096)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--drop-probability", type=float, default=0.05)
    parser.add_argument("--sample-s", type=float, default=30.0)
    return parser.parse_args()


async def soak(args: argparse.Namespace, target: str, pid: int) -> None:
    statuses: Counter[str] = Counter()
    samples: list[tuple[float, float]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        control = control_pb2_grpc.ControlStub(channel)
        await control.InjectFault(
            control_pb2.InjectFaultRequest(
                fault=control_pb2.FaultSpec(
                    drop_streams=control_pb2.DropStreams(
                        probability=args.drop_probability
                    )
                )
            )
        )
    async with AsyncEmulatorClient(target) as client:
        await client.wait_ready(10)
        tasks: set[asyncio.Task[None]] = set()

        async def one(index: int) -> None:
            request = emulator_pb2.GenerateRequest(
                request_id=f"soak-{index}",
                input_tokens=args.input_tokens,
                output_tokens=args.output_tokens,
            )
            outcome = await client.generate(request, timeout_s=60)
            statuses[outcome.status] += 1

        started = time.perf_counter()
        next_sample = 0.0
        total = int(args.duration_s * args.rate)
        print(f"{'elapsed_s':>9} {'sent':>7} {'ok':>7} {'other':>6} {'rss_mib':>8}")
        for index in range(total):
            due = started + index / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            elapsed = time.perf_counter() - started
            if elapsed >= next_sample:
                rss = rss_mb(pid)
                samples.append((elapsed, rss))
                other = sum(statuses.values()) - statuses["ok"]
                print(
                    f"{elapsed:9.0f} {index + 1:7d} {statuses['ok']:7d} "
                    f"{other:6d} {rss:8.1f}",
                    flush=True,
                )
                next_sample += args.sample_s
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    samples.append((elapsed, rss_mb(pid)))
    report(args, statuses, samples, elapsed)


def report(
    args: argparse.Namespace,
    statuses: Counter[str],
    samples: list[tuple[float, float]],
    elapsed_s: float,
) -> None:
    second_half = [s for s in samples if s[0] >= elapsed_s / 2]
    times = np.array([s[0] for s in second_half]) / 60
    rss = np.array([s[1] for s in second_half])
    slope = float(np.polyfit(times, rss, 1)[0]) if len(second_half) >= 2 else 0.0
    print(f"\nran {elapsed_s:.0f} s at {args.rate:g} requests/s: {dict(statuses)}")
    print(
        f"server RSS: first sample {samples[0][1]:.1f} MiB, "
        f"second half {rss[0]:.1f} -> {rss[-1]:.1f} MiB, "
        f"max {max(s[1] for s in samples):.1f} MiB, "
        f"slope over second half {slope:+.2f} MiB/min"
    )


def main() -> None:
    args = parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="cmx-soak-"))
    with start_cmx_serve(
        log_dir / "server.log", "--time-scale", str(args.time_scale)
    ) as server:
        print(
            f"server {server.target}, pid {server.process.pid}, log {server.log_path}"
        )
        asyncio.run(soak(args, server.target, server.process.pid))


if __name__ == "__main__":
    main()
