"""`cmx sweep`: the largest SLO rate, refinement, the cache and the outputs.

On `SMALL_DEPLOYMENT` a 4,096-token prompt takes about 727 ms to its first
token, and the one prefill NPU saturates near 1.38 requests/s, which the
uniform trace (0.504 requests/s) reaches at a rate factor near 2.74.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cmx.cli import main
from emulator.planning.confirm import confirm_by_replay, confirm_by_simulate
from emulator.planning.metrics import SaturationTest, SloTargets
from emulator.planning.points import PointRunner, TraceSource
from emulator.planning.sweep import SweepConfig, run_sweep
from emulator.planning.table import RUN_CONFIG_KEY, points_schema
from emulator.profiles import default_profiles
from tests.emulator.planning_helpers import SMALL_DEPLOYMENT, uniform_trace

SLO = SloTargets(ttft_ms=1000.0)


def make_runner(tmp_path: Path, jobs: int = 1) -> PointRunner:
    tmp_path.mkdir(exist_ok=True)
    trace = uniform_trace(tmp_path / "trace.parquet")
    return PointRunner(
        TraceSource.open(trace),
        default_profiles(),
        tmp_path / "cache",
        jobs=jobs,
        show_progress=False,
    )


def test_largest_slo_rate_is_bracketed(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    config = SweepConfig((4.0, 1.0, 2.0, 2.5, 8.0), SLO)

    result = run_sweep(runner, SMALL_DEPLOYMENT, config)

    factors = [point.rate_factor for point in result.points]
    assert factors == [1.0, 2.0, 2.5, 4.0, 8.0]
    best = result.best
    assert best is not None
    assert best.rate_factor == 2.5
    assert best.metrics.meets_slo
    following = result.points[result.max_slo_index + 1]  # type: ignore[operator]
    assert not following.metrics.meets_slo
    assert result.limit_found
    assert result.saturation_index == 3
    assert [p.metrics.saturated for p in result.points] == [False] * 3 + [True] * 2
    # 120 requests over 238 s, compressed 2.5-fold.
    assert best.metrics.offered_rps == pytest.approx(120 / 238 * 2.5)
    assert best.metrics.ttft_ms_p99 == pytest.approx(727.08, abs=0.01)


def test_refinement_narrows_the_bracket(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    config = SweepConfig((1.0, 2.5, 4.0), SLO, refine_rounds=2)

    result = run_sweep(runner, SMALL_DEPLOYMENT, config)

    factors = [point.rate_factor for point in result.points]
    # Round 1 tries the middle of (2.5, 4), which fails; round 2 the middle
    # of (2.5, 3.25), which fails too.
    assert factors == [1.0, 2.5, 2.875, 3.25, 4.0]
    assert [p.refined for p in result.points] == [False, False, True, True, False]
    assert result.best is not None
    assert result.best.rate_factor == 2.5
    assert not result.points[2].metrics.meets_slo


def test_every_point_meeting_slo_leaves_limit_open(tmp_path: Path) -> None:
    result = run_sweep(make_runner(tmp_path), SMALL_DEPLOYMENT, SweepConfig((1.0, 2.0)))
    assert result.best is not None
    assert result.best.rate_factor == 2.0
    assert not result.limit_found


def test_no_point_meets_a_tight_slo(tmp_path: Path) -> None:
    config = SweepConfig((1.0, 2.0), SloTargets(ttft_ms=100.0))
    result = run_sweep(make_runner(tmp_path), SMALL_DEPLOYMENT, config)
    assert result.best is None
    assert result.max_slo_index is None


def test_resume_skips_finished_points(tmp_path: Path) -> None:
    config = SweepConfig((1.0, 2.0, 4.0), SLO)
    first = make_runner(tmp_path)
    run_sweep(first, SMALL_DEPLOYMENT, config)
    assert (first.simulated, first.reused) == (3, 0)
    cache_files = sorted((tmp_path / "cache").glob("*.parquet"))
    assert len(cache_files) == 3
    kept_mtime_ns = cache_files[0].stat().st_mtime_ns
    cache_files[1].unlink()

    second = make_runner(tmp_path)
    resumed = run_sweep(second, SMALL_DEPLOYMENT, config)

    assert (second.simulated, second.reused) == (1, 2)
    assert cache_files[0].stat().st_mtime_ns == kept_mtime_ns
    assert cache_files[1].is_file()
    assert resumed.best is not None
    assert resumed.best.rate_factor == 2.0


def test_fresh_simulates_cached_points_again(tmp_path: Path) -> None:
    config = SweepConfig((1.0, 2.0), SLO)
    run_sweep(make_runner(tmp_path), SMALL_DEPLOYMENT, config)

    runner = PointRunner(
        TraceSource.open(tmp_path / "trace.parquet"),
        default_profiles(),
        tmp_path / "cache",
        fresh=True,
        show_progress=False,
    )
    run_sweep(runner, SMALL_DEPLOYMENT, config)

    assert (runner.simulated, runner.reused) == (2, 0)


def test_cache_key_covers_inputs(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    config = SweepConfig((1.0,), SLO)
    base = runner.key_of(
        run_sweep(runner, SMALL_DEPLOYMENT, config).points[0].result.point
    )
    changed_seed = SweepConfig((1.0,), SLO, seed=1)
    other = run_sweep(runner, SMALL_DEPLOYMENT, changed_seed).points[0].result
    assert other.key != base[0]
    assert json.loads(base[1])["trace_sha256"] == runner.source.sha256


def test_parallel_run_matches_serial(tmp_path: Path) -> None:
    config = SweepConfig((1.0, 4.0), SLO)
    serial = run_sweep(make_runner(tmp_path / "a"), SMALL_DEPLOYMENT, config)
    parallel = run_sweep(make_runner(tmp_path / "b", jobs=2), SMALL_DEPLOYMENT, config)
    assert [p.metrics for p in parallel.points] == [p.metrics for p in serial.points]


def test_confirm_by_simulate_is_identical(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    result = run_sweep(runner, SMALL_DEPLOYMENT, SweepConfig((1.0, 2.5, 4.0), SLO))
    best = result.best
    assert best is not None

    confirmation = confirm_by_simulate(
        runner,
        best.result.point,
        best.metrics,
        SLO,
        SaturationTest(),
        tmp_path / "best",
    )

    assert confirmation.identical
    assert confirmation.max_relative_difference() == 0.0
    deployment = json.loads((tmp_path / "best" / "deployment.json").read_text())
    assert deployment["prefill_npus_per_instance"] == 1
    assert pq.read_table(tmp_path / "best" / "trace.parquet").num_rows == 120


def test_cli_writes_points_report_and_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = uniform_trace(tmp_path / "trace.parquet")
    deployment = tmp_path / "deployment.json"
    deployment.write_text(
        json.dumps(
            {
                "prefill_instances": 1,
                "prefill_npus_per_instance": 1,
                "decode_npus_per_instance": 16,
            }
        )
    )
    out = tmp_path / "out"
    command = [
        "sweep",
        str(trace),
        "-o",
        str(out),
        "--factors",
        "1,2.5,4",
        "--slo-ttft-ms",
        "1000",
        "--deployment",
        str(deployment),
        "--jobs",
        "1",
    ]

    assert main([*command, "--confirm", "simulate"]) == 0

    printed = capsys.readouterr().out
    assert "largest rate meeting the SLOs: factor 2.5" in printed
    assert "every figure is identical" in printed
    points = pq.read_table(out / "points.parquet")
    assert points.schema.remove_metadata() == points_schema()
    assert points.column("rate_factor").to_pylist() == [1.0, 2.5, 4.0]
    assert points.column("is_max_slo_rate").to_pylist() == [False, True, False]
    assert points.column("saturated").to_pylist() == [False, False, True]
    assert points.column("deployment_prefill_npus_per_instance").to_pylist() == [1] * 3
    run_config = json.loads(points.schema.metadata[RUN_CONFIG_KEY.encode()])
    assert run_config["kind"] == "sweep"
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2
    # Self-contained: no scripts, and nothing loaded from elsewhere.
    assert "<script" not in page
    assert "src=" not in page
    assert 'href="http' not in page
    assert (out / "best" / "simulate.parquet").is_file()

    assert main(command) == 0
    assert "0 points simulated, 3 taken from the cache" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--factors", "1,x"], "--factors must be comma-separated numbers"),
        (["--factors", "1,-2"], "--factors must list positive numbers"),
        (["--slo-attainment", "0"], "SLO attainment must be in (0, 1]"),
        (["--refine", "11"], "refine rounds must be in 0..10"),
        (["--jobs", "0"], "jobs must be at least 1"),
    ],
)
def test_cli_rejects_bad_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    trace = uniform_trace(tmp_path / "trace.parquet", requests=5)
    status = main(["sweep", str(trace), "-o", str(tmp_path / "out"), *extra])
    assert status == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert message in error


def test_cli_rates_become_factors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = uniform_trace(tmp_path / "trace.parquet", requests=11, spacing_ms=1000.0)
    out = tmp_path / "out"
    command = [
        "sweep",
        str(trace),
        "-o",
        str(out),
        "--rates-rps",
        "1.1,2.2",
        "--jobs",
        "1",
    ]
    assert main(command) == 0
    points = pq.read_table(out / "points.parquet")
    # 11 requests over 10 s are 1.1 requests/s, so the factors are 1 and 2.
    assert points.column("rate_factor").to_pylist() == [1.0, 2.0]


def test_confirm_by_replay_reports_differences(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    result = run_sweep(runner, SMALL_DEPLOYMENT, SweepConfig((2.0,), SLO))
    point = result.points[0].result.point

    confirmation = confirm_by_replay(
        runner,
        point,
        SLO,
        SaturationTest(),
        tmp_path / "replay",
        time_scale=20.0,
        limit=15,
    )

    figures = {figure.name: figure for figure in confirmation.figures}
    assert figures["requests"].planned == 15.0
    assert figures["requests"].confirmed == 15.0
    assert figures["ok"].confirmed == 15.0
    # The server paces emulated time against the wall clock, so its TTFT
    # differs from the simulated 727 ms by its pacing error only.
    assert figures["ttft_ms_p50"].planned == pytest.approx(727.08, abs=0.01)
    assert figures["ttft_ms_p50"].relative is not None
    assert abs(figures["ttft_ms_p50"].relative) < 0.05
    assert pq.read_table(confirmation.results_path).num_rows == 15
