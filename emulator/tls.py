"""PEM files of a TLS identity, checked before gRPC is given them.

gRPC reads TLS files only when a port is added, and it reports a bad
certificate, a bad key or a key that belongs to another certificate as
"Failed to bind to address". `check_identity` and `check_ca_file` load the
same files with Python's `ssl` module first and raise a `TlsFileError` that
names the file and the problem with it.

NOTE: Python's `ssl` module uses OpenSSL and gRPC uses BoringSSL. The tests
cover PEM certificates and unencrypted EC keys, which both read alike. A key
type that only one of them supports could pass this check and still fail
in gRPC, or the reverse.
"""

from __future__ import annotations

import enum
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from emulator.errors import ConfigError

__all__ = [
    "TlsFileError",
    "TlsFiles",
    "TlsRole",
    "check_ca_file",
    "check_identity",
]

logger = logging.getLogger(__name__)


class TlsRole(enum.Enum):
    """Purpose of a PEM file, as named in error messages."""

    CERT_CHAIN = "certificate chain"
    PRIVATE_KEY = "private key"
    CA = "CA file"


class TlsFileError(ConfigError):
    """A TLS file that is missing, unreadable or contains the wrong content.

    `role` and `path` name the file and `problem` describes the fault, so
    that a command line can name its own option in place of the role.
    """

    def __init__(self, role: TlsRole, path: Path, problem: str) -> None:
        super().__init__(f"{role.value} {path}: {problem}")
        self.role = role
        self.path = path
        self.problem = problem


class _EncryptedKey(Exception):
    """Raised by the password callback: the key needs a passphrase."""


def check_identity(cert_chain: Path, private_key: Path) -> None:
    """Check that a certificate chain and its private key can serve TLS.

    Raises TlsFileError naming the file that is missing or unreadable, or
    that contains no PEM certificate or no usable PEM private key. It also
    names a key encrypted with a passphrase, since gRPC's server credentials
    take no passphrase, and a key that does not match the chain's first
    certificate.
    """
    check_ca_file(cert_chain, TlsRole.CERT_CHAIN)
    _check_readable(TlsRole.PRIVATE_KEY, private_key)

    def reject_passphrase() -> str:
        raise _EncryptedKey

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_chain, private_key, password=reject_passphrase)
    except _EncryptedKey:
        raise TlsFileError(
            TlsRole.PRIVATE_KEY,
            private_key,
            "the key is encrypted with a passphrase, which gRPC cannot read; "
            "give an unencrypted key",
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            problem = f"the key does not match the certificate in {cert_chain}"
        else:
            # The chain loaded as certificates above, so the key is the
            # file that OpenSSL could not read.
            problem = "not a PEM private key"
        raise TlsFileError(TlsRole.PRIVATE_KEY, private_key, problem) from None


def check_ca_file(path: Path, role: TlsRole = TlsRole.CA) -> None:
    """Check that `path` contains at least one PEM certificate.

    Raises TlsFileError, under `role`, when the file is missing or
    unreadable or contains no PEM certificate (a key, for example).
    """
    _check_readable(role, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise TlsFileError(role, path, "not a PEM certificate") from None
    if context.cert_store_stats()["x509"] == 0:  # only revocation lists
        raise TlsFileError(role, path, "not a PEM certificate")


def _check_readable(role: TlsRole, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise TlsFileError(role, path, "no such file") from None
    except IsADirectoryError:
        raise TlsFileError(role, path, "is a directory, not a PEM file") from None
    except OSError as error:
        raise TlsFileError(
            role, path, f"cannot read the file: {error.strerror}"
        ) from None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the server's TLS identity; a client CA turns on mutual TLS."""

    cert_chain: Path
    private_key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by `client_ca`."""
        return self.client_ca is not None

    def check(self) -> None:
        """Check every file; raises TlsFileError naming the first bad one."""
        check_identity(self.cert_chain, self.private_key)
        if self.client_ca is not None:
            check_ca_file(self.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Check and read the files; raises TlsFileError naming a bad one."""
        self.check()
        ca = _read_pem(TlsRole.CA, self.client_ca) if self.client_ca else None
        return grpc.ssl_server_credentials(
            [
                (
                    _read_pem(TlsRole.PRIVATE_KEY, self.private_key),
                    _read_pem(TlsRole.CERT_CHAIN, self.cert_chain),
                )
            ],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


def _read_pem(role: TlsRole, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(
            role, path, f"cannot read the file: {error.strerror}"
        ) from None
