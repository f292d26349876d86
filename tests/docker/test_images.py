"""The commands the Docker image and compose file run are valid `cmx` commands.

No Docker engine runs here, so the files are parsed and every `cmx` command in
them is checked with the real argument parser.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from cmx.cli import build_parser

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def dockerfile_instruction(name: str) -> list[str]:
    """Return the exec-form arguments of the Dockerfile's last `name` line."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert lines, f"Dockerfile has no {name} instruction"
    exec_form = re.search(r"\[.*\]", lines[-1])
    assert exec_form is not None, f"{name} is not in exec form: {lines[-1]}"
    arguments: list[str] = json.loads(exec_form.group(0))
    return arguments


def test_default_command_serves_on_all_interfaces() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["cmx"]
    args = build_parser().parse_args(dockerfile_instruction("CMD"))
    assert args.run.__name__ == "_run_serve"
    assert args.host == "0.0.0.0"
    assert args.port == 50051


def test_healthcheck_runs_cmx_health() -> None:
    command = dockerfile_instruction("HEALTHCHECK --interval=10s")
    assert command[:3] == ["python", "-m", "cmx"]
    args = build_parser().parse_args(command[3:])
    assert args.run.__name__ == "_run_health"
    assert args.target == "127.0.0.1:50051"


def test_dockerfile_copies_every_package() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    for folder in ("proto", "cmx", "emulator", "traces", "replay"):
        assert f"COPY {folder} ./{folder}" in text


def test_compose_commands_parse() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    parser = build_parser()

    serve = parser.parse_args(services["emulator"]["command"])
    assert serve.host == "0.0.0.0"

    script = services["replay"]["command"][0]
    commands = [shlex.split(part) for part in script.split("&&")]
    assert [command[0] for command in commands] == ["cmx", "cmx", "cmx"]
    for command in commands:
        parser.parse_args(command[1:])
    assert services["replay"]["depends_on"]["emulator"]["condition"] == (
        "service_healthy"
    )
