"""Locust runs against a real emulator on loopback, each in child processes.

Locust is never imported here: importing it monkey-patches this process for
gevent. Every run is bounded by Locust's --run-time and by a timeout on each
child process.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmx.cli import main
from cmx.demo import start_server
from tests.certificates import make_certificates
from traces.schema import read_trace, write_trace

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "replay" / "locustfile.py"
MASTER_PORT = re.compile(r"master accepts workers on 127\.0\.0\.1:(\d+)")
RUN_TIMEOUT_S = 90.0

RESULTS_SQL = """
SELECT worker_index, request_id, status, output_tokens_received,
       arrival_ms, scheduled_send_ms
FROM read_parquet($pattern, hive_partitioning = true)
ORDER BY worker_index, scheduled_send_ms, request_id
"""


def locust_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *arguments]


@contextmanager
def child(command: Sequence[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` with its output in `log_path`; kill it if still running."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_log(
    log_path: Path, pattern: re.Pattern[str], process: subprocess.Popen[bytes]
) -> re.Match[str]:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        match = pattern.search(log_path.read_text(errors="replace"))
        if match:
            return match
        assert process.poll() is None, log_path.read_text(errors="replace")
        time.sleep(0.05)
    raise AssertionError(f"{pattern.pattern!r} not in {log_path}")


def result_rows(results_dir: Path) -> list[tuple[object, ...]]:
    pattern = str(results_dir / "*" / "*" / "*.parquet")
    cursor = duckdb.connect().cursor()
    return cursor.execute(RESULTS_SQL, {"pattern": pattern}).fetchall()


def csv_request_types(csv_prefix: Path) -> set[str]:
    with open(f"{csv_prefix}_stats.csv", newline="") as stats_file:
        return {row["Type"] for row in csv.DictReader(stats_file)}


def final_counts(json_prefix: Path) -> dict[str, tuple[int, int]]:
    """Return (requests, failures) per request type from Locust's --json-file.

    Locust rewrites its CSV stats once a second, so the CSV can miss the last
    second of a run. The JSON file is written at shutdown with the final
    figures.
    """
    counts: dict[str, tuple[int, int]] = {}
    for entry in json.loads(Path(f"{json_prefix}.json").read_text()):
        requests, failures = counts.get(entry["method"], (0, 0))
        counts[entry["method"]] = (
            requests + entry["num_requests"],
            failures + entry["num_failures"],
        )
    return counts


def assert_clean_logs(*log_paths: Path) -> None:
    for log_path in log_paths:
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, text
        assert "GreenletExit" not in text, text


def write_long_trace(path: Path, count: int) -> Path:
    """Write `count` requests 50 ms apart whose streams run for minutes."""
    table = pa.table(
        {
            "request_id": [f"long{index}" for index in range(count)],
            "arrival_ms": [index * 50.0 for index in range(count)],
            "input_tokens": [1000] * count,
            "output_tokens": [4000] * count,
            "prefix_block_hashes": [[] for _ in range(count)],
            "block_tokens": [0] * count,
            "session_id": [None] * count,
        }
    )
    write_trace(table, path)
    return path


def generated_trace(tmp_path: Path, requests: int) -> tuple[Path, list[str]]:
    trace = tmp_path / "trace.parquet"
    generate = ["trace", "gen", "-o", str(trace), "--requests", str(requests)]
    assert main([*generate, "--rate", "8", "--seed", "3"]) == 0
    request_ids: list[str] = read_trace(trace).column("request_id").to_pylist()
    return trace, request_ids


def master_arguments(target: str, trace: Path, results: Path) -> list[str]:
    return [
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        "0",
        "--headless",
        "--expect-workers",
        "2",
        "--users",
        "2",
        "--spawn-rate",
        "2",
        "--host",
        target,
        "--cmx-trace",
        str(trace),
        "--cmx-results",
        str(results),
    ]


def start_workers(
    stack: ExitStack,
    tmp_path: Path,
    master_log: Path,
    master: subprocess.Popen[bytes],
    count: int = 2,
) -> list[subprocess.Popen[bytes]]:
    port = wait_for_log(master_log, MASTER_PORT, master).group(1)
    worker_arguments = ["--worker", "--master-host", "127.0.0.1", "--master-port", port]
    return [
        stack.enter_context(
            child(locust_command(*worker_arguments), tmp_path / f"worker{index}.log")
        )
        for index in range(count)
    ]


def test_master_two_workers_send_trace_once(tmp_path: Path) -> None:
    trace, request_ids = generated_trace(tmp_path, 60)
    results = tmp_path / "results"
    master_log = tmp_path / "master.log"

    with ExitStack() as stack:
        target = stack.enter_context(start_server(tmp_path / "server.log", 20.0))
        master_command = locust_command(
            *master_arguments(target, trace, results),
            *["--run-time", "60s", "--cmx-speedup", "20"],
            *["--csv", str(tmp_path / "stats")],
            *["--json-file", str(tmp_path / "stats")],
        )
        master = stack.enter_context(child(master_command, master_log))
        workers = start_workers(stack, tmp_path, master_log, master)
        assert master.wait(timeout=RUN_TIMEOUT_S) == 0
        for worker in workers:
            assert worker.wait(timeout=RUN_TIMEOUT_S) == 0

    rows = result_rows(results)
    assert sorted(row[1] for row in rows) == sorted(request_ids)
    assert {row[2] for row in rows} == {"ok"}
    # Worker i sends rows i, i + 2, i + 4, ... of the trace, in trace order.
    for worker_index in (0, 1):
        sent = [row[1] for row in rows if row[0] == worker_index]
        assert sent == request_ids[worker_index::2]
    assert not list(results.glob("**/*.parts"))

    counts = final_counts(tmp_path / "stats")
    assert counts["grpc"] == (60, 0)
    assert counts["TTFT"] == (60, 0)
    assert counts["TPOT"][1] == 0
    assert csv_request_types(tmp_path / "stats") >= {"grpc", "TTFT", "TPOT"}
    assert_clean_logs(master_log, tmp_path / "worker0.log", tmp_path / "worker1.log")


def test_worker_sends_over_mutual_tls(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    trace, request_ids = generated_trace(tmp_path, 20)
    results = tmp_path / "results"
    master_log = tmp_path / "master.log"
    server_tls = [
        "--tls-cert", str(certificates.server_cert),
        "--tls-key", str(certificates.server_key),
        "--tls-client-ca", str(certificates.ca_cert),
    ]  # fmt: skip
    # Only the master gets the TLS options; the worker receives them with
    # the other --cmx-* options.
    client_tls = [
        "--cmx-tls-ca", str(certificates.ca_cert),
        "--cmx-tls-cert", str(certificates.client_cert),
        "--cmx-tls-key", str(certificates.client_key),
    ]  # fmt: skip

    with ExitStack() as stack:
        server_log = tmp_path / "server.log"
        target = stack.enter_context(start_server(server_log, 20.0, server_tls))
        arguments = master_arguments(target, trace, results)
        arguments[arguments.index("--expect-workers") + 1] = "1"
        master_command = locust_command(
            *arguments,
            *["--run-time", "60s", "--cmx-speedup", "20", *client_tls],
            *["--json-file", str(tmp_path / "stats")],
        )
        master = stack.enter_context(child(master_command, master_log))
        (worker,) = start_workers(stack, tmp_path, master_log, master, count=1)
        assert master.wait(timeout=RUN_TIMEOUT_S) == 0
        assert worker.wait(timeout=RUN_TIMEOUT_S) == 0

    rows = result_rows(results)
    assert sorted(row[1] for row in rows) == sorted(request_ids)
    assert [row[2] for row in rows] == ["ok"] * len(request_ids)
    assert final_counts(tmp_path / "stats")["grpc"] == (len(request_ids), 0)
    (results_file,) = results.glob("*/worker_index=0/results.parquet")
    metadata = pq.read_schema(results_file).metadata
    run_config = json.loads(metadata[b"cmx.results.run_config"])
    assert run_config["tls"] == {
        "root_ca": str(certificates.ca_cert),
        "client_cert": str(certificates.client_cert),
        "server_name": None,
    }
    assert_clean_logs(master_log, tmp_path / "worker0.log")


def test_sigterm_cancels_open_streams(tmp_path: Path) -> None:
    trace = write_long_trace(tmp_path / "long.parquet", 4)
    results = tmp_path / "results"
    log_path = tmp_path / "locust.log"

    with ExitStack() as stack:
        target = stack.enter_context(start_server(tmp_path / "server.log", 1.0))
        command = locust_command(
            *["--headless", "--run-time", "60s", "--host", target],
            *["--cmx-trace", str(trace), "--cmx-results", str(results)],
        )
        locust = stack.enter_context(child(command, log_path))
        wait_for_log(log_path, re.compile(r"worker 0 of 1 writes"), locust)
        # A local run starts at once; the last request is due 150 ms later.
        time.sleep(1.5)

        locust.send_signal(signal.SIGTERM)
        assert locust.wait(timeout=RUN_TIMEOUT_S) == 0

    rows = result_rows(results)
    assert [row[1] for row in rows] == [f"long{index}" for index in range(4)]
    assert {row[2] for row in rows} == {"CANCELLED"}
    assert all(int(str(row[3])) > 0 for row in rows)
    assert not list(results.glob("**/*.parts"))
    assert "Got SIGTERM" in log_path.read_text()
    assert_clean_logs(log_path)


@pytest.mark.slow
def test_worker_quit_and_stop_keep_rows(tmp_path: Path) -> None:
    trace = write_long_trace(tmp_path / "long.parquet", 6)
    results = tmp_path / "results"
    master_log = tmp_path / "master.log"

    with ExitStack() as stack:
        # At time scale 1 each 4,000-token stream lasts minutes, so every
        # stream is still open when the worker quits or the run stops.
        target = stack.enter_context(start_server(tmp_path / "server.log", 1.0))
        master_command = locust_command(
            *master_arguments(target, trace, results), "--run-time", "8s"
        )
        master = stack.enter_context(child(master_command, master_log))
        workers = start_workers(stack, tmp_path, master_log, master)
        for index, worker in enumerate(workers):
            log_path = tmp_path / f"worker{index}.log"
            wait_for_log(log_path, re.compile(r"worker \d of 2 writes"), worker)
        # The run starts 1 s after the workers open their results, and the
        # last request is due 250 ms later.
        time.sleep(2.5)

        workers[0].send_signal(signal.SIGTERM)
        assert workers[0].wait(timeout=RUN_TIMEOUT_S) == 0
        assert master.wait(timeout=RUN_TIMEOUT_S) == 0
        assert workers[1].wait(timeout=RUN_TIMEOUT_S) == 0

    rows = result_rows(results)
    assert sorted(row[1] for row in rows) == [f"long{index}" for index in range(6)]
    assert {row[2] for row in rows} == {"CANCELLED"}
    assert all(int(str(row[3])) > 0 for row in rows)
    assert not list(results.glob("**/*.parts"))
    assert "Got SIGTERM" in (tmp_path / "worker0.log").read_text()
    assert_clean_logs(master_log, tmp_path / "worker0.log", tmp_path / "worker1.log")


def test_failed_call_reported_as_failure(tmp_path: Path) -> None:
    # r1 has two 512-token prefix hashes for a 100-token prompt, which the
    # emulator rejects with INVALID_ARGUMENT.
    table = pa.table(
        {
            "request_id": ["r0", "r1", "r2"],
            "arrival_ms": [0.0, 10.0, 20.0],
            "input_tokens": [100, 100, 100],
            "output_tokens": [4, 4, 4],
            "prefix_block_hashes": [[], [1, 2], []],
            "block_tokens": [0, 512, 0],
            "session_id": [None, None, None],
        }
    )
    trace = tmp_path / "trace.parquet"
    write_trace(table, trace)
    results = tmp_path / "results"
    log_path = tmp_path / "locust.log"

    with start_server(tmp_path / "server.log", 20.0) as target:
        command = locust_command(
            *["--headless", "--run-time", "60s", "--host", target],
            *["--cmx-trace", str(trace), "--cmx-results", str(results)],
            *["--json-file", str(tmp_path / "stats")],
        )
        with child(command, log_path) as locust:
            # Locust's exit status when a request failed.
            assert locust.wait(timeout=RUN_TIMEOUT_S) == 1

    statuses = {row[1]: row[2] for row in result_rows(results)}
    assert statuses == {"r0": "ok", "r1": "INVALID_ARGUMENT", "r2": "ok"}
    counts = final_counts(tmp_path / "stats")
    assert counts["grpc"] == (3, 1)
    assert counts["TTFT"] == (2, 0)
    assert counts["TPOT"] == (2, 0)
    entries = json.loads((tmp_path / "stats.json").read_text())
    (call_entry,) = [entry for entry in entries if entry["method"] == "grpc"]
    # The failed call has no response time, so only the two ok calls count.
    assert call_entry["num_none_requests"] == 1
    assert sum(call_entry["response_times"].values()) == 2
    assert_clean_logs(log_path)


def test_users_mode_draws_from_trace(tmp_path: Path) -> None:
    trace, request_ids = generated_trace(tmp_path, 40)
    results = tmp_path / "results"
    log_path = tmp_path / "locust.log"

    with start_server(tmp_path / "server.log", 20.0) as target:
        command = locust_command(
            *["--headless", "--users", "2", "--spawn-rate", "2", "--run-time", "3s"],
            *["--host", target, "--cmx-trace", str(trace), "--cmx-mode", "users"],
            *["--cmx-results", str(results), "--json-file", str(tmp_path / "stats")],
        )
        with child(command, log_path) as locust:
            assert locust.wait(timeout=RUN_TIMEOUT_S) == 0

    rows = result_rows(results)
    assert len(rows) >= 2
    assert {row[2] for row in rows} <= {"ok", "CANCELLED"}
    assert len({row[1] for row in rows}) == len(rows)
    users = set()
    for worker_index, request_id, *_, arrival_ms, send_ms in rows:
        assert worker_index == 0
        source, _, suffix = str(request_id).partition("/")
        assert source in request_ids
        assert re.fullmatch(r"0\.[12]\.\d+", suffix)
        users.add(suffix.split(".")[1])
        assert arrival_ms == send_ms
    assert users == {"1", "2"}
    ok_calls = sum(row[2] == "ok" for row in rows)
    assert final_counts(tmp_path / "stats")["grpc"] == (ok_calls, 0)
    assert_clean_logs(log_path)


def test_cmx_locust_serves_and_runs(tmp_path: Path) -> None:
    trace, request_ids = generated_trace(tmp_path, 40)
    results = tmp_path / "results"

    command = ["locust", "--trace", str(trace), "--serve", "--speedup", "20"]
    command += ["--results", str(results), "--", "--headless", "--run-time", "60s"]
    assert main(command) == 0

    rows = result_rows(results)
    assert sorted(row[1] for row in rows) == sorted(request_ids)
    assert {row[2] for row in rows} == {"ok"}
    assert (results / "server.log").read_text().startswith("cmx serve: listening")


def test_missing_trace_exits_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    command = locust_command(
        "--headless", "--host", "127.0.0.1:9", "--cmx-trace", str(missing)
    )

    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        f"cmx: error: {missing}: trace file not found"
    )
    assert "Traceback" not in finished.stderr


def test_bad_target_exits_with_one_line(tmp_path: Path) -> None:
    trace, _ = generated_trace(tmp_path, 2)
    command = locust_command(
        "--headless", "--host", "localhost", "--cmx-trace", str(trace)
    )

    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert finished.returncode == 2
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith("cmx: error: target 'localhost' is not HOST:PORT")
    assert "Traceback" not in finished.stderr


def test_tls_cert_without_key_exits(tmp_path: Path) -> None:
    trace, _ = generated_trace(tmp_path, 2)
    cert = tmp_path / "cert.pem"
    cert.write_text("")
    command = locust_command(
        *["--headless", "--host", "127.0.0.1:9", "--cmx-trace", str(trace)],
        *["--cmx-tls-cert", str(cert)],
    )

    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        "cmx: error: --cmx-tls-cert was given without --cmx-tls-key. Give both "
        "(the client certificate and its private key) for mutual TLS, or neither"
    )
    assert "Traceback" not in finished.stderr


def test_worker_setup_error_ends_run(tmp_path: Path) -> None:
    trace, _ = generated_trace(tmp_path, 4)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    master_log = tmp_path / "master.log"

    with ExitStack() as stack:
        # The worker gets --cmx-results from the master and cannot create
        # its results folder inside a file.
        arguments = master_arguments("127.0.0.1:9", trace, not_a_folder / "results")
        arguments[arguments.index("--expect-workers") + 1] = "1"
        arguments += ["--run-time", "60s"]
        master = stack.enter_context(child(locust_command(*arguments), master_log))
        (worker,) = start_workers(stack, tmp_path, master_log, master, count=1)
        assert master.wait(timeout=RUN_TIMEOUT_S) == 2
        assert worker.wait(timeout=RUN_TIMEOUT_S) == 0

    worker_log = (tmp_path / "worker0.log").read_text()
    assert "cannot start this worker's part of the run" in worker_log
    assert re.search(r"stopping run \S+: worker \S+ failed: ", master_log.read_text())
    assert_clean_logs(master_log, tmp_path / "worker0.log")
