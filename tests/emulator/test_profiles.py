"""Deployment files and the profiles saved with every run."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from emulator.errors import ConfigError
from emulator.profiles import (
    DeploymentConfig,
    Precision,
    default_profiles,
    deployment_from_mapping,
    load_deployment,
    profiles_to_dict,
)


def test_bundled_deployment_file_is_the_default() -> None:
    bundled = resources.files("emulator").joinpath(
        "profiles", "cloudmatrix384_deployment.json"
    )
    with resources.as_file(bundled) as path:
        assert load_deployment(path) == DeploymentConfig()


def test_partial_deployment_file_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"
    path.write_text(
        json.dumps({"decode_instances": 2, "precision": "bf16", "tpot_slo_ms": 30})
    )
    deployment = load_deployment(path)
    assert deployment.decode_instances == 2
    assert deployment.precision is Precision.BF16
    assert deployment.tpot_slo_ms == 30.0
    assert deployment.prefill_instances == DeploymentConfig().prefill_instances


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"decode_instance": 2}, "unknown deployment fields \\['decode_instance'\\]"),
        ({"decode_instances": 1.5}, "decode_instances must be an integer, got 1.5"),
        ({"decode_instances": True}, "decode_instances must be an integer"),
        ({"precision": "fp8"}, "precision must be one of \\['bf16', 'int8'\\]"),
        ({"mtp_acceptance": "high"}, "mtp_acceptance must be a number"),
        ({"mtp_acceptance": 1.5}, "mtp_acceptance must be in \\[0, 1\\], got 1.5"),
        ({"micro_batches": 3}, "micro_batches must be 1 or 2, got 3"),
    ],
)
def test_bad_deployment_fields_are_named(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        deployment_from_mapping(fields, "test.json")


def test_deployment_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        load_deployment(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ConfigError, match="list.json must hold a JSON object"):
        load_deployment(listed)
    with pytest.raises(ConfigError, match="cannot read .*missing.json"):
        load_deployment(tmp_path / "missing.json")


def test_saved_profiles_load_back() -> None:
    saved = profiles_to_dict(default_profiles(decode_npus_per_instance=128))
    text = json.dumps(saved)
    deployment = deployment_from_mapping(json.loads(text)["deployment"])
    assert deployment == DeploymentConfig(decode_npus_per_instance=128)
    assert saved["hardware"]["name"] == "CloudMatrix384"
    assert saved["model"]["num_layers"] == 61
