"""TLS and mutual TLS on the emulator, with certificates made in the test."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest

from cmx.v1 import emulator_pb2, emulator_pb2_grpc
from emulator.profiles import default_profiles
from emulator.server import ServerOptions, TlsFiles, start_emulator
from tests.certificates import CertificateFiles, make_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def call_status(
    tls: TlsFiles,
    credentials: grpc.ChannelCredentials | None,
) -> tuple[grpc.StatusCode, int]:
    """Serve with `tls`, send one Generate call; return its status and tokens."""

    async def main() -> tuple[grpc.StatusCode, int]:
        options = ServerOptions(port=0, time_scale=50.0, tls=tls)
        running = await start_emulator(default_profiles(), options)
        target = f"127.0.0.1:{running.port}"
        channel = (
            grpc.aio.insecure_channel(target)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials)
        )
        tokens = 0
        try:
            stub = emulator_pb2_grpc.EmulatorStub(channel)
            request = emulator_pb2.GenerateRequest(input_tokens=100, output_tokens=4)
            async for response in stub.Generate(request, timeout=10):
                tokens += len(response.chunk.token_ids)
            return grpc.StatusCode.OK, tokens
        except grpc.aio.AioRpcError as error:
            return error.code(), tokens
        finally:
            await channel.close()
            await running.shutdown(0)

    return asyncio.run(main())


def server_tls(certificates: CertificateFiles, mutual: bool) -> TlsFiles:
    return TlsFiles(
        cert_chain=certificates.server_cert,
        private_key=certificates.server_key,
        client_ca=certificates.ca_cert if mutual else None,
    )


def test_tls_with_trusted_ca(certificates: CertificateFiles) -> None:
    credentials = grpc.ssl_channel_credentials(certificates.ca_cert.read_bytes())
    assert call_status(server_tls(certificates, False), credentials) == (
        grpc.StatusCode.OK,
        4,
    )


def test_tls_rejects_plaintext_client(certificates: CertificateFiles) -> None:
    code, tokens = call_status(server_tls(certificates, False), None)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert tokens == 0


def test_tls_rejects_untrusted_server(certificates: CertificateFiles) -> None:
    credentials = grpc.ssl_channel_credentials(certificates.other_ca_cert.read_bytes())
    code, _ = call_status(server_tls(certificates, False), credentials)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_needs_client_certificate(certificates: CertificateFiles) -> None:
    without = grpc.ssl_channel_credentials(certificates.ca_cert.read_bytes())
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca_cert.read_bytes(),
        private_key=certificates.client_key.read_bytes(),
        certificate_chain=certificates.client_cert.read_bytes(),
    )
    tls = server_tls(certificates, True)
    assert call_status(tls, without)[0] == grpc.StatusCode.UNAVAILABLE
    assert call_status(tls, with_cert) == (grpc.StatusCode.OK, 4)


def test_unreadable_tls_file_is_config_error(tmp_path: Path) -> None:
    from emulator.errors import ConfigError

    tls = TlsFiles(cert_chain=tmp_path / "missing.pem", private_key=tmp_path / "k.pem")
    with pytest.raises(ConfigError) as caught:
        tls.credentials()
    assert str(caught.value) == (
        f"certificate chain {tmp_path / 'missing.pem'}: no such file"
    )


def run_health(
    tls: TlsFiles, commands: list[list[str]], port: int | None = None
) -> tuple[list[int], str]:
    """Serve with `tls`; run `cmx health --target TARGET` plus each option list.

    Returns the exit statuses and the target. `port` set to a closed port
    sends the checks there instead of to the emulator.
    """
    from cmx.cli import main as cmx_main

    statuses: list[int] = []
    targets: list[str] = []

    async def main() -> None:
        running = await start_emulator(
            default_profiles(), ServerOptions(port=0, tls=tls)
        )
        target = f"127.0.0.1:{port if port is not None else running.port}"
        targets.append(target)
        try:
            for extra in commands:
                command = ["health", "--target", target, *extra]
                statuses.append(await asyncio.to_thread(cmx_main, command))
        finally:
            await running.shutdown(0)

    asyncio.run(main())
    return statuses, targets[0]


def test_health_command_over_tls(
    certificates: CertificateFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [[], ["--tls-ca", str(certificates.ca_cert)]]
    statuses, target = run_health(server_tls(certificates, False), commands)
    assert statuses == [1, 0]
    assert capsys.readouterr().out.splitlines() == [
        f"{target}: health check failed: UNAVAILABLE: failed to connect to all "
        f"addresses; last error: UNAVAILABLE: ipv4:{target}: Socket closed",
        "  the server closed the connection: if it serves TLS, connect with "
        "--tls-ca, and under mutual TLS also with --tls-cert and --tls-key",
        f"{target} cmx.v1.Emulator: SERVING",
    ]


def test_health_command_over_mutual_tls(
    certificates: CertificateFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = ["--tls-ca", str(certificates.ca_cert)]
    identity = [
        "--tls-cert",
        str(certificates.client_cert),
        "--tls-key",
        str(certificates.client_key),
    ]
    commands = [
        ca,
        [*ca, *identity],
        [*ca, *identity, "--tls-server-name", "localhost"],
        [*ca, *identity, "--tls-server-name", "wrong.example"],
    ]
    statuses, target = run_health(server_tls(certificates, True), commands)
    assert statuses == [1, 0, 0, 1]

    output = capsys.readouterr().out.splitlines()
    assert len(output) == 5
    assert output[0] == (
        f"{target}: health check failed: UNAVAILABLE: failed to connect to all "
        f"addresses; last error: UNAVAILABLE: ipv4:{target}: Socket closed"
    )
    assert output[1].startswith("  the server closed the connection")
    assert output[2] == f"{target} cmx.v1.Emulator: SERVING"
    assert output[3] == f"{target} cmx.v1.Emulator: SERVING"
    assert output[4] == (
        f"{target}: health check failed: UNAVAILABLE: failed to connect to all "
        f"addresses; last error: UNKNOWN: ipv4:{target}: Custom verification "
        "check failed with error: UNAUTHENTICATED: Hostname Verification Check "
        "failed."
    )


def test_health_names_untrusted_server(
    certificates: CertificateFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [["--tls-ca", str(certificates.other_ca_cert)]]
    statuses, target = run_health(server_tls(certificates, False), commands)
    assert statuses == [1]
    output = capsys.readouterr().out.splitlines()
    assert len(output) == 1
    # The rest of the line is BoringSSL's error text, which varies by version.
    assert output[0].startswith(
        f"{target}: health check failed: UNAVAILABLE: failed to connect to all "
        f"addresses; last error: UNKNOWN: ipv4:{target}: Tls handshake failed"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in output[0]


def test_health_names_refused_connection(
    certificates: CertificateFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    statuses, _ = run_health(server_tls(certificates, False), [[]], closed_port)
    assert statuses == [1]
    output = capsys.readouterr().out.splitlines()
    assert output == [
        f"127.0.0.1:{closed_port}: health check failed: UNAVAILABLE: failed to "
        "connect to all addresses; last error: UNKNOWN: "
        f"ipv4:127.0.0.1:{closed_port}: Failed to connect to remote host: "
        "Connection refused"
    ]


def test_health_tls_file_errors(
    certificates: CertificateFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cmx.cli import main as cmx_main

    target = ["health", "--target", "127.0.0.1:1"]
    missing = tmp_path / "missing.pem"
    cases = [
        (["--tls-ca", str(missing)], f"--tls-ca {missing}: no such file"),
        (
            ["--tls-ca", str(certificates.client_key)],
            f"--tls-ca {certificates.client_key}: not a PEM certificate",
        ),
        (
            ["--tls-cert", str(certificates.client_cert)],
            "--tls-cert and --tls-key must be given together for mutual TLS",
        ),
        (
            [
                "--tls-cert",
                str(certificates.client_cert),
                "--tls-key",
                str(certificates.server_key),
            ],
            f"--tls-key {certificates.server_key}: the key does not match the "
            f"certificate in {certificates.client_cert}",
        ),
    ]
    for options, message in cases:
        assert cmx_main([*target, *options]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"cmx: error: {message}\n"
        assert captured.out == ""
