"""Bind errors of the emulator's listeners, named by listener and option."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from cmx.cli import main
from emulator import binding
from emulator.binding import BindError, Listener, bind_error, bind_problem
from emulator.profiles import default_profiles
from emulator.server import ServerOptions, start_emulator

_NOT_LOCAL = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")


def test_bind_problem_on_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        problem = bind_problem("127.0.0.1", busy.getsockname()[1])
    assert problem is not None
    assert problem.errno == errno.EADDRINUSE


def test_bind_problem_on_free_port() -> None:
    assert bind_problem("127.0.0.1", 0) is None


def test_bind_error_blames_port_when_busy() -> None:
    busy = OSError(errno.EADDRINUSE, "Address already in use")
    error = bind_error(Listener.CONTROL, "127.0.0.1", 5000, busy)
    assert error.host_at_fault is False
    assert error.address == "127.0.0.1:5000"
    assert str(error) == (
        "cannot serve control service on 127.0.0.1:5000: Address already in use"
    )


def test_bind_error_blames_host_not_local() -> None:
    error = bind_error(Listener.EMULATOR, "::1", 0, _NOT_LOCAL)
    assert error.host_at_fault is True
    assert str(error) == "cannot serve gRPC on [::1]:0: Cannot assign requested address"


def test_bind_error_blames_unresolved_host() -> None:
    unresolved = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    error = bind_error(Listener.METRICS, "nohost", 9100, unresolved)
    assert error.host_at_fault is True
    assert str(error) == (
        "cannot serve Prometheus metrics on nohost:9100: cannot resolve nohost: "
        "Name or service not known"
    )


def test_serve_names_host_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stands in for a host that is not an address of this machine, without
    # binding one.
    monkeypatch.setattr(binding, "bind_problem", lambda host, port: _NOT_LOCAL)
    assert main(["serve", "--host", "127.0.0.9", "--port", "7000"]) == 2
    assert capsys.readouterr().err == (
        "cmx: error: --host 127.0.0.9: cannot serve gRPC on 127.0.0.9:7000: "
        "Cannot assign requested address\n"
    )


def test_start_with_busy_metrics_port_raises() -> None:
    async def start(port: int) -> None:
        options = ServerOptions(port=0, metrics_port=port)
        await start_emulator(default_profiles(), options)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BindError) as caught:
            asyncio.run(start(port))
    assert caught.value.listener is Listener.METRICS
    assert caught.value.address == f"127.0.0.1:{port}"
    assert caught.value.reason == "Address already in use"
