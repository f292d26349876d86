"""`cmx bench cache`: the context caching experiment against published figures."""

from __future__ import annotations

import json

import pytest

from cmx.cli import main
from emulator.calibration import (
    PREDICTED_CACHE,
    PUBLISHED_CACHE,
    bench_cache,
    fit_pool_read_rate,
)
from emulator.errors import ConfigError
from emulator.profiles import DeploymentConfig, default_profiles


def test_bench_cache_meets_published_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cache", "--reuse", "0.9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["throughput_ratio"] == pytest.approx(2.28, rel=0.05)
    # 29 of the 32 blocks of a 4,096-token prompt.
    assert report["cached_token_share"] == pytest.approx(29 / 32, abs=1e-4)
    # Caching off reproduces the published 5,655 tokens/s per NPU.
    assert report["tokens_per_s_per_npu_no_cache"] == pytest.approx(5655, rel=0.01)
    assert 0 < report["ttft_ratio"] < 1


def test_predicted_half_reuse_row() -> None:
    (row,) = PREDICTED_CACHE
    result = bench_cache(default_profiles(), row.reuse)
    assert result.cached_token_share == 0.5
    assert result.throughput_ratio == pytest.approx(row.throughput_ratio, rel=0.05)


def test_no_reuse_changes_nothing() -> None:
    result = bench_cache(default_profiles(), 0.0)
    assert result.cached_token_share == 0.0
    assert result.throughput_ratio == pytest.approx(1.0, rel=1e-12)
    assert result.ttft_ratio == pytest.approx(1.0, rel=1e-12)


def test_gains_grow_with_reuse() -> None:
    results = [
        bench_cache(default_profiles(), r, requests=300) for r in (0.25, 0.5, 0.75)
    ]
    ratios = [result.throughput_ratio for result in results]
    ttfts = [result.ttft_ratio for result in results]
    assert ratios == sorted(ratios)
    assert ttfts == sorted(ttfts, reverse=True)


def test_faster_pool_gains_more() -> None:
    slow = bench_cache(default_profiles(pool_read_gb_per_s_per_npu=0.5), 0.9)
    fast = bench_cache(default_profiles(pool_read_gb_per_s_per_npu=50.0), 0.9)
    assert fast.throughput_ratio > slow.throughput_ratio


@pytest.mark.parametrize(
    ("reuse", "message"),
    [(1.0, "reuse must be in \\[0, 1\\), got 1.0"), (-0.1, "got -0.1")],
)
def test_bad_reuse_is_rejected(reuse: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        bench_cache(default_profiles(), reuse)


def test_cli_names_bad_reuse(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "cache", "--reuse", "1.5"]) == 2
    assert "reuse must be in [0, 1), got 1.5" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_reproduces_default_read_rate() -> None:
    rate = fit_pool_read_rate(default_profiles())
    default = DeploymentConfig().pool_read_gb_per_s_per_npu
    assert rate == pytest.approx(default, rel=1e-4)
    fitted = bench_cache(default_profiles(pool_read_gb_per_s_per_npu=rate), 0.9)
    assert fitted.throughput_ratio == pytest.approx(
        PUBLISHED_CACHE.throughput_ratio, rel=1e-3
    )
