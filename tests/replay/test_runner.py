"""Tests of replay.runner and replay.cli against the scripted fake emulator."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import duckdb
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmx import __version__
from cmx.demo import start_server
from replay import cli as replay_cli
from replay.errors import ReplayError
from replay.metrics import parse_slo
from replay.results import parts_dir_for
from replay.runner import (
    Interrupt,
    ReplayConfig,
    ReplaySummary,
    parse_target,
    replay,
)
from tests.certificates import make_certificates
from tests.replay.fake_emulator import (
    FakeControl,
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


def write_test_trace(
    path: Path, arrivals_ms: Sequence[float], *, prefix_hashes: bool = True
) -> Path:
    """Write a small trace; without `prefix_hashes` the real emulator accepts it."""
    count = len(arrivals_ms)
    table = pa.table(
        {
            "request_id": [f"r{index}" for index in range(count)],
            "arrival_ms": list(arrivals_ms),
            "input_tokens": [100 + index for index in range(count)],
            "output_tokens": [4] * count,
            "prefix_block_hashes": [
                [7, 8 + index] if prefix_hashes else [] for index in range(count)
            ],
            "block_tokens": [512 if prefix_hashes else 0] * count,
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
    control: FakeControl | None = None,
) -> tuple[ReplaySummary, pa.Table]:
    """Replay a test trace against `servicer`; return the summary and rows."""
    trace_path = write_test_trace(tmp_path / "trace.parquet", arrivals_ms)
    output_path = tmp_path / "results.parquet"

    async def scenario() -> ReplaySummary:
        interrupt = Interrupt()
        async with serve_fake_emulator(servicer, control) as target:
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
    assert summary.failed == 0
    assert summary.cancelled == 2
    assert summary.metrics.failed == 0
    assert summary.metrics.cancelled == 2
    assert table.column("request_id").to_pylist() == ["r0", "r1"]
    assert table.column("status").to_pylist() == ["CANCELLED", "CANCELLED"]
    assert table.column("error").to_pylist() == ["cancelled by the replayer"] * 2
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

    with pytest.raises(ReplayError) as raised:
        asyncio.run(replay(config))

    assert str(raised.value) == (
        f"could not connect to 127.0.0.1:{closed_port} within 0.3 s: Failed to "
        "connect to remote host: Connection refused. Check that the emulator is "
        "running and listening at that address, and connect with --tls-ca if it "
        "serves TLS"
    )
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
    assert lines[1] == "  statuses: ok 5"
    assert lines[2].startswith("  send lag (ms): p50 ")
    assert lines[3].startswith("  measured: 5 requests (5 ok) over ")


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
        "replay interrupted: sent 2 requests, 0 failed, 2 cancelled by Ctrl-C; "
        f"wrote 2 rows to {output_path}\n  statuses: 2 cancelled by Ctrl-C\n"
    ) in stderr
    assert "WARNING: " not in stderr
    statuses = pq.read_table(output_path).column("status").to_pylist()
    assert statuses == ["CANCELLED", "CANCELLED"]


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, "condition not met in time"
        time.sleep(0.02)


def rows_by_id(table: pa.Table) -> dict[str, dict[str, object]]:
    return {str(row["request_id"]): row for row in table.to_pylist()}


def test_rows_carry_inter_token_stats(tmp_path: Path) -> None:
    # Tokens at 100, 120 | empty chunk | 140, 175: gaps 20, 20 and 35.
    script = StreamScript(chunks=((100.0, 120.0), (), (140.0, 175.0)))
    servicer = ScriptedEmulator(default=script)
    _, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)
    row = rows_by_id(table)["r0"]

    assert row["output_tokens_received"] == 4
    assert row["ttft_ms"] == 100.0
    assert row["tpot_ms"] == 25.0
    assert row["e2e_ms"] == 175.0
    assert row["itl_ms_p50"] == 20.0
    assert row["itl_ms_p99"] == pytest.approx(34.7)
    assert row["itl_ms_max"] == 35.0
    assert row["normalized_latency_ms"] == 43.75
    assert row["concurrency_wait_ms"] is None
    assert row["slo_met"] is None
    assert row["measured"] is True


def test_error_mid_stream_keeps_tokens(tmp_path: Path) -> None:
    broken = StreamScript(
        chunks=((100.0, 110.0), (125.0,)),
        abort_code=grpc.StatusCode.UNAVAILABLE,
        abort_details="decode instance failed",
    )
    servicer = ScriptedEmulator(scripts={"r2": broken})
    summary, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)
    row = rows_by_id(table)["r2"]

    assert summary.failed == 1
    assert row["status"] == "UNAVAILABLE"
    assert row["error"] == "decode instance failed"
    assert row["output_tokens_received"] == 3
    assert row["ttft_ms"] == 100.0
    assert row["tpot_ms"] is None
    assert row["e2e_ms"] is None
    assert row["normalized_latency_ms"] is None
    # The gaps that did arrive are still facts about the stream.
    assert row["itl_ms_max"] == 15.0


def test_short_stream_is_ok_with_tokens_received(tmp_path: Path) -> None:
    # Four tokens were requested; the stream ends normally after two.
    short = StreamScript(chunks=((100.0, 110.0),))
    servicer = ScriptedEmulator(scripts={"r1": short})
    _, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)
    row = rows_by_id(table)["r1"]

    assert row["status"] == "ok"
    assert row["output_tokens"] == 4
    assert row["output_tokens_received"] == 2
    assert row["tpot_ms"] == 10.0
    assert row["e2e_ms"] == 110.0
    assert row["normalized_latency_ms"] == 55.0


def test_stream_without_summary_is_data_loss(tmp_path: Path) -> None:
    cut = StreamScript(chunks=((100.0, 110.0),), send_summary=False)
    servicer = ScriptedEmulator(scripts={"r1": cut})
    _, table = run_against_fake({"speedup": SPEEDUP}, servicer, tmp_path)
    row = rows_by_id(table)["r1"]

    assert row["status"] == "DATA_LOSS"
    assert row["output_tokens_received"] == 2
    assert row["ttft_ms"] == 100.0
    assert row["e2e_ms"] is None


def test_one_token_output_has_null_tpot(tmp_path: Path) -> None:
    one_token = StreamScript(chunks=((42.0,),))
    config = {"speedup": SPEEDUP, "slos": (parse_slo("tpot_ms=1"),)}
    _, table = run_against_fake(config, ScriptedEmulator(default=one_token), tmp_path)
    row = rows_by_id(table)["r0"]

    assert row["tpot_ms"] is None
    assert row["itl_ms_p50"] is None
    assert row["normalized_latency_ms"] == 42.0
    assert row["slo_met"] is True


def test_slo_verdicts_in_rows(tmp_path: Path) -> None:
    # Default streams have TTFT 100 and TPOT 20; r3's TTFT is 150.
    late = StreamScript(chunks=((150.0, 170.0),))
    failed = StreamScript(chunks=(), abort_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    servicer = ScriptedEmulator(scripts={"r3": late, "r4": failed})
    slos = (parse_slo("ttft_ms=120"), parse_slo("tpot_ms=20"))
    summary, table = run_against_fake(
        {"speedup": SPEEDUP, "slos": slos}, servicer, tmp_path
    )

    assert table.column("slo_met").to_pylist() == [True, True, True, False, False]
    assert summary.metrics.measured_good == 3
    assert summary.metrics.slo_attainment == 0.6
    assert summary.metrics.slos == ("ttft_ms<=120", "tpot_ms<=20")


def test_measured_flags_follow_warmup_cooldown(tmp_path: Path) -> None:
    # Arrivals 0, 0, 100, 300, 600 ms after the first: measured 100 to 300.
    config = {"speedup": SPEEDUP, "warmup_s": 0.05, "cooldown_s": 0.3}
    summary, table = run_against_fake(config, ScriptedEmulator(), tmp_path)

    assert table.column("measured").to_pylist() == [False, False, True, True, False]
    assert summary.metrics.measured == 2
    assert summary.rows_written == 5


def test_window_start_and_duration_in_run(tmp_path: Path) -> None:
    # Window [1050, 1350) contains 1100 and 1300, due at 50 / 10 and 250 / 10.
    config = {"speedup": SPEEDUP, "start_s": 0.05, "duration_s": 0.3}
    summary, table = run_against_fake(config, ScriptedEmulator(), tmp_path)

    assert table.column("request_id").to_pylist() == ["r2", "r3"]
    assert table.column("scheduled_send_ms").to_pylist() == [5.0, 25.0]
    assert summary.sent == 2


def test_concurrency_cap_records_wait(tmp_path: Path) -> None:
    # One slot and three requests due at once, each holding it for 0.2 s.
    slow = StreamScript(chunks=((10.0,),), pause_s=0.2)
    servicer = ScriptedEmulator(default=slow)
    config = {"speedup": 1.0, "max_concurrency": 1}
    summary, table = run_against_fake(
        config, servicer, tmp_path, arrivals_ms=[0.0, 0.0, 0.0]
    )
    rows = rows_by_id(table)
    waits = [rows[name]["concurrency_wait_ms"] for name in ("r0", "r1", "r2")]

    assert isinstance(waits[0], float) and waits[0] < 50.0
    assert isinstance(waits[1], float) and 190.0 <= waits[1] < 400.0
    assert isinstance(waits[2], float) and 390.0 <= waits[2] < 800.0
    arrived = servicer.arrived_at_s
    assert arrived["r1"] - arrived["r0"] >= 0.19
    assert arrived["r2"] - arrived["r1"] >= 0.19
    for name in ("r0", "r1", "r2"):
        lag = rows[name]["send_lag_ms"]
        assert isinstance(lag, float)
        assert lag - rows[name]["concurrency_wait_ms"] < 50.0  # type: ignore[operator]
    assert summary.metrics.concurrency_wait_ms_max == max(waits)  # type: ignore[type-var]


def test_stop_while_waiting_for_slot(tmp_path: Path) -> None:
    hanging = StreamScript(chunks=((10.0,),), pause_s=30.0)
    config = {"speedup": 1.0, "max_concurrency": 1, "cancel_grace_s": 0.1}
    summary, table = run_against_fake(
        config,
        ScriptedEmulator(default=hanging),
        tmp_path,
        arrivals_ms=[0.0, 0.0],
        stop_after_s=0.3,
    )

    assert summary.sent == 1
    assert summary.interrupted is True
    assert table.column("request_id").to_pylist() == ["r0"]
    assert table.column("status").to_pylist() == ["CANCELLED"]


def test_metadata_has_trace_checksum_and_versions(tmp_path: Path) -> None:
    config = {
        "speedup": SPEEDUP,
        "max_concurrency": 8,
        "slos": (parse_slo("ttft_ms=500"),),
    }
    run_against_fake(config, ScriptedEmulator(), tmp_path)
    metadata = pq.read_schema(tmp_path / "results.parquet").metadata
    trace = json.loads(metadata[b"cmx.results.trace"])
    versions = json.loads(metadata[b"cmx.results.versions"])
    run_config = json.loads(metadata[b"cmx.results.run_config"])

    trace_bytes = (tmp_path / "trace.parquet").read_bytes()
    assert trace["sha256"] == hashlib.sha256(trace_bytes).hexdigest()
    assert trace["planned_requests"] == 5
    assert trace["first_arrival_ms"] == 1000.0
    assert trace["metadata"] == {"schema_version": "1"}
    assert versions["cmx"] == __version__
    assert versions["python"] == platform.python_version()
    assert versions["grpcio"] == grpc.__version__
    assert run_config["speedup"] == SPEEDUP
    assert run_config["max_concurrency"] == 8
    assert run_config["slos"] == {"ttft_ms": 500.0}


def test_lag_beyond_threshold_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No send starts within a microsecond of its due time.
    config = {"speedup": SPEEDUP, "lag_warning_ms": 0.001}
    with caplog.at_level(logging.WARNING, logger="replay.pacing"):
        summary, _ = run_against_fake(config, ScriptedEmulator(), tmp_path)

    assert summary.metrics.kept_up is False
    assert summary.late_sends == 5
    assert "replay is behind schedule: 5 of the last 5 sends" in caplog.text


def test_summary_counts_rows(tmp_path: Path) -> None:
    summary, _ = run_against_fake({"speedup": SPEEDUP}, ScriptedEmulator(), tmp_path)
    metrics = summary.metrics

    assert metrics.requests == 5
    assert metrics.measured == 5
    assert metrics.measured_ok == 5
    assert metrics.ttft_ms_p50 == 100.0
    assert metrics.tpot_ms_p99 == 20.0
    assert metrics.send_lag_ms_max is not None and metrics.send_lag_ms_max >= 0.0
    assert metrics.kept_up is True


def test_kill_9_leaves_flushed_rows(tmp_path: Path) -> None:
    # Three requests finish at once; the fourth is due a minute later.
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0, 0.0, 0.0, 6e4])
    output_path = tmp_path / "out.parquet"
    parts = parts_dir_for(output_path) / "*.parquet"

    with serve_fake_emulator_in_thread(ScriptedEmulator()) as target:
        replay_process = subprocess.Popen(
            [sys.executable, "-c", CLI_SCRIPT, "replay", str(trace_path),
             "--target", target, "-o", str(output_path)],
            cwd=REPO_ROOT, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_until(lambda: count_flushed(parts) == 3, timeout_s=30.0)
        finally:
            os.kill(replay_process.pid, signal.SIGKILL)
            replay_process.wait(timeout=10)

    assert replay_process.returncode == -signal.SIGKILL
    assert not output_path.exists()
    connection = duckdb.connect()
    rows = connection.execute(
        "SELECT request_id, status, ttft_ms FROM read_parquet($path) ORDER BY 1",
        {"path": str(parts)},
    ).fetchall()
    connection.close()
    assert rows == [("r0", "ok", 100.0), ("r1", "ok", 100.0), ("r2", "ok", 100.0)]


def count_flushed(pattern: Path) -> int:
    if not any(pattern.parent.glob(pattern.name)):
        return 0
    connection = duckdb.connect()
    try:
        row = connection.execute(
            "SELECT count(*) FROM read_parquet($path)", {"path": str(pattern)}
        ).fetchone()
    finally:
        connection.close()
    return 0 if row is None else int(row[0])


def test_ctrl_c_once_lets_in_flight_finish(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0, 0.0, 60_000.0])
    output_path = tmp_path / "out.parquet"
    slow = StreamScript(chunks=((10.0,),), pause_s=1.0)
    servicer = ScriptedEmulator(default=slow)

    with serve_fake_emulator_in_thread(servicer) as target:
        replay_process = subprocess.Popen(
            [sys.executable, "-c", CLI_SCRIPT, "replay", str(trace_path),
             "--target", target, "-o", str(output_path)],
            cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_until(lambda: len(servicer.requests) == 2, timeout_s=20.0)
            replay_process.send_signal(signal.SIGINT)
            _, stderr = replay_process.communicate(timeout=20)
        finally:
            replay_process.kill()

    assert replay_process.returncode == replay_cli.EXIT_INTERRUPTED
    assert "replay interrupted: sent 2 requests, 0 failed" in stderr
    table = pq.read_table(output_path)
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1"]
    assert table.column("status").to_pylist() == ["ok", "ok"]


def test_cli_parses_window_and_slo_options() -> None:
    args = parse_replay_args(
        ["replay", "t.parquet", "--target", "127.0.0.1:9", "-o", "out.parquet",
         "--start-s", "30", "--warmup-s", "5", "--cooldown-s", "6",
         "--max-concurrency", "64", "--slo", "ttft_ms=2000", "--slo", "tpot_ms=50",
         "--lag-warning-ms", "2.5", "--cancel-grace-s", "1", "--timer-handoff-ms",
         "0", "--json"]
    )  # fmt: skip

    assert args.start_s == 30.0
    assert args.warmup_s == 5.0
    assert args.cooldown_s == 6.0
    assert args.max_concurrency == 64
    assert args.slo == ["ttft_ms=2000", "tpot_ms=50"]
    assert args.lag_warning_ms == 2.5
    assert args.cancel_grace_s == 1.0
    assert args.timer_handoff_ms == 0.0
    assert args.json is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--slo", "ttft=5"], "SLO metric 'ttft' in 'ttft=5' is unknown"),
        (["--slo", "ttft_ms=5", "--slo", "ttft_ms=6"], "ttft_ms is given twice"),
        (["--max-concurrency", "0"], "max_concurrency must be at least 1"),
        (["--start-s", "-1"], "start_s must be a number >= 0"),
        (["--timer-handoff-ms", "5000"], "timer_handoff_s must be between 0 and 1"),
        (["--tls-cert", "c.pem"], "--tls-cert was given without --tls-key. Give both"),
        (["--tls-ca", "absent.pem"], "--tls-ca absent.pem: PEM file not found"),
    ],
)
def test_cli_rejects_bad_replay_option(
    tmp_path: Path, options: list[str], message: str
) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0])
    args = parse_replay_args(
        ["replay", str(trace_path), "--target", "127.0.0.1:9",
         "-o", str(tmp_path / "out.parquet"), *options]
    )  # fmt: skip

    with pytest.raises(ReplayError, match=message):
        args.run(args)


def test_cli_json_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    output_path = tmp_path / "out.parquet"
    with serve_fake_emulator_in_thread(ScriptedEmulator()) as target:
        args = parse_replay_args(
            ["replay", str(trace_path), "--target", target, "-o", str(output_path),
             "--speedup", "10", "--slo", "ttft_ms=100", "--json"]
        )  # fmt: skip
        status = args.run(args)

    printed = json.loads(capsys.readouterr().out)
    assert status == 0
    assert printed["requests"] == 5
    assert printed["measured_good"] == 5
    assert printed["slo_attainment"] == 1.0
    assert printed["slos"] == ["ttft_ms<=100"]


def test_cli_replays_over_mutual_tls(tmp_path: Path) -> None:
    """`cmx replay` with its TLS options against `cmx serve` with mutual TLS."""
    certificates = make_certificates(tmp_path)
    trace_path = write_test_trace(
        tmp_path / "trace.parquet", ARRIVALS_MS, prefix_hashes=False
    )
    output_path = tmp_path / "out.parquet"
    server_tls = [
        "--tls-cert", str(certificates.server_cert),
        "--tls-key", str(certificates.server_key),
        "--tls-client-ca", str(certificates.ca_cert),
    ]  # fmt: skip
    with start_server(tmp_path / "server.log", 50.0, server_tls) as target:
        args = parse_replay_args(
            ["replay", str(trace_path), "--target", target, "-o", str(output_path),
             "--speedup", "10", "--tls-ca", str(certificates.ca_cert),
             "--tls-cert", str(certificates.client_cert),
             "--tls-key", str(certificates.client_key)]
        )  # fmt: skip
        status = args.run(args)

    table = pq.read_table(output_path)
    assert status == 0
    assert table.column("status").to_pylist() == ["ok"] * len(ARRIVALS_MS)
    run = json.loads(table.schema.metadata[b"cmx.results.run_config"])
    assert run["tls"] == {
        "root_ca": str(certificates.ca_cert),
        "client_cert": str(certificates.client_cert),
        "server_name": None,
    }
    # The server's Control service replied over the same mutual TLS channel.
    assert run["server_time_scale"] == 50.0
    server = json.loads(table.schema.metadata[b"cmx.results.server_config"])
    assert server["hardwareName"] == "CloudMatrix384"
    assert server["modelName"] == "DeepSeek-R1"
    assert server["timeScale"] == 50.0
    assert server["deployment"]["prefill_instances"] == 6
    assert server["deployment"]["decode_instances"] == 1
