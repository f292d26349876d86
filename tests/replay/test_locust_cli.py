"""Tests of `cmx locust`: the Locust command line it builds and its checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cmx.cli import build_parser, main
from replay.locust_cli import LOCUSTFILE, build_locust_command


def locust_command(*arguments: str) -> list[str]:
    args = build_parser().parse_args(["locust", *arguments])
    return build_locust_command(args, "127.0.0.1:50051")


def test_command_from_defaults() -> None:
    assert locust_command("--trace", "t.parquet", "--target", "h:1") == [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        "127.0.0.1:50051",
        "--cmx-trace",
        "t.parquet",
        "--cmx-mode",
        "trace",
        "--cmx-speedup",
        "1.0",
        "--cmx-results",
        "locust-results",
        "--web-host",
        "127.0.0.1",
        "--users",
        "1",
        "--spawn-rate",
        "1",
    ]


def test_locustfile_is_packaged() -> None:
    assert LOCUSTFILE.is_file()
    assert LOCUSTFILE.parent.name == "replay"


def test_workers_and_passed_arguments() -> None:
    command = locust_command(
        *["--trace", "t.parquet", "--serve", "--speedup", "2.5", "--workers", "3"],
        *["--", "--headless", "--run-time", "5m"],
    )

    tail = command[command.index("--cmx-speedup") :]
    assert tail == [
        "--cmx-speedup",
        "2.5",
        "--cmx-results",
        "locust-results",
        "--web-host",
        "127.0.0.1",
        "--processes",
        "3",
        "--master-bind-host",
        "127.0.0.1",
        "--users",
        "3",
        "--spawn-rate",
        "3",
        "--headless",
        "--run-time",
        "5m",
    ]


@pytest.mark.parametrize("users", [["-u", "8"], ["--users", "8"], ["--users=8"]])
def test_given_users_kept(users: list[str]) -> None:
    command = locust_command("--trace", "t", "--serve", "--workers", "2", "--", *users)

    assert command.count("--spawn-rate") == 0
    assert command[-len(users) :] == users


def test_given_bind_hosts_kept() -> None:
    command = locust_command(
        *["--trace", "t", "--serve", "--workers", "2", "--"],
        *["--web-host", "0.0.0.0", "--master-bind-host=0.0.0.0"],
    )

    assert command.count("--web-host") == 1
    assert command.count("127.0.0.1") == 0
    assert command[-3:] == ["--web-host", "0.0.0.0", "--master-bind-host=0.0.0.0"]


def test_users_mode_adds_no_users() -> None:
    command = locust_command("--trace", "t", "--serve", "--mode", "users")

    assert "--users" not in command
    assert command[command.index("--cmx-mode") + 1] == "users"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--serve", "--speedup", "0"], "--speedup must be a number > 0, not 0.0"),
        (["--serve", "--workers", "0"], "--workers must be at least 1, not 0"),
        (["--target", "h:1", "--time-scale", "2"], "--time-scale sets the time"),
        (["--serve", "--time-scale", "nan"], "--time-scale must be a number > 0"),
    ],
)
def test_bad_options_print_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    results = tmp_path / "results"
    command = ["locust", "--trace", "t", "--results", str(results), *arguments]

    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cmx: error: ")
    assert message in error
    assert "\n" not in error
    assert not results.exists()


def test_target_or_serve_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["locust", "--trace", "t"])

    assert raised.value.code == 2
    assert "one of the arguments --target --serve is required" in (
        capsys.readouterr().err
    )
