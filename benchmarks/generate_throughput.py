"""Generate throughput: the emulator against a bare grpc.aio echo server.

Both servers run as child processes on loopback and are driven by the same
asyncio client (`replay.client.AsyncEmulatorClient`) with the same requests
and concurrency, in alternating rounds of one run. The echo server replies to
each call at once with as many stream messages as the emulator sent per call
in the same round (token chunks, then a summary). The two runs therefore
differ only in the work of the emulator: admission, the model, pacing and
chunking. The
script prints calls per second for each round and the median ratio (goal:
the emulator at least 0.6x the echo server), with each server's CPU time per
call, which the load of a shared machine disturbs less.

At time scale 10 an emulated call of 1,024 prompt and 32 output tokens lasts
about 250 emulated ms: 25 ms of wall time before any wait for the CPU. With
few calls in flight, that latency and not the server's work would cap the
emulator's calls per second (Little's law); the default of 128 in flight keeps
both servers limited by their work.

    .venv/bin/python benchmarks/generate_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.servers import (  # noqa: E402
    ServerProcess,
    cpu_seconds,
    start_cmx_serve,
    start_process,
)
from cmx.v1 import emulator_pb2, emulator_pb2_grpc  # noqa: E402
from replay.client import AsyncEmulatorClient  # noqa: E402


class EchoEmulator(emulator_pb2_grpc.EmulatorServicer):
    """Fake Emulator that sends `messages` messages at once: chunks, then a summary."""

    def __init__(self, messages: int) -> None:
        self._chunks = max(messages - 1, 1)

    async def Generate(  # noqa: N802 - name fixed by the generated servicer
        self,
        request: emulator_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[emulator_pb2.GenerateResponse]:
        tokens = request.output_tokens
        per_chunk = -(-tokens // self._chunks)
        first = 0
        for _ in range(self._chunks):
            count = max(0, min(per_chunk, tokens - first))
            yield emulator_pb2.GenerateResponse(
                chunk=emulator_pb2.TokenChunk(
                    first_index=first,
                    token_ids=list(range(first, first + count)),
                    emulated_ms=[float(i) for i in range(first, first + count)],
                )
            )
            first += count
        yield emulator_pb2.GenerateResponse(
            summary=emulator_pb2.GenerateSummary(
                request_id=request.request_id, output_tokens=tokens
            )
        )


async def serve_echo(messages: int) -> None:
    server = grpc.aio.server()
    emulator_pb2_grpc.add_EmulatorServicer_to_server(EchoEmulator(messages), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo server: listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


@dataclass(frozen=True)
class RoundFigures:
    """Figures of one server in one round."""

    calls_per_s: float
    messages_per_call: float
    statuses: Counter[str]
    wall_ms_per_call: float
    emulated_e2e_ms: float
    server_cpu_ms_per_call: float = 0.0


async def drive(args: argparse.Namespace, target: str) -> RoundFigures:
    """Send `args.requests` calls, `args.concurrency` at a time."""
    statuses: Counter[str] = Counter()
    messages = 0
    wall_s: list[float] = []
    emulated_ms: list[float] = []
    async with AsyncEmulatorClient(target) as client:
        await client.wait_ready(10)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(args.requests):
            queue.put_nowait(index)

        async def worker() -> None:
            nonlocal messages
            while not queue.empty():
                index = queue.get_nowait()
                request = emulator_pb2.GenerateRequest(
                    request_id=f"bench-{index}",
                    input_tokens=args.input_tokens,
                    output_tokens=args.output_tokens,
                )
                outcome = await client.generate(request, timeout_s=60)
                statuses[outcome.status] += 1
                messages += outcome.messages_received
                wall_s.append(outcome.finished_at_s - outcome.sent_at_s)
                if outcome.summary is not None:
                    emulated_ms.append(outcome.summary.emulated_e2e_ms)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return RoundFigures(
        calls_per_s=args.requests / elapsed,
        messages_per_call=messages / args.requests,
        statuses=statuses,
        wall_ms_per_call=statistics.fmean(wall_s) * 1e3,
        emulated_e2e_ms=statistics.fmean(emulated_ms),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--input-tokens", type=int, default=1024)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument(
        "--serve-echo", type=int, metavar="MESSAGES", help=argparse.SUPPRESS
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.serve_echo is not None:
        asyncio.run(serve_echo(args.serve_echo))
        return

    log_dir = Path(tempfile.mkdtemp(prefix="cmx-bench-"))
    print(
        f"{args.requests} requests of {args.input_tokens} prompt and "
        f"{args.output_tokens} output tokens, {args.concurrency} at a time; "
        f"emulator time scale {args.time_scale:g}"
    )
    emulator_args = ["--time-scale", str(args.time_scale)]
    with start_cmx_serve(log_dir / "emulator.log", *emulator_args) as emulator:
        warmup = argparse.Namespace(**{**vars(args), "requests": args.requests // 3})
        asyncio.run(drive(warmup, emulator.target))
        ratios = [
            run_round(args, emulator, log_dir, n) for n in range(1, args.rounds + 1)
        ]
    print(
        f"median ratio emulator / echo: {statistics.median(ratios):.2f} "
        f"(goal >= 0.6; rounds {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def measure(args: argparse.Namespace, server: ServerProcess) -> RoundFigures:
    cpu_before_s = cpu_seconds(server.process.pid)
    measured = asyncio.run(drive(args, server.target))
    cpu_ms = (cpu_seconds(server.process.pid) - cpu_before_s) * 1e3
    return dataclasses.replace(measured, server_cpu_ms_per_call=cpu_ms / args.requests)


def run_round(
    args: argparse.Namespace, emulator: ServerProcess, log_dir: Path, number: int
) -> float:
    """Measure the emulator, then an echo server sending as many messages."""
    figures = [measure(args, emulator)]
    messages = round(figures[0].messages_per_call)
    echo_command = [sys.executable, __file__, "--serve-echo", str(messages)]
    with start_process(echo_command, log_dir / f"echo-{number}.log") as echo:
        figures.append(measure(args, echo))
    print(f"round {number}:")
    for name, measured in zip(("emulator", "echo"), figures, strict=True):
        print(
            f"  {name:8} {measured.calls_per_s:6.0f} calls/s, "
            f"{measured.messages_per_call:.2f} messages/call, "
            f"{measured.wall_ms_per_call:5.1f} ms/call wall "
            f"({measured.emulated_e2e_ms:6.1f} ms emulated), "
            f"server CPU {measured.server_cpu_ms_per_call:.2f} ms/call, "
            f"{dict(measured.statuses)}"
        )
    emulator_figures, echo_figures = figures
    ratio = emulator_figures.calls_per_s / echo_figures.calls_per_s
    cpu_ratio = (
        emulator_figures.server_cpu_ms_per_call / echo_figures.server_cpu_ms_per_call
    )
    print(
        f"  ratio emulator / echo: throughput {ratio:.2f}, "
        f"server CPU per call {cpu_ratio:.2f}",
        flush=True,
    )
    return ratio


if __name__ == "__main__":
    main()
