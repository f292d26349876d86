"""The committed stubs in cmx/v1 must match proto/ (regenerate with `make proto`)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from cmx.v1 import emulator_pb2, emulator_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PROTO = "cmx/v1/emulator.proto"
STALE = "stubs in cmx/v1 are stale: run `make proto` and commit the result"


def compile_proto(out_dir: Path, *flags: str) -> None:
    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", *flags, PROTO]
    )
    assert status == 0, f"protoc failed on {PROTO}"


def test_descriptor_matches_proto(tmp_path: Path) -> None:
    descriptor_file = tmp_path / "emulator.pb"
    compile_proto(tmp_path, f"--descriptor_set_out={descriptor_file}")
    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_file.read_bytes())
    # protoc fills in json_name for descriptor sets; the Python stubs omit it.
    for message in fresh.file[0].message_type:
        for field in message.field:
            field.ClearField("json_name")

    committed = descriptor_pb2.FileDescriptorProto.FromString(
        emulator_pb2.DESCRIPTOR.serialized_pb
    )
    assert fresh.file[0] == committed, STALE


def test_grpc_stub_has_every_method() -> None:
    service = emulator_pb2.DESCRIPTOR.services_by_name["Emulator"]
    for method in service.methods:
        assert hasattr(emulator_pb2_grpc.EmulatorServicer, method.name), STALE


def test_generated_files_identical_with_same_tools(tmp_path: Path) -> None:
    committed = (ROOT / "cmx/v1/emulator_pb2_grpc.py").read_text()
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", committed)
    assert match is not None
    if version("grpcio-tools") != match.group(1):
        pytest.skip(
            f"grpcio-tools {version('grpcio-tools')} installed, stubs made with "
            f"{match.group(1)}; the descriptor comparison still runs"
        )
    compile_proto(
        tmp_path,
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
    )
    for name in ("emulator_pb2.py", "emulator_pb2_grpc.py", "emulator_pb2.pyi"):
        fresh = (tmp_path / "cmx/v1" / name).read_text()
        assert fresh == (ROOT / "cmx/v1" / name).read_text(), f"{name}: {STALE}"
