"""TLS and mutual TLS on the emulator, with certificates made in the test."""

from __future__ import annotations

import asyncio
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
    with pytest.raises(ConfigError, match=r"cannot read TLS file .*k\.pem"):
        tls.credentials()


def test_health_command_over_tls(
    certificates: CertificateFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    from cmx.cli import main as cmx_main

    statuses: list[int] = []

    async def main() -> None:
        options = ServerOptions(port=0, tls=server_tls(certificates, False))
        running = await start_emulator(default_profiles(), options)
        target = f"127.0.0.1:{running.port}"
        try:
            for extra in ([], ["--tls-ca", str(certificates.ca_cert)]):
                command = ["health", "--target", target, *extra]
                statuses.append(await asyncio.to_thread(cmx_main, command))
        finally:
            await running.shutdown(0)

    asyncio.run(main())
    output = capsys.readouterr().out.splitlines()
    assert statuses == [1, 0]
    assert output[1].endswith("cmx.v1.Emulator: SERVING")
