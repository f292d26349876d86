"""The trace views on the real Mooncake conversation trace, checked in Python."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.traces_analysis.results_files import write_results
from traces.analysis import Analysis
from traces.importers import import_mooncake

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOONCAKE = DATA_DIR / "mooncake_conversation.jsonl"


@pytest.fixture(scope="module")
def mooncake_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MOONCAKE.is_file():
        pytest.skip(f"real trace not found at {MOONCAKE} (../shared/data is absent)")
    path = tmp_path_factory.mktemp("mooncake") / "trace.parquet"
    import_mooncake(MOONCAKE).write(path)
    return path


def reference_reuse(trace: Path) -> dict[str, int]:
    """Count each request's tokens in blocks seen in an earlier request.

    Requests are taken by arrival, ties in file order, as the view defines.
    """
    table = pq.read_table(trace).to_pylist()
    ordered = sorted(
        enumerate(table), key=lambda item: (item[1]["arrival_ms"], item[0])
    )
    seen: set[int] = set()
    reused: dict[str, int] = {}
    for _, row in ordered:
        size, tokens = row["block_tokens"], row["input_tokens"]
        total = 0
        for index, block_hash in enumerate(row["prefix_block_hashes"]):
            if block_hash in seen:
                total += max(min(size, tokens - index * size), 0)
        reused[row["request_id"]] = total
        seen.update(row["prefix_block_hashes"])
    return reused


def test_mooncake_reuse_matches_python(mooncake_trace: Path, tmp_path: Path) -> None:
    expected = reference_reuse(mooncake_trace)
    trace_rows = pq.read_table(mooncake_trace, columns=["request_id", "input_tokens"])
    results_rows = [
        {"request_id": row["request_id"], "input_tokens": row["input_tokens"]}
        for row in trace_rows.to_pylist()
    ]
    results = write_results(
        tmp_path / "results.parquet", results_rows, trace_path=str(mooncake_trace)
    )

    with Analysis(results) as analysis:
        rows = analysis.run_sql(
            "SELECT request_id, reused_tokens FROM trace_reuse"
        ).to_rows()
        cache = analysis.run_query("cache", {"reuse_edges": "0"}).to_rows()
        turns = analysis.run_query("turns").to_rows()

    assert len(rows) == 12_031
    assert {row["request_id"]: row["reused_tokens"] for row in rows} == expected
    overall = cache[-1]
    assert overall["requests"] == 12_031
    assert overall["reusable_tokens"] == sum(expected.values())
    total_tokens = sum(row["input_tokens"] for row in results_rows)
    assert overall["ideal_reuse"] == pytest.approx(
        sum(expected.values()) / total_tokens
    )
    # The Mooncake trace has no session ids.
    assert [(row["turn"], row["requests"]) for row in turns] == [("no session", 12_031)]
