"""`cmx compare`: verdict rules and the command on two small runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cmx.cli import main
from tests.traces_analysis.results_files import write_results
from traces.compare import Direction, MetricSpec, Verdict, judge

LATENCY = MetricSpec("ttft_ms_p99", Direction.LOWER_IS_BETTER)
THROUGHPUT = MetricSpec("requests_per_s", Direction.HIGHER_IS_BETTER)
SHARE = MetricSpec("slo_attainment", Direction.HIGHER_IS_BETTER, is_share=True)
COUNT = MetricSpec("requests", Direction.NEUTRAL)


@pytest.mark.parametrize(
    ("spec", "a", "b", "verdict"),
    [
        (LATENCY, 100.0, 90.0, Verdict.BETTER),
        (LATENCY, 100.0, 104.0, Verdict.SAME),
        (LATENCY, 100.0, 105.0, Verdict.SAME),
        (LATENCY, 100.0, 110.0, Verdict.WORSE),
        (LATENCY, 0.0, 0.0, Verdict.SAME),
        (LATENCY, 0.0, 1.0, Verdict.WORSE),
        (THROUGHPUT, 10.0, 11.0, Verdict.BETTER),
        (THROUGHPUT, 10.0, 9.0, Verdict.WORSE),
        (SHARE, 0.5, 0.505, Verdict.SAME),
        (SHARE, 0.5, 0.48, Verdict.WORSE),
        (SHARE, 0.0, 0.02, Verdict.BETTER),
        (COUNT, 100.0, 100.0, Verdict.SAME),
        (COUNT, 100.0, 120.0, Verdict.CHANGED),
        (LATENCY, None, 5.0, Verdict.UNDEFINED),
        (THROUGHPUT, 5.0, None, Verdict.UNDEFINED),
    ],
)
def test_judge_verdicts(
    spec: MetricSpec, a: float | None, b: float | None, verdict: Verdict
) -> None:
    assert judge(spec, a, b).verdict is verdict


def test_judge_changes() -> None:
    compared = judge(LATENCY, 200.0, 150.0)

    assert compared.change == -50.0
    assert compared.relative_change == -0.25
    assert judge(LATENCY, 0.0, 1.0).relative_change is None
    assert judge(LATENCY, None, 1.0).change is None


def test_judge_tolerances() -> None:
    assert judge(LATENCY, 100.0, 110.0, tolerance=0.1).verdict is Verdict.SAME
    assert judge(SHARE, 0.5, 0.48, share_tolerance=0.05).verdict is Verdict.SAME


def run_rows(ttft_values: list[float], failed: int = 0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "ttft_ms": ttft,
            "tpot_ms": 10.0,
            "e2e_ms": ttft + 90.0,
            "actual_send_ms": 100.0 * index,
            "wall_e2e_ms": 1000.0,
        }
        for index, ttft in enumerate(ttft_values)
    ]
    rows += [{"status": "UNAVAILABLE", "wall_e2e_ms": 1.0}] * failed
    return rows


def compare_json(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, dict[str, Any]]]:
    capsys.readouterr()
    status = main(["compare", *argv, "-f", "json"])
    rows = json.loads(capsys.readouterr().out)
    return status, {row["metric"]: row for row in rows}


def test_compare_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_results(tmp_path / "a.parquet", run_rows([100.0, 200.0, 300.0], failed=1))
    b = write_results(tmp_path / "b.parquet", run_rows([50.0, 100.0, 150.0]))

    status, by_metric = compare_json([str(a), str(b)], capsys)

    assert status == 0
    ttft = by_metric["ttft_ms_p50"]
    assert (ttft["a"], ttft["b"], ttft["change"]) == (200.0, 100.0, -100.0)
    assert ttft["relative_change"] == -0.5
    assert ttft["verdict"] == "better"
    assert by_metric["ok_share"]["a"] == 0.75
    assert by_metric["ok_share"]["verdict"] == "better"
    assert by_metric["requests"]["verdict"] == "changed"
    assert by_metric["tpot_ms_p99"]["verdict"] == "same"
    # TPOT 10 ms meets the default 50 ms SLO: 3 of 4 requests, then 3 of 3.
    assert by_metric["slo_attainment"]["a"] == 0.75
    assert by_metric["slo_attainment"]["b"] == 1.0
    assert by_metric["cache_hit_rate"]["verdict"] == "n/a"


def test_fail_on_worse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_results(tmp_path / "a.parquet", run_rows([50.0, 100.0, 150.0]))
    b = write_results(tmp_path / "b.parquet", run_rows([100.0, 200.0, 300.0]))

    assert main(["compare", str(a), str(a), "--fail-on-worse"]) == 0
    assert main(["compare", str(a), str(b), "--fail-on-worse"]) == 1
    assert main(["compare", str(a), str(b)]) == 0


def test_compare_refuses_several_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    write_results(runs / "x.parquet", run_rows([1.0]))
    write_results(runs / "y.parquet", run_rows([1.0]))

    status = main(["compare", str(runs), str(runs / "x.parquet")])

    assert status == 2
    assert "contains 2 runs (x, y); compare takes one run" in capsys.readouterr().err


def test_compare_bad_tolerance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write_results(tmp_path / "a.parquet", run_rows([1.0]))

    assert main(["compare", str(a), str(a), "--tolerance", "-1"]) == 2
    assert "--tolerance -1.0 must be >= 0" in capsys.readouterr().err
