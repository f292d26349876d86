"""TLS files checked before serving: each bad file named with its option."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cmx.cli import main
from emulator.tls import (
    TlsFileError,
    TlsFiles,
    TlsRole,
    check_ca_file,
    check_identity,
)
from tests.certificates import CertificateFiles, make_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def encrypted_key(
    certificates: CertificateFiles, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The server key, encrypted with a passphrase."""
    key = serialization.load_pem_private_key(
        certificates.server_key.read_bytes(), password=None
    )
    path = tmp_path_factory.mktemp("encrypted") / "encrypted_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


def serve_error(capfd: pytest.CaptureFixture[str], *options: str) -> str:
    """Run `cmx serve` with `options`; return its stderr after exit status 2."""
    assert main(["serve", "--port", "0", *options]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    return captured.err


def test_identity_of_server_passes(certificates: CertificateFiles) -> None:
    check_identity(certificates.server_cert, certificates.server_key)
    check_ca_file(certificates.ca_cert)
    TlsFiles(
        certificates.server_cert, certificates.server_key, certificates.ca_cert
    ).check()


def test_mismatched_key_names_key_and_certificate(
    certificates: CertificateFiles,
) -> None:
    with pytest.raises(TlsFileError) as caught:
        check_identity(certificates.server_cert, certificates.client_key)
    assert caught.value.role is TlsRole.PRIVATE_KEY
    assert caught.value.path == certificates.client_key
    assert str(caught.value) == (
        f"private key {certificates.client_key}: the key does not match the "
        f"certificate in {certificates.server_cert}"
    )


def test_serve_mismatched_key(
    certificates: CertificateFiles, capfd: pytest.CaptureFixture[str]
) -> None:
    cert, key = certificates.server_cert, certificates.client_key
    error = serve_error(capfd, "--tls-cert", str(cert), "--tls-key", str(key))
    assert error == (
        f"cmx: error: --tls-key {key}: the key does not match the certificate "
        f"in {cert}\n"
    )


def test_serve_key_as_certificate(
    certificates: CertificateFiles, capfd: pytest.CaptureFixture[str]
) -> None:
    key = certificates.server_key
    error = serve_error(capfd, "--tls-cert", str(key), "--tls-key", str(key))
    assert error == f"cmx: error: --tls-cert {key}: not a PEM certificate\n"


def test_serve_certificate_as_key(
    certificates: CertificateFiles, capfd: pytest.CaptureFixture[str]
) -> None:
    cert = certificates.server_cert
    error = serve_error(capfd, "--tls-cert", str(cert), "--tls-key", str(cert))
    assert error == f"cmx: error: --tls-key {cert}: not a PEM private key\n"


def test_serve_key_as_client_ca(
    certificates: CertificateFiles, capfd: pytest.CaptureFixture[str]
) -> None:
    error = serve_error(
        capfd,
        "--tls-cert",
        str(certificates.server_cert),
        "--tls-key",
        str(certificates.server_key),
        "--tls-client-ca",
        str(certificates.client_key),
    )
    assert error == (
        f"cmx: error: --tls-client-ca {certificates.client_key}: not a PEM "
        "certificate\n"
    )


def test_serve_missing_key(
    certificates: CertificateFiles,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "missing.pem"
    cert = certificates.server_cert
    error = serve_error(capfd, "--tls-cert", str(cert), "--tls-key", str(missing))
    assert error == f"cmx: error: --tls-key {missing}: no such file\n"


def test_serve_missing_certificate_named_first(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    error = serve_error(capfd, "--tls-cert", str(cert), "--tls-key", str(key))
    assert error == f"cmx: error: --tls-cert {cert}: no such file\n"


def test_serve_directory_as_certificate(
    certificates: CertificateFiles,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    key = certificates.server_key
    error = serve_error(capfd, "--tls-cert", str(tmp_path), "--tls-key", str(key))
    assert error == (
        f"cmx: error: --tls-cert {tmp_path}: is a directory, not a PEM file\n"
    )


def test_serve_empty_certificate(
    certificates: CertificateFiles,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    key = certificates.server_key
    error = serve_error(capfd, "--tls-cert", str(empty), "--tls-key", str(key))
    assert error == f"cmx: error: --tls-cert {empty}: not a PEM certificate\n"


def test_serve_encrypted_key(
    certificates: CertificateFiles,
    encrypted_key: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    cert = certificates.server_cert
    error = serve_error(capfd, "--tls-cert", str(cert), "--tls-key", str(encrypted_key))
    assert error == (
        f"cmx: error: --tls-key {encrypted_key}: the key is encrypted with a "
        "passphrase, which gRPC cannot read; give an unencrypted key\n"
    )


def test_credentials_check_files_first(certificates: CertificateFiles) -> None:
    tls = TlsFiles(certificates.server_cert, certificates.client_key)
    with pytest.raises(TlsFileError, match="the key does not match"):
        tls.credentials()
