"""The commands the Docker image and compose file run are valid commands.

No Docker engine runs here, so the files are parsed, and every `cmx` command
in them is checked with the `cmx` parser and every `locust` command with
Locust's own parser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cmx.cli import build_parser
from replay.locust_options import LoadMode, LocustRunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"

# Compose's `${NAME:-default}` substitution, taken at its default.
INTERPOLATION = re.compile(r"\$\{(\w+):-([^}]*)\}")

# Parses sets of Locust arguments, each with its LOCUST_* variables, with
# Locust's own parser (including the options the locustfile adds), and prints
# the options as JSON. It runs in a child process because importing Locust
# patches the standard library for gevent.
LOCUST_PARSE_SCRIPT = """
import json, os, sys
from locust import argument_parser
import replay.locust_user
plain = (str, int, float, bool, list, type(None))
parsed = []
for arguments, environment in json.loads(sys.stdin.read()):
    for name in [name for name in os.environ if name.startswith("LOCUST_")]:
        del os.environ[name]
    os.environ.update(environment)
    parser = argument_parser.get_parser(default_config_files=[])
    options = vars(parser.parse_args(arguments))
    parsed.append({k: v for k, v in options.items() if isinstance(v, plain)})
print(json.dumps(parsed))
"""


def interpolate(value: Any) -> Any:
    """Replace every `${NAME:-default}` in `value` by its default."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda match: match.group(2), value)
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


def compose_services() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read compose")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services: dict[str, Any] = interpolate(compose["services"])
    return services


@pytest.fixture(scope="module")
def locust_options() -> dict[str, dict[str, Any]]:
    """Return Locust's parsed options of each Locust command in compose.

    Keys: "master", "master-web-ui" (with LOCUST_HEADLESS=false) and
    "worker".
    """
    services = compose_services()
    master = services["locust-master"]
    commands = {
        "master": [master["command"], master["environment"]],
        "master-web-ui": [master["command"], {"LOCUST_HEADLESS": "false"}],
        "worker": [services["locust-worker"]["command"], {}],
    }
    child_environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOCUST_", "CMX_"))
    }
    finished = subprocess.run(
        [sys.executable, "-c", LOCUST_PARSE_SCRIPT],
        input=json.dumps(list(commands.values())),
        cwd=REPO_ROOT,
        env=child_environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    parsed: list[dict[str, Any]] = json.loads(finished.stdout.splitlines()[-1])
    return dict(zip(commands, parsed, strict=True))


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
    services = compose_services()
    parser = build_parser()

    serve = parser.parse_args(services["emulator"]["command"])
    assert serve.host == "0.0.0.0"

    trace = parser.parse_args(services["trace"]["command"])
    assert trace.output == "/runs/trace.parquet"

    script = services["replay"]["command"][0]
    commands = [shlex.split(part) for part in script.split("&&")]
    assert [command[0] for command in commands] == ["cmx", "cmx"]
    for command in commands:
        parser.parse_args(command[1:])
    assert services["replay"]["profiles"] == ["replay"]
    assert services["replay"]["depends_on"]["emulator"]["condition"] == (
        "service_healthy"
    )


def test_locust_master_command_parses(
    locust_options: dict[str, dict[str, Any]],
) -> None:
    services = compose_services()
    assert services["locust-master"]["entrypoint"] == ["locust"]

    options = locust_options["master"]
    assert options["locustfile"] == "/app/replay/locustfile.py"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "WORKDIR /app\n" in dockerfile
    assert "COPY replay ./replay\n" in dockerfile
    assert (REPO_ROOT / "replay" / "locustfile.py").is_file()
    assert options["master"] is True
    assert options["headless"] is True
    assert options["expect_workers"] == 2
    assert options["num_users"] == 2
    assert options["spawn_rate"] == 2.0
    assert options["host"] == "emulator:50051"
    assert options["cmx_trace"] == services["trace"]["command"][-2]
    assert options["cmx_results"] == "/runs/locust"
    assert options["csv_prefix"] == "/runs/locust/stats"

    config = LocustRunConfig.from_options(
        argparse.Namespace(**options), options["host"]
    )
    assert config.mode is LoadMode.TRACE
    assert config.speedup == 4.0


def test_locust_master_web_ui_switch(
    locust_options: dict[str, dict[str, Any]],
) -> None:
    master = compose_services()["locust-master"]

    assert locust_options["master"]["headless"] is True
    assert locust_options["master-web-ui"]["headless"] is False
    assert master["ports"] == ["127.0.0.1:8089:8089"]


def test_locust_master_healthcheck_port(
    locust_options: dict[str, dict[str, Any]],
) -> None:
    master = compose_services()["locust-master"]
    options = locust_options["master"]

    test = master["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "healthcheck", "exec")
    assert f"('127.0.0.1', {options['master_bind_port']})" in test[3]
    assert master["depends_on"]["emulator"]["condition"] == "service_healthy"
    assert master["depends_on"]["trace"]["condition"] == (
        "service_completed_successfully"
    )


def test_locust_workers_join_master(
    locust_options: dict[str, dict[str, Any]],
) -> None:
    services = compose_services()
    worker = services["locust-worker"]
    master_options = locust_options["master"]

    options = locust_options["worker"]
    assert worker["entrypoint"] == ["locust"]
    assert options["locustfile"] == master_options["locustfile"]
    assert options["worker"] is True
    assert options["master_host"] == "locust-master"
    assert options["master_port"] == master_options["master_bind_port"]
    assert int(worker["deploy"]["replicas"]) == master_options["expect_workers"]
    assert worker["depends_on"]["locust-master"]["condition"] == "service_healthy"
    # Every Locust process reads the trace and writes results in /runs.
    for name in ("trace", "locust-master", "locust-worker"):
        assert services[name]["volumes"] == ["../runs:/runs"]
