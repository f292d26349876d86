"""Tests of the seeded trace generator: determinism, laws and parameter checks."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.arrivals import ArrivalProcess
from traces.errors import TraceError
from traces.generator import (
    CHUNK_REQUESTS,
    GeneratorParamError,
    GeneratorParams,
    GeneratorSummary,
    generate_trace,
    generate_trace_file,
    iter_generated_batches,
)
from traces.generator_params import LengthDistribution
from traces.schema import TraceWriter

BIG = GeneratorParams(requests=20000)


def _write(tmp_path: Path, name: str, params: GeneratorParams, seed: int) -> bytes:
    path = tmp_path / name
    generate_trace(params, seed).write(path)
    return path.read_bytes()


def _measured_reuse(table: pa.Table) -> float:
    """Ideal prefix reuse computed with a Python set, independently of DuckDB."""
    seen: set[tuple[int, int]] = set()
    reused = 0
    rows = zip(
        table.column("input_tokens").to_pylist(),
        table.column("prefix_block_hashes").to_pylist(),
        table.column("block_tokens").to_pylist(),
        strict=True,
    )
    for input_tokens, hashes, block_tokens in rows:
        for index, block_hash in enumerate(hashes):
            if (block_tokens, block_hash) in seen:
                reused += min(block_tokens, input_tokens - index * block_tokens)
        seen.update((block_tokens, block_hash) for block_hash in hashes)
    return reused / sum(table.column("input_tokens").to_pylist())


def _gaps_ms(table: pa.Table) -> np.ndarray:
    return np.diff(table.column("arrival_ms").to_numpy())


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.parquet", GeneratorParams(), 7)
    second = _write(tmp_path, "b.parquet", GeneratorParams(), 7)

    assert first == second


def test_file_matches_memory(tmp_path: Path) -> None:
    params = GeneratorParams(requests=3 * CHUNK_REQUESTS + 5)
    streamed = tmp_path / "streamed.parquet"

    summary = generate_trace_file(params, 4, streamed)
    in_memory = _write(tmp_path, "memory.parquet", params, 4)

    assert streamed.read_bytes() == in_memory
    assert summary.requests == params.requests


def test_writer_batching_keeps_bytes(tmp_path: Path) -> None:
    table = generate_trace(GeneratorParams(requests=70000), 1).table
    whole = tmp_path / "whole.parquet"
    pieces = tmp_path / "pieces.parquet"

    with TraceWriter(whole) as writer:
        writer.write(table)
    with TraceWriter(pieces) as writer:
        for start in range(0, table.num_rows, 999):
            writer.write(table.slice(start, 999))

    assert whole.read_bytes() == pieces.read_bytes()


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
    params = GeneratorParams(requests=5, rate_per_s=2.0, prefix_reuse_ratio=0.5)

    trace = generate_trace(params, 11)

    stored = json.loads(trace.metadata["generator_params"])
    assert trace.metadata["source_format"] == "generator"
    assert trace.metadata["generator_seed"] == "11"
    assert stored["requests"] == 5
    assert stored["rate_per_s"] == 2.0
    assert stored["arrival_process"] == "gamma"
    assert stored["prefix_reuse_ratio"] == 0.5
    assert GeneratorParams(**{**stored, **_enum_fields(stored)}) == params


def _enum_fields(stored: dict[str, object]) -> dict[str, object]:
    return {
        "arrival_process": ArrivalProcess(stored["arrival_process"]),
        "input_distribution": LengthDistribution(stored["input_distribution"]),
        "output_distribution": LengthDistribution(stored["output_distribution"]),
    }


def test_single_request() -> None:
    trace = generate_trace(GeneratorParams(requests=1), 0)

    row = trace.table.to_pylist()[0]
    full_blocks = row["input_tokens"] // 512
    # With K = 16 shared prefixes and M = 131072 / 512 = 256 blocks, session 0
    # has the hashes 16 * 256 + i.
    assert row["request_id"] == "0"
    assert row["arrival_ms"] == 0.0
    assert row["session_id"] == "session-0"
    assert row["block_tokens"] == 512
    assert row["prefix_block_hashes"] == list(range(4096, 4096 + full_blocks))


def test_single_turn_hashes_follow_formula() -> None:
    params = GeneratorParams(requests=200, mean_turns=1.0, shared_prefixes=1)

    table = generate_trace(params, 5).table

    sessions = table.column("session_id").to_pylist()
    hashes = table.column("prefix_block_hashes").to_pylist()
    inputs = table.column("input_tokens").to_pylist()
    assert sessions == [f"session-{index}" for index in range(200)]
    for index in range(200):
        base = (1 + index) * 256
        assert hashes[index] == list(range(base, base + inputs[index] // 512))


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
    gaps_ms = _gaps_ms(generate_trace(params, 0).table)

    cv = float(gaps_ms.std() / gaps_ms.mean())

    assert params.expected_interarrival_cv == pytest.approx(expected_cv)
    assert cv == pytest.approx(expected_cv, rel=0.1)


def test_onoff_expected_cv_formula() -> None:
    # Interrupted Poisson process (no arrivals while OFF): the squared CV is
    # 1 + 2 r a / (a + b)^2 with ON rate r, ON->OFF rate a, OFF->ON rate b.
    # Here a = 1/5, b = 1/20 and r = 5 * 25 / 5 = 25 requests/s, so the
    # squared CV is 1 + 2 * 25 * 0.2 / 0.0625 = 161.
    params = GeneratorParams(
        arrival_process=ArrivalProcess.ONOFF, on_mean_s=5.0, off_mean_s=20.0
    )

    assert params.expected_interarrival_cv == pytest.approx(math.sqrt(161.0))


def test_onoff_always_on_is_poisson() -> None:
    params = GeneratorParams(
        arrival_process=ArrivalProcess.ONOFF, off_rate_ratio=1.0, rate_per_s=3.0
    )

    assert params.expected_interarrival_cv == pytest.approx(1.0)


def test_onoff_rate_and_cv() -> None:
    params = GeneratorParams(
        requests=100000,
        arrival_process=ArrivalProcess.ONOFF,
        on_mean_s=5.0,
        off_mean_s=20.0,
        off_rate_ratio=0.1,
    )
    arrival_ms = generate_trace(params, 3).table.column("arrival_ms").to_numpy()
    gaps_ms = np.diff(arrival_ms)

    rate_per_s = (len(arrival_ms) - 1) / (arrival_ms[-1] / 1000.0)
    cv = float(gaps_ms.std() / gaps_ms.mean())

    assert params.expected_interarrival_cv is not None
    assert rate_per_s == pytest.approx(5.0, rel=0.05)
    assert cv == pytest.approx(params.expected_interarrival_cv, rel=0.1)


def test_diurnal_rate_follows_sine() -> None:
    # Over 5 periods of 1000 s at 20 requests/s, the arrivals in the first
    # half of each period (sine > 0) should outnumber those in the second half
    # by (1 + 2A/pi) / (1 - 2A/pi) = 4.64 for A = 0.8.
    params = GeneratorParams(
        requests=100000,
        rate_per_s=20.0,
        burstiness=1.0,
        diurnal_amplitude=0.8,
        diurnal_period_s=1000.0,
    )
    arrival_s = generate_trace(params, 6).table.column("arrival_ms").to_numpy() / 1000

    phase = (arrival_s % 1000.0) / 1000.0
    rising = int(np.count_nonzero(phase < 0.5))
    falling = int(np.count_nonzero(phase >= 0.5))
    rate_per_s = len(arrival_s) / arrival_s[-1]

    assert params.expected_interarrival_cv is None
    assert rising / falling == pytest.approx(
        (1 + 1.6 / math.pi) / (1 - 1.6 / math.pi), rel=0.05
    )
    assert rate_per_s == pytest.approx(20.0, rel=0.05)


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


def test_pareto_prompts_reach_one_million() -> None:
    params = GeneratorParams(
        requests=20000,
        mean_turns=1.0,
        input_distribution=LengthDistribution.PARETO,
        input_pareto_alpha=1.1,
        max_input_tokens=1048576,
    )

    input_tokens = generate_trace(params, 8).table.column("input_tokens").to_numpy()

    # Pareto with median 5500 and alpha 1.1: P(X > 2^20) = 0.5 * (5500 /
    # 2^20)^1.1 = 1.6e-3, so about 32 of 20,000 prompts hit the cap.
    capped = int(np.count_nonzero(input_tokens == 1048576))
    assert float(np.median(input_tokens)) == pytest.approx(5500, rel=0.05)
    assert 15 <= capped <= 55


@pytest.mark.parametrize(
    ("distribution", "expected_median"),
    [
        (LengthDistribution.FIXED, 300.0),
        (LengthDistribution.EXPONENTIAL, 300.0),
        (LengthDistribution.LOGNORMAL, 300.0),
    ],
)
def test_output_medians(
    distribution: LengthDistribution, expected_median: float
) -> None:
    params = GeneratorParams(requests=20000, output_distribution=distribution)

    output_tokens = generate_trace(params, 2).table.column("output_tokens").to_numpy()

    assert float(np.median(output_tokens)) == pytest.approx(expected_median, rel=0.05)


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


def test_shared_prefixes_lead_first_turns() -> None:
    params = GeneratorParams(
        requests=5000, mean_turns=1.0, prefix_reuse_ratio=0.5, shared_prefixes=4
    )

    table = generate_trace(params, 1).table

    # Shared prefix k's blocks are k * 256 + i; sessions start at 4 * 256.
    hash_lists = table.column("prefix_block_hashes").to_pylist()
    starts = [hashes[0] for hashes in hash_lists if hashes]
    prefixed = [start for start in starts if start < 4 * 256]
    assert len(prefixed) > 1000
    assert sorted({start // 256 for start in prefixed}) == [0, 1, 2, 3]
    assert all(start % 256 == 0 for start in prefixed)


def test_summary_matches_independent_reuse() -> None:
    summary = GeneratorSummary()
    params = GeneratorParams(requests=10000, prefix_reuse_ratio=0.75)

    batches = list(iter_generated_batches(params, 12, summary))

    table = pa.Table.from_batches(batches)
    assert summary.requests == 10000
    assert summary.sessions == len(set(table.column("session_id").to_pylist()))
    assert summary.prefix_reuse_ratio == pytest.approx(
        _measured_reuse(table), abs=1e-12
    )


def test_unreachable_reuse_warns(caplog: pytest.LogCaptureFixture) -> None:
    params = GeneratorParams(requests=5000, prefix_reuse_ratio=0.05)

    with caplog.at_level("WARNING", logger="traces.generator"):
        table = generate_trace(params, 1).table

    assert _measured_reuse(table) > 0.3
    assert "misses the target 0.050" in caplog.text


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    rate_per_s=st.floats(0.5, 50.0),
    burstiness=st.floats(0.2, 5.0),
    target=st.floats(0.05, 0.85),
    seed=st.integers(0, 2**32),
)
def test_long_runs_hit_requested_values(
    rate_per_s: float, burstiness: float, target: float, seed: int
) -> None:
    # Tolerances over 50,000 requests: rate within 5% (its standard error is
    # CV / sqrt(n), at most 1%), CV within 10% and reuse within 0.01.
    params = GeneratorParams(
        requests=50000,
        rate_per_s=rate_per_s,
        burstiness=burstiness,
        mean_turns=1.0,
        prefix_reuse_ratio=target,
    )

    table = generate_trace(params, seed).table
    arrival_ms = table.column("arrival_ms").to_numpy()
    gaps_ms = np.diff(arrival_ms)

    measured_rate = len(gaps_ms) / (arrival_ms[-1] / 1000.0)
    measured_cv = float(gaps_ms.std() / gaps_ms.mean())
    assert measured_rate == pytest.approx(rate_per_s, rel=0.05)
    assert measured_cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.1)
    assert _measured_reuse(table) == pytest.approx(target, abs=0.01)


INVALID_PARAMS = [
    ("requests", 0, "an integer >= 1"),
    ("requests", 2.5, "an integer >= 1"),
    ("requests", True, "an integer >= 1"),
    ("rate_per_s", 0.0, "a finite number > 0"),
    ("rate_per_s", -2.0, "a finite number > 0"),
    ("rate_per_s", math.inf, "a finite number > 0"),
    ("rate_per_s", "5", "a finite number > 0"),
    ("burstiness", 0.0, "a number in [0.001, 1000]"),
    ("burstiness", -1.0, "a number in [0.001, 1000]"),
    ("burstiness", math.nan, "a number in [0.001, 1000]"),
    ("burstiness", math.inf, "a number in [0.001, 1000]"),
    ("arrival_process", "gamma", "one of gamma, onoff"),
    ("on_mean_s", 0.0, "a finite number > 0"),
    ("off_mean_s", -1.0, "a finite number > 0"),
    ("off_rate_ratio", 1.5, "a number in [0, 1]"),
    ("diurnal_amplitude", 1.0, "a number in [0, 1)"),
    ("diurnal_period_s", 0.0, "a finite number > 0"),
    ("input_distribution", "zipf", "one of lognormal, pareto, exponential, fixed"),
    ("max_input_tokens", 8, "an integer >= 16"),
    ("input_median_tokens", 200000, "an integer in [16, 131072]"),
    ("input_sigma", -0.5, "a finite number >= 0"),
    ("input_pareto_alpha", 0.0, "a number in [0.1, 100]"),
    ("output_median_tokens", 5000, "an integer in [1, 4096]"),
    ("max_output_tokens", 0, "an integer >= 1"),
    ("mean_turns", 0.5, "a finite number >= 1"),
    ("block_tokens", 0, "an integer in [1, 2147483647]"),
    ("prefix_reuse_ratio", 1.0, "a number in [0, 1)"),
    ("shared_prefixes", 0, "an integer in [1, 1048576]"),
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


def test_too_many_blocks_rejected() -> None:
    with pytest.raises(GeneratorParamError) as raised:
        GeneratorParams(max_input_tokens=2**20, block_tokens=1)

    assert raised.value.name == "max_input_tokens"
    assert "at most 131072 blocks" in str(raised.value)


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_invalid_seed_rejected(seed: object) -> None:
    with pytest.raises(GeneratorParamError) as raised:
        generate_trace(GeneratorParams(requests=5), seed)  # type: ignore[arg-type]

    assert str(raised.value) == (
        f"invalid generator parameter seed={seed!r}: expected an integer >= 0"
    )


def test_original_fields_keep_positions() -> None:
    params = GeneratorParams(10, 2.0, 1.0, 1000, 0.5, 8, 4096, 50, 0.3, 512, 2.0)

    assert params.requests == 10
    assert params.input_median_tokens == 1000
    assert params.min_input_tokens == 8
    assert params.max_output_tokens == 512
    assert params.mean_turns == 2.0


def test_outputs_fit_context_window() -> None:
    params = GeneratorParams(
        requests=2000,
        input_median_tokens=1500,
        max_input_tokens=1900,
        output_median_tokens=400,
        context_window_tokens=2000,
    )

    table = generate_trace(params, 3).table
    inputs = np.asarray(table["input_tokens"])
    outputs = np.asarray(table["output_tokens"])

    assert int((inputs + outputs).max()) <= 2000
    assert int(outputs.min()) >= 1
    # Some outputs were really shortened, so the bound is not met by chance.
    assert int(((inputs + outputs) == 2000).sum()) > 0


def test_context_window_below_two_rejected() -> None:
    with pytest.raises(GeneratorParamError, match="context_window_tokens"):
        GeneratorParams(context_window_tokens=1)
