"""Tests of slice, scale, merge and sample on hand-made traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from traces.generator import GeneratorParams, generate_trace
from traces.schema import read_trace, read_trace_metadata, write_trace
from traces.stats import describe_trace
from traces.transforms import (
    TransformError,
    merge_traces,
    mix_hashes,
    sample_trace,
    scale_trace,
    slice_trace,
)


def _write(
    path: Path,
    arrival_ms: list[float],
    sessions: list[str | None] | None = None,
    hashes: list[list[int]] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    count = len(arrival_ms)
    table = pa.table(
        {
            "request_id": [f"r{index}" for index in range(count)],
            "arrival_ms": pa.array(arrival_ms, type=pa.float64()),
            "input_tokens": pa.array([1024] * count, type=pa.int64()),
            "output_tokens": pa.array(list(range(1, count + 1)), type=pa.int64()),
            "prefix_block_hashes": pa.array(
                hashes or [[1, 2]] * count, type=pa.list_(pa.uint64())
            ),
            "block_tokens": pa.array([512] * count, type=pa.int32()),
            "session_id": pa.array(sessions or [None] * count, type=pa.string()),
        }
    )
    write_trace(table, path, metadata or {"source_format": "test"})
    return path


def test_slice_window_then_first(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.parquet", [1000.0, 1500.0, 2000.0, 2500.0, 4000.0])
    output = tmp_path / "out.parquet"

    rows = slice_trace(source, output, start_s=0.5, end_s=3.0, first=2)

    table = read_trace(output)
    steps = json.loads(read_trace_metadata(output)["transforms"])
    assert rows == 2
    assert table.column("arrival_ms").to_pylist() == [1500.0, 2000.0]
    assert steps == [{"name": "slice", "start_s": 0.5, "end_s": 3.0, "first": 2}]
    assert read_trace_metadata(output)["source_format"] == "test"


def test_slice_end_is_exclusive(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.parquet", [0.0, 999.0, 1000.0])
    output = tmp_path / "out.parquet"

    rows = slice_trace(source, output, end_s=1.0)

    assert rows == 2
    assert read_trace(output).column("request_id").to_pylist() == ["r0", "r1"]


def test_scale_speedup_keeps_start(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.parquet", [100.0, 300.0, 1100.0])
    output = tmp_path / "out.parquet"

    scale_trace(source, output, speedup=4.0)

    # t0 + (t - t0) / 4 with t0 = 100.
    assert read_trace(output).column("arrival_ms").to_pylist() == [100.0, 150.0, 350.0]


def test_scale_thinning_rate(tmp_path: Path) -> None:
    generate_trace(GeneratorParams(requests=20000, burstiness=1.0), 1).write(
        tmp_path / "in.parquet"
    )

    rows = scale_trace(
        tmp_path / "in.parquet", tmp_path / "out.parquet", rate_factor=0.25
    )

    # Binomial(20000, 0.25): mean 5000, standard deviation 61.
    assert 4750 <= rows <= 5250


def test_scale_replicates_between_arrivals(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "in.parquet",
        [0.0, 1000.0, 3000.0],
        sessions=["s", "s", None],
        hashes=[[1, 2], [1, 2], [5]],
    )
    output = tmp_path / "out.parquet"

    rows = scale_trace(source, output, rate_factor=3.0, seed=2)

    table = read_trace(output)
    ids = table.column("request_id").to_pylist()
    arrival_ms = table.column("arrival_ms").to_pylist()
    by_id = dict(zip(ids, table.to_pylist(), strict=True))
    assert rows == 9
    assert ids[0] == "r0"
    assert set(ids[1:3]) == {"r0#1", "r0#2"}
    assert sorted(ids) == sorted(
        f"r{i}{suffix}" for i in range(3) for suffix in ("", "#1", "#2")
    )
    assert arrival_ms == sorted(arrival_ms)
    assert 0.0 < by_id["r0#1"]["arrival_ms"] < 1000.0
    assert 1000.0 < by_id["r1#2"]["arrival_ms"] < 3000.0
    assert by_id["r2#1"]["arrival_ms"] == 3000.0
    assert by_id["r1#1"]["session_id"] == "s#1"
    assert by_id["r2#1"]["session_id"] is None
    assert by_id["r0#1"]["prefix_block_hashes"] == by_id["r1#1"]["prefix_block_hashes"]
    assert by_id["r0#1"]["prefix_block_hashes"] != [1, 2]
    assert by_id["r0#2"]["prefix_block_hashes"] != by_id["r0#1"]["prefix_block_hashes"]


def test_scale_keeps_reuse_within_copies(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    generate_trace(GeneratorParams(requests=3000), 5).write(source)
    output = tmp_path / "out.parquet"

    scale_trace(source, output, rate_factor=2.0)

    # Each copy replays the same sessions on its own hashes, so the ideal
    # reuse ratio is unchanged.
    before = describe_trace(source).prefix_reuse_ratio
    after = describe_trace(output).prefix_reuse_ratio
    assert after == pytest.approx(before, abs=1e-12)


def test_scale_rejects_hash_in_ids(tmp_path: Path) -> None:
    table = read_trace(_write(tmp_path / "a.parquet", [0.0]))
    table = table.set_column(0, "request_id", pa.array(["a#1"]))
    write_trace(table, tmp_path / "hash.parquet")

    with pytest.raises(TransformError) as raised:
        scale_trace(tmp_path / "hash.parquet", tmp_path / "out.parquet", rate_factor=2)

    assert "request ids contain '#'" in str(raised.value)


def test_merge_orders_and_renames(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", [0.0, 20.0], sessions=["x", None])
    second = _write(tmp_path / "b.parquet", [10.0, 20.0], sessions=["x", "y"])
    output = tmp_path / "out.parquet"

    rows = merge_traces([first, second], output)

    table = read_trace(output)
    metadata = read_trace_metadata(output)
    assert rows == 4
    assert table.column("request_id").to_pylist() == ["0:r0", "1:r0", "0:r1", "1:r1"]
    assert table.column("arrival_ms").to_pylist() == [0.0, 10.0, 20.0, 20.0]
    assert table.column("session_id").to_pylist() == ["0:x", "1:x", None, "1:y"]
    hashes = table.column("prefix_block_hashes").to_pylist()
    mixed = mix_hashes(np.array([1, 2], dtype=np.uint64), 1).tolist()
    assert hashes == [[1, 2], mixed, [1, 2], mixed]
    assert metadata["source_format"] == "merge"
    assert [entry["path"] for entry in json.loads(metadata["sources"])] == [
        str(first),
        str(second),
    ]


def test_merge_shared_hashes(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", [0.0])
    second = _write(tmp_path / "b.parquet", [1.0])
    output = tmp_path / "out.parquet"

    merge_traces([first, second], output, shared_hashes=True)

    hashes = read_trace(output).column("prefix_block_hashes").to_pylist()
    assert hashes == [[1, 2], [1, 2]]
    assert describe_trace(output).prefix_reuse_ratio == pytest.approx(0.5)


def test_merge_absolute_aligns_starts(tmp_path: Path) -> None:
    first = _write(
        tmp_path / "a.parquet",
        [0.0, 5000.0],
        metadata={"trace_start": "2024-05-10T00:00:02.000000000Z"},
    )
    second = _write(
        tmp_path / "b.parquet",
        [0.0],
        metadata={"trace_start": "2024-05-10T00:00:00.500000000Z"},
    )
    output = tmp_path / "out.parquet"

    merge_traces([first, second], output, absolute=True)

    table = read_trace(output)
    assert table.column("request_id").to_pylist() == ["1:r0", "0:r0", "0:r1"]
    assert table.column("arrival_ms").to_pylist() == [0.0, 1500.0, 6500.0]
    assert read_trace_metadata(output)["trace_start"] == (
        "2024-05-10T00:00:00.500000000Z"
    )


def test_merge_absolute_needs_start(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.parquet", [0.0])
    second = _write(tmp_path / "b.parquet", [0.0])

    with pytest.raises(TransformError) as raised:
        merge_traces([first, second], tmp_path / "out.parquet", absolute=True)

    assert "no valid trace_start" in str(raised.value)


def test_sample_exact_count(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.parquet", [float(i) for i in range(100)])
    output = tmp_path / "out.parquet"

    rows = sample_trace(source, output, requests=10, seed=4)

    arrival_ms = read_trace(output).column("arrival_ms").to_pylist()
    assert rows == 10
    assert arrival_ms == sorted(arrival_ms)
    assert len(set(arrival_ms)) == 10


def test_sample_same_seed_same_rows(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.parquet", [float(i) for i in range(100)])

    sample_trace(source, tmp_path / "a.parquet", fraction=0.3, seed=9)
    sample_trace(source, tmp_path / "b.parquet", fraction=0.3, seed=9)

    assert (tmp_path / "a.parquet").read_bytes() == (
        tmp_path / "b.parquet"
    ).read_bytes()


def test_sample_by_session_keeps_whole_sessions(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    generate_trace(GeneratorParams(requests=4000), 3).write(source)
    output = tmp_path / "out.parquet"

    sample_trace(source, output, fraction=0.5, by_session=True, seed=1)

    before = read_trace(source).column("session_id").to_pylist()
    after = read_trace(output).column("session_id").to_pylist()
    kept = set(after)
    assert 0.4 < len(kept) / len(set(before)) < 0.6
    assert sum(session in kept for session in before) == len(after)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "give exactly one of --fraction and --requests"),
        ({"fraction": 1.5}, "invalid fraction 1.5: expected a number in [0, 1]"),
        ({"requests": 0}, "invalid requests 0: expected an integer >= 1"),
        ({"requests": 5, "by_session": True}, "--by-session works with --fraction"),
        ({"fraction": 0.5, "seed": -1}, "invalid seed -1"),
    ],
)
def test_sample_invalid_options(
    tmp_path: Path, options: dict[str, object], fragment: str
) -> None:
    source = _write(tmp_path / "in.parquet", [0.0])

    with pytest.raises(TransformError) as raised:
        sample_trace(source, tmp_path / "out.parquet", **options)  # type: ignore[arg-type]

    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"speedup": 0.0}, "invalid speedup 0.0: expected a finite number > 0"),
        ({"rate_factor": float("inf")}, "invalid rate_factor inf"),
    ],
)
def test_scale_invalid_options(
    tmp_path: Path, options: dict[str, object], fragment: str
) -> None:
    source = _write(tmp_path / "in.parquet", [0.0])

    with pytest.raises(TransformError) as raised:
        scale_trace(source, tmp_path / "out.parquet", **options)  # type: ignore[arg-type]

    assert fragment in str(raised.value)


def test_slice_invalid_window(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.parquet", [0.0])

    with pytest.raises(TransformError) as raised:
        slice_trace(source, tmp_path / "out.parquet", start_s=5.0, end_s=5.0)

    assert "invalid end_s 5.0: expected a finite number > 5" in str(raised.value)


def test_mix_hashes_known_values() -> None:
    # splitmix64 of 0 + 1 * 0x9E3779B97F4A7C15, the first output of the
    # reference generator seeded with 0.
    mixed = mix_hashes(np.array([0], dtype=np.uint64), 1)

    assert int(mixed[0]) == 0xE220A8397B1DCDAF
