"""Binding the emulator's listening addresses, with errors that give the cause.

gRPC logs why it cannot bind an address and then raises only "Failed to
bind to address". `bind_grpc` binds a plain socket to the address first,
so that a busy port or an unknown host ends in a `BindError` carrying the
operating system's reason, before gRPC tries and logs.
"""

from __future__ import annotations

import enum
import errno
import logging
import socket

import grpc

__all__ = [
    "BindError",
    "Listener",
    "bind_error",
    "bind_grpc",
    "bind_problem",
    "format_address",
]

logger = logging.getLogger(__name__)


class Listener(enum.Enum):
    """A listening address of the emulator, as named in bind errors."""

    EMULATOR = "gRPC"
    CONTROL = "control service"
    METRICS = "Prometheus metrics"


class BindError(OSError):
    """An address that a listener of the emulator cannot bind.

    `listener` names the one that failed and `address` is "host:port". `reason` is the
    operating system's, such as "Address already in use". `host_at_fault`
    is True when the host cannot be resolved or is not an address of this
    machine, so that the port is not the value to change.
    """

    def __init__(
        self, listener: Listener, address: str, reason: str, host_at_fault: bool
    ) -> None:
        super().__init__(f"cannot serve {listener.value} on {address}: {reason}")
        self.listener = listener
        self.address = address
        self.reason = reason
        self.host_at_fault = host_at_fault


def format_address(host: str, port: int) -> str:
    """Return "host:port", with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(listener: Listener, host: str, port: int, error: OSError) -> BindError:
    """Turn the OSError of binding `host:port` into a BindError."""
    host_at_fault = isinstance(error, socket.gaierror) or (
        error.errno == errno.EADDRNOTAVAIL
    )
    reason = error.strerror or str(error)
    if isinstance(error, socket.gaierror):
        reason = f"cannot resolve {host}: {reason}"
    return BindError(listener, format_address(host, port), reason, host_at_fault)


def bind_problem(host: str, port: int) -> OSError | None:
    """Bind a socket to `host:port` and release it; return the error, if any.

    The socket sets SO_REUSEADDR as gRPC's listeners do, so a port whose
    only sockets are closed connections in TIME_WAIT does not count as busy.
    A free address means only that it was free a moment ago, because another
    process can still take it before the server binds.
    """
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return error
    family, kind, protocol, _, socket_address = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(socket_address)
        except OSError as error:
            return error
    return None


def bind_grpc(
    server: grpc.aio.Server,
    listener: Listener,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Add a port to a gRPC server; return the port bound.

    Raises BindError when the address cannot be bound.
    """
    problem = bind_problem(host, port)
    if problem is not None:
        raise bind_error(listener, host, port, problem)

    address = format_address(host, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        # Taken between the check and gRPC's bind, or refused for a reason
        # that only gRPC's log shows.
        problem = bind_problem(host, port)
        if problem is not None:
            raise bind_error(listener, host, port, problem)
        reason = "gRPC failed to bind it; see gRPC's log line above"
        raise BindError(listener, address, reason, host_at_fault=False)
    logger.debug("bound %s to %s", listener.value, format_address(host, bound))
    return int(bound)
