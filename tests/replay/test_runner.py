"""Tests of replay.runner and replay.cli against the scripted fake emulator."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay import cli as replay_cli
from replay.errors import ReplayError
from replay.runner import (
    Interrupt,
    ReplayConfig,
    ReplaySummary,
    parse_target,
    replay,
)
from tests.replay.fake_emulator import (
    ScriptedEmulator,
    StreamScript,
    serve_fake_emulator,
    serve_fake_emulator_in_thread,
)
from traces.errors import TraceFormatError
from traces.schema import write_trace

REPO_ROOT = Path(__file__).resolve().parents[2]

# First arrival is not zero, so the schedule must subtract it.
ARRIVALS_MS = [1000.0, 1000.0, 1100.0, 1300.0, 1600.0]
SPEEDUP = 10.0
# (arrival - 1000) / 10, worked out by hand.
EXPECTED_SCHEDULE_MS = [0.0, 0.0, 10.0, 30.0, 60.0]


def write_test_trace(path: Path, arrivals_ms: Sequence[float]) -> Path:
    count = len(arrivals_ms)
    table = pa.table(
        {
            "request_id": [f"r{index}" for index in range(count)],
            "arrival_ms": list(arrivals_ms),
            "input_tokens": [100 + index for index in range(count)],
            "output_tokens": [4] * count,
            "prefix_block_hashes": [[7, 8 + index] for index in range(count)],
            "block_tokens": [512] * count,
            "session_id": [
                None if index % 2 else f"s{index}" for index in range(count)
            ],
        }
    )
    write_trace(table, path)
    return path


def run_against_fake(
    config_kwargs: Mapping[str, object],
    servicer: ScriptedEmulator,
    tmp_path: Path,
    arrivals_ms: Sequence[float] = ARRIVALS_MS,
    stop_after_s: float | None = None,
) -> tuple[ReplaySummary, pa.Table]:
    """Replay a test trace against `servicer`; return the summary and rows."""
    trace_path = write_test_trace(tmp_path / "trace.parquet", arrivals_ms)
    output_path = tmp_path / "results.parquet"

    async def scenario() -> ReplaySummary:
        interrupt = Interrupt()
        async with serve_fake_emulator(servicer) as target:
            config = ReplayConfig(
                trace_path=trace_path,
                target=target,
                output_path=output_path,
                **config_kwargs,  # type: ignore[arg-type]
            )
            replay_task = asyncio.create_task(replay(config, interrupt=interrupt))
            if stop_after_s is not None:
                await asyncio.sleep(stop_after_s)
                interrupt.request()
            return await replay_task

    summary = asyncio.run(scenario())
    return summary, pq.read_table(output_path).sort_by("request_id")


def test_replay_writes_row_per_request(tmp_path: Path) -> None:
    servicer = ScriptedEmulator()
    summary, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)

    assert table.num_rows == 5
    assert summary.rows_written == 5
    assert summary.sent == 5
    assert summary.failed == 0
    assert summary.interrupted is False
    assert table.column("request_id").to_pylist() == ["r0", "r1", "r2", "r3", "r4"]
    assert table.column("arrival_ms").to_pylist() == ARRIVALS_MS
    assert table.column("scheduled_send_ms").to_pylist() == EXPECTED_SCHEDULE_MS


def test_replay_rows_carry_metrics_and_lag(tmp_path: Path) -> None:
    servicer = ScriptedEmulator()
    _, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)
    rows = table.to_pylist()

    for row in rows:
        assert row["status"] == "ok"
        assert row["ttft_ms"] == 100.0
        assert row["tpot_ms"] == 20.0
        assert row["e2e_ms"] == 160.0
        assert row["output_tokens_received"] == 4
        assert row["send_lag_ms"] == row["actual_send_ms"] - row["scheduled_send_ms"]
        assert row["send_lag_ms"] >= 0.0
        assert row["wall_e2e_ms"] >= row["wall_ttft_ms"] > 0.0
        assert row["queue_ms"] == 5.0
        assert row["decode_instance"] == 3


def test_replay_sends_trace_fields(tmp_path: Path) -> None:
    servicer = ScriptedEmulator()
    run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)
    by_id = {request.request_id: request for request in servicer.requests}

    assert sorted(by_id) == ["r0", "r1", "r2", "r3", "r4"]
    assert by_id["r2"].input_tokens == 102
    assert by_id["r2"].output_tokens == 4
    assert list(by_id["r2"].prefix_block_hashes) == [7, 10]
    assert by_id["r2"].block_tokens == 512
    assert by_id["r2"].session_id == "s2"
    assert by_id["r1"].session_id == ""


def test_slow_response_does_not_delay_sends(tmp_path: Path) -> None:
    slow = StreamScript(chunks=((10.0,),), pause_s=1.0)
    servicer = ScriptedEmulator(scripts={"r0": slow})
    _, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)

    # r4 is due at 60 ms, while r0 takes over 1000 ms to end.
    rows = {row["request_id"]: row for row in table.to_pylist()}
    assert rows["r0"]["wall_e2e_ms"] >= 1000.0
    assert rows["r4"]["actual_send_ms"] < 500.0
    assert servicer.arrived_at_s["r4"] < servicer.arrived_at_s["r0"] + 0.5


def test_limit_keeps_first_requests(tmp_path: Path) -> None:
    config = {"speedup": SPEEDUP, "limit": 2}
    summary, table = run_against_fake(config, ScriptedEmulator(), tmp_path)

    assert summary.rows_written == 2
    assert table.column("request_id").to_pylist() == ["r0", "r1"]


def test_duration_keeps_early_arrivals(tmp_path: Path) -> None:
    # Arrivals 0, 0, 100, 300 and 600 ms after the first; 0.15 s keeps three.
    config = {"speedup": SPEEDUP, "duration_s": 0.15}
    _, table = run_against_fake(config, ScriptedEmulator(), tmp_path)

    assert table.column("request_id").to_pylist() == ["r0", "r1", "r2"]


def test_failed_requests_are_rows(tmp_path: Path) -> None:
    full = StreamScript(
        chunks=(), abort_code=grpc.StatusCode.RESOURCE_EXHAUSTED, abort_details="full"
    )
    servicer = ScriptedEmulator(scripts={"r1": full, "r3": full})
    summary, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)

    assert summary.rows_written == 5
    assert summary.failed == 2
    statuses = table.column("status").to_pylist()
    assert statuses == ["ok", "RESOURCE_EXHAUSTED", "ok", "RESOURCE_EXHAUSTED", "ok"]
    assert table.column("error").to_pylist() == [None, "full", None, "full", None]
    assert table.column("decode_instance").to_pylist() == [3, None, 3, None, 3]


def test_unsorted_trace_is_rejected_before_sending(tmp_path: Path) -> None:
    servicer = ScriptedEmulator()
    with pytest.raises(TraceFormatError, match="row 3, field 'arrival_ms'"):
        run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path, [0.0, 50.0, 20.0])

    assert servicer.requests == []
    assert not (tmp_path / "results.parquet").exists()


def test_interrupt_cancels_in_flight_and_keeps_rows(tmp_path: Path) -> None:
    hanging = StreamScript(chunks=((10.0,),), pause_s=30.0)
    config = {"speedup": 1.0, "cancel_grace_s": 0.2}
    summary, table = run_against_fake(
        config,
        ScriptedEmulator(default=hanging),
        tmp_path,
        arrivals_ms=[0.0, 0.0, 10_000.0],
        stop_after_s=0.3,
    )

    assert summary.interrupted is True
    assert summary.sent == 2
    assert table.column("request_id").to_pylist() == ["r0", "r1"]
    assert table.column("status").to_pylist() == ["CANCELLED", "CANCELLED"]
    assert table.column("output_tokens_received").to_pylist() == [1, 1]


def test_unreachable_target_raises(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = ReplayConfig(
        trace_path=trace_path,
        target=f"127.0.0.1:{closed_port}",
        output_path=tmp_path / "results.parquet",
        connect_timeout_s=0.3,
    )

    with pytest.raises(ReplayError, match="could not connect"):
        asyncio.run(replay(config))
    assert list(tmp_path.iterdir()) == [trace_path]


@pytest.mark.parametrize(
    "target", ["localhost", "localhost:", ":50051", "::1:50051", "host:port", "h:0"]
)
def test_parse_target_rejects_bad_target(target: str) -> None:
    with pytest.raises(ReplayError, match="target"):
        parse_target(target)


def test_parse_target_accepts_host_port() -> None:
    assert parse_target("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_target("[::1]:8080") == ("[::1]", 8080)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("speedup", 0.0, "speedup must be a number > 0"),
        ("speedup", -2.0, "speedup must be a number > 0"),
        ("speedup", float("nan"), "speedup must be a number > 0"),
        ("limit", 0, "limit must be at least 1"),
        ("duration_s", 0.0, "duration_s must be a number > 0"),
        ("timeout_s", -1.0, "timeout_s must be a number > 0"),
        ("cancel_grace_s", -1.0, "cancel_grace_s must be >= 0"),
    ],
)
def test_config_rejects_bad_value(field: str, value: float, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        ReplayConfig(
            trace_path=Path("trace.parquet"),
            target="127.0.0.1:1",
            output_path=Path("results.parquet"),
            **{field: value},  # type: ignore[arg-type]
        )


def parse_replay_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cmx")
    replay_cli.register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_parses_options(tmp_path: Path) -> None:
    args = parse_replay_args(
        ["replay", "t.parquet", "--target", "127.0.0.1:9", "-o", "out.parquet",
         "--speedup", "4", "--limit", "10", "--duration-s", "60", "--timeout-s", "5"]
    )  # fmt: skip

    assert args.trace == Path("t.parquet")
    assert args.output == Path("out.parquet")
    assert args.speedup == 4.0
    assert args.limit == 10
    assert args.duration_s == 60.0
    assert args.timeout_s == 5.0
    assert args.run is replay_cli.run


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--speedup", "0", "speedup must be a number > 0"),
        ("--target", "127.0.0.1", "is not HOST:PORT"),
        ("--limit", "-3", "limit must be at least 1"),
    ],
)
def test_cli_rejects_bad_option(
    tmp_path: Path, option: str, value: str, message: str
) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0])
    args = parse_replay_args(
        ["replay", str(trace_path), "--target", "127.0.0.1:9",
         "-o", str(tmp_path / "out.parquet"), option, value]
    )  # fmt: skip

    with pytest.raises(ReplayError, match=message):
        args.run(args)


def test_cli_rejects_missing_trace(tmp_path: Path) -> None:
    args = parse_replay_args(
        ["replay", str(tmp_path / "absent.parquet"), "--target", "127.0.0.1:9",
         "-o", str(tmp_path / "out.parquet")]
    )  # fmt: skip

    with pytest.raises(TraceFormatError, match="trace file not found"):
        args.run(args)


def test_cli_replays_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    output_path = tmp_path / "out.parquet"
    with serve_fake_emulator_in_thread(ScriptedEmulator()) as target:
        args = parse_replay_args(
            ["replay", str(trace_path), "--target", target, "-o", str(output_path),
             "--speedup", "10"]
        )  # fmt: skip
        status = args.run(args)

    assert status == 0
    assert pq.read_table(output_path).num_rows == 5
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"replay done: sent 5 requests, 0 failed; wrote 5 rows to {output_path}"
    )
    assert lines[1].startswith("  send lag (ms): p50 ")
    assert lines[2].startswith("  measured: 5 requests (5 ok) over ")


CLI_SCRIPT = """
import argparse, sys
from replay import cli
parser = argparse.ArgumentParser(prog="cmx")
cli.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.run(args))
"""


def test_ctrl_c_twice_cancels_and_writes(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0, 0.0, 60_000.0])
    output_path = tmp_path / "out.parquet"
    hanging = StreamScript(chunks=((10.0,),), pause_s=30.0)
    servicer = ScriptedEmulator(default=hanging)

    with serve_fake_emulator_in_thread(servicer) as target:
        replay_process = subprocess.Popen(
            [sys.executable, "-c", CLI_SCRIPT, "replay", str(trace_path),
             "--target", target, "-o", str(output_path)],
            cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_until(lambda: len(servicer.requests) == 2, timeout_s=20.0)
            replay_process.send_signal(signal.SIGINT)
            time.sleep(0.3)
            replay_process.send_signal(signal.SIGINT)
            _, stderr = replay_process.communicate(timeout=20)
        finally:
            replay_process.kill()

    assert replay_process.returncode == replay_cli.EXIT_INTERRUPTED
    assert (
        "replay interrupted: sent 2 requests, 2 failed; "
        f"wrote 2 rows to {output_path}\n"
    ) in stderr
    statuses = pq.read_table(output_path).column("status").to_pylist()
    assert statuses == ["CANCELLED", "CANCELLED"]


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, "condition not met in time"
        time.sleep(0.02)
