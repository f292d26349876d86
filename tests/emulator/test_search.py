"""`cmx search`: search spaces, budgets, ranking and the Pareto front."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cmx.cli import main
from emulator.errors import ConfigError
from emulator.planning.metrics import SloTargets
from emulator.planning.points import PointRunner, TraceSource
from emulator.planning.search import (
    SearchConfig,
    SearchSpace,
    enumerate_deployments,
    load_search_space,
    run_search,
    sample_deployments,
)
from emulator.profiles import default_profiles
from tests.emulator.planning_helpers import SMALL_DEPLOYMENT, uniform_trace

SMALL_SPACE = SearchSpace(
    fixed={},
    axes=(
        ("prefill_npus_per_instance", (1, 2, 4)),
        ("decode_npus_per_instance", (4, 8, 16)),
    ),
    npu_budget=18,
)


def shapes(deployments: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    return [
        (d.prefill_npus_per_instance, d.decode_npus_per_instance) for d in deployments
    ]


def test_bundled_space_has_twenty_deployments() -> None:
    space = load_search_space()
    deployments, skipped = enumerate_deployments(
        space, default_profiles().deployment, default_profiles()
    )
    assert len(deployments) >= 20
    assert all(d.npus_used() <= 384 for d in deployments)
    assert skipped["over the NPU budget"] > 0


def test_enumeration_skips_by_reason() -> None:
    deployments, skipped = enumerate_deployments(
        SMALL_SPACE, SMALL_DEPLOYMENT, default_profiles()
    )
    assert shapes(deployments) == [(1, 8), (1, 16), (2, 8), (2, 16), (4, 8)]
    # Four decode NPUs (8 dies) hold 33 experts each: no HBM is left for KV.
    assert skipped == {"no HBM left for KV cache": 3, "over the NPU budget": 1}


def test_minimum_npus_and_duplicates() -> None:
    space = SearchSpace(
        fixed={"prefill_npus_per_instance": 2},
        axes=(("decode_npus_per_instance", (8, 16, 16)),),
        min_npus=12,
    )
    deployments, skipped = enumerate_deployments(
        space, SMALL_DEPLOYMENT, default_profiles()
    )
    assert shapes(deployments) == [(2, 16)]
    assert skipped == {"under the minimum NPUs": 1}


def test_sample_is_seeded_and_ordered() -> None:
    items = [
        SMALL_DEPLOYMENT.__class__(decode_npus_per_instance=n) for n in range(8, 18)
    ]
    first = sample_deployments(items, 4, seed=5)
    assert first == sample_deployments(items, 4, seed=5)
    assert len(first) == 4
    assert first == sorted(first, key=items.index)
    assert sample_deployments(items, 20, seed=5) == items


def test_ranking_and_pareto_front(tmp_path: Path) -> None:
    deployments, skipped = enumerate_deployments(
        SMALL_SPACE, SMALL_DEPLOYMENT, default_profiles()
    )
    runner = PointRunner(
        TraceSource.open(uniform_trace(tmp_path / "trace.parquet")),
        default_profiles(),
        tmp_path / "cache",
        show_progress=False,
    )
    config = SearchConfig((2.0, 4.0), SloTargets(ttft_ms=1000.0))

    result = run_search(runner, deployments, config, skipped)

    ranks = [(entry.rank, entry.deployment_id) for entry in result.ranking]
    # One prefill NPU saturates at factor 4, so deployments 0 and 1 are
    # ranked by their factor-2 point, at half the goodput.
    assert ranks == [(1, 2), (2, 4), (3, 0), (4, 3), (5, 1)]
    best = result.best
    assert best is not None
    assert best.best_point is not None
    assert best.best_point.result.point.rate_factor == 4.0
    assert best.deployment.npus_used() == 10
    goodputs = [e.best_point.goodput_tokens_per_s_per_npu for e in result.ranking]  # type: ignore[union-attr]
    assert goodputs == sorted(goodputs, reverse=True)
    # 120 requests of 32 tokens at 2.0168 requests/s on 10 NPUs.
    assert goodputs[0] == pytest.approx(6.34, abs=0.01)

    front = {
        (p.deployment_id, p.result.point.rate_factor)
        for p, on_front in zip(result.points, result.on_front, strict=True)
        if on_front
    }
    assert front == {(2, 4.0), (4, 4.0), (3, 4.0)}
    saturated = {
        (p.deployment_id, p.result.point.rate_factor)
        for p in result.points
        if p.metrics.saturated
    }
    assert saturated == {(0, 4.0), (1, 4.0)}


def test_unmet_slo_leaves_deployments_unranked(tmp_path: Path) -> None:
    deployments, _ = enumerate_deployments(
        SMALL_SPACE, SMALL_DEPLOYMENT, default_profiles()
    )
    runner = PointRunner(
        TraceSource.open(uniform_trace(tmp_path / "trace.parquet", requests=20)),
        default_profiles(),
        tmp_path / "cache",
        show_progress=False,
    )
    config = SearchConfig((1.0,), SloTargets(ttft_ms=10.0))
    result = run_search(runner, deployments[:2], config)
    assert result.best is None
    assert [entry.rank for entry in result.ranking] == [None, None]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"vary": {"decode_npus": [1]}}, "unknown deployment fields"),
        ({"vary": {"decode_instances": []}}, "vary.decode_instances must be a"),
        ({"vary": {"decode_instances": [1, 0]}}, r"vary.decode_instances\[1\]"),
        ({"budget": 3}, "unknown keys"),
        ({"npu_budget": 0}, "npu_budget must be a positive integer"),
        ({"fixed": {"precision": "fp4"}}, "precision must be one of"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_space_files_are_rejected(
    tmp_path: Path, document: object, message: str
) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message):
        load_search_space(path)


def test_cli_search_writes_ranked_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = uniform_trace(tmp_path / "trace.parquet", requests=40)
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps(
            {
                "npu_budget": 20,
                "fixed": {"prefill_instances": 1, "decode_npus_per_instance": 16},
                "vary": {
                    "prefill_npus_per_instance": [1, 2],
                    "mtp_draft_tokens": [0, 1],
                },
            }
        )
    )
    out = tmp_path / "out"
    command = ["search", str(trace), "-o", str(out), "--space", str(space)]
    options = ["--factors", "1,4", "--slo-ttft-ms", "1000", "--jobs", "1"]

    assert main([*command, *options, "--latency-metric", "ttft_ms_p99"]) == 0

    printed = capsys.readouterr().out
    assert "4 deployments, 8 points" in printed
    points = pq.read_table(out / "points.parquet").to_pylist()
    assert len(points) == 8
    assert {row["kind"] for row in points} == {"search"}
    best = [row for row in points if row["rank"] == 1 and row["is_best_of_deployment"]]
    assert len(best) == 1
    # One prefill NPU saturates at factor 4; two meet the SLO there.
    assert best[0]["deployment_prefill_npus_per_instance"] == 2
    assert best[0]["rate_factor"] == 4.0
    assert all(row["goodput_rps"] <= row["throughput_rps"] for row in points)
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 1
    assert "Pareto front" in page
    assert (out / "best" / "deployment.json").is_file()


def test_cli_refuses_too_many_deployments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = uniform_trace(tmp_path / "trace.parquet", requests=5)
    status = main(
        ["search", str(trace), "-o", str(tmp_path / "o"), "--max-deployments", "3"]
    )
    assert status == 2
    assert "more than --max-deployments 3" in capsys.readouterr().err
