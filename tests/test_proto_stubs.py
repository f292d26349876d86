"""The committed stubs in cmx/v1 must match proto/ (regenerate with `make proto`)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from cmx.v1 import control_pb2, control_pb2_grpc, emulator_pb2, emulator_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
PROTO = "cmx/v1/emulator.proto"
# Each proto file with its generated message and gRPC modules.
STUBS = {
    "cmx/v1/emulator.proto": (emulator_pb2, emulator_pb2_grpc),
    "cmx/v1/control.proto": (control_pb2, control_pb2_grpc),
}
STALE = "stubs in cmx/v1 are stale: run `make proto` and commit the result"


def compile_proto(out_dir: Path, *flags: str, proto: str = PROTO) -> None:
    include = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", *flags, proto]
    )
    assert status == 0, f"protoc failed on {proto}"


def clear_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:  # map entries are nested messages
        clear_json_names(nested)


@pytest.mark.parametrize("proto", sorted(STUBS))
def test_descriptor_matches_proto(tmp_path: Path, proto: str) -> None:
    messages_module = STUBS[proto][0]
    descriptor_file = tmp_path / "stubs.pb"
    compile_proto(tmp_path, f"--descriptor_set_out={descriptor_file}", proto=proto)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_file.read_bytes())
    # protoc fills in json_name for descriptor sets; the Python stubs omit it.
    for message in fresh.file[0].message_type:
        clear_json_names(message)

    committed = descriptor_pb2.FileDescriptorProto.FromString(
        messages_module.DESCRIPTOR.serialized_pb
    )
    assert fresh.file[0] == committed, STALE


@pytest.mark.parametrize(
    ("proto", "service_name"),
    [("cmx/v1/emulator.proto", "Emulator"), ("cmx/v1/control.proto", "Control")],
)
def test_grpc_stub_has_every_method(proto: str, service_name: str) -> None:
    messages_module, grpc_module = STUBS[proto]
    service = messages_module.DESCRIPTOR.services_by_name[service_name]
    servicer = getattr(grpc_module, f"{service_name}Servicer")
    for method in service.methods:
        assert hasattr(servicer, method.name), STALE


@pytest.mark.parametrize("proto", sorted(STUBS))
def test_generated_files_identical_with_same_tools(tmp_path: Path, proto: str) -> None:
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
        proto=proto,
    )
    stem = Path(proto).stem
    for name in (f"{stem}_pb2.py", f"{stem}_pb2_grpc.py", f"{stem}_pb2.pyi"):
        fresh = (tmp_path / "cmx/v1" / name).read_text()
        assert fresh == (ROOT / "cmx/v1" / name).read_text(), f"{name}: {STALE}"
