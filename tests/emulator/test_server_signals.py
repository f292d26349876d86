"""`cmx serve` as a process: banner, SIGTERM shutdown and start errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from cmx.v1 import control_pb2, control_pb2_grpc, emulator_pb2, emulator_pb2_grpc
from tests.certificates import make_certificates

_START_TIMEOUT_S = 30.0


def start_serve(log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cmx", "serve", "--port", "0", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for_lines(process: subprocess.Popen[bytes], log_path: Path, count: int) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        text = log_path.read_text()
        if text.count("\n") >= count:
            return text
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"cmx serve did not start: {log_path.read_text()}")


def test_sigterm_drains_then_ends_open_streams(tmp_path: Path) -> None:
    log_path = tmp_path / "serve.log"
    process = start_serve(
        log_path,
        "--time-scale",
        "1",
        "--grace-s",
        "0.5",
        "--control-port",
        "0",
        "--metrics-port",
        "0",
    )
    try:
        text = wait_for_lines(process, log_path, 3)
        target = re.search(r"listening on (\S+) \(time scale 1, plaintext\)", text)
        control = re.search(r"control service on (\S+)", text)
        metrics = re.search(r"Prometheus metrics on (http://\S+/metrics)", text)
        assert target is not None, text
        assert control is not None, text
        assert metrics is not None, text

        with grpc.insecure_channel(control.group(1)) as channel:
            config = control_pb2_grpc.ControlStub(channel).GetConfig(
                control_pb2.GetConfigRequest(), timeout=10
            )
        assert config.time_scale == 1.0
        with urllib.request.urlopen(metrics.group(1), timeout=10) as response:  # noqa: S310
            assert b"cmx_active_requests 0.0" in response.read()

        with grpc.insecure_channel(target.group(1)) as channel:
            stub = emulator_pb2_grpc.EmulatorStub(channel)
            call = stub.Generate(
                emulator_pb2.GenerateRequest(input_tokens=500, output_tokens=50_000),
                timeout=30,
            )
            tokens = 0
            code = grpc.StatusCode.OK
            details = ""
            try:
                for response in call:
                    tokens += len(response.chunk.token_ids)
                    if tokens and process.poll() is None and not details:
                        process.send_signal(signal.SIGTERM)
                        details = "signalled"
            except grpc.RpcError as error:
                code = error.code()  # type: ignore[attr-defined]
                details = error.details()  # type: ignore[attr-defined]
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == (
        "the server is shutting down and the stream did not finish within "
        "the 0.5 s grace period"
    )
    assert tokens > 0
    assert "cmx serve: stopped (1 streams ended after the grace period)" in (
        log_path.read_text()
    )


def run_serve_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `cmx serve` that is expected to fail at start; return its result."""
    command = [sys.executable, "-m", "cmx", "serve", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=_START_TIMEOUT_S
    )


def test_busy_metrics_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_serve_to_exit("--port", "0", "--metrics-port", str(port))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"cmx: error: --metrics-port {port}: cannot serve Prometheus metrics on "
        f"127.0.0.1:{port}: Address already in use\n"
    )


def test_busy_grpc_ports_are_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        main_port = run_serve_to_exit("--port", str(port))
        control_port = run_serve_to_exit("--port", "0", "--control-port", str(port))
    assert main_port.returncode == 2
    assert main_port.stderr == (
        f"cmx: error: --port {port}: cannot serve gRPC on 127.0.0.1:{port}: "
        "Address already in use\n"
    )
    assert control_port.returncode == 2
    assert control_port.stderr == (
        f"cmx: error: --control-port {port}: cannot serve control service on "
        f"127.0.0.1:{port}: Address already in use\n"
    )


def test_banner_names_mutual_tls(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    log_path = tmp_path / "serve.log"
    process = start_serve(
        log_path,
        "--tls-cert",
        str(certificates.server_cert),
        "--tls-key",
        str(certificates.server_key),
        "--tls-client-ca",
        str(certificates.ca_cert),
    )
    try:
        text = wait_for_lines(process, log_path, 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    banner = text.splitlines()[0]
    assert re.fullmatch(
        r"cmx serve: listening on 127\.0\.0\.1:\d+ \(time scale 1, mutual TLS\)",
        banner,
    ), banner
