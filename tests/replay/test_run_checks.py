"""Tests of the checks around a replay run: before it starts and in its summary.

The checks: an output that is the trace, an empty window, the summary of
failed requests and the exit status, and a server time scale that differs
from the speed-up. The reasons given for a failed connection are tested
against `cmx serve` with TLS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from cmx.demo import start_server
from replay.client import TlsConfig
from replay.errors import ReplayError
from replay.runner import ReplayConfig, replay
from tests.certificates import CertificateFiles, make_certificates
from tests.replay.fake_emulator import (
    FakeControl,
    ScriptedEmulator,
    StreamScript,
    serve_fake_emulator_in_thread,
)
from tests.replay.test_runner import (
    ARRIVALS_MS,
    SPEEDUP,
    parse_replay_args,
    run_against_fake,
    write_test_trace,
)


def test_output_that_is_trace_is_rejected(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    before = trace_path.read_bytes()
    args = parse_replay_args(
        ["replay", str(trace_path), "--target", "127.0.0.1:9", "-o", str(trace_path)]
    )

    with pytest.raises(ReplayError) as raised:
        args.run(args)

    assert str(raised.value) == (
        f"output {trace_path} and trace {trace_path} are the same file, so the "
        "results would replace the trace; choose another -o"
    )
    assert trace_path.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trace.parquet"]


def test_output_linked_to_trace_is_rejected(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    link = tmp_path / "link.parquet"
    os.symlink(trace_path, link)

    with pytest.raises(ReplayError, match="are the same file"):
        ReplayConfig(trace_path=trace_path, target="127.0.0.1:9", output_path=link)


def test_empty_window_keeps_earlier_results(tmp_path: Path) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    output_path = tmp_path / "out.parquet"
    output_path.write_bytes(b"earlier results")
    servicer = ScriptedEmulator()

    with serve_fake_emulator_in_thread(servicer) as target:
        args = parse_replay_args(
            ["replay", str(trace_path), "--target", target, "-o", str(output_path),
             "--start-s", "999999"]
        )  # fmt: skip
        with pytest.raises(ReplayError) as raised:
            args.run(args)

    # Arrivals 1000 to 1600 ms: they span 0.6 s from the first.
    assert str(raised.value) == (
        "the window from 999,999 s to the end of the trace after the first "
        f"arrival contains no request: the 5 requests of {trace_path} arrive "
        "from 0 to 0.6 s after the first (trace time); choose --start-s and "
        "--duration-s within that span"
    )
    assert servicer.requests == []
    assert output_path.read_bytes() == b"earlier results"
    assert not (tmp_path / "out.parquet.parts").exists()


def test_duration_help_says_end_excluded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_replay_args(["replay", "--help"])

    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "--duration-s S send only requests that arrive less than S seconds after "
        "the window start: the window includes its start and excludes its end"
    ) in help_text


def test_failed_requests_summary_and_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_path = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    output_path = tmp_path / "out.parquet"
    shutting_down = StreamScript(
        chunks=(),
        abort_code=grpc.StatusCode.UNAVAILABLE,
        abort_details="the server is shutting down",
    )
    full = StreamScript(
        chunks=(), abort_code=grpc.StatusCode.RESOURCE_EXHAUSTED, abort_details="full"
    )
    scripts = {"r0": shutting_down, "r2": shutting_down, "r4": full}
    servicer = ScriptedEmulator(scripts=scripts)

    with serve_fake_emulator_in_thread(servicer) as target:
        args = parse_replay_args(
            ["replay", str(trace_path), "--target", target, "-o", str(output_path),
             "--speedup", "10", "--json"]
        )  # fmt: skip
        status = args.run(args)

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    printed = json.loads(captured.out)
    assert status == 0
    assert lines[0] == (
        f"replay done: sent 5 requests, 3 failed; wrote 5 rows to {output_path}"
    )
    assert lines[1:5] == [
        "  statuses: ok 2, UNAVAILABLE 2, RESOURCE_EXHAUSTED 1",
        "    UNAVAILABLE, most common error (2 of 2): the server is shutting down",
        "    RESOURCE_EXHAUSTED, most common error (1 of 1): full",
        "  WARNING: 3 of 5 requests failed; throughput and latency count only ok "
        "requests, and the status and error columns of the results say why each "
        "one failed",
    ]
    assert printed["failed"] == 3
    assert printed["cancelled"] == 0
    assert [entry["status"] for entry in printed["statuses"]] == [
        "ok",
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    ]


TIME_SCALE_WARNING = (
    "the server's time scale is 50 but the speed-up is 10: requests arrive 10 "
    "times faster than in the trace while emulated time runs 50 times faster "
    "than the wall clock, so the emulator serves 0.2 times the trace's load and "
    "its latencies and rates are those of that load. To replay the trace's own "
    "load, pass --speedup 50 or set the server's time scale to 10 (cmx serve "
    "--time-scale, or Control/SetTimeScale)"
)


def test_time_scale_mismatch_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="replay.runner"):
        run_against_fake(
            {"speedup": SPEEDUP},
            ScriptedEmulator(),
            tmp_path,
            control=FakeControl(time_scale=50.0),
        )

    messages = [record.getMessage() for record in caplog.records]
    run_config = json.loads(
        pq.read_schema(tmp_path / "results.parquet").metadata[b"cmx.results.run_config"]
    )
    assert messages == [TIME_SCALE_WARNING]
    assert run_config["server_time_scale"] == 50.0


def test_matching_time_scale_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="replay.runner"):
        run_against_fake(
            {"speedup": SPEEDUP},
            ScriptedEmulator(),
            tmp_path,
            control=FakeControl(time_scale=SPEEDUP),
        )

    run_config = json.loads(
        pq.read_schema(tmp_path / "results.parquet").metadata[b"cmx.results.run_config"]
    )
    assert caplog.records == []
    assert run_config["server_time_scale"] == SPEEDUP


def test_time_scale_unknown_without_control(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="replay.runner"):
        run_against_fake({"speedup": SPEEDUP}, ScriptedEmulator(), tmp_path)

    run_config = json.loads(
        pq.read_schema(tmp_path / "results.parquet").metadata[b"cmx.results.run_config"]
    )
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    server_config = json.loads(
        pq.read_schema(tmp_path / "results.parquet").metadata[
            b"cmx.results.server_config"
        ]
    )
    assert run_config["server_time_scale"] is None
    assert server_config is None
    assert "cannot read the target's configuration: UNIMPLEMENTED" in " ".join(debug)
    assert warnings == []


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def tls_target(
    tmp_path_factory: pytest.TempPathFactory, certificates: CertificateFiles
) -> Iterator[str]:
    """`cmx serve` with TLS, without client certificates, on a loopback port."""
    server_tls = [
        "--tls-cert", str(certificates.server_cert),
        "--tls-key", str(certificates.server_key),
    ]  # fmt: skip
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with start_server(log_path, 10.0, server_tls) as target:
        yield target


def connection_error(tmp_path: Path, target: str, tls: TlsConfig | None) -> str:
    """Replay one request against `target`; return the connection error."""
    trace_path = write_test_trace(tmp_path / "trace.parquet", [0.0])
    config = ReplayConfig(
        trace_path=trace_path,
        target=target,
        output_path=tmp_path / "out.parquet",
        tls=tls,
        connect_timeout_s=0.5,
    )
    with pytest.raises(ReplayError) as raised:
        asyncio.run(replay(config))
    assert not config.output_path.exists()
    return str(raised.value)


def test_wrong_ca_names_tls_cause(
    tmp_path: Path, tls_target: str, certificates: CertificateFiles
) -> None:
    tls = TlsConfig(root_ca=certificates.other_ca_cert)
    message = connection_error(tmp_path, tls_target, tls)

    assert message.startswith(
        f"could not connect to {tls_target} within 0.5 s: Tls handshake failed "
    )
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert message.endswith(
        f". The TLS settings (--tls-ca {certificates.other_ca_cert}) may be the "
        "cause: check that the server serves TLS with a certificate signed by "
        "the trusted CA for that name, and, if it requires client certificates, "
        "that it trusts the CA of --tls-cert"
    )
    assert "check that the emulator is running" not in message


def test_wrong_server_name_names_option(
    tmp_path: Path, tls_target: str, certificates: CertificateFiles
) -> None:
    tls = TlsConfig(root_ca=certificates.ca_cert, server_name="example.invalid")
    message = connection_error(tmp_path, tls_target, tls)

    assert "Hostname Verification Check failed" in message
    assert (
        f"The TLS settings (--tls-ca {certificates.ca_cert}, --tls-server-name "
        "example.invalid) may be the cause"
    ) in message


def test_plaintext_against_tls_server(tmp_path: Path, tls_target: str) -> None:
    message = connection_error(tmp_path, tls_target, None)

    assert message == (
        f"could not connect to {tls_target} within 0.5 s: Socket closed. Check "
        "that the emulator is running and listening at that address, and "
        "connect with --tls-ca if it serves TLS"
    )


def test_tls_against_plaintext_server(
    tmp_path: Path, certificates: CertificateFiles
) -> None:
    tls = TlsConfig(root_ca=certificates.ca_cert)
    with start_server(tmp_path / "server.log", 10.0) as target:
        message = connection_error(tmp_path, target, tls)

    assert message.startswith(
        f"could not connect to {target} within 0.5 s: Tls handshake failed "
    )
    assert "WRONG_VERSION_NUMBER" in message
    assert f"The TLS settings (--tls-ca {certificates.ca_cert}) may be" in message
