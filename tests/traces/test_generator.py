"""Tests of the seeded trace generator."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from traces.errors import TraceError
from traces.generator import GeneratorParamError, GeneratorParams, generate_trace

BIG = GeneratorParams(requests=20000)


def _write(tmp_path: Path, name: str, params: GeneratorParams, seed: int) -> bytes:
    path = tmp_path / name
    generate_trace(params, seed).write(path)
    return path.read_bytes()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.parquet", GeneratorParams(), 7)
    second = _write(tmp_path, "b.parquet", GeneratorParams(), 7)

    assert first == second


def test_different_seed_differs() -> None:
    first = generate_trace(GeneratorParams(), 7).table
    second = generate_trace(GeneratorParams(), 8).table

    assert first.column("arrival_ms") != second.column("arrival_ms")
    assert first.column("input_tokens") != second.column("input_tokens")


def test_generator_argument_matches_seed() -> None:
    from_seed = generate_trace(GeneratorParams(requests=50), 3).table
    from_rng = generate_trace(GeneratorParams(requests=50), np.random.default_rng(3))

    assert from_rng.table.equals(from_seed)
    assert "generator_seed" not in from_rng.metadata


def test_metadata_records_params() -> None:
    trace = generate_trace(GeneratorParams(requests=5, rate_per_s=2.0), 11)

    params = json.loads(trace.metadata["generator_params"])
    assert trace.metadata["source_format"] == "generator"
    assert trace.metadata["generator_seed"] == "11"
    assert params["requests"] == 5
    assert params["rate_per_s"] == 2.0


def test_single_request() -> None:
    trace = generate_trace(GeneratorParams(requests=1), 0)

    row = trace.table.to_pylist()[0]
    assert row["request_id"] == "0"
    assert row["arrival_ms"] == 0.0
    assert row["session_id"] == "session-0"
    assert row["block_tokens"] == 512
    assert row["prefix_block_hashes"] == list(range(row["input_tokens"] // 512))


def test_single_turn_hashes_are_consecutive() -> None:
    params = GeneratorParams(requests=200, mean_turns=1.0)

    table = generate_trace(params, 5).table

    sessions = table.column("session_id").to_pylist()
    hashes = [h for row in table.column("prefix_block_hashes").to_pylist() for h in row]
    assert len(set(sessions)) == 200
    assert hashes == list(range(len(hashes)))


def test_arrivals_start_at_zero_and_grow() -> None:
    table = generate_trace(GeneratorParams(requests=500), 2).table

    arrival_ms = table.column("arrival_ms").to_numpy()
    assert arrival_ms[0] == 0.0
    assert bool(np.all(np.diff(arrival_ms) >= 0))
    assert table.column("request_id").to_pylist() == [str(i) for i in range(500)]


def test_mean_rate_within_five_percent() -> None:
    arrival_ms = generate_trace(BIG, 0).table.column("arrival_ms").to_numpy()

    rate_per_s = len(arrival_ms) / (arrival_ms[-1] / 1000.0)

    assert rate_per_s == pytest.approx(BIG.rate_per_s, rel=0.05)


@pytest.mark.parametrize(("burstiness", "expected_cv"), [(0.25, 2.0), (1.0, 1.0)])
def test_burstiness_sets_cv(burstiness: float, expected_cv: float) -> None:
    params = GeneratorParams(requests=20000, burstiness=burstiness)
    gaps_ms = np.diff(generate_trace(params, 0).table.column("arrival_ms").to_numpy())

    cv = float(gaps_ms.std() / gaps_ms.mean())

    assert cv == pytest.approx(expected_cv, rel=0.1)


def test_lengths_stay_within_limits() -> None:
    params = GeneratorParams(
        requests=3000,
        max_input_tokens=2048,
        input_median_tokens=1000,
        turn_median_tokens=100,
        max_output_tokens=64,
        output_median_tokens=20,
    )

    table = generate_trace(params, 4).table

    input_tokens = table.column("input_tokens").to_numpy()
    output_tokens = table.column("output_tokens").to_numpy()
    assert int(input_tokens.min()) >= params.min_input_tokens
    assert int(input_tokens.max()) == 2048
    assert int(output_tokens.min()) == 1
    assert int(output_tokens.max()) == 64


def test_session_prefixes_consistent() -> None:
    table = generate_trace(BIG, 9).table
    session_ids: list[str] = table.column("session_id").to_pylist()
    input_tokens: list[int] = table.column("input_tokens").to_pylist()
    output_tokens: list[int] = table.column("output_tokens").to_pylist()
    hashes: list[list[int]] = table.column("prefix_block_hashes").to_pylist()
    turns: dict[str, list[int]] = defaultdict(list)
    for index, session_id in enumerate(session_ids):
        turns[session_id].append(index)

    owner: dict[int, str] = {}
    for session_id, indexes in turns.items():
        for index in indexes:
            assert len(hashes[index]) == input_tokens[index] // 512
            for block_hash in hashes[index]:
                assert owner.setdefault(block_hash, session_id) == session_id
        for earlier, later in zip(indexes, indexes[1:], strict=False):
            context_tokens = input_tokens[earlier] + output_tokens[earlier]
            assert input_tokens[later] > context_tokens
            assert hashes[later][: len(hashes[earlier])] == hashes[earlier]

    turn_counts = [len(indexes) for indexes in turns.values()]
    assert max(turn_counts) > 1
    assert float(np.mean(turn_counts)) == pytest.approx(BIG.mean_turns, rel=0.15)


INVALID_PARAMS = [
    ("requests", 0, "an integer >= 1"),
    ("requests", 2.5, "an integer >= 1"),
    ("requests", True, "an integer >= 1"),
    ("rate_per_s", 0.0, "a finite number > 0"),
    ("rate_per_s", math.inf, "a finite number > 0"),
    ("rate_per_s", "5", "a finite number > 0"),
    ("burstiness", 0.0, "a finite number > 0"),
    ("burstiness", -1.0, "a finite number > 0"),
    ("burstiness", math.nan, "a finite number > 0"),
    ("burstiness", math.inf, "a finite number > 0"),
    ("max_input_tokens", 8, "an integer >= 16"),
    ("input_median_tokens", 200000, "an integer in [16, 131072]"),
    ("input_sigma", -0.5, "a finite number >= 0"),
    ("output_median_tokens", 5000, "an integer in [1, 4096]"),
    ("max_output_tokens", 0, "an integer >= 1"),
    ("mean_turns", 0.5, "a finite number >= 1"),
    ("block_tokens", 0, "an integer in [1, 2147483647]"),
]


@pytest.mark.parametrize(("name", "value", "accepted"), INVALID_PARAMS)
def test_invalid_params_rejected(name: str, value: object, accepted: str) -> None:
    with pytest.raises(GeneratorParamError) as raised:
        GeneratorParams(**{name: value})  # type: ignore[arg-type]

    message = str(raised.value)
    assert isinstance(raised.value, TraceError)
    assert message.startswith(f"invalid generator parameter {name}={value!r}")
    assert message.endswith(f"expected {accepted}")
    assert raised.value.name == name


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_invalid_seed_rejected(seed: object) -> None:
    with pytest.raises(GeneratorParamError) as raised:
        generate_trace(GeneratorParams(requests=5), seed)  # type: ignore[arg-type]

    assert str(raised.value) == (
        f"invalid generator parameter seed={seed!r}: expected an integer >= 0"
    )
