"""Tests of replay.locust_plan and replay.locust_options, without Locust.

Importing Locust monkey-patches the standard library for gevent, which would
change every later test in this process, so these tests use only the modules
that do not import it. Locust itself runs in test_locust_run.py, in child
processes.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import configargparse
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.client import TlsConfig
from replay.errors import ReplayError
from replay.locust_options import (
    DEFAULT_RESULTS_DIR,
    LoadMode,
    LocustRunConfig,
    add_arguments,
)
from replay.locust_plan import (
    RunPlan,
    ShapeSampler,
    ShardQueue,
    iter_shard,
    make_run_id,
    request_kind,
    worker_results_path,
)
from replay.schedule import ScheduledRequest
from traces.errors import TraceFormatError
from traces.schema import write_trace

# The first arrival is 500 ms, so send times must subtract it.
ARRIVALS_MS = [500.0, 600.0, 600.0, 750.0, 900.0, 1500.0, 2100.0]


def write_test_trace(path: Path, arrivals_ms: Sequence[float]) -> Path:
    count = len(arrivals_ms)
    table = pa.table(
        {
            "request_id": [f"r{index}" for index in range(count)],
            "arrival_ms": list(arrivals_ms),
            "input_tokens": [1000 + index for index in range(count)],
            "output_tokens": [8] * count,
            "prefix_block_hashes": [[index] for index in range(count)],
            "block_tokens": [512] * count,
            "session_id": [f"s{index % 2}" for index in range(count)],
        }
    )
    write_trace(table, path)
    return path


def make_config(trace: Path, **overrides: object) -> LocustRunConfig:
    settings: dict[str, object] = {
        "target": "127.0.0.1:50051",
        "trace_path": trace,
        "results_dir": trace.parent / "results",
        **overrides,
    }
    return LocustRunConfig(**settings)  # type: ignore[arg-type]


def shard_of(
    config: LocustRunConfig, index: int, count: int
) -> list[tuple[str, float]]:
    return [
        (scheduled.request.request_id, scheduled.scheduled_send_ms)
        for scheduled in iter_shard(config, index, count)
    ]


@pytest.mark.parametrize(
    ("input_tokens", "name"),
    [
        (1, "Generate prompt <=1K"),
        (1024, "Generate prompt <=1K"),
        (1025, "Generate prompt 1K-4K"),
        (4096, "Generate prompt 1K-4K"),
        (4097, "Generate prompt 4K-16K"),
        (16384, "Generate prompt 4K-16K"),
        (65536, "Generate prompt 16K-64K"),
        (65537, "Generate prompt >64K"),
        (131072, "Generate prompt >64K"),
    ],
)
def test_request_kind_classes(input_tokens: int, name: str) -> None:
    assert request_kind(input_tokens) == name


def test_shards_split_rows_by_index(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    config = make_config(trace, speedup=2.0)

    # (arrival - 500) / 2 for rows 0, 3, 6; 1, 4; and 2, 5.
    assert shard_of(config, 0, 3) == [("r0", 0.0), ("r3", 125.0), ("r6", 800.0)]
    assert shard_of(config, 1, 3) == [("r1", 50.0), ("r4", 200.0)]
    assert shard_of(config, 2, 3) == [("r2", 50.0), ("r5", 500.0)]


def test_shard_keeps_trace_fields(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    scheduled = list(iter_shard(make_config(trace), 1, 2))

    assert [item.arrival_ms for item in scheduled] == [600.0, 750.0, 1500.0]
    request = scheduled[1].request
    assert request.request_id == "r3"
    assert request.input_tokens == 1003
    assert request.output_tokens == 8
    assert list(request.prefix_block_hashes) == [3]
    assert request.block_tokens == 512
    assert request.session_id == "s1"


def test_limit_applies_before_sharding(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    config = make_config(trace, limit=5)

    assert [name for name, _ in shard_of(config, 0, 2)] == ["r0", "r2", "r4"]
    assert [name for name, _ in shard_of(config, 1, 2)] == ["r1", "r3"]


def test_duration_applies_before_sharding(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    # Rows less than 400 ms of trace time after the first: r0 to r3.
    config = make_config(trace, duration_s=0.4)

    assert [name for name, _ in shard_of(config, 0, 2)] == ["r0", "r2"]
    assert [name for name, _ in shard_of(config, 1, 2)] == ["r1", "r3"]


def test_unsorted_trace_names_row(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", [0.0, 300.0, 200.0])

    with pytest.raises(TraceFormatError) as raised:
        list(iter_shard(make_config(trace), 0, 1))
    message = str(raised.value)
    assert "row 3" in message
    assert "arrival_ms" in message


def test_shard_index_out_of_range(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)

    with pytest.raises(ValueError, match="worker_index 2 is not in 0..1"):
        next(iter_shard(make_config(trace), 2, 2))


@settings(max_examples=25, deadline=None)
@given(
    gaps_ms=st.lists(st.integers(min_value=0, max_value=1000), max_size=40),
    worker_count=st.integers(min_value=1, max_value=6),
)
def test_shards_partition_the_trace(gaps_ms: list[int], worker_count: int) -> None:
    arrivals_ms = list(np.cumsum(gaps_ms, dtype=float))
    with tempfile.TemporaryDirectory() as folder:
        trace = write_test_trace(Path(folder) / "trace.parquet", arrivals_ms)
        config = make_config(trace)
        shards = [
            [name for name, _ in shard_of(config, index, worker_count)]
            for index in range(worker_count)
        ]

    sent = [name for shard in shards for name in shard]
    assert sorted(sent) == sorted(f"r{index}" for index in range(len(gaps_ms)))
    assert len(sent) == len(set(sent))
    for shard in shards:
        assert shard == sorted(shard, key=lambda name: int(name[1:]))


def scheduled_request(name: str, send_ms: float) -> ScheduledRequest:
    from cmx.v1 import emulator_pb2

    request = emulator_pb2.GenerateRequest(request_id=name)
    return ScheduledRequest(
        request, arrival_ms=send_ms, scheduled_send_ms=send_ms, measured=True
    )


def test_queue_gives_back_in_send_order() -> None:
    requests = [scheduled_request(f"r{index}", index * 10.0) for index in range(4)]
    queue = ShardQueue(iter(requests))

    first = queue.take()
    second = queue.take()
    assert first is requests[0]
    assert second is requests[1]
    assert second is not None and first is not None
    queue.give_back(second)
    queue.give_back(first)
    assert queue.taken_count == 0

    taken = [queue.take() for _ in range(5)]
    assert [item.request.request_id if item else None for item in taken] == [
        "r0",
        "r1",
        "r2",
        "r3",
        None,
    ]
    assert queue.taken_count == 4


def test_sampler_is_seeded(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", ARRIVALS_MS)
    sampler = ShapeSampler(make_config(trace, mode=LoadMode.USERS))
    assert len(sampler) == 7

    def draws(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [sampler.draw(rng, f"0.1.{n}").request_id for n in range(20)]

    first = draws(3)
    assert first == draws(3)
    assert first != draws(4)
    for n, request_id in enumerate(first):
        source, _, suffix = request_id.partition("/")
        assert source in {f"r{index}" for index in range(7)}
        assert suffix == f"0.1.{n}"


def test_sampler_copies_shape(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", [0.0])
    sampler = ShapeSampler(make_config(trace, mode=LoadMode.USERS))

    request = sampler.draw(np.random.default_rng(0), "0.1.1")
    again = sampler.draw(np.random.default_rng(0), "0.1.2")
    assert request.request_id == "r0/0.1.1"
    assert again.request_id == "r0/0.1.2"
    assert request.input_tokens == 1000
    assert list(request.prefix_block_hashes) == [0]
    assert request.session_id == "s0"


def test_sampler_rejects_empty_selection(tmp_path: Path) -> None:
    trace = write_test_trace(tmp_path / "trace.parquet", [])

    with pytest.raises(ReplayError, match="has no requests"):
        ShapeSampler(make_config(trace, mode=LoadMode.USERS))


def test_plan_round_trips() -> None:
    plan = RunPlan("20250102T030405Z", 1700000000.5, {"b": 1, "a": 0})

    again = RunPlan.from_message(plan.to_message())
    assert again == plan
    assert again.worker_count == 2


def test_plan_rejects_bad_positions() -> None:
    with pytest.raises(ReplayError, match=r"positions \[0, 2\]"):
        RunPlan("run", 0.0, {"a": 0, "b": 2})


def test_plan_missing_names_master() -> None:
    with pytest.raises(ReplayError, match="no run plan received"):
        RunPlan.from_message(None)
    with pytest.raises(ReplayError, match="invalid run plan"):
        RunPlan.from_message({"run_id": "x"})


def test_run_id_unique_per_second() -> None:
    started_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    assert make_run_id(started_at) == "20250102T030405Z"
    assert make_run_id(started_at, "20250102T030404Z") == "20250102T030405Z"
    assert make_run_id(started_at, "20250102T030405Z") == "20250102T030405Z-2"
    assert make_run_id(started_at, "20250102T030405Z-2") == "20250102T030405Z-3"


def test_results_path_layout() -> None:
    path = worker_results_path(Path("out"), "20250102T030405Z", 3)

    expected = "out/run_id=20250102T030405Z/worker_index=3/results.parquet"
    assert path == Path(expected)


def options(**values: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "cmx_trace": "trace.parquet",
        "cmx_mode": "trace",
        "cmx_speedup": 1.0,
        "cmx_limit": None,
        "cmx_duration_s": None,
        "cmx_results": DEFAULT_RESULTS_DIR,
        "cmx_timeout_s": 600.0,
        "cmx_seed": 0,
        "cmx_tls": False,
        "cmx_tls_ca": None,
        "cmx_tls_cert": None,
        "cmx_tls_key": None,
        "cmx_tls_server_name": None,
    }
    return argparse.Namespace(**{**defaults, **values})


def test_options_from_web_ui_strings() -> None:
    web_form = options(
        cmx_mode="users",
        cmx_speedup="2.5",
        cmx_limit="",
        cmx_duration_s="30",
        cmx_results="",
        cmx_timeout_s="60",
        cmx_seed="3",
    )

    config = LocustRunConfig.from_options(web_form, "[::1]:7000")
    assert config.target == "[::1]:7000"
    assert config.trace_path == Path("trace.parquet")
    assert config.mode is LoadMode.USERS
    assert config.speedup == 2.5
    assert config.limit is None
    assert config.duration_s == 30.0
    assert config.results_dir == Path(DEFAULT_RESULTS_DIR)
    assert config.timeout_s == 60.0
    assert config.seed == 3


@pytest.mark.parametrize(
    ("values", "host", "message"),
    [
        ({}, None, "set Locust's --host"),
        ({}, "localhost", "not HOST:PORT"),
        ({"cmx_trace": ""}, "127.0.0.1:1", "set --cmx-trace"),
        ({"cmx_mode": "closed"}, "127.0.0.1:1", "one of: trace, users"),
        ({"cmx_speedup": "fast"}, "127.0.0.1:1", "--cmx-speedup must be a number"),
        ({"cmx_speedup": 0}, "127.0.0.1:1", "--cmx-speedup must be a number > 0"),
        ({"cmx_limit": "2.5"}, "127.0.0.1:1", "--cmx-limit must be a whole"),
        ({"cmx_limit": 0}, "127.0.0.1:1", "at least 1 request, not 0"),
        ({"cmx_duration_s": "-1"}, "127.0.0.1:1", "--cmx-duration-s must be"),
        ({"cmx_timeout_s": ""}, "127.0.0.1:1", "--cmx-timeout-s needs a value"),
    ],
)
def test_options_rejected(
    values: dict[str, object], host: str | None, message: str
) -> None:
    with pytest.raises(ReplayError, match=message.replace("(", r"\(")):
        LocustRunConfig.from_options(options(**values), host)


def test_metadata_speedup_per_mode(tmp_path: Path) -> None:
    trace = tmp_path / "trace.parquet"
    trace_mode = make_config(trace, speedup=4.0)
    users_mode = make_config(trace, speedup=4.0, mode=LoadMode.USERS)

    assert trace_mode.to_metadata()["speedup"] == 4.0
    assert users_mode.to_metadata()["speedup"] == 1.0
    assert users_mode.to_metadata()["mode"] == "users"


def touch_pem_files(folder: Path) -> dict[str, Path]:
    """Create empty ca.pem, cert.pem and key.pem in `folder`.

    Empty files will do, because the config checks only that they exist.
    """
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in paths.values():
        path.write_text("")
    return paths


def test_tls_options_parsed() -> None:
    # Locust's parser subclasses configargparse's, so a plain configargparse
    # parser handles `env_var` the same way without importing Locust.
    parser = configargparse.ArgumentParser()
    add_arguments(parser)

    defaults = parser.parse_args([], env_vars={})
    assert defaults.cmx_tls is False
    assert defaults.cmx_tls_ca is None
    assert defaults.cmx_tls_cert is None
    assert defaults.cmx_tls_key is None
    assert defaults.cmx_tls_server_name is None

    given = parser.parse_args(
        ["--cmx-tls", "--cmx-tls-ca", "ca.pem", "--cmx-tls-cert", "cert.pem",
         "--cmx-tls-key", "key.pem", "--cmx-tls-server-name", "emulator.test"],
        env_vars={},
    )  # fmt: skip
    assert given.cmx_tls is True
    assert given.cmx_tls_ca == "ca.pem"
    assert given.cmx_tls_cert == "cert.pem"
    assert given.cmx_tls_key == "key.pem"
    assert given.cmx_tls_server_name == "emulator.test"


def test_tls_options_from_environment() -> None:
    parser = configargparse.ArgumentParser()
    add_arguments(parser)
    environment = {
        "CMX_TLS": "true",
        "CMX_TLS_CA": "ca.pem",
        "CMX_TLS_CERT": "cert.pem",
        "CMX_TLS_KEY": "key.pem",
        "CMX_TLS_SERVER_NAME": "emulator.test",
    }

    parsed = parser.parse_args([], env_vars=environment)
    assert parsed.cmx_tls is True
    assert parsed.cmx_tls_ca == "ca.pem"
    assert parsed.cmx_tls_cert == "cert.pem"
    assert parsed.cmx_tls_key == "key.pem"
    assert parsed.cmx_tls_server_name == "emulator.test"


def test_no_tls_options_is_plaintext() -> None:
    from_command_line = LocustRunConfig.from_options(options(), "127.0.0.1:1")
    # The web UI sends a blank field as an empty string.
    blank_form = options(
        cmx_tls_ca="", cmx_tls_cert="", cmx_tls_key="", cmx_tls_server_name=""
    )
    from_web_ui = LocustRunConfig.from_options(blank_form, "127.0.0.1:1")

    assert from_command_line.tls is None
    assert from_web_ui.tls is None
    assert from_command_line.to_metadata()["tls"] is None


def test_tls_flag_trusts_system_roots() -> None:
    config = LocustRunConfig.from_options(options(cmx_tls=True), "127.0.0.1:1")

    assert config.tls == TlsConfig()


def test_tls_server_name_turns_on_tls() -> None:
    given = options(cmx_tls_server_name="emulator.test")
    config = LocustRunConfig.from_options(given, "127.0.0.1:1")

    assert config.tls == TlsConfig(server_name="emulator.test")


def test_mutual_tls_from_web_ui_strings(tmp_path: Path) -> None:
    pem = touch_pem_files(tmp_path)
    web_form = options(
        cmx_tls=False,
        cmx_tls_ca=str(pem["ca"]),
        cmx_tls_cert=str(pem["cert"]),
        cmx_tls_key=str(pem["key"]),
        cmx_tls_server_name="",
    )

    config = LocustRunConfig.from_options(web_form, "127.0.0.1:1")
    assert config.tls == TlsConfig(
        root_ca=pem["ca"], client_cert=pem["cert"], client_key=pem["key"]
    )
    # The metadata names the key's file nowhere.
    assert config.to_metadata()["tls"] == {
        "root_ca": str(pem["ca"]),
        "client_cert": str(pem["cert"]),
        "server_name": None,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"cmx_tls_cert": "cert.pem"},
            "--cmx-tls-cert was given without --cmx-tls-key. Give both (the "
            "client certificate and its private key) for mutual TLS, or neither",
        ),
        (
            {"cmx_tls_key": "key.pem", "cmx_tls_cert": ""},
            "--cmx-tls-key was given without --cmx-tls-cert. Give both (the "
            "client certificate and its private key) for mutual TLS, or neither",
        ),
        ({"cmx_tls": "maybe"}, "--cmx-tls must be true or false, not 'maybe'"),
    ],
)
def test_tls_options_rejected(values: dict[str, object], message: str) -> None:
    with pytest.raises(ReplayError) as raised:
        LocustRunConfig.from_options(options(**values), "127.0.0.1:1")

    assert str(raised.value) == message


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
def test_missing_tls_file_named(tmp_path: Path, missing: str) -> None:
    pem = touch_pem_files(tmp_path)
    pem[missing].unlink()
    given = options(
        cmx_tls_ca=str(pem["ca"]),
        cmx_tls_cert=str(pem["cert"]),
        cmx_tls_key=str(pem["key"]),
    )

    with pytest.raises(ReplayError) as raised:
        LocustRunConfig.from_options(given, "127.0.0.1:1")
    expected = f"--cmx-tls-{missing} {pem[missing]}: PEM file not found"
    assert str(raised.value) == expected


def test_tls_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayError) as raised:
        make_config(tmp_path / "trace.parquet", tls=TlsConfig(root_ca=tmp_path))

    expected = f"--cmx-tls-ca {tmp_path} is not a file; give a PEM file"
    assert str(raised.value) == expected
